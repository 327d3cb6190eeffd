# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Check the planner's predictions against the executor, at torch's default threads (issue 18).

For each of `make bench`'s models (bench/configs.py MODELS, the same input sizes and weights)
this writes or reuses the pack, profiles it at the thread count it then runs with (torch's
default unless --threads), makes `make bench`'s plans (the smallest plan, the <= 1 ms plan and
`--budgets` budgets between: bench.plans.make_plans) and runs every plan that streams anything
in the executor. Blocks of back-to-back passes of the plan alternate with blocks of the fully
resident model, so load drift on a shared machine hits both alike; the first pass after each
resident block starts after idle time and is not timed. The disk's O_DIRECT bandwidth is
measured right before each plan runs (as `make bench` does per model), and the plan's pipeline
bound is computed at it.

Per plan: predicted latency and range, measured median, error, within 10%?, is the prediction
at or above the bound measured in the same run?, does the measured median fall inside the
predicted range (and what share of the passes does)?, and the compute drift (resident now /
resident when profiled). Printed and written as markdown (`--markdown`), with the "Done when"
counts, a plot of measured against predicted (`--plot`), and JSON (`--json`). The paper's table
(reduction and overhead of the smallest and <= 1 ms plans) follows.

Usage: python bench/bench_planner.py [--models KEY ...] [--passes N] [--budgets N]
       [--profile-repeats N] [--threads N] [--device cpu|cuda] [--work DIR] [--plot PNG]
       [--markdown FILE] [--json FILE]
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.configs import MODELS, resolve_models  # noqa: E402
from bench.machine import disk_bandwidth, machine  # noqa: E402
from bench.plans import make_plans, pipeline_bound_ms  # noqa: E402
from bench.worker import to_device  # noqa: E402
from demand_layering_ros import load, load_resident  # noqa: E402
from demand_layering_ros import pack as P  # noqa: E402
from demand_layering_ros.planning import planner, profile_file, profiler  # noqa: E402
from demand_layering_ros.sizes import MB  # noqa: E402
import torch  # noqa: E402

PAPER = {'smallest': (96.5, '+14.8%'), 'overhead_1ms': (88.4, '< 1 ms')}
NAMES = {'dl-smallest': 'smallest', 'dl-1ms': '<= 1 ms'}


def sync(device):
    if str(device).startswith('cuda'):
        torch.cuda.synchronize(torch.device(device))


def timed(fn, x, device):
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        fn(x)
    sync(device)
    return (time.perf_counter() - t) * 1e3


def measure(pack, plan, x, device, resident, passes, block=4):
    """
    Run a plan back to back, in blocks alternating with blocks of resident passes.

    The executor starts reading the next pass as soon as one ends, so a pass that follows idle
    time (here: the resident block) starts with its first units already in; the first pass of
    each block is therefore not timed, and the timed ones see no idle time, as predicted.
    """
    m = load(pack.path, device=device, plan=plan)
    try:
        lat, res, stall = [], [], []
        timed(m, x, device)                       # the first pass after load: cold
        while len(lat) < passes:
            timed(m, x, device)                   # after idle time: not timed
            for _ in range(min(block, passes - len(lat))):
                lat.append(timed(m, x, device))
                stall.append(m.stats()['stall_ms'])
            for _ in range(block):
                res.append(timed(resident, x, device))
        st = m.stats()
    finally:
        m.close()
    return {'latency_ms': statistics.median(lat), 'latency_all_ms': lat,
            'resident_ms': statistics.median(res), 'stall_ms': statistics.median(stall),
            'peak_weight_bytes': st['peak_weight_bytes'], 'arena_bytes': st['arena_bytes'],
            'feedback_ratio': st.get('latency_ratio')}


def rescaled(prof, k):
    """
    Return the profile with compute (and the executor's per-slot cost) scaled by k.

    On a shared machine the compute speed drifts between profiling and measuring; the resident
    passes timed alongside each plan give k = resident now / resident at profile time, and the
    plan re-simulated with compute scaled by k separates the model's error from that drift.
    """
    steps = prof['steps']
    out = dict(prof, steps=dict(steps, busy_ms=[b * k for b in steps['busy_ms']],
                                gap_ms=[g * k for g in steps['gap_ms']],
                                tail_ms=steps['tail_ms'] * k))
    if prof.get('executor'):
        ex = prof['executor']
        out['executor'] = dict(ex, overhead_ms_per_slot=ex['overhead_ms_per_slot'] * k)
    return out


