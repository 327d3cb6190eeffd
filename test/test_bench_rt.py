# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
`make bench-rt`'s figures from known runs, so the report cannot rot unseen.

A full run needs 15 minutes of camera load; here the runs are made up with known stamps and
receipts, and every figure of the table and the goals is checked against them.
"""

from bench import bench_rt, rt_report
import pytest


def run(server='node', cameras=1, fps=10.0, transport='raw', deadline=False, latency_ms=100.0,
        answered_every=1, deadline_ms=150.0, late_every=0):
    """Make a run of 10 measured seconds: frame k answered after latency_ms (or late, or not)."""
    t0 = 1000.0
    frames = []
    n = int(fps * cameras * 10)
    for k in range(n):
        stamp = t0 + k / (fps * cameras)
        lat = latency_ms * (3 if late_every and k % late_every == 0 else 1)
        receipt = stamp + lat / 1e3 if k % answered_every == 0 else None
        frames.append({'camera': k % cameras, 'index': k, 'stamp_ns': int(stamp * 1e9),
                       'receipt': receipt, 'detections': 2})
    answered = [f for f in frames if f['receipt']]
    late = sum(1 for f in answered if deadline and
               (f['receipt'] - f['stamp_ns'] / 1e9) * 1e3 > deadline_ms)
    diag = {} if server == 'baseline' else {'node: camera /cam0': {
        'frames_in': str(n), 'frames_out': str(len(answered)), 'deadline_misses': str(late),
        'dropped_superseded': str(n - len(answered)), 'dropped_deadline': '0',
        'dropped_malformed': '0', 'dropped_error': '0', 'best_effort': '0'}}
    r = bench_rt.config(server, cameras, fps, transport, deadline)
    r.update({'frames': frames, 'diagnostics': diag, 'measured_from': t0,
              'measured_to': t0 + 10.0, 'cpu': {'node': 80.0, 'load': 10.0},
              'deadline_ms': deadline_ms if deadline else 0.0})
    return r


def test_summary_counts_rates_latencies_and_misses():
    s = rt_report.summarize(run(fps=30.0, answered_every=3, latency_ms=120.0))
    assert s['in_hz'] == pytest.approx(30.0) and s['out_hz'] == pytest.approx(10.0)
    assert s['p50_ms'] == pytest.approx(120.0) and s['max_ms'] == pytest.approx(120.0)
    assert s['drops']['superseded'] == 200 and s['diag_out'] == 100
    d = rt_report.summarize(run(cameras=2, fps=15.0, deadline=True, late_every=10))
    assert d['late_pct'] == pytest.approx(10.0) and d['diag_misses'] == d['late_all'] == 30


def test_answers_per_camera_and_the_fairness_goal():
    fair = run(cameras=2, fps=15.0, answered_every=2)         # only camera 0's frames
    s = rt_report.summarize(fair)
    assert s['answered_per_camera'] == [150, 0] and s['fairness'] == 0.0
    turns = run(cameras=2, fps=15.0, answered_every=3)         # every third: 50 / 50
    assert rt_report.summarize(turns)['answered_per_camera'] == [50, 50]
    goals = '\n'.join(rt_report.goals([fair, turns]))
    assert '150/0 answered = 0% | NO' in goals and '50/50 answered = 100% | yes' in goals
    kept_up = run(cameras=2, fps=15.0)                          # every frame: nobody starves
    assert 'kept' not in '\n'.join(rt_report.goals([kept_up])) and \
        rt_report.fairness_goals([kept_up]) == []
    assert '150/0 (0%)' in '\n'.join(rt_report.table([fair]))
    names = [c['name'] for c in bench_rt.fairness_grid()]
    assert 'node streamed 2x15fps raw together' in names
    assert 'node streamed 3x10fps raw deadline together' in names and len(names) == 12


def test_goals_and_table_say_what_was_met():
    results = [run(), run(fps=30.0, answered_every=3, latency_ms=150.0),
               run(transport='jpeg'), run(fps=30.0, transport='jpeg', answered_every=4),
               run(cameras=2, fps=15.0, deadline=True),
               run('baseline', fps=30.0, answered_every=10, latency_ms=900.0)]
    goals = '\n'.join(rt_report.goals(results))
    # raw: 10/s served at 30 fps = 100% of 1000/100 ms; p99 150 <= 200 ms
    assert '10.0/s = 100% | yes' in goals and '| 150 ms | yes' in goals
    # jpeg: 7.5/s = 75% < 80%
    assert '7.5/s = 75% | NO' in goals
    assert '100.0% | yes' in goals and '0 vs 0 | yes' in goals
    table = '\n'.join(rt_report.table(results))
    assert 'not counted (270 unanswered)' in table
    assert table.count('\n') == len(results) + 1


def test_report_writes_plots_and_replaces_its_own_block(tmp_path):
    md = tmp_path / 'BENCHMARKS.md'
    (tmp_path / 'bench').mkdir()
    md.write_text('# Benchmarks\n\n<!-- bench:cpu:begin -->\nkept\n<!-- bench:cpu:end -->\n')
    results = [run(), run(fps=30.0, answered_every=3), run('baseline', fps=30.0)]
    info = {'cores': 2, 'cpu': 'test', 'torch': 'x', 'torch_threads_default': 2,
            'loadavg_start': (0.5, 0, 0), 'loadavg_end': (0.7, 0, 0), 'minutes': 1.0}
    for _ in range(2):
        rt_report.report(results, info, tmp_path / 'out', str(md))
    text = md.read_text()
    assert text.count('<!-- bench:rt:begin -->') == 1 and 'kept' in text
    assert '(bench/rt_rate.png)' in text and (tmp_path / 'bench' / 'rt_rate.png').is_file()
    assert (tmp_path / 'bench' / 'rt_latency_cdf.png').is_file()
    fair = [run(cameras=2, fps=15.0, answered_every=3), run(cameras=2, fps=15.0, deadline=True)]
    rt_report.fairness_report(fair, info, tmp_path / 'out', str(md))
    text = md.read_text()
    assert text.count('<!-- bench:rt-fairness:begin -->') == 1
    assert text.count('<!-- bench:rt:begin -->') == 1 and '50/50 (100%)' in text
    assert (tmp_path / 'bench' / 'rt_fairness.png').is_file()


def test_grid_covers_the_issue_and_quick_is_small():
    names = [c['name'] for c in bench_rt.grid()]
    assert len(names) == len(set(names))
    for must in ('node streamed 1x10fps raw', 'node streamed 1x30fps raw',
                 'node streamed 1x10fps jpeg', 'node streamed 1x30fps jpeg',
                 'node streamed 2x15fps raw deadline', 'node resident 1x30fps raw',
                 'node streamed 4x5fps raw', 'baseline streamed 1x30fps raw'):
        assert must in names
    assert len(bench_rt.grid(quick=True)) <= 4
    cmd = bench_rt.server_command(bench_rt.config('node', 2, 15, deadline=True), '/p', 200.0)
    assert 'deadline_ms:=200.0' in cmd and 'image_topics:=[/cam0/image_raw,/cam1/image_raw]' in cmd
