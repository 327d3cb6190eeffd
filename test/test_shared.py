# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several models under one memory budget: one arena, one reader, one loader (load_shared).

The oracle is each model fully resident (torch.equal), whatever order the models are called in,
with the shared budget below the smallest model's weights; the group's peak weight memory must
stay within that budget. The group planner is tested on synthetic passes and speeds (inputs,
not stand-ins) and end to end through the `plan` and `detect` commands on real packs.
"""

import json
import random
import threading
import time

from demand_layering_ros import direct_io, load_resident, load_shared
from demand_layering_ros import pack as P
from demand_layering_ros.cli import main as cli_main
from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.member import GroupTooSmall
from demand_layering_ros.layout.plan import PlanError
from demand_layering_ros.planning import planner, profiler
from demand_layering_ros.planning.planner import idle_gap, plan_group
from demand_layering_ros.planning.timing import PROFILE_FORMAT, save_profile
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.sizes import MB
import pytest
import torch
import yaml

MODELS = {'front': 'darknet:yolov3-tiny', 'rear': 'darknet:yolov2-tiny',
          'side': 'darknet:resnet18'}
SIZES = [(64, 64), (96, 96)]


@pytest.fixture(scope='module')
def packs(tmp_path_factory):
    """Write the three packs once (seeded weights, 64x64)."""
    root = tmp_path_factory.mktemp('shared')
    return {name: P.write_pack(spec, root / name, seed=i + 1, input_size='64x64',
                               progress=False, verify=False)
            for i, (name, spec) in enumerate(MODELS.items())}


@pytest.fixture(scope='module')
def oracle(packs):
    """Return {name: [(input, resident output)]} for each model and input size."""
    out = {}
    g = torch.Generator().manual_seed(5)
    for name, pack in packs.items():
        det = pack.build_detector(meta=True)
        ref = load_resident(pack.path)
        pairs = []
        for h, w in SIZES:
            img = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
            x = det.preprocess([img])[0]
            with torch.no_grad():
                pairs.append((x, ref(x)))
        out[name] = pairs
        del ref
    return out


def same(a, b):
    """torch.equal over nested outputs."""
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
        and torch.equal(a, b)


def weights(pack):
    return sum(u.length for u in pack.units)


def run_order(models, oracle, order):
    """Call the models in `order` (names), alternating inputs; return the mismatches."""
    bad = []
    for k, name in enumerate(order):
        x, want = oracle[name][k % len(SIZES)]
        if not same(models[name](x), want):
            bad.append((k, name))
    return bad


def budget_for(packs, names):
    """Return a budget (MiB) below the smallest model's weights that needs no split."""
    return min(weights(packs[n]) for n in names) / MB * 0.8


ORDERS = [['front', 'rear', 'rear', 'front', 'front', 'rear', 'front'],
          ['rear', 'rear', 'rear', 'front', 'rear', 'front', 'front', 'front']]


# ----------------------------------------------------------------------------- the API


@pytest.mark.parametrize('order', ORDERS)
def test_two_models_equal_resident_in_any_order_within_the_budget(packs, oracle, order):
    budget = budget_for(packs, ['front', 'rear'])
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=budget)
    try:
        assert run_order(models, oracle, order) == []
        st = models.stats()
        assert st['group_peak_weight_bytes'] <= budget * MB < min(
            weights(packs['front']), weights(packs['rear']))
        assert st['group_peak_weight_bytes'] >= st['resident_bytes']
        for name in ('front', 'rear'):
            s = st['models'][name]
            assert s['split_units'] == [] and s['streamed_units'] > 0
            assert s['passes'] == order.count(name)
            assert s['arena_bytes'] == st['arena_bytes']
        assert st['passes'] == len(order)
        # one arena for both: the group needs less than the two models' own smallest plans
        assert st['arena_bytes'] + st['resident_bytes'] <= budget * MB
    finally:
        models.close()


