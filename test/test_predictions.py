# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Honest predictions: the thread count a plan holds at, the disk's noise, the online correction.

All by behaviour, none by timing: synthetic pass times go into the feedback object, profiles
and plans carry another thread count, the disk's rounds are given, and a real pack runs in the
service only to show that a drift it is fed re-plans the model in effect. How close predictions
come to measurements is a benchmark (bench/bench_planner.py).
"""

import json
import logging
import shutil

from demand_layering_ros import loading
from demand_layering_ros import pack as P
from demand_layering_ros.cli import main as cli_main
from demand_layering_ros.layout import threads
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.planning import planner, timing
from demand_layering_ros.planning.decide import decide_plan
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.timing import PROFILE_FORMAT, save_profile, Timing
from demand_layering_ros.runtime.feedback import LatencyFeedback
from demand_layering_ros.service.service import DetectorService
from demand_layering_ros.sizes import MB
import numpy as np
import pytest
import torch

N = torch.get_num_threads()


# ----------------------------------------------------------------------------- inputs


def hand(rounds=None, busy=1.0, threads=None):
    """Three 5 MB units; a disk of 5 ms per unit (median), compute `busy` ms per call."""
    manifest = {'units': [{'index': i, 'name': f'u{i}', 'length': 5 * MB, 'calls': 1,
                           'first_call': i, 'last_call': i} for i in range(3)],
                'call_order': [0, 1, 2], 'model': {'spec': 'synthetic:hand'}}
    disk = {'points': [{'request_bytes': 5 * MB, 'seconds': 0.005,
                        'seconds_streamed': 0.005}]}
    if rounds:
        disk['rounds'] = [{'at': f'r{k}', 'at_s': k,
                           'points': [{'request_bytes': 5 * MB, 'seconds': 0.005 * f,
                                       'seconds_streamed': 0.005 * f}]}
                          for k, f in enumerate(rounds)]
    prof = {'format': PROFILE_FORMAT, 'device': 'cpu', 'device_kind': 'cpu',
            'steps': {'unit': [0, 1, 2], 'busy_ms': [busy] * 3, 'gap_ms': [0.0] * 3,
                      'tail_ms': 0.5},
            'disk': disk, 'resident_latency_ms': 3 * busy + 0.5,
            'resident_latency_all_ms': [(3 * busy + 0.5) * f for f in (0.95, 1.0, 1.08)]}
    if threads is not None:
        prof['threads'] = threads
    return manifest, prof


@pytest.fixture(scope='module')
def tiny_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp('predictions') / 'yolov3-tiny'
    return P.write_pack('darknet:yolov3-tiny', out, seed=3, input_size='64x64', progress=False,
                        verify=False)


def synthetic_profile(pack, busy_ms=2.0, read_mb_s=200.0, threads=N):
    """Return a profile of a real pack's pass with given speeds (an input to the planner)."""
    order = list(pack.call_order)
    pts = [{'request_bytes': n, 'seconds': n / (read_mb_s * MB),
            'seconds_streamed': n / (read_mb_s * MB)} for n in (1 << 20, 4 << 20)]
    return {'format': PROFILE_FORMAT, 'device': 'cpu', 'device_kind': 'cpu',
            'threads': threads, 'mode': 'resident',
            'steps': {'unit': order, 'busy_ms': [busy_ms] * len(order),
                      'gap_ms': [0.1] * len(order), 'tail_ms': 1.0},
            'disk': {'points': pts, 'rounds': [{'at': 'start', 'at_s': 0.0, 'points': pts}]},
            'resident_latency_ms': (busy_ms + 0.1) * len(order) + 1.0}


# ----------------------------------------------------------------------------- feedback


def test_feedback_reports_the_median_of_recent_passes_against_the_expected_latency():
    fb = LatencyFeedback(predicted_ms=120.0, expected_ms=100.0, window=8, min_passes=4)
    fb.add(500.0)                                    # the first pass starts cold: not counted
    assert fb.measured_ms is None and fb.ratio is None and not fb.drifted
    for ms in (100.0, 104.0, 96.0):
        fb.add(ms)
    assert fb.measured_ms == 100.0 and fb.ratio == 1.0
    fb.add(300.0)                                     # one slow frame is no drift
    assert fb.ratio == pytest.approx(102.0 / 100.0) and not fb.drifted
    d = fb.as_dict()
    assert d['predicted_latency_ms'] == 120.0 and d['expected_latency_ms'] == 100.0
    assert d['measured_latency_ms'] == 102.0 and d['latency_drift'] is False


