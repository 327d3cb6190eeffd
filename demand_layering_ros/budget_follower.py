# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A weight budget that follows free memory, leaving `keep_free` bytes to the rest of the robot.

The budget is roughly the weights held now plus what is free now minus keep_free, capped by
the configured memory budget and never below the smallest plan the pack allows. Memory taken
by someone else is given back at once (the caller re-plans between two frames); memory that
comes free is taken only after it has stayed free for a hold time, and only past a margin, so
that noise in the readings never makes the node re-plan back and forth. Pure: the caller
passes time and readings in, so every decision can be tested exactly; no threads, no I/O.
"""

import math

MIB = 1 << 20


class BudgetFollower:
    """
    Decide when the weight budget must shrink or may grow, from free-memory readings.

    update() takes one reading and returns the new budget when a re-plan is due, else None.
    Shrink: free < keep_free - dead_band; the target leaves keep_free free. Grow: free has
    stayed >= keep_free + margin for hold_s; the target takes the least free seen over that
    time, less keep_free and a dead band (so a dip of up to a dead band right after the grow
    does not shrink again). A change smaller than the dead band is never a re-plan.
    """

    def __init__(self, keep_free_bytes, floor_bytes, budget_bytes=None, cap_bytes=None,
                 hold_s=2.0, margin_bytes=32 * MIB, dead_band_bytes=4 * MIB):
        """
        Start from the budget in force (None: unlimited) and the given limits.

        keep_free_bytes 0 turns following off (update() then returns None); floor_bytes is
        the smallest plan's weight bytes; cap_bytes the configured budget (None: none).
        """
        if margin_bytes <= 2 * dead_band_bytes:
            raise ValueError(f'margin_bytes ({margin_bytes}) must exceed two dead bands '
                             f'({dead_band_bytes} each): a grow leaves one dead band spare and '
                             'must still move the budget by more than one')
        if dead_band_bytes < 0 or hold_s < 0:
            raise ValueError('dead_band_bytes and hold_s must be >= 0')
        self.hold_s = float(hold_s)
        self.margin_bytes = int(margin_bytes)
        self.dead_band_bytes = int(dead_band_bytes)
        self.set_keep_free(keep_free_bytes)
        self.set_limits(floor_bytes, cap_bytes)
        self.budget_bytes = budget_bytes
        self.free_bytes = None
        self.memory_source = None
        self.auto_shrinks = 0
        self.auto_grows = 0
        self.pinned = False
        self.pinned_s = 0.0
        self.last_change = None     # 'shrink' or 'grow': what the last re-plan was for
        self._last_t = None
        self._above_since = None    # when free went above keep_free + margin
        self._least_free = None     # the least free seen since then

    def set_keep_free(self, keep_free_bytes):
        """Change keep_free at run time (0: off); the next reading acts on it."""
        if keep_free_bytes < 0:
            raise ValueError(f'keep_free_bytes must be >= 0, got {keep_free_bytes}')
        self.keep_free_bytes = int(keep_free_bytes)
        self._above_since = None

    def set_limits(self, floor_bytes, cap_bytes=None):
        """Change the smallest plan's bytes and the cap (None: no cap)."""
        if floor_bytes < 0 or (cap_bytes is not None and cap_bytes < 0):
            raise ValueError(f'floor and cap must be >= 0, got {floor_bytes}, {cap_bytes}')
        self.floor_bytes = int(floor_bytes)
        self.cap_bytes = None if cap_bytes is None else int(cap_bytes)

    @property
    def active(self):
        """Return True when following is on (keep_free > 0)."""
        return self.keep_free_bytes > 0

    def clamp(self, target):
        """Return `target` within [floor, cap]; the floor wins over a cap below it."""
        if self.cap_bytes is not None:
            target = min(target, self.cap_bytes)
        return max(int(target), self.floor_bytes)

    def update(self, now, free_bytes, held_bytes, source=None):
        """
        Take one reading at time `now` (s, monotonic); return the new budget or None.

        held_bytes is the weight bytes held now, source the memory source to report. A
        returned budget is taken as applied: `budget_bytes` becomes it.
        """
        if self._last_t is not None and now < self._last_t:
            raise ValueError(f'time went backwards: {now} < {self._last_t}')
        if self.pinned and self._last_t is not None:
            self.pinned_s += now - self._last_t
        self._last_t = now
        self.free_bytes = free_bytes
        self.memory_source = source
        if not self.active or free_bytes is None:
            self.pinned = False
            self._above_since = None
            return None
        want = held_bytes + free_bytes - self.keep_free_bytes
        self.pinned = want < self.floor_bytes
        if free_bytes < self.keep_free_bytes - self.dead_band_bytes or self._over_cap():
            self._above_since = None
            return self._change(self.clamp(want), 'shrink')
        if free_bytes < self.keep_free_bytes + self.margin_bytes:
            self._above_since = None
            return None
        if self._above_since is None:
            self._above_since, self._least_free = now, free_bytes
        self._least_free = min(self._least_free, free_bytes)
        if now - self._above_since < self.hold_s:
            return None
        target = self.clamp(held_bytes + self._least_free - self.keep_free_bytes
                            - self.dead_band_bytes)
        self._above_since = None
        return self._change(target, 'grow')

    def _over_cap(self):
        budget = self._budget()
        return self.cap_bytes is not None and budget > self.cap_bytes + self.dead_band_bytes

    def _budget(self):
        return math.inf if self.budget_bytes is None else self.budget_bytes

    def _change(self, target, kind):
        """Apply `target` if it moves the budget the `kind` way by more than the dead band."""
        budget = self._budget()
        if kind == 'shrink' and target >= budget - self.dead_band_bytes:
            return None
        if kind == 'grow' and target <= budget + self.dead_band_bytes:
            return None
        self.budget_bytes = target
        self.last_change = kind
        if kind == 'shrink':
            self.auto_shrinks += 1
        else:
            self.auto_grows += 1
        return target

    def stats(self):
        """Return the figures the node reports (bytes; seconds)."""
        return {'keep_free_bytes': self.keep_free_bytes, 'free_bytes': self.free_bytes,
                'memory_source': self.memory_source, 'auto_shrinks': self.auto_shrinks,
                'auto_grows': self.auto_grows, 'budget_bytes': self.budget_bytes,
                'pinned_at_floor': self.pinned, 'pinned_s': self.pinned_s}