def test_three_models_share_one_reader_and_one_loader(packs, oracle):
    names = ['front', 'rear', 'side']
    before = {t.name for t in threading.enumerate()}
    budget = budget_for(packs, names)
    models = load_shared({n: packs[n].path for n in names}, budget_mb=budget, threads=2)
    try:
        rnd = random.Random(7)
        order = [rnd.choice(names) for _ in range(12)]
        assert run_order(models, oracle, order) == []
        threads = [t.name for t in threading.enumerate() if t.name not in before]
        assert sum(1 for t in threading.enumerate() if t.name == 'dlr-group-loader') - \
            sum(1 for n in before if n == 'dlr-group-loader') == 1
        readers = [n for n in threads if n.startswith('dlr-reader')]
        assert len(readers) <= 2                 # one pool of 2 threads, however many models
        st = models.stats()
        assert st['group_peak_weight_bytes'] <= budget * MB
        assert st['reader_threads'] == 2 and st['loader_threads'] == 1
        assert set(st['models']) == set(names)
        assert all(s['split_units'] == [] for s in st['models'].values())
    finally:
        models.close()
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name not in before
                and t.name.startswith('dlr-')]


def test_readers_of_several_files_share_one_pool(packs):
    pool = direct_io.ReadPool(2)
    before = threading.active_count()
    readers = [direct_io.Reader(packs[n].weights_path, pool=pool) for n in ('front', 'rear')]
    try:
        for r, n in zip(readers, ('front', 'rear')):
            unit = packs[n].units[-1]
            buf = direct_io.aligned_empty(unit.length)
            packs[n].read_unit(r, unit, buf).result()     # the checksum is verified
        readers[0].close()                               # the other file's reads go on
        unit = packs['rear'].units[0]
        packs['rear'].read_unit(readers[1], unit, direct_io.aligned_empty(unit.length)).result()
        assert threading.active_count() - before <= 3    # 2 reader threads + 1 verify thread
        assert all(r.threads == 2 for r in readers)
    finally:
        for r in readers:
            r.close()
        pool.close()


def _settle(models, timeout=20.0):
    """Wait until the group's reads stop (the read-ahead is done)."""
    last, t0 = None, time.monotonic()
    while time.monotonic() - t0 < timeout:
        now = models.stats()['io_bytes']
        if now == last:
            return
        last = now
        time.sleep(0.2)


def test_prefetch_guess_right_and_wrong(packs, oracle):
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=budget_for(packs, ['front', 'rear']))
    try:
        assert run_order(models, oracle, ['front']) == []
        models.prefetch('rear')                       # right guess: nothing dropped
        _settle(models)
        assert models.stats()['active_model'] == 'rear'
        assert run_order(models, oracle, ['rear']) == []
        assert models.stats()['prefetch_dropped_bytes'] == 0
        models.prefetch('rear')                       # wrong guess: front runs instead
        _settle(models)
        assert run_order(models, oracle, ['front', 'rear']) == []
        st = models.stats()
        assert st['prefetch_dropped'] >= 1 and st['prefetch_dropped_bytes'] > 0
        with pytest.raises(ExecutorError, match='no model'):
            models.prefetch('left')
    finally:
        models.close()


def test_prefetch_from_another_thread_while_passes_run(packs, oracle):
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=budget_for(packs, ['front', 'rear']))
    stop = threading.Event()

    def guess():
        rnd = random.Random(3)
        while not stop.is_set():
            models.prefetch(rnd.choice(['front', 'rear']))
            time.sleep(rnd.uniform(0, 0.02))

    t = threading.Thread(target=guess)
    t.start()
    try:
        rnd = random.Random(11)
        assert run_order(models, oracle, [rnd.choice(['front', 'rear'])
                                          for _ in range(10)]) == []
    finally:
        stop.set()
        t.join()
        models.close()


def test_budget_too_small_is_refused_naming_model_unit_and_bytes(packs):
    with pytest.raises(GroupTooSmall) as err:
        load_shared({'front': packs['front'].path, 'rear': packs['rear'].path}, budget_mb=0.01)
    e = err.value
    assert e.model in ('front', 'rear') and e.item and e.needed > 0.01 * MB
    assert repr(e.model) in str(e) and e.item in str(e) and str(e.needed) in str(e)
    with pytest.raises(ExecutorError, match='non-empty dict'):
        load_shared({})
    with pytest.raises(ExecutorError, match='budget_mb'):
        load_shared({'front': packs['front'].path}, budget_mb=-1)