def test_feedback_drifts_only_when_most_recent_passes_are_beyond_ten_percent():
    fb = LatencyFeedback(predicted_ms=100.0, window=8, min_passes=4, skip=0)
    for ms in (109.0, 109.5, 108.0, 109.9, 109.0, 109.0):
        fb.add(ms)
    assert fb.ratio < 1.10 and not fb.drifted         # within 10%
    fb = LatencyFeedback(predicted_ms=100.0, window=8, min_passes=4, skip=0)
    for ms in (130.0, 131.0, 129.0):
        fb.add(ms)
    assert not fb.drifted                             # not enough passes yet
    fb.add(128.0)
    assert fb.drifted and fb.ratio == pytest.approx(1.295)
    for ms in (100.0,) * 5:                           # the machine recovered: the median follows
        fb.add(ms)
    assert not fb.drifted
    for ms in (80.0,) * 8:                            # faster than expected is a drift too
        fb.add(ms)
    assert fb.drifted and fb.ratio == pytest.approx(0.8)
    assert '-20%' in fb.describe()
    none = LatencyFeedback(None, skip=0)
    for ms in (10.0,) * 20:
        none.add(ms)
    assert none.ratio is None and not none.drifted and none.measured_ms == 10.0


def test_feedback_of_a_plan_expects_the_median_disk_of_a_deadline_plan():
    plan = Plan(predicted_latency_ms=130.0,
                details={'prediction': {'expected_latency_ms': 100.0}})
    fb = LatencyFeedback.for_plan(plan)
    assert fb.predicted_ms == 130.0 and fb.expected_ms == 100.0
    assert LatencyFeedback.for_plan(Plan(predicted_latency_ms=50.0)).expected_ms == 50.0
    assert LatencyFeedback.for_plan(None).expected_ms is None


def test_model_stats_show_predicted_measured_and_ratio(tiny_pack):
    prof = synthetic_profile(tiny_pack)
    plan = planner.plan(tiny_pack, prof, budget_mb=tiny_pack.total_bytes / MB * 0.7)
    m = loading.load(tiny_pack.path, plan=plan)
    try:
        x = m.detector.example_input(1)
        with torch.no_grad():
            for _ in range(3):
                m(x)
            m(torch.cat([x, x]))                      # a batch of two is not one frame
        st = m.stats()
        assert st['predicted_latency_ms'] == plan.predicted_latency_ms
        assert st['expected_latency_ms'] == plan.details['prediction']['expected_latency_ms']
        assert m.feedback.passes == 3 and len(m.feedback.recent) == 2
        assert st['measured_latency_ms'] == pytest.approx(m.feedback.measured_ms, abs=1e-4)
        assert st['latency_ratio'] == pytest.approx(
            st['measured_latency_ms'] / st['expected_latency_ms'], rel=1e-3)
        m.reconfigure(budget_mb=tiny_pack.total_bytes / MB)   # no plan: nothing to compare
        st = m.stats()
        assert st['predicted_latency_ms'] is None and st['latency_ratio'] is None
    finally:
        m.close()


# ----------------------------------------------------------------------------- threads


def test_a_profile_of_another_thread_count_is_refused_with_the_reason():
    manifest, prof = hand(threads=N + 1)
    with pytest.raises(threads.ThreadMismatch, match=f'measured at {N + 1} torch threads'):
        planner.plan(manifest, prof)
    p = planner.plan(manifest, prof, threads=N + 1)        # planned for the count it measured
    assert p.details['threads'] == N + 1
    old = dict(prof)
    del old['threads']
    old['machine'] = {'torch_threads': N + 1}              # a version-1 profile says it here
    with pytest.raises(threads.ThreadMismatch):
        planner.plan(manifest, old)
    del old['machine']                                     # a profile that does not say
    assert planner.plan(manifest, old).details['threads'] == N


