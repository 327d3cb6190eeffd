# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
keep_free_mb for one detector: its budget follows free memory, re-planned with its profile.

A concern of DetectorService kept apart (the service inherits it): the budget to plan for is
the one free memory allows while following (`follow_mb`), else memory_budget_mb. The thread
that watches free memory is `memory_following.MemoryFollowing`, attached to the model by
`loading.follow_free_memory` with `follow_budget` as the way a new budget is applied: the
planner's search with the stored profile (or the runtime's fit without one), never a profile.
"""

from demand_layering_ros import loading
from demand_layering_ros.service import settings
from demand_layering_ros.sizes import MB


class FollowsFreeMemory:
    """The part of DetectorService that follows free memory (see the module docstring)."""

    follow_mb = None            # the budget free memory allows (MiB); None: memory_budget_mb

    def _budget_mb(self, s):
        """Return the budget to plan for: what free memory allows (keep_free_mb), or the set."""
        return self.follow_mb if self.follow_mb is not None else \
            settings.given(s, 'memory_budget_mb')

    def set_keep_free(self, keep_free_mb: float) -> None:
        """Start, change or stop following free memory (0: back to memory_budget_mb)."""
        following = getattr(self.model, 'following', None)
        if following is not None:
            following.set_keep_free(int(keep_free_mb * MB))
        elif keep_free_mb:
            exact = (self.profile or {}).get('split_exact') or {}
            splits = [None] + [int(sp) for sp, ok in exact.items() if ok and sp != 'None']
            loading.follow_free_memory(
                self.model, keep_free_mb, settings.given(self.settings, 'memory_budget_mb'),
                self.log, apply=self.follow_budget, splits=splits)
        if not keep_free_mb and self.follow_mb is not None:
            with self.plan_lock:
                self.follow_mb = None
                self._apply(self.settings, self._decide(self.settings),
                            'keep_free_mb 0: back to memory_budget_mb')

    def follow_budget(self, budget_bytes: int) -> None:
        """Re-plan for the budget free memory allows, with the stored profile (never measured)."""
        with self.plan_lock:
            s, old = self.settings, self.follow_mb
            self.follow_mb = budget_bytes / MB
            try:
                self._apply(s, self._decide(s), 'following free memory (keep_free_mb '
                            f'{s["keep_free_mb"]:g}): re-planned')
            except BaseException:
                self.follow_mb = old
                raise

    def _cap_changes(self, s):
        """Before a re-plan for settings `s`: a new memory_budget_mb restarts following there."""
        changed = getattr(self.model, 'following', None) is not None and \
            s['memory_budget_mb'] != self.settings['memory_budget_mb']
        if changed:
            self.follow_mb = None
        return changed

    def _follow_cap(self, s):
        """After it: give the following thread the new cap and the budget in force."""
        cap = int(s['memory_budget_mb'] * MB) if s['memory_budget_mb'] else None
        whole = self.model.whole_bytes()
        self.model.following.set_limits(cap_bytes=whole if cap is None else min(cap, whole),
                                        budget_bytes=self.model.held_bytes())