def test_live_budget_change_keeps_outputs_and_refuses_a_budget_too_small(packs, oracle):
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=budget_for(packs, ['front', 'rear']))
    try:
        assert run_order(models, oracle, ['front', 'rear']) == []
        arena = models.stats()['arena_bytes']
        big = (weights(packs['front']) + weights(packs['rear'])) / MB * 0.75
        models.reconfigure(budget_mb=big)
        assert run_order(models, oracle, ['rear', 'front', 'rear']) == []
        st = models.stats()
        assert st['group_peak_weight_bytes'] <= big * MB
        assert st['resident_bytes'] > 0
        with pytest.raises(GroupTooSmall):
            models.reconfigure(budget_mb=0.01)
        assert models.stats()['arena_bytes'] == st['arena_bytes'] != arena
        assert run_order(models, oracle, ['front', 'rear']) == []
        with pytest.raises(ExecutorError, match='shares its budget'):
            models['front'].reconfigure(budget_mb=big)
    finally:
        models.close()


def test_peaks_are_since_the_budget_in_force_for_the_group_and_each_model(packs, oracle):
    small = budget_for(packs, ['front', 'rear'])
    big = (weights(packs['front']) + weights(packs['rear'])) / MB + 8     # all resident
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=big)
    try:
        assert run_order(models, oracle, ['front', 'rear']) == []
        for name in ('front', 'rear'):
            assert models[name].stats()['peak_weight_bytes'] >= weights(packs[name]) > small * MB
        models.reconfigure(budget_mb=small)
        assert run_order(models, oracle, ['rear', 'front', 'rear']) == []
        st = models.stats()
        assert 0 < st['group_peak_weight_bytes'] <= small * MB
        peaks = {n: models[n].stats()['peak_weight_bytes'] for n in ('front', 'rear')}
        assert all(0 < p <= small * MB for p in peaks.values()), peaks
        assert {n: m['peak_weight_bytes'] for n, m in st['models'].items()} == peaks
        with pytest.raises(GroupTooSmall):      # refused: the peaks stay those of `small`
            models.reconfigure(budget_mb=0.01)
        assert {n: models[n].stats()['peak_weight_bytes'] for n in peaks} == peaks
        assert models.stats()['group_peak_weight_bytes'] == st['group_peak_weight_bytes']
    finally:
        models.close()


def test_a_model_keeps_working_when_another_of_its_group_is_closed(packs, oracle):
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path})
    try:
        assert run_order(models, oracle, ['front', 'rear']) == []
        models['rear'].close()
        with pytest.raises(ExecutorError, match='closed'):
            models['rear'](oracle['rear'][0][0])
        assert run_order(models, oracle, ['front', 'front']) == []
    finally:
        models.close()


# ----------------------------------------------------------------------------- plans


def test_group_plan_round_trips_through_plan_yaml_and_loads(packs, oracle, tmp_path):
    budget = budget_for(packs, ['front', 'rear'])
    models = load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                         budget_mb=budget)
    d = models.plan()
    models.close()
    plan = GroupPlan.from_dict(d)
    path = plan.save(tmp_path / 'PLAN.yaml')
    again = GroupPlan.load(path)
    assert again.to_dict() == d
    # names differ from the plan's: the sections are matched by pack directory
    renamed = {'a': packs['rear'].path, 'b': packs['front'].path}
    again = load_shared(renamed, plan=str(path), budget_mb=budget)
    try:
        assert run_order({'front': again['b'], 'rear': again['a']}, oracle,
                         ORDERS[0]) == []
        assert again.stats()['arena_bytes'] == d['arena_bytes']
        for key, name in (('a', 'rear'), ('b', 'front')):
            assert again[key].plan()['resident_units'] == d['models'][name]['resident_units']
    finally:
        again.close()
    with pytest.raises(GroupTooSmall, match='below the group plan'):
        load_shared({'front': packs['front'].path, 'rear': packs['rear'].path},
                    plan=str(path), budget_mb=budget / 2)
    with pytest.raises(ExecutorError, match='no section'):
        load_shared({'front': packs['front'].path, 'side': packs['side'].path},
                    plan=str(path))
    single = tmp_path / 'ONE.yaml'
    single.write_text(yaml.safe_dump({'format': 'demand_layering_ros.plan',
                                      'resident_units': [], 'arena_bytes': 0}))
    with pytest.raises(ExecutorError, match='not a group plan'):
        load_shared({'front': packs['front'].path}, plan=str(single))
    with pytest.raises(PlanError, match='exceeds the shared arena'):
        bad = dict(d, arena_bytes=0)
        GroupPlan.from_dict(bad)


