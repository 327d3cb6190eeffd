# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The activation peak of one pass: memory the model needs besides its weights.

A weight budget only bounds weights; the activation peak tells the integrator what else a frame
needs (CUDA's allocator peak on a GPU, the torch profiler's allocations on a CPU).
"""


def activation_peak(model, x, device):
    """Return the bytes one pass allocates at its peak (None when it cannot be measured)."""
    import torch
    device = torch.device(device)
    if device.type == 'cuda':                 # the model's GPU, not the current one
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            model(x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        return activation_peak_cpu(model, x)
    except Exception:  # the profiler is optional: the plan does not need it
        return None


def activation_peak_cpu(model, x):
    """Return the most bytes held by tensors allocated during one pass (torch profiler)."""
    import torch
    from torch.profiler import profile as tprofile, ProfilerActivity
    with torch.no_grad(), tprofile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        model(x)
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in p.events()
                    if e.self_cpu_memory_usage)
    cur = peak = 0
    for _, d in deltas:
        cur += d
        peak = max(peak, cur)
    return peak
