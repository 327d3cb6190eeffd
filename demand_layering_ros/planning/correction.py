# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A profile corrected by what the runtime measured: the online correction of a plan's latency.

When the passes a plan runs persistently take `ratio` times the latency it expected
(`runtime.feedback`), the profile no longer describes the machine. One number cannot tell
compute from the disk, so every time the profile holds is scaled by it: the corrected profile
predicts the running plan at what was measured, and a new plan for a deadline takes the memory
the machine as it is now needs. The correction is cumulative and recorded (`correction`).
"""

import copy


def _scale_points(points, ratio):
    for p in points or []:
        for key in ('seconds', 'seconds_streamed'):
            if p.get(key):
                p[key] *= ratio
        for key in ('mb_per_s', 'mb_per_s_streamed'):
            if p.get(key):
                p[key] = round(p[key] / ratio, 1)


def corrected_profile(prof, ratio, why=''):
    """Return a copy of PROFILE dict `prof` with every time `ratio` times longer."""
    if not ratio or ratio <= 0:
        raise ValueError(f'a correction ratio must be positive, got {ratio!r}')
    out = copy.deepcopy(prof)
    steps = out.get('steps') or {}
    for key in ('busy_ms', 'gap_ms'):
        if key in steps:
            steps[key] = [v * ratio for v in steps[key]]
    if steps.get('tail_ms') is not None:
        steps['tail_ms'] *= ratio
    for key in ('resident_latency_ms', 'hooked_latency_ms'):
        if out.get(key) is not None:
            out[key] *= ratio
    out['resident_latency_all_ms'] = [v * ratio for v in out.get('resident_latency_all_ms')
                                      or []]
    mutual = out.get('contention') or {}
    if mutual.get('alone_all_ms'):
        mutual['alone_all_ms'] = [v * ratio for v in mutual['alone_all_ms']]
    disk = out.get('disk') or {}
    _scale_points(disk.get('points'), ratio)
    for r in disk.get('rounds') or []:
        _scale_points(r.get('points'), ratio)
    _scale_points((out.get('h2d') or {}).get('points'), ratio)
    ex = out.get('executor') or {}
    for key in ('overhead_ms_per_slot', 'overhead_ms_per_pass', 'handoff_ms'):
        if ex.get(key) is not None:
            ex[key] *= ratio
    check = out.get('checksum') or {}
    if check.get('bytes_per_s'):
        check['bytes_per_s'] /= ratio
    before = (prof.get('correction') or {}).get('ratio', 1.0)
    out['correction'] = {'ratio': round(before * ratio, 6), 'last_ratio': round(ratio, 6),
                         'why': why}
    return out
