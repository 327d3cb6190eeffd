# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One place that decides the plan for a request: a budget, a deadline, a frame period, a profile.

`load()`, the node and the CLI all call `decide_plan`, so a request means the same everywhere:

  * a plan given (Plan, mapping or PLAN.yaml path) is taken as it is, unless it was made for
    another torch thread count than this process runs (`threads.ThreadMismatch`: its predicted
    latency would not hold);
  * neither budget nor deadline: no plan, the runtime streams every unit through the smallest
    arena its schedule allows;
  * a budget without a profile: the runtime's own fit (no timing model, just memory);
  * with a profile: the planner's search (`planner.plan`). When a deadline cannot be met and
    `strict` is false, the fastest plan within the budget runs and `note` says so (the node,
    at configure and at run time alike: the deadline is served best-effort); `strict` raises
    `PlanInfeasible` instead, for a caller that must refuse with the reason.

Deciding never profiles: whoever holds the profile (the node at configure, `plan` on the command
line) measures first and passes it in.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from demand_layering_ros.layout import threads as thread_check
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.pack import Pack
from demand_layering_ros.planning import planner
from demand_layering_ros.planning.fit import fit_budget
from demand_layering_ros.sizes import MB


@dataclass
class Decision:
    """
    The plan to run, where it came from, and why it differs from the request.

    source: 'given' (a plan was passed in), 'smallest' (no budget, no deadline: plan None, the
    runtime streams through its smallest arena), 'fit' (a budget fitted by memory alone; plan
    None when there is no valid budget to fit), 'planner' (the planner's search with a
    profile) or 'fastest' (the deadline cannot be met: the fastest plan within the budget).
    """

    plan: Optional[Plan]
    budget_mb: Optional[float] = None
    note: str = ''
    source: str = 'given'


def decide_plan(pack: Any, budget_mb: Optional[float] = None,
                deadline_ms: Optional[float] = None, frame_period_ms: Optional[float] = None,
                profile: Optional[dict] = None, plan: Any = None, device: str = 'cpu',
                strict: bool = True, threads: Optional[int] = None,
                modules: Optional[dict] = None, extra_bytes: Optional[int] = None) -> Decision:
    """
    Return the Decision for a request (see the module docstring).

    threads: the torch thread count the model runs with (None: this process's count now).
    modules / extra_bytes: the caller's skeleton module table and extra-buffer bytes, for a fit
    by memory (None: built and read here). load() passes its own, so configure builds no
    second skeleton: on a small model its leftovers were most of streaming's fixed cost.
    """
    if plan is not None:
        given = Plan.coerce(plan)
        if given is not None:
            thread_check.check_plan(given, threads=threads, where=f'plan {plan}' if isinstance(
                plan, (str, Path)) else 'the plan')
        return Decision(given, budget_mb, source='given')
    if budget_mb is None and deadline_ms is None:
        return Decision(None, None, source='smallest')
    if profile is None:
        return _fit(pack, budget_mb, '' if deadline_ms is None else
                    'no profile: the deadline is not planned', modules, extra_bytes)
    try:
        return Decision(Plan.coerce(planner.plan(
            pack, profile, budget_mb=budget_mb, deadline_ms=deadline_ms,
            frame_period_ms=frame_period_ms, device=device, threads=threads)), budget_mb,
            source='planner')
    except planner.PlanInfeasible as e:
        if profile.get('mode') == 'streamed' and budget_mb is not None and \
                e.min_memory_mb is not None and budget_mb < e.min_memory_mb:
            # A profile measured within the budget checks no split sizes, so the planner's
            # smallest plan holds each layer whole; the runtime's own fit splits them.
            return _fit(pack, budget_mb, f'{e}; the runtime fits the budget itself, splitting '
                        'large layers' + ('; the deadline is not planned' if deadline_ms else ''),
                        modules, extra_bytes)
        if strict or deadline_ms is None:
            raise
        room = budget_mb or 2.0 * _open(pack).total_bytes / MB
        fastest = planner.plan(pack, profile, budget_mb=room, device=device,
                               frame_period_ms=frame_period_ms, threads=threads)
        return Decision(Plan.coerce(fastest), budget_mb, f'deadline cannot be met: {e}',
                        source='fastest')


def _fit(pack, budget_mb, note, modules=None, extra_bytes=None):
    """Fit a budget by memory alone (no timing model); a bad budget is left for load() to name."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or \
            not 0 < budget_mb < float('inf'):
        return Decision(None, budget_mb, note, source='fit')
    return Decision(fit_budget(_open(pack), modules, int(budget_mb * MB),
                               extra_bytes=extra_bytes), budget_mb, note, source='fit')


def _open(pack):
    return pack if isinstance(pack, Pack) else Pack.open(pack)
