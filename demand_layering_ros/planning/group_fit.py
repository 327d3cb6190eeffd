# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Fit several models into one memory budget without a profile: one arena, residents across models.

Passes in a group run one at a time, so the models share one arena and each model's layout may
use all of it during its own pass: the arena must hold the largest of the models' smallest
arenas, not their sum. Like `fit.fit_budget` for one model, by memory alone: each model takes
the coarsest split whose smallest arena fits what the budget leaves after the units that must
stay resident; three quarters of what is left then goes to resident units, taken across the
models from the head of each pass (by position in the pass), the rest to a deeper arena. The
result is a GroupPlan the runtime runs as it is (every model's layout at the shared arena is
`slots.arena_layout`, deterministic).
"""

from demand_layering_ros.layout.arena import ArenaTooSmall, describe_budget
from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.member import GroupTooSmall
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.layout.slots import arena_layout
from demand_layering_ros.sizes import align_up, MB, mib_up, PAGE


def _named(member, err):
    """Return a GroupTooSmall naming the model, from a single-model ArenaTooSmall."""
    return GroupTooSmall(f'model {member.name!r} (pack {member.pack.path}): {err}',
                         model=member.name, item=err.item, needed=err.needed,
                         capacity=err.capacity, step=err.step)


def fit_group(members, budget_bytes=None, split_bytes=None, prefetch_depth=None,
              reserve_bytes=0):
    """
    Return the GroupPlan for `members` (Member list) within `budget_bytes` of weight memory.

    budget None: no residents but the forced ones, the smallest arena every model's pass fits.
    reserve_bytes: memory the budget must also hold besides residents and arena (a CUDA copy
    ring). Raises GroupTooSmall naming the budget, the model and, where a step cannot fit, the
    unit and its bytes.
    """
    fit = _GroupFit(members, budget_bytes, split_bytes, prefetch_depth, reserve_bytes)
    if budget_bytes is None:
        splits = {m.name: split_bytes for m in members}
        arena = max((fit.min_arena(m, split_bytes) for m in members), default=0)
        return fit.result({m.name: set(m.forced) for m in members}, splits, arena)
    if budget_bytes >= sum(m.total_bytes for m in members):
        everything = {m.name: {u.index for u in m.pack.units} for m in members}
        return _GroupFit(members, budget_bytes, split_bytes, prefetch_depth, 0).result(
            everything, {m.name: split_bytes for m in members}, 0)
    splits, arena = fit.smallest()
    residents = fit.spend(splits, arena)
    return fit.settle(residents, splits, arena)


class _GroupFit:
    """The search of `fit_group` over one group and budget."""

    def __init__(self, members, budget, split_bytes, depth, reserve):
        self.members, self.budget, self.split, self.depth = members, budget, split_bytes, depth
        self.reserve = reserve
        self.text = describe_budget(budget) if budget is not None else 'no budget'
        self.fixed = sum(m.bytes_of(m.forced) + m.extra_bytes for m in members)
        self.cap = None if budget is None else budget - self.fixed - reserve

    def layout(self, m, residents, split, capacity=None):
        """Return the arena layout of model m (None: nothing streams; capacity None: smallest)."""
        try:
            return arena_layout(m.slots(residents, split), capacity, self.depth,
                                self.text if capacity is not None else None)
        except ArenaTooSmall as e:
            raise _named(m, e) from e

    def min_arena(self, m, split):
        """Return the smallest arena of model m with only its forced residents."""
        lay = self.layout(m, m.forced, split)
        return lay.capacity if lay is not None else 0

    def smallest(self):
        """Return ({model: split}, arena): each model's coarsest split that fits the budget."""
        if self.cap < 0:
            per = ', '.join(f'{m.name!r} {m.bytes_of(m.forced) + m.extra_bytes}'
                            for m in self.members)
            ring = f' and the {self.reserve}-byte staging ring' if self.reserve else ''
            raise GroupTooSmall(f'{self.text} cannot hold the units that must stay resident '
                                f'and the extra buffers ({self.fixed} bytes: {per}){ring}',
                                needed=self.fixed + self.reserve, capacity=self.budget)
        splits, arena = {}, 0
        for m in self.members:
            chosen = None
            candidates = m.split_candidates(self.split)
            for split in candidates:
                need = self.min_arena(m, split)
                if need <= self.cap:
                    chosen = (split, need)
                    break
            if chosen is None:
                # Name the unit that does not fit: replay at the arena the budget leaves.
                lay = self.layout(m, m.forced, candidates[-1], max(self.cap, PAGE))
                chosen = (candidates[-1], lay.capacity if lay is not None else 0)
            splits[m.name] = chosen[0]
            arena = max(arena, chosen[1])
        return splits, arena

    def spend(self, splits, arena):
        """Return {model: residents}: spare bytes on units from the head of each pass."""
        spare = (self.cap - arena) * 3 // 4
        residents = {m.name: set(m.forced) for m in self.members}
        units = []
        for k, m in enumerate(self.members):
            steps = max(1, len(m.pack.call_order))
            units += [(u.first_call / steps, k, u) for u in m.pack.units
                      if u.calls and u.index not in m.forced]
        for _, k, u in sorted(units, key=lambda x: (x[0], x[1], x[2].first_call)):
            if u.length <= spare:
                residents[self.members[k].name].add(u.index)
                spare -= u.length
        return residents

    def settle(self, residents, splits, floor):
        """Lay every model out in the arena the residents leave; drop residents that break it."""
        while True:
            held = sum(m.bytes_of(residents[m.name] - m.forced) for m in self.members)
            room = self.cap - held
            widest = max((sum(max(align_up(s.length), PAGE)
                              for s in m.slots(residents[m.name], splits[m.name]))
                          for m in self.members), default=0)
            arena = max(floor, min(room, widest)) // PAGE * PAGE
            broken = None
            for m in self.members:
                try:
                    self.layout(m, residents[m.name], splits[m.name], arena)
                except GroupTooSmall:
                    broken = m
                    break
            if broken is None:
                return self.result(residents, splits, arena)
            extra = residents[broken.name] - broken.forced
            if not extra:
                self.layout(broken, residents[broken.name], splits[broken.name], arena)
            residents[broken.name].discard(
                max(extra, key=lambda i: broken.pack.units[i].first_call))

    def result(self, residents, splits, arena):
        """Return the GroupPlan of residents and splits at a shared arena."""
        plans, need = {}, arena + self.reserve
        for m in self.members:
            res = residents[m.name]
            lay = self.layout(m, res, splits[m.name], arena) if arena else None
            mine = m.bytes_of(res) + m.extra_bytes
            need += mine
            plans[m.name] = Plan(
                resident_units=tuple(u.name for u in m.pack.units if u.index in res),
                arena_bytes=arena, split_bytes=splits[m.name],
                prefetch_depth=lay.prefetch_depth if lay is not None else self.depth,
                predicted_peak_weight_mb=mib_up(mine + arena),
                details={'pack': str(m.pack.path)})
        return GroupPlan(models=plans, arena_bytes=arena, staging_bytes=self.reserve,
                         budget_mb=self.budget / MB if self.budget is not None else None,
                         predicted_peak_weight_mb=mib_up(need),
                         details={'source': 'fit', 'predicted_peak_weight_bytes': need})
