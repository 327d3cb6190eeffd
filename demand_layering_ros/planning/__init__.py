# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Planning, above the runtime: measure a pack on this machine, then decide the plan it runs.

A plan says which units stay resident, the arena's size, the split size and the read-ahead
(`layout.plan.Plan`, PLAN.yaml). It is decided once per configuration by `decide_plan`: a plan
given is taken as it is; a budget without a profile is fitted by memory alone; with a profile
(PROFILE.json, measured by `profiler`) the planner replays candidate passes and picks from the
memory-delay trade-off. The runtime is handed the result and never imports this folder.

The modules, in the order a reader needs them:
  decide    `decide_plan`: the one entry `load()`, the service and the commands share;
  fit       `fit_budget` / `fit_group`: a budget fitted by memory alone, one model or a group;
  planner   `plan` / `plan_group` / `predict`: the plan for a budget and deadlines, from a
            profile, for one model or a group under one budget (PlanInfeasible otherwise);
  search    the resident set and the arena size: greedy paths, sweeps, one search per split;
  simulate  one pass of the executor replayed for a candidate plan (discrete events, in ms),
            and the replay's hand-off and read slowdown fitted to measured passes;
  schedule  the pass as the planner sees it: units, call order, the executor's own slots;
  timing    PROFILE.json read back and the speeds it gives (compute per call, the disk's
            rounds, copies), the pipeline bound no plan beats, the online correction;
  profiler  `profile`: measure what a plan depends on, here (with `measure/`, the folder
            below: one module per kind of measurement), into PROFILE.json;
  command   the `profile` and `plan` command lines.
Imports point down this list, except that profiler and command use the planner above them.
"""

from demand_layering_ros.planning.decide import decide_plan, Decision
from demand_layering_ros.planning.fit import fit_budget, fit_group
from demand_layering_ros.planning.planner import plan, plan_group, PlanInfeasible, predict
from demand_layering_ros.planning.profiler import profile, quick_profile
from demand_layering_ros.planning.timing import (corrected_profile, load_profile, PROFILE_FORMAT,
                                                 save_profile)

__all__ = [
    'corrected_profile', 'decide_plan', 'Decision', 'fit_budget', 'fit_group', 'load_profile',
    'plan', 'plan_group', 'PlanInfeasible', 'predict', 'profile', 'PROFILE_FORMAT',
    'quick_profile', 'save_profile',
]
