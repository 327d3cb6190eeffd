# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The speed of the executor's slot checksum, which it runs after a slot's last read.

Verification sits between a slot's read and its use, so its cost per byte is part of every
streamed slot's delay in the planner's simulation.
"""

import time

from demand_layering_ros.quantiles import median


def checksum_speed(nbytes=16 << 20, repeats=5):
    """Measure the executor's slot checksum (xxh3_64 over host memory) in bytes per second."""
    from demand_layering_ros import direct_io
    buf = direct_io.aligned_empty(nbytes)
    buf.fill_(7)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        direct_io.checksum(buf)
        times.append(time.perf_counter() - t)
    return {'algorithm': direct_io.CHECKSUM_ALGORITHM,
            'bytes_per_s': round(nbytes / median(times))}
