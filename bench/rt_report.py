# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The real-time benchmark's figures: one row per run, the issue's goals, two plots, markdown.

A run's rates and latencies come from its measured window (frames stamped between the end of
the warm-up and the end of publishing); the cross-check of misses and the drops by reason come
from the whole run, warm-up included, since the node's /diagnostics counters are totals.
"""

from pathlib import Path
import shutil

from bench.report import write_markdown_block
from demand_layering_ros import plots
from demand_layering_ros.quantiles import percentile

SECTION = 'rt'
FAIR_SECTION = 'rt-fairness'


def summarize(r):
    """Return the figures of one run (a dict of numbers; nan where there is nothing)."""
    t0, t1 = r['measured_from'], r['measured_to']
    window = [f for f in r['frames'] if t0 * 1e9 <= f['stamp_ns'] < t1 * 1e9]
    lat = [f['receipt'] - f['stamp_ns'] / 1e9 for f in window if f['receipt']]
    dur = max(t1 - t0, 1e-6)
    deadline = r['deadline_ms'] if r['deadline'] else 0.0
    late = sum(1 for x in lat if deadline and x * 1e3 > deadline)
    answered_all = [f for f in r['frames'] if f['receipt']]
    late_all = sum(1 for f in answered_all
                   if deadline and (f['receipt'] - f['stamp_ns'] / 1e9) * 1e3 > deadline)
    late_published = sum(1 for f in answered_all if deadline and f.get('published') and
                         (f['published'] - f['stamp_ns'] / 1e9) * 1e3 > deadline)
    cams = [v for k, v in (r.get('diagnostics') or {}).items() if ': camera ' in k]

    def total(key):
        return sum(int(float(c.get(key, 0))) for c in cams) if cams else None
    per_camera = [sum(1 for f in window if f['camera'] == c and f['receipt'])
                  for c in range(r['cameras'])]
    return {
        'answered_per_camera': per_camera,
        'fairness': min(per_camera) / max(per_camera) if max(per_camera) else float('nan'),
        'in_hz': len(window) / dur, 'out_hz': len(lat) / dur,
        'p50_ms': percentile(lat, 50) * 1e3, 'p99_ms': percentile(lat, 99) * 1e3,
        'max_ms': max(lat) * 1e3 if lat else float('nan'),
        'late_pct': 100.0 * late / len(lat) if lat and deadline else float('nan'),
        'sent_all': len(r['frames']), 'answered_all': len(answered_all),
        'late_all': late_all, 'late_published': late_published,
        'diag_misses': total('deadline_misses'),
        'diag_out': total('frames_out'), 'diag_in': total('frames_in'),
        'drops': {k: total(f'dropped_{k}') for k in ('superseded', 'deadline', 'malformed',
                                                     'error')} if cams else None,
        'best_effort': total('best_effort'),
        'node_cpu': r['cpu']['node'], 'load_cpu': r['cpu']['load'],
        'latencies_ms': sorted(x * 1e3 for x in lat),
    }


def _f(v, nd=0):
    return '–' if v is None or v != v else f'{v:.{nd}f}'


def _find(results, **keys):
    return next((r for r in results if all(r.get(k) == v for k, v in keys.items())), None)


def goals(results):
    """Return markdown lines checking the issue's 'done when' on this run's figures."""
    lines = ['| goal | measured | met |', '|---|---|---|']
    for transport, need in (('raw', 0.70), ('jpeg', 0.80)):
        ref = _find(results, server='node', memory='streamed', cameras=1, fps=10.0,
                    transport=transport, deadline=False)
        hot = _find(results, server='node', memory='streamed', cameras=1, fps=30.0,
                    transport=transport, deadline=False)
        if ref is None or hot is None:
            continue
        a, b = summarize(ref), summarize(hot)
        rate = max(1e3 / a['p50_ms'], a['out_hz'])   # saturated at 10 fps: what it served
        met = 'yes' if b['out_hz'] >= need * rate else 'NO'
        lines.append(f'| 1 camera 30 fps {transport}: output >= {need:.0%} of the service '
                     f'rate at 10 fps (1000 / p50, or the output rate when higher: '
                     f'{rate:.1f}/s) | {b["out_hz"]:.1f}/s = '
                     f'{b["out_hz"] / rate:.0%} | {met} |')
        lines.append(f'| 1 camera 30 fps {transport}: p99 <= 2 x p50 at 10 fps '
                     f'({2 * a["p50_ms"]:.0f} ms) | {b["p99_ms"]:.0f} ms | '
                     f'{"yes" if b["p99_ms"] <= 2 * a["p50_ms"] else "NO"} |')
    lines += fairness_goals(results)
    for r in results:
        if not (r['server'] == 'node' and r['cameras'] == 2 and r['deadline']):
            continue
        s = summarize(r)
        on_time = 100.0 - s['late_pct']
        gap = abs((s['diag_misses'] or 0) - s['late_all'])
        agree = gap <= 0.01 * max(s['answered_all'], 1)
        lines.append(f'| {r["name"]} ({r["deadline_ms"]:.0f} ms): >= 99% of published frames '
                     f'on time | {on_time:.1f}% | {"yes" if on_time >= 99.0 else "NO"} |')
        lines.append(f'| {r["name"]}: misses in /diagnostics vs received late at the '
                     f'subscriber, within 1% of {s["answered_all"]} published (published late, '
                     f'by the DDS source timestamp: {s["late_published"]}) | '
                     f'{s["diag_misses"]} vs {s["late_all"]} | {"yes" if agree else "NO"} |')
    return lines


def fairness_goals(results):
    """Return a goal line per node run of several cameras where not every frame was answered."""
    lines = []
    for r in results:
        if r['server'] != 'node' or r['cameras'] < 2:
            continue
        s = summarize(r)
        if s['out_hz'] >= 0.95 * s['in_hz']:
            continue                               # the node kept up: no one to starve
        met = 'yes' if s['fairness'] >= 0.8 else 'NO'
        lines.append(f'| {r["name"]}: least served camera >= 80% of the most served | '
                     f'{"/".join(map(str, s["answered_per_camera"]))} answered = '
                     f'{s["fairness"]:.0%} | {met} |')
    return lines


def table(results):
    """Return the markdown table of every run."""
    lines = ['| configuration | in /s | out /s | answered per camera (least / most) | p50 ms | '
             'p99 ms | max ms | late | drops (superseded / deadline / malformed / error) | '
             'best-effort | node CPU | load CPU |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in results:
        s = summarize(r)
        drops = ' / '.join(_f(v) for v in s['drops'].values()) if s['drops'] else \
            f'not counted ({s["sent_all"] - s["answered_all"]} unanswered)'
        lines.append(
            f'| {r["name"]} | {s["in_hz"]:.1f} | {s["out_hz"]:.1f} | '
            f'{"/".join(map(str, s["answered_per_camera"]))} ({_f(100 * s["fairness"])}%) | '
            f'{_f(s["p50_ms"])} | '
            f'{_f(s["p99_ms"])} | {_f(s["max_ms"])} | '
            f'{_f(s["late_pct"], 1) + "%" if r["deadline"] else "–"} | {drops} | '
            f'{_f(s["best_effort"])} | {_f(s["node_cpu"])}% | {_f(s["load_cpu"])}% |')
    return lines


def plot_rates(results, path):
    """Output rate against input rate, one line per server / memory / transport."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = {}
    for r in results:
        if r['cameras'] != 1 or r['deadline']:
            continue
        s = summarize(r)
        key = f'{r["server"]} {r["memory"]} {r["transport"]}'
        series.setdefault(key, []).append((s['in_hz'], s['out_hz']))
    top = 1.0
    for key, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], 'o-' if 'node' in key else 's--',
                label=key)
        top = max(top, max(x for x, _ in pts))
    ax.plot([0, top], [0, top], ':', color='grey', label='every frame answered')
    ax.set_xlabel('input rate (frames/s, 1 camera)')
    ax.set_ylabel('output rate (answers/s)')
    ax.set_title('Answers per second under camera load')
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)


