# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Fit a memory budget without a profile: which units stay resident, the split size, the arena.

No timing model, only memory: the smallest arena the pass allows (splitting large layers when
the budget is below them), then three quarters of what the budget leaves on resident units
from the head of the pass (they are read while nothing else can overlap), the rest on a deeper
arena. The result is a Plan the runtime runs as it is: given it, the runtime configures the
very residents, split, arena and layout this fit found (`slots.arena_layout` is deterministic).
"""

from demand_layering_ros.layout.arena import ArenaTooSmall, describe_budget
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.layout.slots import arena_layout, module_table, slot_layout
from demand_layering_ros.sizes import align_up, PAGE


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
