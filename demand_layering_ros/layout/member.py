# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A model of a group as a layout sees it, and the error when a group does not fit a budget.

A member is its pack, its skeleton modules and its extra buffers. The group fit sizes members;
the runtime checks a group plan against them: both read this, neither owns it. The smallest
plan's bytes (`smallest_bytes`, `smallest_group_bytes`) are the floor a budget that follows
free memory can shrink to.
"""

from dataclasses import dataclass

from demand_layering_ros.layout.arena import ArenaTooSmall
from demand_layering_ros.layout.slots import arena_layout, module_table, slot_layout
from demand_layering_ros.sizes import align_up, PAGE


class GroupTooSmall(ArenaTooSmall):
    """A budget cannot hold the group; names the model (and unit) that does not fit."""

    def __init__(self, message, model=None, item=None, needed=0, capacity=0, step=None):
        """Carry the model's name besides ArenaTooSmall's unit, bytes and capacity."""
        super().__init__(message, item=item, needed=needed, capacity=capacity, step=step)
        self.model = model


@dataclass
class Member:
    """One model of a group as the fit sees it: its pack, skeleton modules and extra buffers."""

    name: str
    pack: object
    modules: dict
    extra_bytes: int

    @classmethod
    def of(cls, name, pack, modules=None, extra_bytes=None):
        """Describe a Pack (a 'meta' skeleton and the extra buffers are read when not given)."""
        if modules is None:
            modules = module_table(pack.build_detector(device='cpu', meta=True).model)
        if extra_bytes is None:
            extra_bytes = sum(t.numel() * t.element_size()
                              for t in pack.extra_buffers().values())
        return cls(name, pack, modules, int(extra_bytes))

    @property
    def forced(self):
        """Return the units that must stay resident (used outside their module calls)."""
        return {u.index for u in self.pack.units if u.used_outside_forward}

    def bytes_of(self, units):
        """Return the bytes of some units."""
        return sum(self.pack.units[i].length for i in units)

    @property
    def total_bytes(self):
        """Return every unit's bytes plus the extra buffers (the model fully resident)."""
        return self.pack.total_bytes + self.extra_bytes

    def slots(self, residents, split):
        """Return the streamed slots of a resident set at a split size."""
        return slot_layout(self.pack, self.modules, residents, split).slots

    def split_candidates(self, split_bytes):
        """Return the split sizes to try, coarsest first (none, then halvings)."""
        if split_bytes is not None:
            return [split_bytes]
        out, s = [None], max((u.length for u in self.pack.units), default=0) // 2
        while s >= PAGE * 16:
            out.append(align_up(s))
            s //= 2
        return out

    def smallest_arena(self, splits=(None,)):
        """
        Return the smallest arena with only the forced residents, over the split sizes given.

        splits: the split sizes allowed (None: no split). The default keeps every layer
        whole: chunked layers may differ from the resident model in the last bits, so only
        split sizes measured exact (a profile's split_exact) should be offered.
        """
        sizes = []
        for split in splits:
            lay = arena_layout(self.slots(self.forced, split))
            sizes.append(lay.capacity if lay is not None else 0)
        return min(sizes)

    def smallest_bytes(self, splits=(None,)):
        """Return the weight bytes of this model's smallest plan (forced, extra, arena)."""
        return self.bytes_of(self.forced) + self.extra_bytes + self.smallest_arena(splits)


def smallest_group_bytes(members, splits=(None,)):
    """Return the weight bytes of a group's smallest plan: one arena, each model's forced units."""
    return sum(m.bytes_of(m.forced) + m.extra_bytes for m in members) + max(
        (m.smallest_arena(splits) for m in members), default=0)
