# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The pinned host-to-device copy time by request size (discrete GPU only).

On a discrete GPU every streamed slot is read into host memory and then copied to the device
arena by a copy stream: the planner's simulation needs that stage's speed, timed by CUDA events.
"""

from demand_layering_ros.quantiles import median
from demand_layering_ros.sizes import MB

H2D_SIZES = (64 << 10, 1 << 20, 16 << 20)


def h2d_points(sizes, device, progress=None):
    """Measure pinned host -> device copy seconds per request size (CUDA events)."""
    import torch
    device = torch.device(device)
    points = []
    for size in sizes:
        src = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(size, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device)     # where copy_ runs: dst's device
        times = []
        for _ in range(6):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            dst.copy_(src, non_blocking=True)
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        s = median(times[1:])
        points.append({'request_bytes': size, 'seconds': s, 'mb_per_s': round(size / s / MB, 1)})
        del src, dst
        if progress is not None:
            progress.update(1)
    return {'points': points}
