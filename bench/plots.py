# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The benchmark's figures: latency vs peak memory, the memory-latency trade-off, one pass.

Matplotlib is imported only when a plot is drawn (Agg, no display), so the worker processes
never pay for it; a plot that fails is reported and skipped, never losing the measurements.
"""

import math
from pathlib import Path
import sys

from bench.configs import CONFIGS, DL_KINDS, kind_of, MARKERS, ORDER
from demand_layering_ros import plots


def _grid(n, plt, w=3.2, h=2.6):
    cols = min(5, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(w * cols, 7.0), h * rows + 0.9),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis('off')
    return fig, list(axes.flat)


def _log_if_spread(ax, values, ratio=8.0):
    from matplotlib.ticker import FuncFormatter
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > ratio:
        ax.set_yscale('log')

        def label(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
            return f'{v:g}' if lead in (1, 2, 5) else ''

        ax.yaxis.set_major_formatter(FuncFormatter(label))
        ax.yaxis.set_minor_formatter(FuncFormatter(label))


def _points(model):
    for name, c in (model.get('configs') or {}).items():
        s = c.get('summary') or {}
        if s.get('status') == 'ok':
            yield name, kind_of(name), s


def _panels(results):
    """Return (figure, axes, models): one panel per model that was measured; None if none."""
    plt = plots.pyplot()
    models = [m for m in results['models'].values() if m.get('configs')]
    if not models:
        return None
    fig, axes = _grid(len(models), plt)
    return fig, axes, models


def _mark_point(ax, kind, x, y):
    """Draw one configuration's point in its marker and colour; return the handle."""
    marker, colour = MARKERS[kind]
    return ax.scatter([x], [y], marker=marker, color=colour, s=46, edgecolors='black',
                      linewidths=0.4, zorder=3)


def _label(ax, title, xlabel):
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel('median latency (ms)', fontsize=7)


def _finish(fig, handles, labels, title, path):
    """Add the shared legend and the title, lay the panels out and save the PNG."""
    fig.legend(handles, labels, loc='lower center', ncol=min(4, len(handles)), fontsize=7,
               frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return plots.save(fig, path, dpi=80)


def plot_latency_memory(results, path):
    """Latency vs peak process memory (cgroup, page cache included), one panel per model."""
    panels = _panels(results)
    if panels is None:
        return None
    fig, axes, models = panels
    seen = {}
    for ax, m in zip(axes, models):
        for name, kind, s in _points(m):
            x = s.get('peak_mb') if s.get('peak_mb') is not None else s.get('peak_weight_mb')
            if x is None:
                continue
            seen.setdefault(kind, _mark_point(ax, kind, x, s['median_ms']))
        _log_if_spread(ax, [s['median_ms'] for _, _, s in _points(m)])
        _label(ax, m['key'], 'peak memory incl. page cache (MB)')
    keys = [k for k in ORDER if k in seen]
    return _finish(fig, [seen[k] for k in keys], [CONFIGS[k][0] for k in keys],
                   f'latency vs peak memory ({_where(results)})', path)


def plot_tradeoff(results, path):
    """Weight memory vs latency: measured points, the planner's predicted best trade-off."""
    panels = _panels(results)
    if panels is None:
        return None
    fig, axes, models = panels
    seen = {}
    for ax, m in zip(axes, models):
        plan = (m.get('plans') or {}).get('dl-smallest') or {}
        front = sorted((a for a in plan.get('alternatives') or [] if a.get('pareto')),
                       key=lambda a: a['weight_mb'])
        if front:
            h, = ax.plot([a['weight_mb'] for a in front], [a['latency_ms'] for a in front],
                         '--', color='#999999', lw=1, zorder=1)
            seen.setdefault('predicted', h)
        dl = sorted(((s['peak_weight_mb'], s['median_ms']) for _, k, s in _points(m)
                     if k in DL_KINDS and s.get('peak_weight_mb') is not None))
        if dl:
            ax.plot([a for a, _ in dl], [b for _, b in dl], '-', color='#54a24b', lw=1.2,
                    zorder=2)
        for name, kind, s in _points(m):
            if s.get('peak_weight_mb') is None or kind == 'mmap':
                continue
            seen.setdefault(kind, _mark_point(ax, kind, s['peak_weight_mb'], s['median_ms']))
        _log_if_spread(ax, [s['median_ms'] for _, k, s in _points(m) if k != 'mmap']
                       + [a['latency_ms'] for a in front])
        _label(ax, m['key'], 'peak weight memory (MB)')
    keys = [k for k in ('predicted',) + ORDER if k in seen]
    labels = ['planner: predicted best trade-off' if k == 'predicted' else CONFIGS[k][0]
              for k in keys]
    return _finish(fig, [seen[k] for k in keys], labels,
                   f'memory-latency trade-off, measured ({_where(results)})', path)


def timeline_model(results):
    """
    Return (model key, config, timeline rows) for the timeline plot, or None.

    The smallest plan of the anchors' model when its pass has a readable number of rows,
    else of the model with the fewest rows.
    """
    found = []
    for key, m in results['models'].items():
        for config in ('dl-smallest', 'naive'):
            rows = ((m.get('configs') or {}).get(config) or {}).get('timeline')
            if rows:
                found.append((key, config, rows))
                break
    if not found:
        return None
    for key in ('fasterrcnn_resnet50_fpn', 'ssd300_vgg16', 'yolov3'):
        for f in found:
            if f[0] == key and len(f[2]) <= 100:
                return f
    return min(found, key=lambda f: len(f[2]))


def plot_timeline(results, path):
    """One pass of the smallest plan as read / copy / compute bars (plots.timeline)."""
    found = timeline_model(results)
    if found is None:
        return None
    key, config, rows = found
    s = results['models'][key]['configs'][config]['summary']
    shown = max((r.get('compute_end') or 0.0) for r in rows) * 1e3
    title = (f'{key}, {CONFIGS[kind_of(config)][0]}: one pass of {shown:.0f} ms '
             f'(median {s.get("median_ms"):.0f} ms; {_where(results)})')
    return plots.timeline(rows, path, title=title)


def _where(results):
    m = results.get('machine') or {}
    dev = results.get('settings', {}).get('device', 'cpu')
    if dev.startswith('cuda'):
        return m.get('device_name') or 'GPU'
    return f'{m.get("cores", "?")}-core CPU'


def plot_all(results, out_dir, prefix):
    """Write the three PNGs; return {name: path} of those written."""
    out = {}
    for name, fn in (('latency_memory', plot_latency_memory), ('tradeoff', plot_tradeoff),
                     ('timeline', plot_timeline)):
        try:
            p = fn(results, Path(out_dir) / f'{prefix}_{name}.png')
        except Exception as e:  # noqa: B902 - a plot must not lose the measurements
            print(f'[bench] plot {name} failed: {e!r}', file=sys.stderr)
            p = None
        if p is not None:
            out[name] = p
    return out
