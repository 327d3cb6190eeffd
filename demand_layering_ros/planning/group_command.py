# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
`plan --pack A --pack B ...`: plan several models under one budget, write a group PLAN.yaml.

Each pack is profiled as for one model (PACK/PROFILE.json, or --profile per pack, or profiled
now); deadlines and frame periods are given per pack in the order of --pack (one value applies
to every pack). Prints one JSON line with the group's and each model's predictions; an
infeasible request exits 3 with the numbers that would be feasible.
"""

import json
from pathlib import Path
import sys

from demand_layering_ros.planning import planner, profiler
from demand_layering_ros.planning.timing import load_profile, save_profile


def per_pack(values, n, flag):
    """Return one value per pack: none given, one for all, or one each (else ValueError)."""
    if not values:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ValueError(f'{flag} takes one value per --pack ({n}) or one for all, '
                         f'got {len(values)}')
    return list(values)


def _profiles(args, packs):
    """Return {pack: profile dict}: given, PACK/PROFILE.json, or measured now and saved."""
    given = per_pack(args.profile, len(packs), '--profile')
    out = {}
    for pack, path in zip(packs, given):
        prof_path = Path(path) if path else Path(pack) / 'PROFILE.json'
        if path is None and not prof_path.is_file():
            print(f'plan: {prof_path} does not exist: profiling {pack} now', file=sys.stderr)
            prof = profiler.profile(pack, device=args.device, progress=True)
            save_profile(prof, prof_path)
        else:
            prof = load_profile(prof_path)
        out[pack] = prof
    return out


def run(args, packs):
    """Plan the group; return the exit status (2: bad option, 3: infeasible)."""
    try:
        if len(set(packs)) != len(packs):
            raise ValueError('give each pack once')
        if args.host_budget_mb:
            raise ValueError(f'--host-budget-mb {args.host_budget_mb:g} is not supported')
        if not args.out:
            raise ValueError('a group plan needs --out PLAN.yaml')
        if args.profile and len(args.profile) == 1:
            raise ValueError('--profile takes one PROFILE.json per --pack')
        deadlines = per_pack(args.deadline_ms, len(packs), '--deadline-ms')
        periods = per_pack(args.frame_period_ms, len(packs), '--frame-period-ms')
    except ValueError as e:
        print(f'plan: {e}', file=sys.stderr)
        return 2
    profiles = _profiles(args, packs)
    try:
        result = planner.plan_group({p: p for p in packs}, profiles, budget_mb=args.budget_mb,
                                    deadlines=dict(zip(packs, deadlines)),
                                    periods=dict(zip(packs, periods)), device=args.device)
    except planner.PlanInfeasible as e:
        print(f'plan: infeasible: {e}', file=sys.stderr)
        print(json.dumps({'infeasible': True, **e.numbers()}))
        return 3
    result.save(args.out)
    d = result.to_dict()
    print(json.dumps({
        'plan': str(args.out), 'predicted_peak_weight_mb': d['predicted_peak_weight_mb'],
        'fully_resident_mb': d['fully_resident_mb'],
        'arena_mb': round(d['arena_bytes'] / (1 << 20), 3),
        'models': {n: {k: m.get(k) for k in ('predicted_latency_ms', 'predicted_response_ms',
                                             'deadline_ms', 'split_bytes')}
                   | {'resident_units': len(m['resident_units'])}
                   for n, m in d['models'].items()}}))
    return 0