def plot_cdfs(results, path):
    """Latency CDFs (stamp to receipt) of the 30 fps and the deadline runs, log time axis."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        if not (r['fps'] * r['cameras'] >= 30 or (r['fps'] == 10 and r['cameras'] == 1)):
            continue
        lat = summarize(r)['latencies_ms']
        if not lat:
            continue
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        ax.step(lat, ys, where='post', label=r['name'], lw=1.2,
                ls='-' if r['server'] == 'node' else '--')
    deadlines = {r['deadline_ms'] for r in results if r['deadline']}
    for d in deadlines:
        ax.axvline(d, color='grey', ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('latency, image stamp to receipt of its detections (ms)')
    ax.set_ylabel('fraction of answered frames')
    ax.set_title('Latency CDF (dotted: the deadline)')
    ax.legend(fontsize=6)
    fig.tight_layout()
    return plots.save(fig, path)


def markdown(results, info, figures):
    """Return the section's markdown."""
    la0, la1 = info['loadavg_start'], info.get('loadavg_end', ('?',) * 3)
    text = ['## Real-time serving under camera load (`make bench-rt`)', '',
            f'`{info.get("command", "python -m bench.bench_rt")}`: {len(results)} runs in '
            f'{info.get("minutes", 0):.1f} min on {info["cores"]} cores ({info["cpu"]}), torch '
            f'{info["torch"]} ({info["torch_threads_default"]} threads by default); load average '
            f'{la0[0]:.2f} at the start, {la1[0]:.2f} at the end (other work on the machine '
            'shows here). The load generator (a second process publishing real photos, reliable '
            'depth 1, and timing every answer) shares the cores with the node under test: its '
            'CPU use is in the last column. Late, drops and best-effort count every frame of a '
            'run, warm-up included; rates and latencies are over the measured window.', '']
    text += goals(results) + ['']
    text += table(results) + ['']
    for name, png in figures.items():
        text.append(f'![{name}](bench/{Path(png).name})')
    return '\n'.join(text) + '\n'


