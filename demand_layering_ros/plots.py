# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Pictures of a plan that a person would rather look at than read: PNG files, no display needed.

`tradeoff` draws weight memory against latency for every plan the planner considered, with the
chosen plan, the fully resident model and the paper's two operating points placed relative to
this model's fully resident point (the paper's absolute numbers were for another machine).
`timeline` draws one pass as read / copy / compute bars per unit, from the executor's
`stats()['timeline']` (or the planner's simulation of it), which shows at a glance where
compute waited for the disk.
"""

from pathlib import Path

from demand_layering_ros.layout.plan import Plan

READ_COLOUR = '#4c78a8'
COPY_COLOUR = '#f58518'
COMPUTE_COLOUR = '#54a24b'
PAPER = (  # Ji et al., RTSS 2022 (Jetson AGX Xavier, Darknet, NVMe)
    ('paper: -96.5% memory, +14.8% delay', 0.965, 'rel', 0.148),
    ('paper: -88.4% memory, < 1 ms delay', 0.884, 'ms', 1.0),
)


def pyplot():
    """Return matplotlib.pyplot on the file-only Agg backend (no display on a robot or in CI)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save(fig, path, dpi=110):
    """Write a figure as PNG (creating the folder) and free it; return the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def tradeoff(plan, path, title=None):
    """
    Draw the memory-latency trade-off of a plan (a Plan or its PLAN.yaml dict) into a PNG.

    Grey dots: every plan considered; line: the Pareto front; star: the chosen plan; square:
    fully resident; diamonds: the paper's operating points relative to the resident point.
    Returns the path.
    """
    if isinstance(plan, Plan):
        plan = plan.to_dict()
    plt = pyplot()
    alts = plan.get('alternatives') or []
    full = plan['fully_resident']
    full_mb, full_ms = full['weight_mb'], full['predicted_latency_ms']
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if alts:
        ax.scatter([a['weight_mb'] for a in alts], [a['latency_ms'] for a in alts], s=10,
                   color='#bbbbbb', label='plans considered', zorder=1)
        front = sorted((a for a in alts if a.get('pareto')), key=lambda a: a['weight_mb'])
        if front:
            ax.plot([a['weight_mb'] for a in front], [a['latency_ms'] for a in front], '-',
                    color='#777777', lw=1, label='best trade-off', zorder=2)
    ax.scatter([full_mb], [full_ms], marker='s', s=70, color=READ_COLOUR, zorder=4,
               label=f'fully resident ({full_mb:.1f} MB, {full_ms:.1f} ms)')
    for (label, reduction, how, delay), colour in zip(PAPER, ('#b279a2', '#e45756')):
        mem = full_mb * (1 - reduction)
        lat = full_ms * (1 + delay) if how == 'rel' else full_ms + delay
        ax.scatter([mem], [lat], marker='D', s=55, facecolors='none', edgecolors=colour,
                   linewidths=1.5, zorder=4, label=label)
    ax.scatter([plan['predicted_peak_weight_mb']], [plan['predicted_latency_ms']], marker='*',
               s=220, color=COMPUTE_COLOUR, edgecolors='black', zorder=5,
               label=f'chosen ({plan["predicted_peak_weight_mb"]:.1f} MB, '
                     f'{plan["predicted_latency_ms"]:.1f} ms)')
    req = plan.get('request') or {}
    if req.get('budget_mb'):
        ax.axvline(req['budget_mb'], color='#999999', ls='--', lw=1, label='budget')
    if req.get('deadline_ms'):
        ax.axhline(req['deadline_ms'], color='#999999', ls=':', lw=1, label='deadline')
    ax.set_xlabel('peak weight memory (MB)')
    ax.set_ylabel('predicted latency per frame (ms)')
    name = Path(str(plan.get('pack') or '')).name or plan.get('model', '')
    ax.set_title(title or f'{name} on {plan.get("device", "")}: memory vs delay')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc='upper right')
    fig.tight_layout()
    return save(fig, path)


def timeline(rows, path, title=None):
    """
    Draw one pass's pipeline (per-unit dicts, seconds from pass start) into a PNG; return its path.

    Each unit is one row, in first-use order: read (blue), copy (orange) and compute (green)
    spans; rows without a read are resident units.
    """
    plt = pyplot()
    rows = [r for r in rows if r.get('compute_start') is not None]
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(9, min(2.0 + 0.12 * n, 14)))
    spans = (('read', READ_COLOUR), ('copy', COPY_COLOUR), ('compute', COMPUTE_COLOUR))
    # Reads done between frames (read-ahead after the previous pass) can start seconds before
    # this pass; draw them clipped at a short left margin so the pass itself stays readable.
    end = max([r.get('compute_end') or 0.0 for r in rows] + [1e-3])
    left = -0.08 * end
    used = set()
    early = False
    for y, r in enumerate(rows):
        for what, colour in spans:
            a, b = r.get(f'{what}_start'), r.get(f'{what}_end')
            if a is None or b is None:
                continue
            if a < left:
                early = True
                a = left
                if b < left:
                    b = left + 0.004 * end
            ax.barh(y, max(b - a, 1e-6) * 1e3, left=a * 1e3, height=0.8, color=colour,
                    label=what if what not in used else None)
            used.add(what)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(left * 1e3, end * 1.02e3)
    if early:
        ax.axvline(0, color='grey', linewidth=0.8)
        ax.text(left * 1e3, n - 0.5, ' reads left of 0: done before the pass (between frames)',
                fontsize=7, va='bottom', color='grey')
    if len(rows) <= 40:
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([str(r.get('name', r.get('unit'))) for r in rows], fontsize=6)
    else:
        ax.set_ylabel('unit (first-use order)')
    ax.set_xlabel('time from pass start (ms)')
    ax.set_title(title or 'pipeline timeline')
    ax.grid(True, axis='x', alpha=0.3)
    if used:
        ax.legend(fontsize=8, loc='upper right')
    fig.tight_layout()
    return save(fig, path)
