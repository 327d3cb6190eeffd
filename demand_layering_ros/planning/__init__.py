# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Planning beside the runtime: profile a pack, simulate plans, search for the best one.

Imports point one way, from measuring down to arithmetic:
  command (the `profile`/`plan` CLI) -> profiler (+ measure/*: what a profile measures) ->
  planner (plan, predict) -> search -> simulate, timing, schedule (-> executor_slots, streams);
  profile_file (PROFILE.json) and plan (PLAN.yaml, the Plan type) sit below them all.
"""
