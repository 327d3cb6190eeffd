# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The benchmark machinery, end to end on a tiny Darknet model, so `make bench` cannot rot unseen.

A full `make bench` takes about half an hour, so the suite runs the same code path on a model of
1.7 MB with two timed passes: every configuration in its own subprocess and memory cgroup, the
results file, the markdown section and the plots. Timings are not asserted (two shared cores);
what is asserted is what the measurements must show whatever the speed: which configurations
read the weights from disk on every pass, which fill the page cache, who holds how much weight
memory, and that the mmap baseline really ran under the memory the smallest plan needed.
"""

import json

from bench import harness, plans, report
from bench.configs import (BenchError, DEFAULT_MODELS, LIMITED, MODELS, PAPER_FAMILY,
                           rep_order, resolve_models)
from bench.summary import goals as summary_goals
from demand_layering_ros import quantiles
import pytest
from tools import cgroups

MIB = 1 << 20
AVAIL = cgroups.cgroups_available()

TINY_CFG = """\
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
"""


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """Run the benchmark once on the tiny model; return (results, out dir, markdown path)."""
    d = tmp_path_factory.mktemp('bench')
    cfg = d / 'tiny.cfg'
    cfg.write_text(TINY_CFG)
    md = d / 'BENCH.md'
    md.write_text('# Benchmarks\n\nText another engineer wrote.\n')
    argv = ['--models', f'darknet:{cfg}', '--input-size', '64x64', '--passes', '2',
            '--warmup', '1', '--reps', '1', '--budgets', '1', '--profile-repeats', '1',
            '--configs', 'resident,naive,accelerate-disk,accelerate-cpu,mmap,dl-smallest,'
            'dl-budget,naive-limited,accelerate-disk-limited',
            '--out', str(d / 'out'), '--markdown', str(md), '--drop-caches', 'weights',
            '--quiet']
    assert harness.main(argv) == 0
    results = json.loads((d / 'out' / 'results.json').read_text())
    return results, d / 'out', md


def summaries(results):
    model = results['models']['tiny']
    return model, {name: c['summary'] for name, c in model['configs'].items()}


def test_every_configuration_ran(smoke):
    results, _, _ = smoke
    model, s = summaries(results)
    assert model['errors'] == {}
    expected = {'resident', 'naive', 'accelerate-disk', 'accelerate-cpu', 'mmap',
                'dl-smallest'}
    assert expected <= set(s)
    assert any(name.startswith('dl-budget-') for name in s)
    for name, c in model['configs'].items():
        if name in LIMITED and AVAIL and c['summary']['status'] == 'oom':
            continue          # legitimate: it could not run within the smallest plan's memory
        assert c['summary']['status'] == 'ok', (name, c['summary'])
        if 'same_as' in c:
            continue
        assert [len(r['latencies_ms']) for r in c['runs']] == [2], name
        assert s[name]['median_ms'] > 0 and s[name]['p99_ms'] >= s[name]['median_ms']


def test_weight_memory_and_disk_reads_tell_the_configurations_apart(smoke):
    results, _, _ = smoke
    model, s = summaries(results)
    total_mb = model['total_bytes'] / MIB
    # the plain model holds every weight and reads nothing once loaded
    assert s['resident']['peak_weight_mb'] == pytest.approx(total_mb, abs=0.01)
    assert s['resident']['read_mb_per_pass'] < 0.1
    # the smallest plan holds less and streams the weights from disk on every pass (O_DIRECT:
    # /proc/self/io counts them, the page cache does not keep them)
    small = s['dl-smallest']
    assert small['peak_weight_mb'] < s['resident']['peak_weight_mb']
    assert small['read_mb_per_pass'] > 0.5 * total_mb
    assert small['weights_cached_mb'] < 0.5
    assert small['bound_ms'] > 0 and small['bound_ratio'] > 0
    assert s['naive']['read_mb_per_pass'] > 0.5 * total_mb
    # accelerate's disk_offload serves warm passes from the page cache it filled
    disk = s['accelerate-disk']
    assert disk['read_mb_per_pass'] < 0.1
    params_mb = model['weights_mb'] - model['buffer_bytes'] / MIB
    assert disk['weights_cached_mb'] > 0.9 * params_mb
    assert disk['peak_weight_mb'] < s['resident']['peak_weight_mb']


@pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
def test_cgroup_peaks_and_the_mmap_limit(smoke):
    results, _, _ = smoke
    model, s = summaries(results)
    for name, v in s.items():
        if v['status'] == 'ok':
            assert v['peak_mb'] > v['base_mb'] > 0, name
    runs = model['configs']['dl-smallest']['runs']
    for name in LIMITED:
        limited = model['configs'][name]['runs'][0]
        # it got the memory the smallest plan needed above the same import baseline
        assert limited['limit_above_base'] == max(r['peak_bytes'] - r['base_bytes']
                                                  for r in runs), name
        if limited['status'] == 'oom':
            assert limited['oom_killed'] and limited['peak_bytes'] > 0
            continue
        assert limited['status'] == 'ok', (name, limited)
        assert limited['limit_bytes'] == limited['base_bytes'] + limited['limit_above_base']
        assert limited['peak_bytes'] <= limited['limit_bytes']
    mmap = model['configs']['mmap']['runs'][0]
    if mmap['status'] == 'ok':
        # the mapping faulted the weights in from the disk
        reads = mmap['read_bytes_load'] + mmap['read_bytes_warmup'] + mmap['read_bytes_passes']
        assert reads > 0.5 * model['weights_mb'] * MIB
    # the same loaders as without the limit: the naive loader streams, disk_offload memmaps
    assert model['configs']['naive-limited']['runs'][0]['kind'] == 'naive'
    assert model['configs']['accelerate-disk-limited']['runs'][0]['kind'] == 'accelerate-disk'
    # accelerate's memmaps stay in the page cache, charged to its cgroup
    assert s['accelerate-disk']['cache_growth_mb'] > 0.5 * model['weights_mb']


def test_markdown_section_and_plots(smoke):
    results, out, md = smoke
    text = md.read_text()
    assert text.startswith('# Benchmarks\n\nText another engineer wrote.')
    assert text.count('<!-- bench:cpu:begin -->') == 1
    # the method says what this run (--drop-caches weights) did to the page cache
    assert 'the rest of the page cache was left as it was' in text
    assert 'the whole page cache is dropped' not in text
    for label in ('resident', 'naive demand loading', 'accelerate disk_offload',
                  'accelerate cpu_offload', 'OS demand paging (mmap)',
                  'this project, smallest plan', 'accelerate disk_offload, smallest plan’s '
                  'memory', 'naive demand loading, smallest plan’s memory'):
        assert f'| {label}' in text
    # the goals hold the smallest plan's whole-process peak against the resident one's
    g = summary_goals(results['models']['tiny'])
    if AVAIL:
        _, s = summaries(results)
        unheld = s['resident']['peak_weight_mb'] - s['dl-smallest']['peak_weight_mb']
        assert g['whole_bound_mb'] == pytest.approx(s['resident']['peak_mb'] - 0.9 * unheld,
                                                    abs=0.06)
        assert f'{g["whole_peak_mb"]:.0f} / {g["whole_bound_mb"]:.0f}' in text
        assert g['disk_equal'] is not None and g['naive_equal'] is not None
    assert results['command'].startswith('python -m bench.harness --models darknet:')
    assert '--passes 2 ' in results['command'] and '--quiet' in results['command']
    for name in ('latency_memory', 'tradeoff', 'timeline'):
        png = out / f'cpu_{name}.png'
        assert png.stat().st_size > 1000
        assert (md.parent / 'bench' / png.name).is_file()
        assert f'(bench/cpu_{name}.png)' in text
    # writing again replaces the section instead of appending a second one
    report.write_markdown(results, md, 'cpu', {})
    again = md.read_text()
    assert again.count('<!-- bench:cpu:begin -->') == 1
    assert 'Text another engineer wrote.' in again and '### Plots' not in again


def test_repetitions_alternate_the_order():
    configs = ['dl-smallest', 'naive', 'resident', 'mmap']
    assert rep_order(configs, 0) == configs
    assert rep_order(configs, 1) == configs[::-1]
    assert rep_order(configs, 2) == configs


def test_percentile_is_nearest_rank():
    values = list(range(1, 21))          # 20 passes: p99 is the slowest, the median is 10.5
    assert quantiles.nearest_rank(values, 99) == 20
    assert quantiles.nearest_rank(values, 50) == 10
    assert quantiles.nearest_rank([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        quantiles.nearest_rank([], 50)


class _Unit:

    def __init__(self, name, length, outside=False):
        self.name, self.length, self.used_outside_forward = name, length, outside


class _Pack:

    path = 'synthetic'
    call_order = [0, 1, 2, 1]
    units = [_Unit('a', 100 * MIB), _Unit('b', 50 * MIB), _Unit('c', 200 * MIB)]


def test_pipeline_bound_by_hand():
    # 100 MB/s: a arrives at 1000 ms, b at 1500 ms, c at 3500 ms
    prof = {'steps': {'unit': [0, 1, 2, 1], 'busy_ms': [10.0, 700.0, 5.0, 1.0],
                      'gap_ms': [2.0, 0.0, 3.0, 0.0], 'tail_ms': 4.0}}
    bw = 100 * MIB
    # a: max(0+2, 1000)+10 = 1010; b: max(1010, 1500)+700 = 2200; c: max(2203, 3500)+5 = 3505;
    # b again (already in): 3505+1 = 3506; tail: 3510
    assert plans.pipeline_bound_ms(_Pack, prof, bw) == pytest.approx(3510.0)
    # c resident: a 1000, b 1500; c: max(2203, 0)+5 = 2208; b: 2209; tail 2213
    assert plans.pipeline_bound_ms(_Pack, prof, bw, ['c']) == pytest.approx(2213.0)
    # everything resident: the compute alone, 2+10+700+3+5+1+4
    assert plans.pipeline_bound_ms(_Pack, prof, bw, ['a', 'b', 'c']) == pytest.approx(725.0)
    with pytest.raises(BenchError, match='call order'):
        plans.pipeline_bound_ms(_Pack, {'steps': dict(prof['steps'], unit=[0, 1])}, bw)


def test_unknown_model_and_configuration_are_refused(tmp_path):
    with pytest.raises(ValueError, match='unknown model'):
        resolve_models(['no-such-model'], 'cpu')
    with pytest.raises(SystemExit, match='unknown configurations'):
        harness.main(['--configs', 'resident,warp-drive', '--out', str(tmp_path)])


def test_default_models_cover_the_issue():
    assert set(PAPER_FAMILY) <= set(MODELS)
    optional = {'yolov4', 'yolov8n', 'yolov8s', 'yolo11n'}
    assert len(DEFAULT_MODELS) == 10 and set(DEFAULT_MODELS) == set(MODELS) - optional
    assert MODELS['yolov3-tiny'].get('real')


def _bench_script(name):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'bench' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_executor_bounds_with_and_without_an_arena():
    from types import SimpleNamespace as Unit
    be = _bench_script('bench_executor')
    pk = Unit(units=[Unit(length=10), Unit(length=10), Unit(length=4)])
    # three calls of 5 s each (unit 0 twice); 1 byte/s disk
    calls = [[0, 0.0, 0.0, None], [1, 5.0, 0.0, None], [0, 10.0, 0.0, None]]
    assert be.pipeline_bound(pk, calls, 15.0, 1.0) == (30.0, 35.0)
    # unit 1 is read only after unit 0's last call ended... which needs unit 1 first: no room
    assert be.arena_bound(pk, calls, 15.0, 1.0, 10) is None
    assert be.arena_bound(pk, calls, 15.0, 1.0, 20) == 30.0
    two = [[0, 0.0, 0.0, None], [1, 5.0, 0.0, None]]
    assert be.arena_bound(pk, two, 10.0, 1.0, 10) == 30.0     # waits for unit 0's release
    assert be.arena_bound(pk, two, 10.0, 1.0, 20) == be.pipeline_bound(pk, two, 10.0, 1.0)[0]
    assert be.arena_bound(pk, two, 10.0, 1.0, 5) is None      # a unit larger than the arena
    # released when its compute ends (2 s into the 5 s before the next call), not 3 s later
    assert be.arena_bound(pk, two, 10.0, 1.0, 10, ends={0: 2.0}) == 27.0


def test_merge_adds_the_second_runs_configurations(tmp_path):
    """The GPU check runs the harness twice (ours, then the plain ones) and merges the results."""
    from bench import merge

    def results(configs, seconds):
        return {'settings': {'configs': configs}, 'seconds': seconds, 'command': 'c',
                'models': {'m': {'key': 'm', 'configs': {c: {'summary': {'status': 'ok'}}
                                                         for c in configs}}}}
    ours, plain = results(['dl-smallest', 'dl-1ms'], 10), results(['accelerate-disk',
                                                                   'resident'], 5)
    main_path, extra_path = tmp_path / 'a.json', tmp_path / 'b.json'
    main_path.write_text(json.dumps(ours))
    extra_path.write_text(json.dumps(plain))
    assert merge.main([str(main_path), str(extra_path)]) == 0
    got = json.loads(main_path.read_text())
    assert got['settings']['configs'] == ['dl-smallest', 'dl-1ms', 'resident', 'accelerate-disk']
    assert set(got['models']['m']['configs']) == set(got['settings']['configs'])
    assert got['seconds'] == 15
    missing = tmp_path / 'none.json'
    assert merge.main([str(missing), str(extra_path)]) == 0          # only the plain run
    assert json.loads(missing.read_text())['settings']['configs'] == ['accelerate-disk',
                                                                      'resident']
    assert merge.main([str(tmp_path / 'x.json'), str(tmp_path / 'y.json')]) == 1


@pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
def test_memory_pieces_table(tmp_path, capsys):
    """bench_memory.py takes a process apart: one column per configuration, its own section."""
    bm = _bench_script('bench_memory')
    cfg = tmp_path / 'tiny.cfg'
    cfg.write_text(TINY_CFG)
    md = tmp_path / 'B.md'
    assert bm.main(['--model', f'darknet:{cfg}', '--input-size', '64x64', '--passes', '2',
                    '--budgets', '0.2,0', '--threads', '1', '--markdown', str(md)]) == 0
    text = md.read_text()
    assert text.count('<!-- bench:memory:begin -->') == 1
    head = next(line for line in text.splitlines() if line.startswith('| | resident'))
    assert head.count('streamed') == 2
    for label in ('cgroup peak over load and passes', 'malloc arenas (glibc)',
                  'threads the model started', 'activation peak, stats()'):
        assert label in text
