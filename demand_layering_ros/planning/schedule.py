# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One recorded forward pass of a pack, as the planner sees it: units, sizes, call order, slots.

Everything the planner predicts is a function of this pass and of the speeds a profile measured
(`timing`), so a Schedule can come from a real pack (then with the executor's own slots, split
layers included) or from a bare manifest dict (tests, one slot per unit, no splitting).
"""

from dataclasses import dataclass

from demand_layering_ros.layout import arena
from demand_layering_ros.planning.executor_slots import ExecutorSlots
from demand_layering_ros.planning.streams import Streams


@dataclass
class Schedule:
    """
    One recorded forward pass of a pack: the units and the order in which they are called.

    lengths are unit extents (what the reader reads and the arena holds); first/last are the
    call positions of a unit's first call and of the last position it must stay loaded for
    (None for units never called: those are loaded on demand and take no part in a plan).
    forced: units that must stay resident (their tensors are used outside their module calls).
    extra_bytes: non-persistent buffers the executor keeps resident (anchors and the like).
    slot_builder(resident, split_bytes) -> Streams: the executor's own slot construction;
    None: one slot per streamed unit, no splitting (a manifest without a model).
    """

    names: list
    lengths: list
    first: list
    last: list
    call_order: list
    forced: frozenset = frozenset()
    pack_path: str = ''
    spec: str = ''
    extra_bytes: int = 0
    slot_builder: object = None
    split_candidates: tuple = ()

    @classmethod
    def from_manifest(cls, manifest, pack_path='', extra_bytes=0, slot_builder=None):
        """Build from a pack manifest dict (format v1)."""
        units = manifest['units']
        return cls(names=[u['name'] for u in units],
                   lengths=[int(u['length']) for u in units],
                   first=[u['first_call'] for u in units],
                   last=[u['last_call'] for u in units],
                   call_order=list(manifest['call_order']),
                   forced=frozenset(u['index'] for u in units
                                    if u.get('used_outside_forward') and u['calls']),
                   pack_path=str(pack_path),
                   spec=str(manifest.get('model', {}).get('spec', '')),
                   extra_bytes=int(extra_bytes), slot_builder=slot_builder)

    @classmethod
    def from_pack(cls, pack):
        """Build from a Pack, a pack directory, or a manifest dict (then without splitting)."""
        if isinstance(pack, cls):
            return pack
        if isinstance(pack, dict):
            return cls.from_manifest(pack)
        if not hasattr(pack, 'manifest'):
            from demand_layering_ros.pack import Pack
            pack = Pack.open(pack)
        extra = sum(t.numel() * t.element_size() for t in pack.extra_buffers().values())
        builder = ExecutorSlots(pack)
        sched = cls.from_manifest(pack.manifest, pack.path, extra, builder)
        sched.split_candidates = builder.split_candidates()
        return sched

    @property
    def steps(self):
        """Return the number of calls in one pass."""
        return len(self.call_order)

    @property
    def called(self):
        """Return the indices of units called in the pass, in first-use order."""
        return sorted((i for i, f in enumerate(self.first) if f is not None),
                      key=lambda i: (self.first[i], i))

    def bytes_of(self, units):
        """Return the summed extent of some units."""
        return sum(self.lengths[i] for i in units)

    def resident_all(self):
        """Return the set of every called unit (the fully resident configuration)."""
        return frozenset(self.called)

    def index(self, name):
        """Return a unit index by name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f'pack {self.pack_path}: no unit named {name!r}') from None

    def streams(self, resident, split_bytes=0):
        """Return the Streams of a resident set and split size."""
        if self.slot_builder is not None:
            return self.slot_builder(resident, split_bytes)
        items, owners = [], []
        for i in self.called:
            if i not in resident:
                items.append(arena.Item(self.names[i], self.lengths[i], self.first[i],
                                        self.last[i]))
                owners.append(i)
        n = self.steps
        return Streams(items, owners, list(range(n)), [1.0] * n, [True] * n)
