# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Layout: the pure pieces the runtime and planning both read, below both of them.

In the order a reader needs them:
  plan (the Plan type, PLAN.yaml) -> group_plan (several models, one arena) ->
  threads (a plan holds only at the torch thread count it was made for) ->
  arena (where slots go in the arena, the arena's allocator) -> slots (which byte ranges of a
  pack stream, in which steps) -> member (a group's model as the fit and the runtime see it).

No I/O, no threads, no state: planning decides a Plan with these, the runtime lays it out with
the same functions, so a plan means one thing on both sides.
"""
