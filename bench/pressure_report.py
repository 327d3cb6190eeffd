# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The memory-pressure benchmark's figures: one summary per phase, a table, the plot, markdown.

Times are seconds from the robot's start (its first step comes `before_s` later). The node's
memory is the cgroup's usage less the robot's anonymous bytes: what the kernel charges the
node, page cache and shared buffers included. A reaction is the time from a robot step's start
to the node's memory falling by half the step below where it stood just before the step,
counted for the steps after which the node re-planned (the kernel reclaiming its page cache near
the limit is not the node's doing).
"""

import json
from pathlib import Path
import shutil

from bench.report import write_markdown_block
from demand_layering_ros import plots
from demand_layering_ros.quantiles import median, percentile
from demand_layering_ros.sizes import MB

SECTION = 'pressure'
WINDOW_S = 8.0          # the latency windows before the pressure and at the end
NOISE_MB = 15.0         # how far one run's peak moves with DDS buffers and the allocator


def _events(row, kind):
    return [e for e in row['robot_events'] if e['event'] == kind]


def _origin(row):
    start = _events(row, 'start')
    return start[0]['t'] if start else (row['samples'][0][0] if row['samples'] else 0.0)


def node_memory(row):
    """Return [(t, node bytes)]: the cgroup's usage less the robot's, t from the robot start."""
    t0 = _origin(row)
    return [(t - t0, usage - robot) for t, usage, robot in row['samples']]


def _latencies(row, start, end):
    t0 = _origin(row)
    return [lat for t, lat in row['answers'] if start <= t - t0 < end]


def reactions(row):
    """Return [(step start s, reaction s or None)]: each robot step to the node's memory down."""
    mem = node_memory(row)
    t0, steps = _origin(row), _events(row, 'step')
    every = row['scene'].get('every_s', 2.0)
    drop = row['scene']['step_mb'] * MB / 2
    died = _ended(row, 'node')[1] if _ended(row, 'node')[0].get('oom_killed') else None
    out = []
    for i, e in enumerate(steps):
        s = e['started'] - t0
        end = steps[i + 1]['started'] - t0 if i + 1 < len(steps) else s + every
        if died is not None:
            end = min(end, died - 0.1)          # a killed node's memory going is no reaction
        before = [m for t, m in mem if s - 1.0 <= t < s]
        if not before or not _shrank(row, s, end):
            out.append((s, None))
            continue
        level = median(before)
        hit = next((t for t, m in mem if s < t < end and m < level - drop), None)
        out.append((s, None if hit is None else hit - s))
    return out


def _shrank(row, start, end):
    """Return True when the node's auto_shrinks rose between `start` and `end` (+1 s)."""
    t0 = _origin(row)
    counts = [(t - t0, int(v.get('auto_shrinks') or 0)) for t, v in row['diagnostics']]
    before = [c for t, c in counts if t <= start]
    after = [c for t, c in counts if t <= end + 1.0]
    return bool(before and after and after[-1] > before[-1])


def _budget_series(row):
    """Return [(t, budget MiB in force)] from the node's /diagnostics."""
    t0, out = _origin(row), []
    for t, values in row['diagnostics']:
        v = values.get('budget_in_force_mb', values.get('budget_mb'))
        if row['phase'] == 'resident':
            v = row['scene']['weights_mb']        # memory_budget_mb 0, every unit resident
        try:
            out.append((t - t0, float(v)))
        except (TypeError, ValueError):
            pass
    return out


def _ended(row, role):
    t0 = _origin(row)
    p = next(p for p in row['processes'] if p['role'] == role)
    return p, (p['ended'] - t0 if p.get('ended') else None)


def _pct(values, q):
    return percentile(values, q) * 1e3 if values else None


def _last_diag(row):
    return row['diagnostics'][-1][1] if row['diagnostics'] else {}


def summarize(row):
    """Return one phase's figures (ms, MiB, s) and a one-line account of it."""
    sc, t0 = row['scene'], _origin(row)
    steps = [e['t'] for e in _events(row, 'step')]
    first = _events(row, 'step')[0]['started'] - t0 if steps else None
    freed = _events(row, 'free')
    freed = freed[0]['t'] - _origin(row) if freed else None
    done = _events(row, 'done')
    end = done[0]['t'] - _origin(row) if done else None
    node, node_end = _ended(row, 'node')
    robot, robot_end = _ended(row, 'robot')
    lat = [lat for _, lat in row['answers']]
    before = _latencies(row, first - WINDOW_S, first) if first else []
    after = _latencies(row, end - WINDOW_S, end) if end and not node.get('oom_killed') else []
    budget = _budget_series(row)
    b_before = [b for t, b in budget if first and t < first]
    b_during = [b for t, b in budget if first and freed and first <= t < freed + 1.0]
    b_end = [b for t, b in budget if end and t <= end]
    diag = _last_diag(row)
    react = [r for _, r in reactions(row) if r is not None]
    out = {
        'phase': row['phase'], 'model': row['model'], 'limit_mb': row['limit_bytes'] / MB,
        'oom_kills': row['oom_kills'],
        'node': _fate(node, node_end),
        'node_killed_at_s': node_end if node.get('oom_killed') else None,
        'robot': _fate(robot, robot_end),
        'robot_killed_at_s': robot_end if robot.get('oom_killed') else None,
        'killed_pids': [p['pid'] for p in row['processes'] if p.get('oom_killed')],
        'frames_published': len(row['answers']),
        'frames_out_diagnostics': int(row['camera'].get('frames_out', 0) or 0),
        'latency_p50_ms': _pct(lat, 50), 'latency_p99_ms': _pct(lat, 99),
        'before_p50_ms': _pct(before, 50), 'after_p50_ms': _pct(after, 50),
        'held_p50_ms': _pct(_latencies(row, steps[-1] - t0, freed), 50) if steps and freed and
        not node.get('oom_killed') else None,
        'budget_before_mb': b_before[-1] if b_before else None,
        'budget_min_mb': min(b_during) if b_during else None,
        'budget_end_mb': b_end[-1] if b_end else None,
        'auto_shrinks': int(diag.get('auto_shrinks', 0) or 0),
        'auto_grows': int(diag.get('auto_grows', 0) or 0),
        'reaction_p50_ms': _pct(react, 50), 'reaction_max_ms': max(react) * 1e3 if react
        else None, 'reactions': len(react),
        'node_reaction_p50_ms': _float(diag.get('shrink_reaction_p50_ms')),
        'node_reaction_max_ms': _float(diag.get('shrink_reaction_max_ms')),
        'cgroup_peak_mb': row['cgroup_peak_bytes'] / MB,
        'published_in_every_stage': _every_stage(row, first, freed, end),
    }
    out['latency_back'] = None if None in (out['before_p50_ms'], out['after_p50_ms']) else \
        _yes(out['after_p50_ms'] <= 1.1 * out['before_p50_ms'])
    out['budget_grew_back'] = None if None in (out['budget_min_mb'], out['budget_end_mb']) \
        else _yes(out['budget_end_mb'] > out['budget_min_mb'] + sc['step_mb'])
    out['line'] = _line(out)
    return out


def _yes(flag):
    return 'yes' if flag else 'no'


def _fate(proc, ended):
    """Return 'survived', 'OOM-killed at N s' or how else the process ended."""
    if proc.get('oom_killed'):
        return 'OOM-killed' + (f' at {ended:.1f} s' if ended is not None else '')
    return 'survived' if proc.get('returncode') in (0, -2) else f'exit {proc.get("returncode")}'


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _every_stage(row, first, freed, end):
    """Return True when the node answered before, under and after the robot's pressure."""
    if None in (first, freed, end):
        return False
    return all(_latencies(row, a, b) for a, b in ((first - WINDOW_S, first), (first, freed),
                                                  (freed, end)))


def _f(v, fmt='{:.0f}'):
    return '-' if v is None else fmt.format(v)


def _line(s):
    return (f'{s["model"]} {s["phase"]}: node {s["node"]}, robot {s["robot"]}, {s["oom_kills"]} '
            f'OOM kills; {s["frames_published"]} frames, p50 {_f(s["latency_p50_ms"])} ms, '
            f'before/after {_f(s["before_p50_ms"])}/{_f(s["after_p50_ms"])} ms; budget '
            f'{_f(s["budget_before_mb"])} -> {_f(s["budget_min_mb"])} -> '
            f'{_f(s["budget_end_mb"])} MiB; reaction p50 {_f(s["reaction_p50_ms"])} ms '
            f'(node {_f(s["node_reaction_p50_ms"])}); peak {s["cgroup_peak_mb"]:.0f} of '
            f'{s["limit_mb"]:.0f} MiB')


def fps_series(row):
    """Return [(second from the robot start, answers in that second)]."""
    t0 = _origin(row)
    counts = {}
    for t, _ in row['answers']:
        k = int((t - t0) // 1)
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return []
    return [(k + 0.5, counts.get(k, 0)) for k in range(min(counts), max(counts) + 1)]


def plot(rows, path):
    """Draw memory over time (limit, cgroup, node, robot) per phase, answers per second below."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(2, len(rows), figsize=(3.3 * len(rows), 4.4), sharex='col',
                             squeeze=False, gridspec_kw={'height_ratios': (2.2, 1)})
    for i, row in enumerate(rows):
        top, bottom = axes[0][i], axes[1][i]
        t0 = _origin(row)
        mem = node_memory(row)
        top.plot([t for t, _ in mem], [m / MB for _, m in mem], color='C0', lw=1, label='node')
        top.plot([t - t0 for t, _, _ in row['samples']], [r / MB for _, _, r in row['samples']],
                 color='C1', lw=1, label='robot')
        top.plot([t - t0 for t, _, _ in row['samples']], [u / MB for _, u, _ in row['samples']],
                 color='0.55', lw=0.8, label='cgroup')
        top.axhline(row['limit_bytes'] / MB, color='k', ls='--', lw=0.8, label='limit')
        top.set_ylim(0, row['limit_bytes'] / MB * 1.08)
        s = summarize(row)
        for who, key, colour in (('node', 'node_killed_at_s', 'C0'),
                                 ('robot', 'robot_killed_at_s', 'C1')):
            if s[key] is not None:
                top.axvline(s[key], color=colour, ls=':', lw=1.2)
                top.text(s[key], row['limit_bytes'] / MB * (0.5 if who == 'node' else 0.25),
                         f' {who}\n OOM-killed', color=colour, fontsize=6)
        top.set_title(f'{row["model"]}: {row["phase"]}', fontsize=8)
        fps = fps_series(row)
        bottom.bar([t for t, _ in fps], [n for _, n in fps], width=1.0, color='C2')
        bottom.set_xlabel('s from the robot start', fontsize=7)
        for ax in (top, bottom):
            ax.tick_params(labelsize=6)
            ax.grid(True, alpha=0.3)
        if i == 0:
            top.set_ylabel('MiB', fontsize=7)
            bottom.set_ylabel('frames/s', fontsize=7)
            top.legend(fontsize=6, loc='lower left')
    fig.tight_layout()
    return plots.save(fig, path, dpi=80)


FIELDS = [
    ('node', 'node', '{}'), ('robot process', 'robot', '{}'),
    ('OOM kills in the cgroup', 'oom_kills', '{:d}'),
    ('frames published', 'frames_published', '{:d}'),
    ('latency p50 / p99 (ms)', ('latency_p50_ms', 'latency_p99_ms'), '{:.0f} / {:.0f}'),
    ('median latency before the pressure / at the end (ms)', ('before_p50_ms', 'after_p50_ms'),
     '{:.0f} / {:.0f}'),
    ('median latency at the most pressure (ms)', 'held_p50_ms', '{:.0f}'),
    ('median latency back within 10%', 'latency_back', '{}'),
    ('weight budget before / least / at the end (MiB)',
     ('budget_before_mb', 'budget_min_mb', 'budget_end_mb'), '{:.0f} / {:.0f} / {:.0f}'),
    ('shrinks / grows (keep_free_mb)', ('auto_shrinks', 'auto_grows'), '{:d} / {:d}'),
    ('budget grew back', 'budget_grew_back', '{}'),
    ('robot step to node memory down, p50 / max (ms)', ('reaction_p50_ms', 'reaction_max_ms'),
     '{:.0f} / {:.0f}'),
    ("the node's shrink_reaction p50 / max (ms)",
     ('node_reaction_p50_ms', 'node_reaction_max_ms'), '{:.0f} / {:.0f}'),
    ("cgroup's peak / limit (MiB)", ('cgroup_peak_mb', 'limit_mb'), '{:.0f} / {:.0f}'),
]


def _cell(s, keys, fmt):
    keys = keys if isinstance(keys, tuple) else (keys,)
    values = [s.get(k) for k in keys]
    if any(v is None for v in values):
        parts = fmt.split(' / ')
        return ' / '.join('-' if v is None else p.format(v) for v, p in zip(values, parts))
    return fmt.format(*values)


def table(summaries):
    """Return the markdown table: one column per phase."""
    head = '| | ' + ' | '.join(f'{s["model"]} {s["phase"]}' for s in summaries) + ' |'
    lines = [head, '|---' * (len(summaries) + 1) + '|']
    for label, keys, fmt in FIELDS:
        lines.append(f'| {label} | ' + ' | '.join(_cell(s, keys, fmt) for s in summaries) + ' |')
    return lines


def _scene_text(rows, info):
    """Return the method paragraph: the limit, the robot's schedule, the phases."""
    sc, a = rows[0]['scene'], info['args']
    load = (info['loadavg_start'][0], info['loadavg_end'][0])
    return (f'`{info["command"]}`: {len(rows)} phases in {info["minutes"]:.1f} min on '
            f'{info["cores"]} cores ({info["cpu"]}); load average {load[0]:.2f} at the start, '
            f'{load[1]:.2f} at the end (other work on the machine shows here), '
            f'{info.get("date", "")}. The detector node (`python -m '
            'demand_layering_ros.ros.node`, config/detector.yaml) serves a replay camera of '
            f'real photos at {a["rate"]:g} fps; it and a robot process run in one memory '
            f'cgroup (cgroup v{info["cgroup_version"]}) with a hard limit. The robot waits '
            f'{a["before_s"]:g} s, then takes +{sc["step_mb"]:g} MiB every {a["every_s"]:g} s '
            f'up to {sc["max_mb"]:g} MiB (each step a private mapping with every page '
            f'written), holds it {a["hold_s"]:g} s after the last step, frees it, and lives '
            f'{a["after_s"]:g} s more. The first phase sets the limit: its peak after a few '
            'seconds of serving plus a headroom; the next phases start under the same limit. '
            'Latency: receipt of the detections minus the camera stamp, every answer; '
            f'before/at the end: the median over the {WINDOW_S:g} s before the first step and '
            f'the last {WINDOW_S:g} s.')


def _why(sc, summaries):
    """Say why the limit and the steps separate the phases (or why they cannot, for a model)."""
    head, top, fixed = sc['headroom_mb'], sc['max_mb'], sc['fixed_budget_mb']
    room = sc['weights_mb'] + head      # above the node without its weights
    floor = next((s['budget_min_mb'] for s in summaries if s['phase'] == 'keep_free'
                  and s['budget_min_mb'] is not None), None)
    back = sc['weights_mb'] - (floor or 0)
    if back < 2 * NOISE_MB:
        return (f"Scaled to its weights: the robot's {top:g} MiB exceed the {head:g} MiB the "
                'limit leaves above the resident node. The weights the node can give back '
                f"({back:.0f} MiB) are about the {NOISE_MB:g} MiB a run's peak moves with DDS "
                'and the allocator: this model cannot decide the comparison, yolov3 does. '
                'Growing back needs keep_free_mb + 32 MiB free for 2 s, more than the room of '
                'this limit.')
    text = (f'Why these numbers: the limit leaves {head:g} MiB above the resident node, so '
            f"every node serves before the pressure; the robot's {top:g} MiB exceed that room "
            f'by {top - head:g} MiB (the resident node cannot stay), and with the fixed '
            f"budget's {fixed:g} MiB they exceed the {room:.0f} MiB the limit leaves above the "
            f'node without weights by {fixed + top - room:.0f} MiB.')
    if floor is not None:
        text += (f' The keep_free node can give back down to {floor:.0f} MiB, leaving '
                 f'{room - top - floor:.0f} MiB at the most pressure for its activations and '
                 'the steps it has not answered yet; keep_free_mb '
                 f"{sc['keep_free_mb']:g} covers the activation peak (~40 MiB for yolov3) and "
                 'two steps: a shrink waits for the pass in flight, then reloads the residents '
                 'the new plan keeps.')
    return text


def _reading(summaries, rate, plotted):
    """Return the keep_free phase's reaction against its bound, and its re-plans, in words."""
    s = next((s for s in summaries if s['phase'] == 'keep_free'), None)
    if s is None or s['held_p50_ms'] is None or s['reaction_max_ms'] is None:
        return []
    bound = 1000.0 / rate + s['held_p50_ms']
    node = s['node_reaction_max_ms']
    return ['The bound of the reaction, one frame period plus one pass at the budget under the '
            f'most '
            f"pressure (its median latency): {bound:.0f} ms. From a robot step to the node's "
            f"memory down: p50 {s['reaction_p50_ms']:.0f}, max {s['reaction_max_ms']:.0f} ms "
            f"({'within' if s['reaction_max_ms'] <= bound else 'over'} the bound). The node's "
            'own figure runs from its reading to the re-plan done, the residents the new plan '
            f"keeps read back in: max {node:.0f} ms. {s['auto_shrinks']} shrinks answered the "
            "robot's steps, each a re-plan between two frames that frees the old configuration "
            'and reads back what the new one keeps' +
            (" (the dips of the node's memory in the plot)." if plotted else '.'), '']


def markdown(rows, info, png):
    """Return the section's markdown."""
    text = ['## Memory pressure: the rest of the robot takes memory (`make bench-pressure`)', '',
            _scene_text(rows, info), '']
    by_model = {}
    for r in rows:
        by_model.setdefault(r['model'], []).append(r)
    for model, mrows in by_model.items():
        sc = mrows[0]['scene']
        text += [f'### {model} ({sc["pack"]}, {sc["weights_mb"]:.1f} MiB of weights)', '',
                 f'Limit {mrows[0]["limit_bytes"] / MB:.0f} MiB (the resident node\'s peak + '
                 f'{sc["headroom_mb"]:g} MiB); robot +{sc["step_mb"]:g} MiB steps up to '
                 f'{sc["max_mb"]:g} MiB; fixed budget {sc["fixed_budget_mb"]:g} MiB; '
                 f'keep_free_mb {sc["keep_free_mb"]:g}.', '']
        summaries = [summarize(r) for r in mrows]
        text += [_why(sc, summaries), ''] + table(summaries) + ['']
        text += _reading(summaries, info['args']['rate'], model == rows[0]['model'])
    text.append(f'![memory and frames per second under pressure](bench/{Path(png).name})')
    return '\n'.join(text) + '\n'


def report(rows, info, args, out):
    """Write results.json, the plot and (with --markdown) the section; return the exit code."""
    out = Path(out)
    info['args'] = {k: v for k, v in vars(args).items() if k != 'photos'}
    summaries = [summarize(r) for r in rows]
    (out / 'results.json').write_text(json.dumps({'machine': info, 'summaries': summaries,
                                                  'phases': rows}))
    plotted = [r for r in rows if r['model'] == rows[0]['model']]
    png = plot(plotted, out / 'pressure.png')
    (out / 'pressure.md').write_text(markdown(rows, info, png))
    print(f'[bench-pressure] {out}/results.json, {png}')
    if args.markdown:
        md = Path(args.markdown)
        shutil.copy(png, md.parent / 'bench' / Path(png).name)
        write_markdown_block(md, SECTION, markdown(rows, info, png))
    return 0