def prepare(key, src, args):
    """Write (or reuse) the pack; profile it here and now; return (pack, profile, seconds)."""
    pack_dir = Path(args.work) / key
    pk = None
    if (pack_dir / P.MANIFEST_FILE).exists():
        pk = P.Pack.open(pack_dir)
        size = (pk.manifest.get('input') or {}).get('input_size')
        if src['input_size'] and list(size or []) != list(src['input_size']):
            pk = None
    if pk is None:
        pk = P.write_pack(src['spec'], pack_dir, weights=src['weights'], seed=0,
                          input_size=src['input_size'], progress=False, verify=False)
    t0 = time.perf_counter()
    prof = profiler.profile(pk.path, device=args.device, repeats=args.profile_repeats,
                            progress=False)
    profile_file.save_profile(prof, pack_dir / 'PROFILE.json')
    return pk, prof, time.perf_counter() - t0


def streams(plan, pk):
    """Return True when a plan streams something (not every unit resident)."""
    called = {u.name for u in pk.units if u.calls}
    return bool(called - set(plan.get('resident_units') or []))


def plan_row(pk, prof, name, plan, got, bw_before, bw_after):
    """Return one plan's prediction, measurement and verdicts."""
    pred = plan['predicted_latency_ms']
    lo, hi = plan.get('predicted_latency_range_ms') or (pred, pred)
    bound = pipeline_bound_ms(pk, prof, bw_before, plan.get('resident_units') or [])
    k = got['resident_ms'] / prof['resident_latency_ms']
    adjusted = planner.predict(pk, rescaled(prof, k), plan).latency_ms
    lat = got['latency_ms']
    return {
        'plan': name, 'streams': streams(plan, pk), 'budget_mb': plan.get('budget_mb'),
        'predicted_ms': pred, 'range_ms': [lo, hi],
        'expected_ms': (plan.get('prediction') or {}).get('expected_latency_ms'),
        'predicted_bound_ms': (plan.get('prediction') or {}).get('bound_ms'),
        'predicted_peak_mb': plan['predicted_peak_weight_mb'], **got,
        'measured_peak_mb': got['peak_weight_bytes'] / MB,
        'error_pct': (lat / pred - 1) * 100, 'within_10pct': abs(lat / pred - 1) <= 0.10,
        'bound_ms': bound, 'disk_mb_per_s': [bw_before / MB, (bw_after or 0) / MB],
        'below_bound': pred < bound - 1e-6,
        'inside_range': lo <= lat <= hi,
        'passes_inside_pct': 100.0 * sum(lo <= v <= hi for v in got['latency_all_ms'])
        / len(got['latency_all_ms']),
        'compute_drift': k, 'adjusted_ms': adjusted,
        'adjusted_error_pct': (lat / adjusted - 1) * 100,
        'overhead_ms': lat - got['resident_ms'],
        'reduction_pct': (1 - got['peak_weight_bytes'] / pk.total_bytes) * 100}


def bench_model(key, src, args):
    """Profile, plan and measure one model; return its row."""
    t0 = time.perf_counter()
    pk, prof, prof_s = prepare(key, src, args)
    plans = make_plans(pk, prof, args.budgets)
    det = pk.build_detector(device=args.device, meta=True)
    x = to_device(det.timing_input(1), args.device)
    resident = load_resident(pk.path, device=args.device)
    row = {'model': key, 'spec': src['spec'], 'input': src['input_size'],
           'weights_mb': pk.total_bytes / MB, 'threads': prof['threads'],
           'profile_resident_ms': prof['resident_latency_ms'], 'profile_seconds': prof_s,
           'profile_disk_mb_per_s': [[p['mb_per_s'] for p in r['points']]
                                     for r in prof['disk']['rounds']],
           'load_start': os.getloadavg()[0], 'plans': [], 'skipped': {}}
    for name, plan in plans.items():
        if 'infeasible' in plan or 'same_as' in plan:
            row['skipped'][name] = plan.get('infeasible') or f'same as {plan["same_as"]}'
            continue
        bw = disk_bandwidth(pk.weights_path)
        got = measure(pk, plan, x, args.device, resident, args.passes)
        bw_after = disk_bandwidth(pk.weights_path)
        row['plans'].append(plan_row(pk, prof, name, plan, got, bw, bw_after))
    del resident
    row['load_end'] = os.getloadavg()[0]
    row['seconds'] = time.perf_counter() - t0
    return row


