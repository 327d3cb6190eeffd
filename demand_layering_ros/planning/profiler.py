# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Measure on this machine what a plan's latency and memory depend on (PROFILE.json).

The planner predicts a plan by replaying one pass, so its inputs must be measured where the
model will run: each call's compute time with the model fully resident (on camera-like pixels:
a flat image runs some nets 20% faster), the disk's O_DIRECT time by request size, the
checksum's cost, how much reading slows compute, on CUDA the host-to-device copy time, the
executor's own cost per pass and per slot, which split sizes stay bit-exact, and the activation
peak. Each is measured by a module of `measure`; `profile` runs them on one model and assembles
the dict. Kept apart from `planner`, so that planning (pure arithmetic on this dict) never
imports what profiling needs to run a model; `plan_for` profiles first when it has no profile.
"""

import math
from pathlib import Path
import time

from demand_layering_ros import process_memory
from demand_layering_ros.measure import executor_costs
from demand_layering_ros.measure.activation import activation_peak
from demand_layering_ros.measure.call_clock import call_waits, CallClock, split_calls
from demand_layering_ros.measure.contention import read_contention
from demand_layering_ros.measure.executor_costs import tight_pass
from demand_layering_ros.measure.machine import machine_info, sync
from demand_layering_ros.measure.splits import split_costs, split_exactness
from demand_layering_ros.measure.transfer import (checksum_speed, DISK_ROUNDS, DISK_SIZES,
                                                  DiskRounds, h2d_points, H2D_SIZES)
from demand_layering_ros.planning import planner
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.simulate import fit_handoff, fit_probe_handoff, fit_two_probes
from demand_layering_ros.planning.timing import load_profile, PROFILE_FORMAT, PROFILE_VERSION
from demand_layering_ros.planning.timing import round_levels, Timing
from demand_layering_ros.quantiles import median
from demand_layering_ros.runtime.binding import conversion_reserve
from demand_layering_ros.sizes import MB, mib, PAGE


def profile(pack_dir, device='cpu', repeats=5, warmup=1, progress=True, disk_sizes=DISK_SIZES,
            reader_threads=None, activation=True, executor_overhead=True, check_splits=True,
            budget_mb=None, threads=None):
    """
    Measure, on this machine, what a plan's latency and memory depend on; return PROFILE dict.

    Per call of the pass (model fully resident, timed by forward pre/post hooks on the units'
    modules, CUDA events on a GPU): the time it needs its weights (busy) and the weight-free
    time before it (gap); medians over `repeats` passes after `warmup`, scaled to add up to the
    median unhooked pass. Also each unit's bytes, the O_DIRECT read time by request size, alone
    and back to back (the pack file itself: O_DIRECT does not touch the page cache), the
    checksum speed, how much reading slows compute, on CUDA the pinned host-to-device copy
    time, the executor's own cost per slot and per pass, which split sizes give bit-exact
    outputs and what chunking costs each split layer, the activation peak, the resident
    end-to-end latency (no hooks) and the machine. The disk is measured in rounds at the start,
    after the calls, after the executor's costs and at the end (its speed varies; `disk.rounds`).

    threads: torch's intra-op thread count to measure at (None: this process's, torch's default
    unless set); compute, contention and the executor's costs depend on it, so the profile
    records it (`threads`) and a plan is made for that count only. Restored afterwards.

    budget_mb: when the weights do not fit it, the model is not loaded resident: it runs
    streamed through the executor within the budget, and each call's wait for its weights
    (the executor's call log) is taken out of the times, so the budget holds while profiling
    (a robot whose memory never held the whole model can still plan). Split sizes are then not
    checked (the planner uses none) and the resident latency is the sum of the parts.
    """
    import torch
    from demand_layering_ros.pack import Pack
    from demand_layering_ros.runtime.options import READER_THREADS
    pack = Pack.open(pack_dir)
    sched = Schedule.from_pack(pack)
    device = str(device)
    cuda = device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f'profile: device {device!r} requested but CUDA is not available')
    readers = reader_threads or READER_THREADS
    streamed = budget_mb is not None and pack.total_bytes > budget_mb * MB
    limit = budget_mb * MB if streamed else float('inf')    # the read buffer is weights too
    sizes = [s for s in disk_sizes
             if s <= min(max(pack.file_size - pack.data_offset, 0), limit)] or [PAGE]
    check_splits = check_splits and not streamed
    probe = executor_overhead and not streamed      # the tight pass needs its own arena
    bar = _progress_bar(progress, pack_dir, warmup + repeats + DISK_ROUNDS * len(sizes) + (
        len(H2D_SIZES) if cuda else 0) + 1 + int(executor_overhead) + 2 * int(probe) + (
        max(3, repeats)) + (len(sched.split_candidates) if check_splits else 0))
    t_start = time.perf_counter()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    baseline = process_memory.anon_bytes()    # before any weight: the runtime's own memory
    try:
        disk = DiskRounds(pack, sizes, readers, progress=bar)
        disk.measure('start')
        det, model = _open_model(pack, device, budget_mb if streamed else None)
        x = det.timing_input(1)
        calls = _time_calls(pack, sched, model, x, device, streamed, warmup, repeats, bar)
        calls['activation_peak_bytes'] = activation_peak(model, x, device) if activation \
            else None
        if bar is not None:
            bar.update(1)
        found = _measure_machine(pack, sched, model, x, device, disk, readers, repeats, bar,
                                 executor_overhead, check_splits, probe)
        found['threads'] = torch.get_num_threads()
        if streamed:
            found['peak_weight_bytes'] = model.stats()['peak_weight_bytes']
            model.close()
        del model, det
        found['h2d'] = h2d_points(H2D_SIZES, device, progress=bar) if cuda else None
        found['runtime_baseline_bytes'] = baseline
    finally:
        torch.set_num_threads(before)
        if bar is not None:
            bar.close()
    prof = _profile_dict(pack, sched, device, repeats, budget_mb if streamed else None, calls,
                         found, t_start)
    return _fit_probe(prof, sched)


def _progress_bar(progress, pack_dir, total):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f'profile {Path(pack_dir).name}', unit='step')


def _fit_probe(prof, sched):
    """
    Fit the hand-off to the tight passes of the real pack (`tight_pass`); return the profile.

    The disk is taken at the level of the two rounds around the probe (their geometric mean);
    the hand-off calibrated on the small model stays as `handoff_calibration_ms`. With a split
    pass beside the unsplit one, the hand-off and the read slowdown are fitted together
    (`contention.read_slowdown`; the one measured alone stays as `read_slowdown_measured`).
    """
    probe = prof.get('probe')
    if not probe or probe.get('error') or not probe.get('arena_bytes'):
        return prof
    levels = round_levels(prof['disk'])[-2:]
    level = math.exp(sum(math.log(v) for v in levels) / len(levels))
    timing = Timing.from_profile(prof, sched).scaled(disk=level)
    ex = prof['executor'] = dict(prof.get('executor') or {})
    ex['handoff_calibration_ms'] = ex.get('handoff_ms')
    split = prof.get('probe_split')
    if split and not split.get('error') and split.get('arena_bytes'):
        ex['handoff_ms'], slow = fit_two_probes(sched, timing, probe, split)
        mutual = prof['contention'] = dict(prof.get('contention') or {})
        mutual['read_slowdown_measured'] = mutual.get('read_slowdown')
        mutual['read_slowdown'] = slow
    else:
        ex['handoff_ms'] = fit_probe_handoff(sched, timing, probe)
    probe['disk_level'] = round(level, 4)
    return prof


def _probes(pack, device, x, repeats, bar, exact):
    """
    Run the tight passes the hand-off is fitted to: unsplit, and split at the smallest size.

    Returns (probe, probe_split); either is {'error': ...} when it failed (the profile says
    so and the fit falls back), probe_split is None when no split size is exact.
    """
    out = []
    splits = sorted(int(sp) for sp, ok in (exact or {}).items() if ok)
    for split in [0] + splits[:1]:
        try:
            out.append(tight_pass(pack, device, x, repeats, progress=bar, split_bytes=split))
        except Exception as e:  # noqa: B902 - reported in the profile; the fit falls back
            out.append({'error': f'{type(e).__name__}: {e}'})
    return out[0], (out[1] if len(out) > 1 else None)


def _open_model(pack, device, budget_mb=None):
    """Return (detector, model): every weight resident, or streamed within `budget_mb`."""
    from demand_layering_ros.planning.fit import fit_budget
    from demand_layering_ros.runtime.model import DemandLayeredModel
    from demand_layering_ros.runtime.resident import load_resident
    if budget_mb is not None:
        model = DemandLayeredModel(pack.path, device=device, budget_mb=budget_mb, fit=fit_budget)
        return model.detector, model
    det = pack.build_detector(device=device, meta=True)
    model = load_resident(pack.path, device=device)
    if getattr(model, 'detector', None) is not None:
        det = model.detector
    return det, model


def _time_calls(pack, sched, model, x, device, streamed, warmup, repeats, bar):
    """Time every call of `repeats` passes; return busy/gap/tail per call and pass latencies."""
    passes, plain, waits = _timed_passes(pack, sched, model, x, device, streamed, warmup,
                                         repeats, bar)
    names = [n for _, s, n in passes[0][0] if s > 0]
    unit_of = [pack.module_unit.get(n) for n in names]
    if unit_of != list(sched.call_order):
        raise ValueError(f'pack {pack.path}: the profiled pass calls {len(unit_of)} unit '
                         f'modules in an order that differs from the manifest call_order '
                         f'({sched.steps} calls); was the pack written for another input '
                         'size or model version?')
    splits = [split_calls(ev, tot, sched.steps) for ev, tot in passes]
    if streamed:    # waiting for weights is no part of the model's own time
        splits = [([max(0.0, b - w) for b, w in zip(bs, within)],
                   [max(0.0, g - w) for g, w in zip(gs, before)], t)
                  for (bs, gs, t), (before, within) in zip(splits, waits)]
    busy = [median([b[s] for b, _, _ in splits]) for s in range(sched.steps)]
    gap = [median([g[s] for _, g, _ in splits]) for s in range(sched.steps)]
    tail = median([t for _, _, t in splits])
    hooked = median([tot for _, tot in passes])
    total = sum(busy) + sum(gap) + tail
    # Per-call medians of a noisy machine sum to less than a typical pass (delays are
    # skewed); scale them so the calls of one pass add up to the median unhooked pass.
    # Streamed, the unhooked pass includes waits for weights: the parts are the estimate.
    resident_ms = total if streamed else median(plain)
    scale = resident_ms / total if total > 0 else 1.0
    return {'busy': [b * scale for b in busy], 'gap': [g * scale for g in gap],
            'tail': tail * scale, 'resident_ms': resident_ms, 'plain': plain,
            'hooked': hooked, 'scale': scale}


def _timed_passes(pack, sched, model, x, device, streamed, warmup, repeats, bar):
    """
    Run hooked passes (and, resident, unhooked ones alternately); return what they measured.

    Returns ([(hook events, pass ms)], [unhooked pass ms], [(waits before, waits within)]
    per streamed pass) for the passes after `warmup`.
    """
    import torch
    modules = [m for u in pack.units for m in u.modules]
    # hooked after the executor's own hooks: a call's clock starts once its weights are in
    clock = CallClock(getattr(model, 'module', model) if streamed else model, modules, device)
    passes, plain, waits = [], [], []
    try:
        for r in range(warmup + repeats):
            # hooked and plain passes alternate, so both see the same machine load
            ev, total_ms = clock.run(model, x)
            if r >= warmup:
                passes.append((ev, total_ms))
                if streamed:
                    waits.append(call_waits(model.stats().get('calls') or [], sched.steps))
            if not streamed:    # streamed, an unhooked pass includes waits: not used
                clock.enabled = False
                sync(device)
                t = time.perf_counter()
                with torch.no_grad():
                    model(x)
                sync(device)
                if r >= warmup:
                    plain.append(1e3 * (time.perf_counter() - t))
                clock.enabled = True
            if bar is not None:
                bar.update(1)
    finally:
        clock.remove()
    return passes, plain, waits


def _measure_machine(pack, sched, model, x, device, disk, threads, repeats, bar,
                     executor_overhead, check_splits, probe=False):
    """Measure the disk (more rounds), executor costs, splits, checksum and contention."""
    disk.measure('after calls')
    found = {'executor': None, 'split_exact': {}, 'split_cost': {}, 'peak_weight_bytes': None}
    if executor_overhead:
        found['executor'] = executor_costs.executor_overhead(
            device, progress=bar, disk=disk.result(), fit_handoff=fit_handoff)
        disk.measure('after executor costs')
    if check_splits:
        exact = found['split_exact'] = split_exactness(pack, sched, device, model, progress=bar)
        found['split_cost'] = split_costs(model, x, sched, [sp for sp in sched.split_candidates
                                                            if exact.get(str(sp))], device,
                                          repeats=max(3, min(7, repeats)))
    found['checksum'] = checksum_speed()
    found['contention'] = read_contention(pack, model, x, device, max(3, repeats), threads,
                                          progress=bar)
    found['probe'] = found['probe_split'] = None
    if probe:
        found['probe'], found['probe_split'] = _probes(pack, device, x, max(3, repeats), bar,
                                                       found['split_exact'])
    while len(disk.rounds) < DISK_ROUNDS:
        disk.measure('end')
    found['disk'] = disk.result()
    return found


def _profile_dict(pack, sched, device, repeats, budget_mb, calls, found, t_start):
    """Assemble PROFILE.json; budget_mb: the budget the model was streamed within, or None."""
    info = machine_info(device)
    kind = 'cpu'
    if device.startswith('cuda'):
        kind = 'unified' if info.get('integrated') else 'cuda'
    busy, gap, act = calls['busy'], calls['gap'], calls['activation_peak_bytes']
    per_unit = {}
    for s, u in enumerate(sched.call_order):
        per_unit.setdefault(u, []).append(round(busy[s], 5))
    return {
        'format': PROFILE_FORMAT,
        'version': PROFILE_VERSION,
        'threads': found['threads'],
        'pack': {'path': str(pack.path), 'spec': sched.spec, 'file_size': pack.file_size,
                 'units': len(pack.units), 'calls': sched.steps,
                 'input': pack.manifest.get('input')},
        'device': device.split(':')[0],
        'device_kind': kind,
        'machine': info,
        'repeats': repeats,
        'mode': 'streamed' if budget_mb is not None else 'resident',
        'budget_mb': budget_mb,
        'peak_weight_bytes': found['peak_weight_bytes'],
        'resident_latency_ms': round(calls['resident_ms'], 4),
        'resident_latency_all_ms': [round(v, 4) for v in calls['plain']],
        'hooked_latency_ms': round(calls['hooked'], 4),
        'steps_scale': round(calls['scale'], 5),
        'activation_peak_bytes': act,
        'activation_peak_mb': mib(act),
        # float16 pack on the CPU: float32 copies alive at once, outside residents and arena
        'convert_reserve_bytes': conversion_reserve(pack, device),
        'runtime_baseline_bytes': found['runtime_baseline_bytes'],
        'weight_bytes': sum(pack.units[u].length for u in sched.called),
        'units': [{'index': u.index, 'name': u.name, 'bytes': u.length, 'nbytes': u.nbytes,
                   'calls': u.calls, 'compute_ms': per_unit.get(u.index, [])}
                  for u in pack.units],
        'steps': {'unit': list(sched.call_order), 'busy_ms': [round(b, 5) for b in busy],
                  'gap_ms': [round(g, 5) for g in gap], 'tail_ms': round(calls['tail'], 5)},
        'disk': found['disk'],
        'h2d': found['h2d'],
        'executor': found['executor'],
        'checksum': found['checksum'],
        'contention': found['contention'],
        'probe': found['probe'],
        'probe_split': found['probe_split'],
        'split_exact': found['split_exact'],
        'split_cost': found['split_cost'],
        'seconds': round(time.perf_counter() - t_start, 2),
    }


def quick_profile(pack_dir, device='cpu', budget_mb=None, repeats=2):
    """Profile quickly, within the budget (streamed when the weights exceed it): at start-up."""
    return profile(pack_dir, device=device, repeats=repeats, warmup=1, progress=False,
                   disk_sizes=(256 << 10, 4 << 20), activation=False, budget_mb=budget_mb)


def plan_for(pack_dir, budget_mb=None, deadline_ms=None, profile=None, device='cpu',
             frame_period_ms=None, repeats=2):
    """
    Plan at start-up: read PROFILE.json if given (a path or dict), else profile quickly here.

    Returns the Plan. Profiling here stays within the budget (streamed when the weights
    exceed it).
    """
    if profile is None:
        prof = quick_profile(pack_dir, device=device, budget_mb=budget_mb, repeats=repeats)
    elif isinstance(profile, dict):
        prof = profile
    else:
        prof = load_profile(profile)
    return planner.plan(pack_dir, prof, budget_mb=budget_mb, deadline_ms=deadline_ms,
                        frame_period_ms=frame_period_ms, device=device)