def synthetic(n, seed, read_mb_s):
    """Return (manifest, profile) of a pass of n units with seeded sizes and compute times."""
    rnd = random.Random(seed)
    units = [{'index': i, 'name': f'u{i}', 'length': 4096 * rnd.randint(1, 600), 'calls': 1,
              'first_call': i, 'last_call': i, 'used_outside_forward': False}
             for i in range(n)]
    manifest = {'units': units, 'call_order': list(range(n)),
                'model': {'spec': f'synthetic:{seed}'}}
    prof = {'format': PROFILE_FORMAT, 'device': 'cpu', 'device_kind': 'cpu',
            'steps': {'unit': list(range(n)), 'busy_ms': [rnd.uniform(0.2, 3.0)
                                                          for _ in range(n)],
                      'gap_ms': [0.05] * n, 'tail_ms': 0.3},
            'disk': {'points': [{'request_bytes': 1 << 20,
                                 'seconds': (1 << 20) / (read_mb_s * MB)}]}}
    return manifest, prof


def group_inputs():
    a, pa = synthetic(12, 1, 300)
    b, pb = synthetic(16, 2, 500)
    return {'a': a, 'b': b}, {'a': pa, 'b': pb}


def test_group_planner_shares_the_arena_and_gets_faster_with_more_budget():
    packs, profs = group_inputs()
    smallest = plan_group(packs, profs)
    alone = sum(planner.plan(packs[n], profs[n]).predicted_peak_weight_mb for n in packs)
    assert smallest.predicted_peak_weight_mb < alone
    full = smallest.details['fully_resident_mb']
    last = None
    for b in [smallest.predicted_peak_weight_mb * f for f in (1.0, 1.5, 2.5)] + [full * 1.01]:
        g = plan_group(packs, profs, budget_mb=b)
        assert g.predicted_peak_weight_mb <= b + 1e-9
        assert g.details['predicted_peak_weight_bytes'] <= b * MB
        assert all(p.arena_bytes == g.arena_bytes for p in g.models.values())
        total = sum(p.predicted_latency_ms for p in g.models.values())
        if last is not None:
            assert total <= last + 1e-6
        last = total
    with pytest.raises(planner.PlanInfeasible) as err:
        plan_group(packs, profs, budget_mb=smallest.predicted_peak_weight_mb * 0.5)
    assert err.value.min_memory_mb == pytest.approx(smallest.predicted_peak_weight_mb,
                                                    abs=0.002)


def test_group_planner_meets_deadlines_by_response_and_uses_idle_time():
    packs, profs = group_inputs()
    fast = plan_group(packs, profs, budget_mb=1e6)
    floor = max(p.details['predicted_response_ms'] for p in fast.models.values())
    last = None
    for f in (1.0, 1.2, 2.0, 4.0):
        g = plan_group(packs, profs, deadlines={'a': floor * f, 'b': floor * f})
        for p in g.models.values():
            assert p.details['predicted_response_ms'] <= floor * f + 1e-6
        if last is not None:
            assert g.predicted_peak_weight_mb <= last + 1e-9
        last = g.predicted_peak_weight_mb
    with pytest.raises(planner.PlanInfeasible):
        plan_group(packs, profs, deadlines={'a': floor * 0.5, 'b': None})
    # idle time between the passes reads the head of the next model's pass
    slow = {n: 10 * floor for n in packs}
    without = plan_group(packs, profs)
    with_idle = plan_group(packs, profs, periods=slow)
    for n in packs:
        a, b = without.models[n], with_idle.models[n]
        assert a.resident_units == b.resident_units
        assert b.details['head_start_ms'] > 0
        assert b.predicted_latency_ms <= a.predicted_latency_ms + 1e-9
    assert idle_gap([10.0, 10.0], [40.0, 40.0]) == pytest.approx(10.0)
    assert idle_gap([30.0, 30.0], [40.0, 40.0]) == 0.0
    assert idle_gap([10.0], [None]) == 0.0