def verdicts(rows):
    """Return the "Done when" counts over the streamed plans."""
    streamed = [p for r in rows for p in r['plans'] if p['streams']]
    passes = [v for p in streamed for v in [p['passes_inside_pct']]]
    return {'streamed': len(streamed),
            'within_10pct': sum(p['within_10pct'] for p in streamed),
            'below_bound': sum(p['below_bound'] for p in streamed),
            'inside_range': sum(p['inside_range'] for p in streamed),
            'passes_inside_pct': statistics.mean(passes) if passes else None}


def _yes(flag):
    return '✔' if flag else '✘'


def tables(rows, meta):
    """Return the markdown: the setting, the prediction table, the counts, the paper's table."""
    v = verdicts(rows)
    out = [f"Measured {meta['started']} in one run of `{meta['command']}` "
           f"({meta['seconds'] / 60:.1f} min); {meta['machine']['cores']} cores "
           f"({meta['machine']['cpu']}), torch {meta['machine'].get('torch')} at "
           f"{meta['threads']} threads; 1-minute load average {meta['load'][0]:.1f} at the "
           f"start, {meta['load'][1]:.1f} at the end (the benchmark itself included).", '',
           '| model | input | plan | predicted ms | range ms | measured ms (median) | error | '
           '≤ 10% | bound ms (disk MB/s) | predicted ≥ bound | in range (passes) | '
           'compute drift | peak MB predicted / measured |', '|' + '---|' * 13]
    for r in rows:
        for p in r['plans']:
            if not p['streams']:
                continue
            lo, hi = p['range_ms']
            name = NAMES.get(p['plan'], p['plan'].replace('dl-budget-', 'budget '))
            out.append(
                f"| {r['model']} | {'x'.join(map(str, r['input'] or []))} | {name} | "
                f"{p['predicted_ms']:.1f} | {lo:.1f}–{hi:.1f} | {p['latency_ms']:.1f} | "
                f"{p['error_pct']:+.1f}% | {_yes(p['within_10pct'])} | {p['bound_ms']:.1f} "
                f"({p['disk_mb_per_s'][0]:.0f}) | {_yes(not p['below_bound'])} | "
                f"{_yes(p['inside_range'])} ({p['passes_inside_pct']:.0f}%) | "
                f"×{p['compute_drift']:.2f} | {p['predicted_peak_mb']:.2f} / "
                f"{p['measured_peak_mb']:.2f} |")
    n = v['streamed'] or 1
    out += ['', f"**Streamed plans within 10% of their prediction: {v['within_10pct']} of "
            f"{v['streamed']} ({100 * v['within_10pct'] / n:.0f}%; goal ≥ 90%). Predictions "
            f"below the pipeline bound measured in the same run: {v['below_bound']} (goal 0). "
            f"Measured median inside the predicted range: {v['inside_range']} of "
            f"{v['streamed']} ({100 * v['inside_range'] / n:.0f}%; goal ≥ 90%)**"
            + (f"; passes inside the range: {v['passes_inside_pct']:.0f}% on average."
               if v['passes_inside_pct'] is not None else '.')]
    out += [f'Not measured: {k} ({why}).' for k, why in meta.get('failed', {}).items()]
    return '\n'.join(out + [''] + paper_table(rows))


def paper_table(rows):
    """Return the paper's table: reduction and overhead at the smallest and <= 1 ms plans."""
    out = ['| model | weights MB | (a) smallest: reduction | overhead | (b) ≤ 1 ms predicted: '
           'reduction | overhead |', '|' + '---|' * 6,
           '| paper (Xavier, Darknet, NVMe) | | 96.5% | +14.8% | 88.4% | < 1 ms |']
    for r in rows:
        by = {p['plan']: p for p in r['plans']}
        a, b = by.get('dl-smallest'), by.get('dl-1ms')
        cell = (lambda p: (f"{p['reduction_pct']:.1f}% | {p['overhead_ms']:+.1f} ms "
                           f"({p['overhead_ms'] / p['resident_ms'] * 100:+.1f}%)")
                if p else '– | –')
        out.append(f"| {r['model']} | {r['weights_mb']:.1f} | {cell(a)} | "
                   + (cell(b) if b else 'fully resident | –') + ' |')
    return out


