# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Which split sizes keep a pack's outputs bit-exact here, and what computing by chunks costs.

The executor can stream a large layer's weight in chunks of output rows, one convolution (or
linear) per chunk. That may pick other kernels and change the last bits of the output, and
smaller kernels use the machine less well: a plan uses only the split sizes found exact on
this device, and the planner scales a split call's compute by the measured cost.
"""

import time

from demand_layering_ros.measure.machine import sync
from demand_layering_ros.quantiles import median


def split_exactness(pack, sched, device, model, progress=None):
    """
    Check, per candidate split size, that the executor's chunked layers give bit-exact outputs.

    Computing a layer by chunks of output channels can pick other kernels than the whole layer
    (a different blocking or algorithm) and change the last bits; a plan uses only split sizes
    whose outputs were torch.equal to the resident model's here, on a seeded random image.
    """
    import numpy as np
    import torch
    from demand_layering_ros.runtime.model import DemandLayeredModel
    out = {}
    if not sched.split_candidates:
        return out
    det = pack.build_detector(device=device, meta=True)
    h, w = det.input_size or (416, 416)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = det.preprocess([img])[0]
    with torch.no_grad():
        want = model(x)
    for split in sched.split_candidates:
        dl = DemandLayeredModel(pack.path, device=device,
                                plan={'resident_units': [], 'arena_bytes': None,
                                      'split_bytes': split, 'prefetch_depth': None})
        try:
            with torch.no_grad():
                got = dl(x)
            out[str(split)] = outputs_equal(got, want)
        finally:
            dl.close()
        if progress is not None:
            progress.update(1)
    return out


def split_costs(model, x, sched, splits, device, repeats=7, progress=None):
    """
    Time each split layer computed by chunks (as the executor does) against the whole layer.

    Chunks of output rows run one convolution (or linear) each and are concatenated; smaller
    kernels use the machine less well, so a split plan's compute is slower. Returns
    {split: {unit: chunked time / whole time}} from the layer's real input in one pass.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F
    modules = {}
    for name, m in model.named_modules(remove_duplicate=False):
        modules.setdefault(name, m)
    wanted = {}
    for sp in splits:
        for u, (_, chunks, _, module, rows) in sched.slot_builder.template(sp).items():
            if chunks:
                wanted.setdefault(module, []).append((sp, u, rows))
    if not wanted:
        return {}
    inputs = {}

    def grab(name):
        def pre(module, args):
            inputs.setdefault(name, args[0])
        return pre

    hooks = [modules[name].register_forward_pre_hook(grab(name)) for name in wanted]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()

    def clock(fn):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t

    def ratio(whole, chunked):
        """Return the median chunked/whole time of alternating runs (load drift cancels)."""
        whole(), chunked()
        return median([clock(chunked) / max(clock(whole), 1e-9) for _ in range(repeats)])

    out = {}
    with torch.no_grad():
        for name, uses in wanted.items():
            mod, xin = modules[name], inputs[name]
            conv = isinstance(mod, nn.Conv2d)

            def part(r0, r1, mod=mod, xin=xin, conv=conv):
                b = mod.bias[r0:r1] if mod.bias is not None else None
                w = mod.weight[r0:r1]
                return mod._conv_forward(xin, w, b) if conv else F.linear(xin, w, b)

            rows_all = mod.weight.shape[0]
            for sp, u, rows in uses:
                r = ratio(lambda: part(0, rows_all),
                          lambda: torch.cat([part(a, b) for a, b in rows], dim=1 if conv else -1))
                out.setdefault(str(sp), {})[str(u)] = round(r, 4)
            if progress is not None:
                progress.update(1)
    return out


def outputs_equal(a, b):
    """Return True when two model outputs (tensors, nested lists, tuples, dicts) are equal."""
    import torch
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b