def report(results, info, out, markdown_path):
    """Write the plots and (unless markdown_path is '') the BENCHMARKS.md section."""
    out = Path(out)
    figures = {'output rate against input rate': plot_rates(results, out / 'rt_rate.png'),
               'latency CDFs': plot_cdfs(results, out / 'rt_latency_cdf.png')}
    (out / 'rt.md').write_text(markdown(results, info, figures))
    if not markdown_path:
        return
    md = Path(markdown_path)
    for png in figures.values():
        shutil.copy(png, md.parent / 'bench' / Path(png).name)
    write_markdown_block(md, SECTION, markdown(results, info, figures))


def plot_fairness(results, path):
    """Answers per camera in each fairness scene, one bar per camera."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    width, labelled = 0.2, set()
    for i, r in enumerate(results):
        per = summarize(r)['answered_per_camera']
        for c, n in enumerate(per):
            ax.bar(i + (c - (len(per) - 1) / 2) * width, n, width, color=f'C{c}',
                   label=None if c in labelled else f'camera {c}')
            labelled.add(c)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([r['name'].replace('node streamed ', '').replace(' ', '\n')
                        for r in results], fontsize=6)
    ax.set_ylabel('frames answered in the measured window')
    ax.set_title('Answers per camera (each camera publishes at the same rate)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    return plots.save(fig, path)


def fairness_report(results, info, out, markdown_path):
    """Write the fairness scenes' plot and (unless markdown_path is '') their section."""
    out = Path(out)
    png = plot_fairness(results, out / 'rt_fairness.png')
    la0, la1 = info['loadavg_start'], info.get('loadavg_end', ('?',) * 3)
    text = ['## Every camera served (`python -m bench.bench_rt --fairness`)', '',
            f'`{info.get("command", "python -m bench.bench_rt --fairness")}`: {len(results)} '
            f'runs in {info.get("minutes", 0):.1f} min on {info["cores"]} cores '
            f'({info["cpu"]}); load average {la0[0]:.2f} at the start, {la1[0]:.2f} at the '
            'end. Cameras of one model publish at the same rate, in the same instant '
            '(`together`: a stereo pair, a triggered rig) or with phases spread over a period, '
            'with and without a deadline, more frames than the node can serve. Answers per '
            'camera are counted by the subscriber over the measured window; the goal: the least '
            'served camera gets at least 80% of the answers of the most served.', '']
    text += ['| goal | measured | met |', '|---|---|---|'] + fairness_goals(results) + ['']
    text += table(results) + ['', f'![answers per camera](bench/{Path(png).name})']
    (out / 'rt_fairness.md').write_text('\n'.join(text) + '\n')
    if markdown_path:
        md = Path(markdown_path)
        shutil.copy(png, md.parent / 'bench' / Path(png).name)
        write_markdown_block(md, FAIR_SECTION, '\n'.join(text) + '\n')
