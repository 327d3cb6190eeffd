# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The planner: its pipeline simulation, its search, and its plans run by the real executor.

The search and the simulation are pure functions of a pass (units, call order) and the speeds a
profile measured, so most tests feed them synthetic passes and speeds: those are inputs, not
stand-ins for a real part. The end-to-end tests profile a real pack, plan it and run the plan in
the executor: its peak weight memory must stay within the prediction and the budget, and its
outputs must equal the fully resident model's (torch.equal). Latency prediction accuracy is a
benchmark (bench/bench_planner.py), not a timed test.
"""

import itertools
import json
import random

from demand_layering_ros import loading
from demand_layering_ros import pack as P
from demand_layering_ros.cli import main as cli_main
from demand_layering_ros.layout import arena
from demand_layering_ros.measure.call_clock import call_waits, split_calls
from demand_layering_ros.measure.transfer import DISK_ROUNDS
from demand_layering_ros.planning import planner, profiler
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.search import Search
from demand_layering_ros.planning.simulate import Config, pieces, ReaderBusy, release_steps
from demand_layering_ros.planning.simulate import simulate
from demand_layering_ros.planning.timing import PROFILE_FORMAT, save_profile, Timing, Transfer
from demand_layering_ros.sizes import MB
import pytest
import torch
import yaml


# ----------------------------------------------------------------------------- synthetic inputs


def synthetic(n=12, seed=0, read_mb_s=1000.0, busy_ms=(0.2, 3.0), max_pages=600, calls=None):
    """Return (manifest, profile) of a pass of n units with seeded sizes and compute times."""
    rnd = random.Random(seed)
    order = list(range(n)) if calls is None else calls
    units = []
    for i in range(n):
        pos = [k for k, u in enumerate(order) if u == i]
        units.append({'index': i, 'name': f'u{i}', 'length': 4096 * rnd.randint(1, max_pages),
                      'calls': len(pos), 'first_call': pos[0], 'last_call': pos[-1],
                      'used_outside_forward': False})
    manifest = {'units': units, 'call_order': order, 'model': {'spec': 'synthetic:test'}}
    bw = read_mb_s * MB
    prof = {'format': PROFILE_FORMAT, 'device': 'cpu', 'device_kind': 'cpu',
            'steps': {'unit': order, 'busy_ms': [rnd.uniform(*busy_ms) for _ in order],
                      'gap_ms': [0.05] * len(order), 'tail_ms': 0.3},
            'disk': {'points': [{'request_bytes': 1 << 20, 'seconds': (1 << 20) / bw}]},
            'resident_latency_ms': None}
    return manifest, prof


def setup(manifest, prof):
    sched = Schedule.from_manifest(manifest)
    return sched, Timing.from_profile(prof, sched)


def hand_pipeline(**extra):
    """Three 5 MB units read in 5 ms each, each computing for 10 ms, a 1 ms tail."""
    manifest = {'units': [{'index': i, 'name': f'u{i}', 'length': 5 * MB, 'calls': 1,
                           'first_call': i, 'last_call': i} for i in range(3)],
                'call_order': [0, 1, 2], 'model': {'spec': 'synthetic:hand'}}
    prof = {'format': PROFILE_FORMAT, 'device': 'cpu', 'device_kind': 'cpu',
            'steps': {'unit': [0, 1, 2], 'busy_ms': [10.0] * 3, 'gap_ms': [0.0] * 3,
                      'tail_ms': 1.0},
            'disk': {'points': [{'request_bytes': 5 * MB, 'seconds': 0.005}]}, **extra}
    return setup(manifest, prof)


# ----------------------------------------------------------------------------- simulation


def test_release_steps_match_brute_force():
    rnd = random.Random(1)
    for trial in range(30):
        n = rnd.randint(2, 25)
        items = []
        for i in range(n):
            a = rnd.randint(0, 30)
            items.append(arena.Item(f'i{i}', 4096 * rnd.randint(1, 9), a, a + rnd.randint(0, 4)))
        cap = arena.live_lower_bound(items) + 4096 * rnd.randint(0, 20)
        try:
            layout = arena.plan_layout(items, cap, rnd.choice([None, 1, 2]))
        except arena.ArenaTooSmall:
            continue
        order = arena.load_order(items)
        piece = rnd.choice([None, 4096, 3 * 4096])
        got = release_steps(items, order, layout.offsets, piece)
        for k, i in enumerate(order):
            want = []
            for a, n in pieces(items[i].nbytes, piece):
                lo, hi = layout.offsets[i] + a, layout.offsets[i] + a + n
                want.append(max([items[j].last_step for j in order[:k]
                                 if layout.offsets[j] < hi
                                 and lo < layout.offsets[j] + items[j].nbytes], default=-1))
            assert got[k] == want, (trial, k)


def test_simulation_of_a_pipeline_worked_by_hand():
    # three units of 5 MB read in 5 ms each, each computing for 10 ms; the arena holds two
    sched, timing = hand_pipeline()
    sim = simulate(sched, timing, Config(frozenset(), 10 * MB), timeline=True)
    rows = {r['name']: r for r in sim.timeline}
    # u0: read 0-5, compute 5-15; u1: read 5-10, compute 15-25; u2 waits for u0's space:
    # read 15-20, compute 25-35; tail 1 ms
    assert [rows[f'u{i}']['read_start'] * 1e3 for i in range(3)] == pytest.approx([0, 5, 15])
    assert [rows[f'u{i}']['compute_start'] * 1e3 for i in range(3)] == pytest.approx([5, 15, 25])
    assert sim.latency_ms == pytest.approx(36.0)
    assert sim.stall_ms == pytest.approx(5.0)
    assert sim.peak_weight_bytes == 10 * MB
    # a 5 ms head start (idle time before the frame) hides the first read
    head = simulate(sched, timing, Config(frozenset(), 10 * MB), head_start_ms=5.0)
    assert head.latency_ms == pytest.approx(31.0)
    # with u0 resident: u1 and u2 read 0-5 and 5-10, both before they are needed
    res = simulate(sched, timing, Config(frozenset({0}), 10 * MB))
    assert res.latency_ms == pytest.approx(31.0) and res.stall_ms == pytest.approx(0.0)
    assert res.peak_weight_bytes == 15 * MB


def test_compute_slows_while_the_reader_is_busy():
    busy = ReaderBusy(2.0)
    busy.add(10.0, 20.0)
    busy.add(15.0, 30.0)                   # overlapping spans merge
    busy.add(40.0, 50.0)
    assert busy.advance(0.0, 5.0) == pytest.approx(5.0)       # before any read
    assert busy.advance(5.0, 10.0) == pytest.approx(20.0)     # 5 ms free, 5 ms at half speed
    assert busy.advance(32.0, 3.0) == pytest.approx(35.0)     # in the gap between reads
    assert busy.advance(35.0, 15.0) == pytest.approx(55.0)    # 5 free, 5 slow (10 ms), 5
    # the hand-worked pipeline: reads [0,5], [5,10], [15,20]; compute 10 ms per unit
    sched, timing = hand_pipeline(contention={'compute_slowdown': 2.0, 'read_slowdown': 1.0})
    sim = simulate(sched, timing, Config(frozenset(), 10 * MB))
    # u0 computes 5-15 while u1 reads 5-10 (5 ms of work done by 15 -> 2.5 + 5 = 7.5 of 10):
    # it ends at 17.5; u2's read then runs 17.5-22.5 while u1 computes 17.5-...: 10 ms of
    # u1 at half speed for 5 ms (2.5 ms of work) then 7.5 ms -> 30; u2 computes 30-40; +1
    assert sim.latency_ms == pytest.approx(41.0)


def test_simulation_is_bounded_by_compute_and_by_the_disk():
    for seed in range(5):
        manifest, prof = synthetic(20, seed=seed, read_mb_s=[50, 500, 5000][seed % 3])
        sched, timing = setup(manifest, prof)
        se = Search(sched, timing)
        a = se.min_arena(frozenset())
        sim = se.evaluate(frozenset(), a).sim
        reads = sum(1e3 * timing.read.seconds(sched.lengths[u]) for u in sched.called)
        assert sim.latency_ms >= timing.floor() - 1e-9
        assert sim.latency_ms >= reads
        assert sim.read_busy_ms == pytest.approx(reads)
    # a disk a million times faster: only compute is left
    manifest, prof = synthetic(20, seed=9, read_mb_s=1e9)
    sched, timing = setup(manifest, prof)
    se = Search(sched, timing)
    sim = se.evaluate(frozenset(), se.min_arena(frozenset())).sim
    assert sim.latency_ms == pytest.approx(timing.floor(), abs=0.01)


def test_transfer_model_interpolates_rate():
    t = Transfer([(64 << 10, 64e-6), (1 << 20, 1e-3 / 1.5)])   # 1 GB/s .. 1.5 GB/s
    assert t.seconds(64 << 10) == pytest.approx(64e-6)
    assert t.seconds(4 << 20) == pytest.approx((4 << 20) / t.rate(1 << 20))
    mid = t.rate(256 << 10)
    assert t.rate(64 << 10) < mid < t.rate(1 << 20)
    assert t.seconds(1) == pytest.approx(64e-6)          # below the smallest: its time
    with pytest.raises(ValueError):
        Transfer([])


def test_split_calls_assigns_nested_calls_gaps_and_tail():
    # call 0 (0-2 ms) contains call 1 (0.5-1.5); gap 2-3; call 2 (3-4); tail 4-5. What call
    # 0 does after call 1 returned comes after call 1 began: it is counted with call 1.
    events = [(0.0, +1, 'a'), (0.5, +1, 'b'), (1.5, -1, 'b'), (2.0, -1, 'a'),
              (3.0, +1, 'c'), (4.0, -1, 'c')]
    busy, gap, tail = split_calls(events, 5.0, 3)
    assert busy == pytest.approx([0.5, 1.5, 1.0])
    assert gap == pytest.approx([0.0, 0.0, 1.0])
    assert tail == pytest.approx(1.0)


# ----------------------------------------------------------------------------- search


def test_plan_within_budget_respects_it_and_gets_faster_with_more():
    manifest, prof = synthetic(16, seed=3, read_mb_s=300)
    small = planner.plan(manifest, prof)
    full = small.details['fully_resident']['weight_mb']
    last = None
    smallest = small.predicted_peak_weight_mb
    for b in [smallest * f for f in (1.0, 1.3, 2.0)] + [full * 0.6, full * 1.1]:
        p = planner.plan(manifest, prof, budget_mb=b)
        assert p.predicted_peak_weight_mb <= b + 1e-9
        assert p.details['predicted_peak_weight_bytes'] <= b * MB
        if last is not None:
            assert p.predicted_latency_ms <= last + 1e-6
        last = p.predicted_latency_ms
    assert last == pytest.approx(small.details['fully_resident']['predicted_latency_ms'], abs=0.01)


def test_memory_under_a_deadline_shrinks_as_the_deadline_loosens():
    for seed, bw in ((0, 200), (1, 1000), (2, 4000)):
        manifest, prof = synthetic(14, seed=seed, read_mb_s=bw)
        fast = planner.plan(manifest, prof, budget_mb=1e6).predicted_latency_ms
        last = None
        for f in (1.0, 1.02, 1.1, 1.3, 1.8, 3.0, 6.0):
            p = planner.plan(manifest, prof, deadline_ms=fast * f)
            assert p.predicted_latency_ms <= fast * f + 1e-9
            if last is not None:
                assert p.predicted_peak_weight_mb <= last + 1e-9, (seed, f)
            last = p.predicted_peak_weight_mb


def test_greedy_search_is_close_to_exhaustive_on_a_small_pass():
    manifest, prof = synthetic(8, seed=4, read_mb_s=400)
    sched, timing = setup(manifest, prof)
    se = Search(sched, timing)
    fast = se.resident_point().latency
    for f in (1.05, 1.3):
        deadline = fast * f
        got = planner.plan(manifest, prof,
                           deadline_ms=deadline).details['predicted_peak_weight_bytes']
        best = min(p.memory for r in range(9) for c in itertools.combinations(range(8), r)
                   for p in [se.smallest_arena_meeting(frozenset(c), deadline)] if p)
        assert best <= got <= 1.15 * best


def test_infeasible_budget_names_the_smallest_plan():
    manifest, prof = synthetic(12, seed=5)
    smallest = planner.plan(manifest, prof).predicted_peak_weight_mb
    with pytest.raises(planner.PlanInfeasible) as e:
        planner.plan(manifest, prof, budget_mb=smallest * 0.5)
    assert e.value.min_budget_mb == pytest.approx(smallest)
    assert e.value.best_latency_ms is None
    assert 'below the smallest plan' in str(e.value)
    ok = planner.plan(manifest, prof, budget_mb=e.value.min_budget_mb)
    assert ok.predicted_peak_weight_mb <= e.value.min_budget_mb


def test_infeasible_deadline_names_the_fastest_plan():
    manifest, prof = synthetic(12, seed=6, read_mb_s=100)
    with pytest.raises(planner.PlanInfeasible) as e:
        planner.plan(manifest, prof, deadline_ms=1.0)
    fastest = e.value.best_latency_ms
    assert fastest == pytest.approx(planner.plan(manifest, prof, budget_mb=1e6)
                                    .predicted_latency_ms, abs=1e-3)
    assert e.value.min_budget_mb is None
    assert planner.plan(manifest, prof, deadline_ms=fastest).predicted_latency_ms <= fastest


def test_budget_and_deadline_together_refused_with_both_feasible_numbers():
    manifest, prof = synthetic(12, seed=7, read_mb_s=150)
    smallest = planner.plan(manifest, prof)
    budget = smallest.predicted_peak_weight_mb * 1.05
    fast = planner.plan(manifest, prof, budget_mb=1e6).predicted_latency_ms
    deadline = fast * 1.01
    with pytest.raises(planner.PlanInfeasible) as e:
        planner.plan(manifest, prof, budget_mb=budget, deadline_ms=deadline)
    n = e.value.numbers()
    assert n['min_budget_mb'] > budget and n['best_latency_ms'] > deadline
    # each number is what makes the request feasible
    p = planner.plan(manifest, prof, budget_mb=n['min_budget_mb'], deadline_ms=deadline)
    assert p.predicted_latency_ms <= deadline
    p = planner.plan(manifest, prof, budget_mb=budget, deadline_ms=n['best_latency_ms'])
    assert p.predicted_peak_weight_mb <= budget
    # and a request meeting both is planned within both
    p = planner.plan(manifest, prof, budget_mb=n['min_budget_mb'] * 2, deadline_ms=fast * 2)
    assert p.predicted_peak_weight_mb <= n['min_budget_mb'] * 2
    assert p.predicted_latency_ms <= fast * 2


def test_idle_time_between_frames_preloads_the_first_units():
    manifest, prof = synthetic(12, seed=8, read_mb_s=200)
    full = planner.plan(manifest, prof, budget_mb=1e6).predicted_latency_ms
    for budget in (planner.plan(manifest, prof).predicted_peak_weight_mb, 10):
        plain = planner.plan(manifest, prof, budget_mb=budget)
        idle = planner.plan(manifest, prof, budget_mb=budget, frame_period_ms=100)
        assert plain.details['head_start_ms'] == 0 and idle.details['head_start_ms'] > 0
        assert full <= idle.predicted_latency_ms < plain.predicted_latency_ms
        # the head start is the idle time the period leaves
        assert idle.details['head_start_ms'] == pytest.approx(100 - idle.predicted_latency_ms,
                                                              abs=0.5)


def test_bad_requests_are_refused_with_the_parameter_named():
    manifest, prof = synthetic(6, seed=1)
    for kw in ({'budget_mb': -1}, {'deadline_ms': 0}, {'frame_period_ms': float('nan')}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            planner.plan(manifest, prof, **kw)
    other = dict(prof, steps=dict(prof['steps'], unit=prof['steps']['unit'][::-1]))
    with pytest.raises(ValueError, match='does not match'):
        planner.plan(manifest, other)


# ----------------------------------------------------------------------------- real packs


@pytest.fixture(scope='module')
def tiny_pack(tmp_path_factory):
    """Write a yolov3-tiny pack (seeded random weights, small input): splits, merges, heads."""
    out = tmp_path_factory.mktemp('planner') / 'yolov3-tiny'
    return P.write_pack('darknet:yolov3-tiny', out, seed=2, input_size='64x64', progress=False,
                        verify=False)


@pytest.fixture(scope='module')
def tiny_profile(tiny_pack):
    return profiler.profile(tiny_pack.path, repeats=2, progress=False,
                            disk_sizes=(64 << 10, 1 << 20, 4 << 20))


def test_call_waits_split_into_before_and_within_each_call():
    log = [[0, 0.0, 0.002, None], [1, 0.1, 0.0, None], [1, 0.1, 0.001, 0], [1, 0.2, 0.003, 1],
           [0, 0.3, 0.0005, None]]
    before, within = call_waits(log, 3)
    assert before == pytest.approx([2.0, 0.0, 0.5]) and within == pytest.approx([0.0, 4.0, 0.0])
    assert call_waits(log, 4) == ([0.0] * 4, [0.0] * 4)   # not this pass: no guess


def test_profile_within_a_budget_streams_and_never_exceeds_it(tiny_pack, tiny_profile):
    budget = max(u.length for u in tiny_pack.units) * 1.2 / (1 << 20)
    assert budget * (1 << 20) < tiny_pack.total_bytes
    threads = torch.get_num_threads()
    prof = profiler.profile(tiny_pack.path, repeats=2, progress=False, budget_mb=budget,
                            disk_sizes=(64 << 10, 1 << 20, 4 << 20, 64 << 20), threads=1)
    assert torch.get_num_threads() == threads              # measured at 1, then restored
    assert prof['threads'] == 1 and prof['contention']['threads'] == 1
    assert prof['mode'] == 'streamed' and prof['budget_mb'] == budget
    assert 0 < prof['peak_weight_bytes'] <= budget * (1 << 20)
    assert max(p['request_bytes'] for p in prof['disk']['points']) <= budget * (1 << 20)
    assert prof['steps']['unit'] == tiny_pack.call_order
    assert all(b >= 0 for b in prof['steps']['busy_ms']) and sum(prof['steps']['busy_ms']) > 0
    assert prof['split_exact'] == {} and prof['resident_latency_ms'] > 0
    # it plans like a resident profile, and the plan keeps the budget (at 1 thread)
    p = planner.plan(tiny_pack.path, prof, budget_mb=budget, threads=1)
    assert p.predicted_peak_weight_mb <= budget and p.details['threads'] == 1
    assert tiny_profile['mode'] == 'resident' and tiny_profile['peak_weight_bytes'] is None
    # a budget that holds the whole model profiles it resident
    whole = profiler.profile(tiny_pack.path, repeats=1, progress=False, check_splits=False,
                             budget_mb=2 * tiny_pack.total_bytes / (1 << 20),
                             executor_overhead=False, disk_sizes=(64 << 10,))
    assert whole['mode'] == 'resident'


def test_profile_measures_every_call_and_the_disk(tiny_pack, tiny_profile):
    prof = tiny_profile
    assert prof['steps']['unit'] == tiny_pack.call_order
    assert len(prof['steps']['busy_ms']) == len(tiny_pack.call_order)
    assert all(b >= 0 for b in prof['steps']['busy_ms']) and sum(prof['steps']['busy_ms']) > 0
    assert [u['bytes'] for u in prof['units']] == [u.length for u in tiny_pack.units]
    assert all(len(u['compute_ms']) == u['calls'] for u in prof['units'])
    assert prof['disk']['mode'] in ('direct', 'buffered')
    sizes = [p['request_bytes'] for p in prof['disk']['points']]
    assert sizes == sorted(sizes) and all(p['seconds'] > 0 for p in prof['disk']['points'])
    assert prof['resident_latency_ms'] > 0 and prof['activation_peak_bytes'] > 0
    assert prof['executor']['overhead_ms_per_slot'] >= 0
    assert prof['executor']['overhead_ms_per_pass'] >= 0
    assert prof['checksum']['bytes_per_s'] > 0
    sched = Schedule.from_pack(tiny_pack)
    assert sorted(prof['split_exact']) == sorted(str(s) for s in sched.split_candidates)
    assert all(isinstance(v, bool) for v in prof['split_exact'].values())
    assert prof['machine']['cores'] >= 1
    # measured at this process's thread count, the disk in rounds, contention as the executor
    # reads
    assert prof['threads'] == torch.get_num_threads() == prof['contention']['threads']
    assert len(prof['disk']['rounds']) == DISK_ROUNDS
    assert [r['at'] for r in prof['disk']['rounds']][0] == 'start'
    for r in prof['disk']['rounds']:
        assert [p['request_bytes'] for p in r['points']] == sizes
    assert prof['contention']['compute_slowdown'] >= 1.0
    assert prof['contention']['read_slowdown'] >= 1.0
    assert prof['contention']['pattern'] == 'streamed pass'
    json.dumps(prof)


def test_split_sizes_are_used_only_where_the_profile_found_them_exact(tiny_pack, tiny_profile):
    sched = Schedule.from_pack(tiny_pack)
    never = dict(tiny_profile, split_exact={str(s): False for s in sched.split_candidates})
    always = dict(tiny_profile, split_exact={str(s): True for s in sched.split_candidates})
    whole = planner.plan(tiny_pack, never)
    split = planner.plan(tiny_pack, always)
    assert whole.split_bytes == 0 and whole.details['search']['split_sizes'] == [0]
    assert split.split_bytes in sched.split_candidates
    assert split.predicted_peak_weight_mb < whole.predicted_peak_weight_mb
    # the executor holds a split plan within its predicted memory too
    m = loading.load(tiny_pack.path, plan=split.to_dict())
    try:
        with torch.no_grad():
            m(m.detector.example_input(1))
        stats = m.stats()
    finally:
        m.close()
    assert stats['split_units'] and stats['demand_misses'] == 0
    assert stats['peak_weight_bytes'] <= split.details['predicted_peak_weight_bytes']


def test_planner_slots_are_the_executors(tiny_pack):
    sched = Schedule.from_pack(tiny_pack)
    assert sched.split_candidates, 'yolov3-tiny has layers large enough to split'
    rnd = random.Random(0)
    for split in (0,) + sched.split_candidates:
        for _ in range(6):
            resident = frozenset(u for u in sched.called if rnd.random() < 0.3)
            st = sched.streams(resident, split)
            mine = [(i.name, i.nbytes, i.first_step, i.last_step) for i in st.items]
            assert mine == sched.slot_builder.executor_items(resident, split)


def _run(pack, plan, xs):
    m = loading.load(pack.path, plan=plan)
    try:
        with torch.no_grad():
            outs = [m(x) for x in xs]
        return outs, m.stats(), m.plan()
    finally:
        m.close()


def _same(a, b):
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize('request_kind', ['smallest', 'budget', 'deadline'])
def test_plans_run_in_the_executor_within_prediction_and_budget(
        tiny_pack, tiny_profile, request_kind):
    total = sum(u.length for u in tiny_pack.units) / MB
    kw = {'smallest': {}, 'budget': {'budget_mb': total * 0.3},
          'deadline': {'deadline_ms': tiny_profile['resident_latency_ms'] * 1.5}}[request_kind]
    plan = planner.plan(tiny_pack, tiny_profile, **kw)
    det = tiny_pack.build_detector(meta=True)
    g = torch.Generator().manual_seed(0)
    xs = [det.preprocess([torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8,
                                        generator=g).numpy()])[0] for _ in range(2)]
    ref = loading.load_resident(tiny_pack.path)
    with torch.no_grad():
        want = [ref(x) for x in xs]
    outs, stats, used = _run(tiny_pack, plan.to_dict(), xs)
    assert all(_same(o, w) for o, w in zip(outs, want))
    assert stats['demand_misses'] == 0
    assert stats['peak_weight_bytes'] <= plan.details['predicted_peak_weight_bytes']
    assert stats['peak_weight_bytes'] / MB <= plan.predicted_peak_weight_mb
    if 'budget_mb' in kw:
        assert stats['peak_weight_bytes'] <= kw['budget_mb'] * MB
    for key in ('arena_bytes', 'split_bytes', 'prefetch_depth'):
        assert used[key] == getattr(plan, key) or (key == 'split_bytes' and not used[key]
                                                   and not getattr(plan, key))
    assert sorted(used['resident_units']) == sorted(plan.resident_units)


def test_plan_command_writes_plan_and_pictures_and_refuses_with_numbers(tiny_pack, tiny_profile,
                                                                        tmp_path, capsys):
    prof = tmp_path / 'PROFILE.json'
    save_profile(tiny_profile, prof)
    out = tmp_path / 'PLAN.yaml'
    total = sum(u.length for u in tiny_pack.units) / MB
    rc = cli_main(['plan', str(tiny_pack.path), '--profile', str(prof), '--budget-mb',
                   f'{total * 0.5:.3f}', '--out', str(out)])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    plan = yaml.safe_load(out.read_text())
    assert plan['predicted_peak_weight_mb'] <= total * 0.5
    assert line['predicted_latency_ms'] == plan['predicted_latency_ms']
    lo, hi = plan['predicted_latency_range_ms']
    assert isinstance(plan['predicted_latency_ms'], float)
    assert lo <= plan['predicted_latency_ms'] <= hi
    assert line['predicted_latency_range_ms'] == [lo, hi]
    assert plan['threads'] == line['threads'] == torch.get_num_threads()
    assert plan['prediction']['disk_rounds'] == DISK_ROUNDS
    for key in ('tradeoff', 'timeline'):
        assert line[key].endswith('.png')
        with open(line[key], 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    m = loading.load(tiny_pack.path, plan=str(out))
    assert m.stats()['arena_bytes'] == plan['arena_bytes']
    m.close()
    rc = cli_main(['plan', str(tiny_pack.path), '--profile', str(prof), '--budget-mb',
                   '0.01', '--out', str(tmp_path / 'no.yaml'), '--no-plots'])
    assert rc == 3
    captured = capsys.readouterr()
    numbers = json.loads(captured.out.strip().splitlines()[-1])
    assert numbers['infeasible'] and numbers['min_budget_mb'] > 0.01
    assert 'below the smallest plan' in captured.err
    assert not (tmp_path / 'no.yaml').exists()


def test_plan_for_profiles_on_the_fly(tiny_pack):
    total = sum(u.length for u in tiny_pack.units) / MB
    plan = profiler.plan_for(tiny_pack.path, budget_mb=total * 0.6)
    assert plan.predicted_peak_weight_mb <= total * 0.6
    assert plan.details['profile']['mode'] == 'streamed'      # measured within the budget too
    assert plan.resident_units is not None and plan.arena_bytes > 0
