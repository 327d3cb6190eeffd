# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The plans each streaming configuration runs, and the pipeline bound it is held against.

Naive demand loading is the executor at prefetch depth 0; this project's configurations are the
planner's smallest plan, its <= 1 ms plan and budgets between. The bound is a replay of one pass
with the profiled per-call compute times, an unlimited arena and the disk's measured bandwidth.
"""

from bench.configs import BenchError
from demand_layering_ros.sizes import mib


def naive_plan(pk):
    """
    Return the plan of naive demand loading: nothing resident, prefetch depth 0.

    With depth 0 the executor's loader reads a unit only once compute asks for it, so every
    read is waited for in full: the paper's sequential baseline, in the smallest arena that
    replays the pass at that depth.
    """
    from demand_layering_ros.layout import arena
    items = [arena.Item(u.name, u.length, u.first_call, u.last_call) for u in pk.units
             if u.calls and not u.used_outside_forward]
    layout = arena.min_layout(items, prefetch_depths=(0,)) if items else None
    return {'resident_units': [], 'arena_bytes': layout.capacity if layout else 0,
            'prefetch_depth': 0, 'split_bytes': 0}


def _plan_key(plan):
    return (tuple(sorted(plan.get('resident_units') or [])), int(plan.get('arena_bytes') or 0),
            plan.get('prefetch_depth'), int(plan.get('split_bytes') or 0))


def make_plans(pk, prof, n_budgets):
    """
    Return {config name: plan dict}: smallest, <= 1 ms overhead, and n budgets between.

    Budgets are spaced geometrically between the smallest plan's predicted weight memory and the
    1 ms plan's (or the whole model's when the two coincide). A plan equal to one already chosen
    is recorded as {'same_as': name} so it is measured once.
    """
    from demand_layering_ros.planning import planner
    plans = {}
    smallest = planner.plan(pk, prof).to_dict()
    plans['dl-smallest'] = smallest
    full_ms = (smallest.get('fully_resident') or {}).get('predicted_latency_ms') \
        or prof['resident_latency_ms']
    try:
        plans['dl-1ms'] = planner.plan(pk, prof, deadline_ms=full_ms + 1.0).to_dict()
    except planner.PlanInfeasible as e:
        plans['dl-1ms'] = {'infeasible': str(e)}
    lo = smallest['predicted_peak_weight_mb']
    hi = plans['dl-1ms'].get('predicted_peak_weight_mb') or lo
    if hi < lo * 1.2:
        hi = mib(pk.total_bytes, 3)
    for j in range(1, n_budgets + 1):
        budget = round(lo * (hi / lo) ** (j / (n_budgets + 1)), 2) if lo > 0 else hi
        name = f'dl-budget-{budget:g}'
        try:
            plans[name] = planner.plan(pk, prof, budget_mb=budget).to_dict()
            plans[name]['budget_mb'] = budget
        except planner.PlanInfeasible as e:
            plans[name] = {'infeasible': str(e), 'budget_mb': budget}
    seen = {}
    for name, p in plans.items():
        if 'infeasible' in p:
            continue
        key = _plan_key(p)
        if key in seen:
            plans[name] = dict(p, same_as=seen[key])
        else:
            seen[key] = name
    return plans


def pipeline_bound_ms(pk, prof, bytes_per_s, resident_units=()):
    """
    Return the pipeline bound (ms) of one pass for a resident set, from a planner profile.

    The units not resident arrive from the disk one after another in first-use order at
    `bytes_per_s`; call s starts once its unit has arrived and call s-1 has ended plus the
    weight-free gap before it (gaps overlap the wait); the tail follows the last call. The
    profile's per-call busy and gap times were measured with the model resident, so the bound
    has no executor overhead and an arena that never makes the reader wait.
    """
    from demand_layering_ros.planning.timing import pipeline_bound_ms as bound
    from demand_layering_ros.planning.schedule import Schedule
    steps = prof['steps']
    if list(steps['unit']) != list(pk.call_order):
        raise BenchError(f'profile of {prof.get("pack", {}).get("path")} does not match pack '
                         f'{pk.path} (call order differs)')
    units = list(pk.units)
    sched = Schedule(names=[u.name for u in units], lengths=[u.length for u in units],
                     first=[None] * len(units), last=[None] * len(units),
                     call_order=list(pk.call_order), pack_path=str(pk.path),
                     forced=frozenset(i for i, u in enumerate(units) if u.used_outside_forward))
    resident = {sched.index(n) for n in resident_units}
    return bound(sched, steps['busy_ms'], steps['gap_ms'], steps.get('tail_ms') or 0.0,
                 resident, bytes_per_s)


def executor_plan(plan):
    """Return the keys of a plan dict the executor reads (the plan files' other keys stay)."""
    keys = ('resident_units', 'arena_bytes', 'split_bytes', 'prefetch_depth', 'staging',
            'predicted_latency_ms', 'predicted_peak_weight_mb')
    return {k: plan[k] for k in keys if k in plan}