def plot(rows, path):
    """Draw measured against predicted latency, with each prediction's range."""
    from demand_layering_ros import plots
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    pts = [p for r in rows for p in r['plans'] if p['streams']]
    if not pts:
        return None
    for p in pts:
        lo, hi = p['range_ms']
        ok = p['within_10pct']
        ax.errorbar([p['predicted_ms']], [p['latency_ms']],
                    xerr=[[p['predicted_ms'] - lo], [hi - p['predicted_ms']]],
                    fmt='o' if ok else 'x', color='#54a24b' if ok else '#e45756', ms=5,
                    elinewidth=0.8, capsize=2)
    top = max(max(p['latency_ms'], p['range_ms'][1]) for p in pts) * 1.1
    low = min(min(p['latency_ms'], p['range_ms'][0]) for p in pts) * 0.9
    xs = [low, top]
    ax.plot(xs, xs, color='0.3', lw=0.8)
    ax.fill_between(xs, [v * 0.9 for v in xs], [v * 1.1 for v in xs], color='0.85',
                    label='within 10%')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('predicted latency, ms (bar: predicted range)')
    ax.set_ylabel('measured median latency, ms')
    ax.set_title('Planner: measured against predicted (streamed plans)')
    ax.legend(loc='upper left')
    return plots.save(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=list(MODELS),
                    help=f'model keys of bench/configs.py or specs (default all {len(MODELS)})')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--passes', type=int, default=12, help='timed passes per plan (default 12)')
    ap.add_argument('--budgets', type=int, default=1,
                    help="budgets between the smallest and the <= 1 ms plan (make bench's 1)")
    ap.add_argument('--profile-repeats', type=int, default=3,
                    help="timed passes of each profile (make bench's 3)")
    ap.add_argument('--threads', type=int, default=None,
                    help="torch intra-op threads (default: torch's own, what users run)")
    ap.add_argument('--work', default=str(ROOT / 'bench' / 'out' / 'planner'))
    ap.add_argument('--plot', default=str(ROOT / 'bench' / 'planner_predictions.png'),
                    help='the plot of measured against predicted (default '
                         'bench/planner_predictions.png, beside the plots of make bench)')
    ap.add_argument('--json', default=None)
    ap.add_argument('--markdown', default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    started, load0 = time.time(), os.getloadavg()[0]
    rows, failed = [], {}
    for key, src in resolve_models(args.models, args.device):
        try:
            row = bench_model(key, src, args)
        except Exception as e:  # noqa: B902 - one broken model must not stop the others
            failed[key] = f'{type(e).__name__}: {e}'
            print(f'{key}: failed: {failed[key]}', file=sys.stderr)
            continue
        rows.append(row)
        print(f"{key}: {row['seconds']:.0f} s (profile {row['profile_seconds']:.0f} s), " +
              ', '.join(f"{p['plan']} {p['predicted_ms']:.1f}/{p['latency_ms']:.1f} ms "
                        f"({p['error_pct']:+.1f}%)" for p in row['plans']), file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    meta = {'started': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started)),
            'command': 'python bench/bench_planner.py ' + ' '.join(argv or sys.argv[1:]),
            'seconds': time.time() - started, 'machine': machine(args.device, []),
            'threads': torch.get_num_threads(), 'load': (load0, os.getloadavg()[0]),
            'failed': failed}
    md = tables(rows, meta)
    picture = plot(rows, Path(args.plot))
    if picture:
        shown = picture.resolve()
        shown = shown.relative_to(ROOT) if ROOT in shown.parents else shown
        md += f'\n\n![measured against predicted]({shown})'
    print(md)
    if args.markdown:
        Path(args.markdown).write_text(md + '\n')
    if args.json:
        Path(args.json).write_text(json.dumps({'meta': meta, 'rows': rows,
                                               'verdicts': verdicts(rows)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