def test_a_plan_made_for_another_thread_count_is_refused_everywhere(tiny_pack, tmp_path,
                                                                    capsys):
    prof = synthetic_profile(tiny_pack, threads=N + 1)
    plan = planner.plan(tiny_pack, prof, threads=N + 1)
    path = plan.save(tmp_path / 'PLAN.yaml')
    with pytest.raises(threads.ThreadMismatch, match=f'made for {N + 1} torch threads'):
        decide_plan(tiny_pack, plan=str(path))
    with pytest.raises(threads.ThreadMismatch):
        loading.load(tiny_pack.path, plan=plan)
    # the command line refuses in one line and exits 2
    rc = cli_main(['detect', '--pack', str(tiny_pack.path), '--plan', str(path),
                   str(tmp_path / 'none.jpg')])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith('detect: error: plan ')
    assert f'{N + 1} torch threads' in err[0]
    save_profile(prof, tmp_path / 'PROFILE.json')
    rc = cli_main(['plan', str(tiny_pack.path), '--profile', str(tmp_path / 'PROFILE.json'),
                   '--budget-mb', '20', '--out', str(tmp_path / 'p.yaml'), '--no-plots'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and 'measured at' in err[0]
    assert not (tmp_path / 'p.yaml').exists()
    # the same plan at its own thread count runs
    torch.set_num_threads(N + 1)
    try:
        m = loading.load(tiny_pack.path, plan=plan)
        m.close()
    finally:
        torch.set_num_threads(N)


def test_the_service_measures_again_a_profile_of_another_thread_count(tiny_pack, tmp_path):
    log = logging.getLogger('test_predictions.threads')
    lines = []
    log.addHandler(type('H', (logging.Handler,), {'emit': lambda s, r: lines.append(
        r.getMessage())})())
    log.setLevel(logging.INFO)
    pack_dir = tmp_path / 'pack'
    shutil.copytree(tiny_pack.path, pack_dir)
    save_profile(synthetic_profile(tiny_pack, threads=N + 1), pack_dir / 'PROFILE.json')
    svc = DetectorService(log=log)
    svc.configure({'pack_path': str(pack_dir), 'memory_budget_mb': 30.0, 'num_threads': N})
    try:
        assert svc.profile['threads'] == N and len(svc.profile['disk']['rounds']) >= 2
        assert any(f'measured at {N + 1} torch threads' in line for line in lines)
        assert svc.decision.source == 'planner' and svc.decision.plan.details['threads'] == N
    finally:
        svc.close()
    with open(pack_dir / 'PROFILE.json') as f:
        assert json.load(f)['threads'] == N                   # replaced by the new one


# ----------------------------------------------------------------------------- the disk


def test_disk_levels_come_from_the_rounds():
    _, prof = hand(rounds=[1.0, 0.9, 2.0, 1.05])
    disk = prof['disk']
    assert timing.round_levels(disk) == pytest.approx([1.0, 0.9, 2.0, 1.05])
    assert timing.disk_level(disk, 0) == pytest.approx(0.9)
    assert timing.disk_level(disk, 50) == 1.0
    assert timing.disk_level(disk, timing.CONSERVATIVE_PCT) == pytest.approx(2.0)
    assert timing.bound_rate(disk) == pytest.approx(5 * MB / 0.010)  # the slowest round
    _, old = hand()                                         # no rounds: one level
    assert timing.round_levels(old['disk']) == [1.0]
    assert timing.bound_rate(old['disk']) == pytest.approx(5 * MB / 0.005)


def test_deadline_plans_take_the_slow_disk_and_every_plan_carries_its_range():
    manifest, prof = hand(rounds=[1.0, 0.8, 1.6, 1.0])
    budget = planner.plan(manifest, prof, budget_mb=6.0)
    lo, hi = budget.details['predicted_latency_range_ms']
    assert lo <= budget.predicted_latency_ms <= hi and lo < hi
    info = budget.details['prediction']
    assert info['disk_percentile'] == 50 and info['disk_rounds'] == 4
    assert info['expected_latency_ms'] == pytest.approx(budget.predicted_latency_ms, abs=1e-3)
    # the same memory for a deadline: predicted with the disk at its 90th percentile
    deadline = planner.plan(manifest, prof, deadline_ms=hi * 1.5)
    same = planner.predict(manifest, prof, deadline, disk_pct=timing.CONSERVATIVE_PCT)
    assert deadline.predicted_latency_ms == pytest.approx(same.latency_ms, abs=1e-3)
    assert deadline.details['prediction']['disk_percentile'] == 90
    assert deadline.predicted_latency_ms >= planner.predict(manifest, prof, deadline).latency_ms
    assert deadline.details['prediction']['expected_latency_ms'] <= \
        deadline.predicted_latency_ms


def test_a_prediction_scales_to_the_machine_as_measured_now():
    """compute= and disk= (bench_planner's drift columns) slow exactly what they name."""
    manifest, prof = hand(rounds=[1.0, 0.8, 1.6, 1.0])
    plan = planner.plan(manifest, prof, budget_mb=6.0)
    base = planner.predict(manifest, prof, plan).latency_ms
    assert planner.predict(manifest, prof, plan, compute=2.0, disk=2.0).latency_ms == \
        pytest.approx(2 * base, rel=1e-6)
    slow_disk = planner.predict(manifest, prof, plan, disk=2.0).latency_ms
    slow_cpu = planner.predict(manifest, prof, plan, compute=2.0).latency_ms
    assert base < slow_disk < 2 * base and base < slow_cpu < 2 * base


def test_no_prediction_is_below_the_pipeline_bound_at_the_slowest_disk_round():
    manifest, prof = hand(rounds=[1.0, 1.0, 1.0, 3.0], busy=1.0)
    sched = Schedule.from_manifest(manifest)
    # by hand: at the slowest round each unit takes 15 ms to arrive; compute 1 ms after each
    slowest = 5 * MB / 0.015
    assert timing.pipeline_bound_ms(sched, [1.0] * 3, [0.0] * 3, 0.5, frozenset(),
                                    slowest) == pytest.approx(46.5)
    smallest = planner.plan(manifest, prof)                 # everything streamed
    assert not smallest.resident_units
    assert smallest.predicted_latency_ms >= 46.5 - 1e-6
    assert smallest.details['prediction']['bound_ms'] == pytest.approx(46.5)
    # with one unit resident, the bound drops by its read
    t = Timing.from_profile(prof, sched)
    assert timing.pipeline_bound_ms(sched, t.busy, t.gap, t.tail, {0}, slowest) == \
        pytest.approx(31.5)
    plans = [planner.plan(manifest, prof, budget_mb=11.0),
             planner.plan(manifest, prof, deadline_ms=60.0)]
    for p in plans:
        resident = {sched.index(n) for n in p.resident_units}
        assert p.predicted_latency_ms >= timing.pipeline_bound_ms(
            sched, t.busy, t.gap, t.tail, resident, slowest) - 1e-6


# ----------------------------------------------------------------------------- correction


def test_a_corrected_profile_predicts_the_running_plan_at_the_measured_ratio():
    manifest, prof = hand(rounds=[1.0, 0.9, 1.3], busy=4.0)
    prof['executor'] = {'overhead_ms_per_slot': 0.01, 'overhead_ms_per_pass': 0.3,
                        'handoff_ms': 0.05}
    prof['checksum'] = {'bytes_per_s': 4e9}
    prof['contention'] = {'compute_slowdown': 1.1, 'read_slowdown': 1.05,
                          'alone_all_ms': [12.0, 13.8, 12.4]}
    p = planner.plan(manifest, prof, budget_mb=11.0)
    # the spread of every resident pass the profile timed: 11.875 .. 13.8 around 12.45
    assert p.details['prediction']['compute_spread'] == pytest.approx([11.875 / 12.45,
                                                                      13.8 / 12.45], abs=1e-4)
    fixed = timing.corrected_profile(prof, 1.25, why='test')
    again = timing.corrected_profile(fixed, 0.9)
    assert again['correction']['ratio'] == pytest.approx(1.125) and prof.get('correction') is None
    before = planner.predict(manifest, prof, p).latency_ms
    assert planner.predict(manifest, fixed, p).latency_ms == pytest.approx(before * 1.25)
    q = planner.plan(manifest, fixed, budget_mb=11.0)
    assert q.predicted_latency_ms == pytest.approx(p.predicted_latency_ms * 1.25, rel=1e-4)
    assert q.details['predicted_latency_range_ms'] == pytest.approx(
        [v * 1.25 for v in p.details['predicted_latency_range_ms']], rel=1e-4)
    with pytest.raises(ValueError):
        timing.corrected_profile(prof, 0)


def test_a_persistent_drift_re_plans_the_service_with_the_corrected_profile(
        tiny_pack, tmp_path):
    pack_dir = tmp_path / 'pack'
    shutil.copytree(tiny_pack.path, pack_dir)
    prof = synthetic_profile(tiny_pack)
    full = planner.plan(tiny_pack, prof, budget_mb=1e4)
    small = planner.plan(tiny_pack, prof)
    full_ms, small_ms = full.predicted_latency_ms, small.predicted_latency_ms
    assert full_ms * 1.2 * 1.1 < small_ms, 'the pass must have room between its extremes'
    deadline = (full_ms * 1.2 * 1.1 + small_ms) / 2
    save_profile(prof, pack_dir / 'PROFILE.json')
    svc = DetectorService(log=logging.getLogger('test_predictions.drift'))
    svc.configure({'pack_path': str(pack_dir), 'deadline_ms': deadline, 'num_threads': N})
    try:
        before = svc.decision.plan
        assert svc.decision.source == 'planner' and before.predicted_latency_ms <= deadline
        assert svc.check_drift() is None                        # no drift: nothing happens
        expected = svc.model.stats()['expected_latency_ms']
        for _ in range(16):                                     # the machine got 20% slower
            svc.model.feedback.add(expected * 1.2)
        img = np.zeros((64, 64, 3), np.uint8)
        svc.infer(img)                                          # one real pass among them
        assert svc.model_stats['latency_drift']
        ratio = svc.model_stats['latency_ratio']
        assert ratio == pytest.approx(1.2, rel=1e-6)
        svc.record_latency(1, 0.01)                             # the loop's call re-plans
        after = svc.decision.plan
        assert svc.profile['correction']['ratio'] == pytest.approx(ratio)
        assert after.predicted_latency_ms <= deadline           # as the machine is now
        assert after.predicted_peak_weight_mb >= before.predicted_peak_weight_mb
        assert planner.predict(tiny_pack, svc.profile, before, disk_pct=90).latency_ms == \
            pytest.approx(before.predicted_latency_ms * ratio, rel=1e-3)
        st = svc.model.stats()                                  # a fresh window for the plan
        assert not st['latency_drift'] and st['predicted_latency_ms'] == \
            after.predicted_latency_ms
        assert svc.stats()['drift_note'] == ''
        # faster than expected with no frame period: idle time may be reading ahead; a plan
        # for less memory would lose it, so it is only reported (once)
        for _ in range(16):
            svc.model.feedback.add(st['expected_latency_ms'] * 0.7)
        svc.infer(img)
        svc.record_latency(1, 0.01)
        assert 'not re-planned for less memory' in svc.stats()['drift_note']
        assert svc.decision.plan is after and svc.check_drift() is None
    finally:
        svc.close()


def test_a_drift_of_a_plan_not_made_here_is_reported_once(tiny_pack, tmp_path):
    plan = planner.plan(tiny_pack, synthetic_profile(tiny_pack),
                        budget_mb=tiny_pack.total_bytes / MB * 0.7)
    path = plan.save(tmp_path / 'PLAN.yaml')
    svc = DetectorService(log=logging.getLogger('test_predictions.given'))
    svc.configure({'pack_path': str(tiny_pack.path), 'plan_file': str(path), 'num_threads': N})
    try:
        for _ in range(16):
            svc.model.feedback.add(plan.predicted_latency_ms * 2)
        svc.infer(np.zeros((64, 64, 3), np.uint8))
        line = svc.check_drift()
        assert line and 'not re-planned' in line and '(x2.00)' in line
        assert svc.check_drift() is None and svc.decision.plan is not None   # once
    finally:
        svc.close()


# ----------------------------------------------------------------------------- probe fit


def test_two_probes_tell_the_hand_off_from_slow_reads(tiny_pack):
    """
    Two tight passes, replayed at a known hand-off and read slowdown, give both back.

    The unsplit pass alone would put the reads' slowness into the hand-off, which the planner
    then charges on every chunk.
    """
    from dataclasses import replace

    from demand_layering_ros.planning.search import Search
    from demand_layering_ros.planning.simulate import (Config, fit_probe_handoff,
                                                       fit_two_probes, simulate)
    sched = Schedule.from_pack(tiny_pack)
    assert sched.split_candidates, 'the pack needs a split size'
    split = min(sched.split_candidates)
    timing = Timing.from_profile(synthetic_profile(tiny_pack, read_mb_s=400.0), sched)
    forced = frozenset(sched.forced)
    probes = {}
    for sp in (0, split):
        arena_bytes = Search(sched, timing, split_bytes=sp).min_arena(forced)
        probes[sp] = {'arena_bytes': arena_bytes, 'prefetch_depth': None, 'split_bytes': sp}
    truth = replace(timing, handoff=0.2, read_slowdown=timing.read_slowdown * 2.5)
    for sp, probe in probes.items():
        probe['measured_ms'] = simulate(sched, truth, Config(
            forced, probe['arena_bytes'], None, sp)).latency_ms
    handoff, slow = fit_two_probes(sched, timing, probes[0], probes[split])
    assert handoff == pytest.approx(0.2, rel=0.05)
    assert slow == pytest.approx(timing.read_slowdown * 2.5, rel=0.05)
    # one probe explains the same pass with a larger hand-off and over-predicts the split one
    alone = replace(timing, handoff=fit_probe_handoff(sched, timing, probes[0]))
    split_cfg = Config(forced, probes[split]['arena_bytes'], None, split)
    assert alone.handoff > 0.2
    assert simulate(sched, alone, split_cfg).latency_ms > probes[split]['measured_ms'] * 1.05
