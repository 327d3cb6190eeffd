# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The executor's own costs, calibrated on a small model: per pass, per slot, and the hand-off.

On a real model these costs drown in its run-to-run noise, so they are measured on a pack of
many tiny conv+batch-norm units (a model family registered for this), and the hand-off delay
from a release to the loader's claim is fitted so that the planner's own simulation of a tight
pass matches its measured time.

On a real pack the hand-off is fitted again (`tight_pass` here, then the planner's
`fit_two_probes`): one tight streamed pass of the real pack, the hand-off as this model's
compute threads see it. The
executor's hand-off (a release waking the loader, the loader claiming the range, the reader and
verify threads waking) is calibrated on a small model whose compute barely runs. On a small CPU
at torch's default threads a real model's compute threads keep every core busy (and spin
between parallel regions), so each of those wake-ups waits longer: the smallest plans, a chain
of such hand-offs, ran 15-50% slower than predicted. So the profile also runs the pack itself
with nothing resident through its smallest arena (no split, unlimited read-ahead), back to
back, and fits the hand-off at which the planner's replay of that pass takes the measured time,
with the disk at the level the rounds around it measured.
"""

import time

from demand_layering_ros.measure.machine import sync
from demand_layering_ros.quantiles import median

CALIBRATION_FAMILY = 'dlr-calibration'


def register_calibration_family():
    """Register (once) a model family of N conv+batch-norm blocks on a 4x4 input."""
    import torch
    from torch import nn
    from demand_layering_ros.models import registry
    from demand_layering_ros.models.detector import Detector

    class Blocks(Detector):
        kind = 'classifier'

        def example_input(self, batch=1):
            return torch.ones(batch, 128, 4, 4, device=self.device)

        def postprocess(self, outputs, meta, **kwargs):
            return outputs

    def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
              **kwargs):
        def make():   # 128x128 convs (64 KiB) stay units of their own, each with its BN
            return nn.Sequential(*[nn.Sequential(nn.Conv2d(128, 128, 1), nn.BatchNorm2d(128))
                                   for _ in range(int(arg))]).eval()
        if meta:
            with torch.device('meta'):
                model = make()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0 if seed is None else seed)
                model = make().to(device)
        return Blocks('calibration', f'{CALIBRATION_FAMILY}:{arg}', model, ['x'],
                      input_size=(4, 4), build_args={'spec': f'{CALIBRATION_FAMILY}:{arg}'},
                      device=device)

    if CALIBRATION_FAMILY not in registry.families():
        registry.register(CALIBRATION_FAMILY, build)


def executor_overhead(device, blocks=64, repeats=15, progress=None, disk=None, fit_handoff=None):
    """
    Measure the executor's own costs: per pass, and per slot it hands to the model.

    A pass of `blocks` small conv+batch-norm units (tens of microseconds of compute each, about
    as many tensors per unit as a real conv layer) runs through an arena that holds all of it,
    once with every unit streamed and once with a quarter streamed; before each timed pass the
    loader has time to read everything, so no pass waits for a read. Against the same model
    fully resident (timed alternately) the two give the cost per streamed slot (the slope) and
    per pass (the rest). On a real model these would drown in its run-to-run noise. With `disk`
    (the profile's read times) a third run streams everything through the smallest arena, so
    each read waits for the release of the unit before it; the delay that makes the planner's
    own simulation of that pass match its measured time is the release-to-claim hand-off
    (`fit_handoff`: the planner's fit, `planning.simulate.fit_handoff`, handed in by the profiler).
    """
    import tempfile
    from demand_layering_ros.runtime.model import DemandLayeredModel
    from demand_layering_ros.runtime.resident import load_resident
    from demand_layering_ros import pack as P
    from demand_layering_ros.models import registry
    from demand_layering_ros.runtime.options import PIECE_BYTES
    register_calibration_family()
    det = registry.build(f'{CALIBRATION_FAMILY}:{blocks}', seed=0)
    x = det.example_input(1)
    with tempfile.TemporaryDirectory(prefix='dlr-calibration-') as tmp:
        pk = P.write_pack_from_module(det.model, x, tmp, {'spec': det.spec}, progress=False)
        names = [u.name for u in pk.units]
        few = len(names) // 4
        res = load_resident(pk.path, device=device)
        dls = {n: DemandLayeredModel(pk.path, device=device,
                                     plan={'resident_units': names[:len(names) - n],
                                           'arena_bytes': sum(u.length for u in pk.units),
                                           'split_bytes': 0, 'prefetch_depth': None})
               for n in (len(names), few)}
        tight = None
        if disk and fit_handoff is not None:
            tight = DemandLayeredModel(pk.path, device=device,
                                       plan={'resident_units': [], 'arena_bytes': None,
                                             'split_bytes': 0, 'prefetch_depth': None})
        try:
            diffs, res_ms, tight_ms = _time_calibration(res, dls, tight, x.to(device), device,
                                                        repeats)
            many, some = median(diffs[len(names)]), median(diffs[few])
            per_slot = max((many - some) / (len(names) - few), 0.0)
            per_pass = max(some - per_slot * few, 0.0)
            out = {'overhead_ms_per_slot': round(per_slot, 6),
                   'overhead_ms_per_pass': round(per_pass, 4),
                   'calibration': {'slots': [len(names), few],
                                   'overhead_ms': [round(many, 4), round(some, 4)]},
                   'piece_bytes': PIECE_BYTES}
            if tight is not None:
                out['handoff_ms'] = fit_handoff(pk, device, disk, out, median(res_ms),
                                                median(tight_ms), tight.plan()['arena_bytes'])
                out['calibration']['tight_ms'] = round(median(tight_ms), 4)
        finally:
            for dl in dls.values():
                dl.close()
            if tight is not None:
                tight.close()
    if progress is not None:
        progress.update(1)
    return out


def _time_calibration(res, dls, tight, xd, device, repeats):
    """
    Time the calibration passes; return ({streamed: [ms over resident]}, resident ms, tight ms).

    Streamed and resident passes alternate (load drift cancels); the first two rounds warm up.
    """
    import torch
    diffs = {n: [] for n in dls}
    res_ms, tight_ms = [], []
    with torch.no_grad():
        for r in range(repeats + 2):
            for n, dl in dls.items():
                time.sleep(0.01)             # the loader reads the whole pass
                sync(device)
                t = time.perf_counter()
                dl(xd)
                sync(device)
                t_dl = time.perf_counter() - t
                t = time.perf_counter()
                res(xd)
                sync(device)
                t_res = time.perf_counter() - t
                if r >= 2:
                    diffs[n].append(1e3 * (t_dl - t_res) - dl.stats()['stall_ms'])
                    res_ms.append(1e3 * t_res)
            if tight is not None:
                tight(xd)                    # back to back: no idle head start
                sync(device)
                t = time.perf_counter()
                tight(xd)
                sync(device)
                if r >= 2:
                    tight_ms.append(1e3 * (time.perf_counter() - t))
    return diffs, res_ms, tight_ms


def tight_pass(pack, device, x, repeats, progress=None, split_bytes=0):
    """Run the pack streamed through its smallest arena; return measured ms and the layout."""
    import torch
    from demand_layering_ros.runtime.model import DemandLayeredModel
    m = DemandLayeredModel(pack.path, device=device,
                           plan={'resident_units': [], 'arena_bytes': None,
                                 'split_bytes': split_bytes, 'prefetch_depth': None})
    try:
        xd = x.to(device)
        times = []
        with torch.no_grad():
            m(xd)                          # cold: the first pass reads with no head start
            for _ in range(repeats + 1):
                sync(device)
                t = time.perf_counter()
                m(xd)
                sync(device)
                times.append(1e3 * (time.perf_counter() - t))
        plan = m.plan()
        out = {'measured_ms': round(median(times[1:]), 4),
               'passes_ms': [round(v, 4) for v in times[1:]],
               'arena_bytes': plan['arena_bytes'], 'prefetch_depth': plan['prefetch_depth'],
               'split_bytes': int(split_bytes or 0), 'stall_ms': round(m.stats()['stall_ms'], 4)}
    finally:
        m.close()
    if progress is not None:
        progress.update(1)
    return out
