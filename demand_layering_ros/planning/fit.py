# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Fit a memory budget without a profile: which units stay resident, the split size, the arena.

No timing model, only memory: the smallest arena the pass allows (splitting large layers when
the budget is below them), then three quarters of what the budget leaves on resident units
from the head of the pass (they are read while nothing else can overlap), the rest on a deeper
arena. The result is a Plan the runtime runs as it is: given it, the runtime configures the
very residents, split, arena and layout this fit found (`slots.arena_layout` is deterministic).

`fit_group` fits several models into one budget the same way, with one arena and residents
across models. Passes in a group run one at a time, so the models share one arena and each
model's layout may use all of it during its own pass: the arena must hold the largest of the
models' smallest arenas, not their sum. Each model takes the coarsest split whose smallest
arena fits what the budget leaves after the units that must stay resident; three quarters of
what is left then goes to resident units, taken across the models from the head of each pass
(by position in the pass), the rest to a deeper arena. The result is a GroupPlan the runtime
runs as it is (every model's layout at the shared arena is `slots.arena_layout`,
deterministic).
"""

from demand_layering_ros.layout.arena import ArenaTooSmall, describe_budget
from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.member import GroupTooSmall
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.layout.slots import arena_layout, module_table, slot_layout
from demand_layering_ros.sizes import align_up, MB, mib_up, PAGE


def fit_budget(pack, modules, budget_bytes, split_bytes=None, prefetch_depth=None,
               extra_bytes=None):
    """
    Return the Plan that fits `budget_bytes` of weight memory (resident units plus the arena).

    modules: the skeleton's module table (`slots.module_table`; None: build a 'meta' skeleton);
    split_bytes / prefetch_depth: fixed when given, else chosen (split: halvings of the largest
    unit until the smallest arena fits); extra_bytes: the pack's non-persistent buffers (None:
    read them). A budget that holds the whole model keeps every unit resident. Raises
    ArenaTooSmall naming the budget, and the unit when a step cannot fit.
    """
    if modules is None:
        modules = module_table(pack.build_detector(device='cpu', meta=True).model)
    if extra_bytes is None:
        extra_bytes = sum(t.numel() * t.element_size() for t in pack.extra_buffers().values())
    names = tuple(u.name for u in pack.units)
    if budget_bytes >= sum(u.length for u in pack.units) + extra_bytes:
        return Plan(resident_units=names, arena_bytes=0, split_bytes=split_bytes,
                    prefetch_depth=prefetch_depth)
    fit = _Fit(pack, modules, budget_bytes, prefetch_depth, extra_bytes)
    split, need = fit.smallest(split_bytes)
    residents, layout = fit.spend(split, need)
    return Plan(resident_units=tuple(n for i, n in enumerate(names) if i in residents),
                arena_bytes=layout.capacity if layout is not None else 0, split_bytes=split,
                prefetch_depth=layout.prefetch_depth if layout is not None else prefetch_depth)


class _Fit:
    """The search of `fit_budget` over one pack and budget."""

    def __init__(self, pack, modules, budget, depth, extra_bytes):
        self.pack, self.modules, self.budget, self.depth = pack, modules, budget, depth
        self.text = describe_budget(budget)
        self.units = pack.units
        self.forced = {u.index for u in self.units if u.used_outside_forward}
        self.extra = extra_bytes
        self.forced_b = self.resident_bytes(self.forced) + extra_bytes

    def resident_bytes(self, residents):
        return sum(self.units[i].length for i in residents)

    def layout(self, residents, split, capacity=None):
        slots = slot_layout(self.pack, self.modules, residents, split).slots
        return arena_layout(slots, capacity, self.depth, self.text)

    def smallest(self, split_bytes):
        """Return (split, bytes) of the smallest plan that fits, trying halving split sizes."""
        if self.forced_b > self.budget:
            raise ArenaTooSmall(f'{self.text} cannot hold the units that must stay resident '
                                f'({self.forced_b} bytes)', needed=self.forced_b,
                                capacity=self.budget)
        candidates = [split_bytes]
        if split_bytes is None:
            s = max((u.length for u in self.units), default=0) // 2
            while s >= PAGE * 16:
                candidates.append(align_up(s))
                s //= 2
        best = None
        for split in candidates:
            layout = self.layout(self.forced, split)
            need = self.forced_b + (layout.capacity if layout else 0)
            if best is None or need < best[0]:
                best = (need, split)
            if need <= self.budget:
                break
        need, split = best
        if need > self.budget:
            # Name the unit that does not fit: replay at the arena the budget leaves.
            self.layout(self.forced, split, self.budget - self.forced_b)
            raise ArenaTooSmall(f'{self.text} is too small: the smallest feasible plan '
                                f'needs {need} bytes', needed=need, capacity=self.budget)
        return split, need

    def spend(self, split, need):
        """Return (residents, arena layout): spare bytes on head units, the rest on the arena."""
        spare = (self.budget - need) * 3 // 4
        residents = set(self.forced)
        order = sorted((u for u in self.units if u.calls and u.index not in self.forced
                        and u.length <= spare), key=lambda u: u.first_call)
        for u in order:
            if u.length <= spare:
                residents.add(u.index)
                spare -= u.length
        while True:
            capacity = self.budget - self.resident_bytes(residents) - self.extra
            try:
                return residents, self.layout(residents, split, capacity)
            except ArenaTooSmall:
                if residents == self.forced:
                    raise
                residents.discard(max(residents - self.forced,
                                      key=lambda i: self.units[i].first_call))


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
