# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One tight streamed pass of the real pack: the hand-off as this model's compute threads see it.

The executor's hand-off (a release waking the loader, the loader claiming the range, the reader
and verify threads waking) is calibrated on a small model whose compute barely runs. On a small
CPU at torch's default threads a real model's compute threads keep every core busy (and spin
between parallel regions), so each of those wake-ups waits longer: the smallest plans, a chain
of such hand-offs, ran 15-50% slower than predicted. So the profile also runs the pack itself
with nothing resident through its smallest arena (no split, unlimited read-ahead), back to back,
and fits the hand-off at which the planner's replay of that pass takes the measured time, with
the disk at the level the rounds around it measured.
"""

import time

from demand_layering_ros.planning.measure.executor_costs import (solve_handoff,
                                                                 solve_increasing)
from demand_layering_ros.planning.measure.machine import sync
from demand_layering_ros.planning.simulate import Config, simulate
from demand_layering_ros.quantiles import median

HANDOFF_MAX_MS = 20.0


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


def _config(sched, probe):
    return Config(frozenset(sched.forced), int(probe['arena_bytes'] or 0),
                  probe['prefetch_depth'], int(probe.get('split_bytes') or 0))


def fit_probe_handoff(sched, timing, probe):
    """Return the hand-off (ms) at which the replay of the tight pass takes its measured time."""
    return solve_handoff(sched, timing, _config(sched, probe), probe['measured_ms'],
                         hi=HANDOFF_MAX_MS)


def fit_two_probes(sched, timing, whole, split, rounds=4):
    """
    Return (hand-off ms, read slowdown) that replay both tight passes at their measured times.

    One pass cannot tell a cost per hand-off from reads slower than measured alone: fitted to
    the unsplit pass only, the stall of a few large units became a hand-off cost that the
    planner then charged on every chunk of a split plan (yolov3's smallest plan predicted 4.6x
    its time). The split pass hands off several times more often over the same bytes, so the
    difference between the two passes is the hand-offs' and the rest is the reads'.
    """
    from dataclasses import replace
    cfg_whole, cfg_split = _config(sched, whole), _config(sched, split)
    base = timing.read_slowdown
    slow, handoff = 1.0, 0.0
    for _ in range(rounds):
        t = replace(timing, read_slowdown=base * slow)
        handoff = solve_handoff(sched, t, cfg_split, split['measured_ms'], hi=HANDOFF_MAX_MS)
        slow = _solve_read(sched, replace(timing, handoff=handoff), cfg_whole,
                           whole['measured_ms'], base)
    return handoff, round(base * slow, 5)


def _solve_read(sched, timing, cfg, measured_ms, base, hi=20.0):
    """
    Return the factor on read_slowdown at which `simulate(cfg)` takes `measured_ms`.

    Reads under compute are never faster than alone (Timing clamps read_slowdown at 1), so
    the factor does not go below what takes the slowdown to 1.
    """
    from dataclasses import replace

    def latency(f):
        return simulate(sched, replace(timing, read_slowdown=base * f), cfg).latency_ms
    return solve_increasing(latency, measured_ms, min(1.0, 1.0 / base), hi, steps=25)