@pytest.fixture(scope='module')
def profiles(packs, tmp_path_factory):
    """Profile two real packs once, quickly (their speeds are inputs, not checked)."""
    root = tmp_path_factory.mktemp('profiles')
    out = {}
    for name in ('front', 'rear'):
        prof = profiler.profile(packs[name].path, repeats=1, progress=False,
                                disk_sizes=(1 << 20, 4 << 20), check_splits=False)
        out[name] = save_profile(prof, root / f'{name}.json')
    return out


def test_plan_command_plans_a_group_that_loads_and_runs(packs, oracle, profiles, tmp_path,
                                                        capsys):
    a, b = str(packs['front'].path), str(packs['rear'].path)
    budget = budget_for(packs, ['front', 'rear'])
    out = tmp_path / 'GROUP.yaml'
    rc = cli_main(['plan', '--pack', a, '--pack', b, '--profile', str(profiles['front']),
                   '--profile', str(profiles['rear']), '--budget-mb', f'{budget:.3f}',
                   '--frame-period-ms', '1000', '--out', str(out)])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    d = yaml.safe_load(out.read_text())
    assert line['plan'] == str(out) and set(line['models']) == {a, b}
    assert d['predicted_peak_weight_mb'] <= budget
    assert d['models'][a]['frame_period_ms'] == 1000
    models = load_shared({'front': a, 'rear': b}, plan=str(out), budget_mb=budget)
    try:
        assert run_order(models, oracle, ORDERS[1]) == []
        assert models.stats()['group_peak_weight_bytes'] <= d['predicted_peak_weight_bytes']
    finally:
        models.close()
    rc = cli_main(['plan', '--pack', a, '--pack', b, '--profile', str(profiles['front']),
                   '--profile', str(profiles['rear']), '--budget-mb', '0.01',
                   '--out', str(tmp_path / 'no.yaml')])
    assert rc == 3
    numbers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert numbers['infeasible'] and numbers['min_memory_mb'] > 0.01
    assert not (tmp_path / 'no.yaml').exists()
    assert cli_main(['plan', '--pack', a, '--pack', b, '--deadline-ms', '1', '--deadline-ms',
                     '2', '--deadline-ms', '3', '--out', str(tmp_path / 'x.yaml')]) == 2


# ----------------------------------------------------------------------------- the CLI


def test_detect_with_several_packs_equals_each_pack_resident(packs, tmp_path, capsys):
    import cv2
    import numpy as np
    rnd = np.random.default_rng(0)
    images = []
    for k, (h, w) in enumerate([(64, 64), (80, 96), (64, 64)]):
        path = tmp_path / f'img{k}.png'
        cv2.imwrite(str(path), rnd.integers(0, 256, (h, w, 3), dtype=np.uint8))
        images.append(str(path))
    a, b = str(packs['front'].path), str(packs['rear'].path)
    budget = budget_for(packs, ['front', 'rear'])
    common = ['--threshold', '0.0', '--batch', '2']
    assert cli_main(['detect', '--pack', a, '--pack', b, '--budget-mb', f'{budget:.3f}',
                     '--stats'] + common + images) == 0
    captured = capsys.readouterr()
    lines = [json.loads(s) for s in captured.out.strip().splitlines()]
    assert [(r['image'], r['model']) for r in lines] == [(i, m) for i in images
                                                         for m in (a, b)]
    stats = [json.loads(s)['stats'] for s in captured.err.strip().splitlines()
             if s.startswith('{')]
    assert len(stats) == 2
    assert stats[-1]['group_peak_weight_bytes'] <= budget * MB
    assert set(stats[-1]['models']) == {a, b}
    for pack in (a, b):
        assert cli_main(['detect', '--pack', pack, '--resident'] + common + images) == 0
        want = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
        got = [{'image': r['image'], 'detections': r['detections']} for r in lines
               if r['model'] == pack]
        assert got == want and any(r['detections'] for r in want)
    assert cli_main(['detect', '--pack', a, '--pack', a] + images) == 2
    assert 'once' in capsys.readouterr().err
