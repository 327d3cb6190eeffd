# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What the executor streams for one plan: its slots, their owners and lifetimes, in steps.

A split layer runs as several steps (one per weight chunk), so the simulation works in the
executor's step space, not in call positions; this is the one record of that mapping.
"""

from dataclasses import dataclass

from demand_layering_ros.sizes import align_up, PAGE


@dataclass
class Streams:
    """
    What the executor streams for one resident set and split size, in its own step space.

    items: one arena.Item per slot (a unit, or a split unit's rest and weight chunks) with
    lifetimes in steps; owners: the unit index of each slot. A split call runs as several
    steps (one per chunk): step_call maps each step to its call position in the pass,
    step_share is the share of that call's compute the step does, step_first marks the first
    step of each call (where the call's weight-free gap goes).
    """

    items: list
    owners: list
    step_call: list
    step_share: list
    step_first: list

    @property
    def steps(self):
        """Return the number of steps in one pass."""
        return len(self.step_call)

    @property
    def total_bytes(self):
        """Return the arena bytes that hold every slot at once."""
        return sum(max(align_up(it.nbytes), PAGE) for it in self.items)
