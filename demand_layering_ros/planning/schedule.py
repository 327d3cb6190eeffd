# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One recorded forward pass of a pack, as the planner sees it: units, sizes, call order, slots.

Everything the planner predicts is a function of this pass and of the speeds a profile measured
(`timing`), so a Schedule can come from a real pack (then with the executor's own slots, split
layers included) or from a bare manifest dict (tests, one slot per unit, no splitting).

What the executor streams for one plan is a `Streams`: its slots, their owners and lifetimes,
in steps. A split layer runs as several steps (one per weight chunk), so the simulation works
in the executor's step space, not in call positions; Streams is the one record of that mapping.

`ExecutorSlots` is the executor's own slot construction, run on the pack's model skeleton (no
weights, no I/O). The planner predicts what the executor does only if it streams the very slots
the executor streams: which units split into chunks, each slot's bytes and lifetime, the load
order. So it calls the runtime's own pure slot layout (`layout.slots`) instead of re-deriving
them.
"""

from dataclasses import dataclass

from demand_layering_ros.layout import arena, slots
from demand_layering_ros.sizes import align_up, PAGE


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


class ExecutorSlots:
    """
    The executor's slot construction over the pack's model skeleton (no weights, no I/O).

    Calling it with (resident units, split_bytes) gives the Streams the executor would stream,
    so the planner replays what the executor does: which units split into chunks, each slot's
    bytes and lifetime, and the load order. `slots.slot_layout` runs once per split size (every
    unit streamed) to get each unit's slots; a resident set then only drops units and re-numbers
    the steps, the way `slot_layout` does (a test checks the two agree).
    """

    def __init__(self, pack):
        """Build the skeleton on 'meta' (no weights) and its module table."""
        self.pack = pack
        self.modules = slots.module_table(pack.build_detector(device='cpu', meta=True).model)
        self.calls = len(pack.call_order)
        self.units = [(u.index, u.first_call, u.last_call) for u in pack.units if u.calls]
        self._templates = {}
        self._cache = {}

    def template(self, split_bytes):
        """
        Return {unit: (main, chunks, call pos, module, rows)} for one split size.

        main: (name, bytes) of the unit's (rest) slot or None; chunks: [(name, bytes)] of a
        split weight; call pos: the split module's call position; module: its name; rows:
        [(r0, r1)] output rows per chunk.
        """
        split_bytes = int(split_bytes or 0)
        if split_bytes not in self._templates:
            lay = slots.slot_layout(self.pack, self.modules, (), split_bytes or None)
            out = {}
            for u in self.pack.units:
                if not u.calls:
                    continue
                us = lay.units[u.index]
                main = (us.main.name, us.main.length) if us.main is not None else None
                chunks = [(c.name, c.length) for c in us.chunks]
                pos = us.call if us.chunks else None
                module = us.split.module if us.chunks else None
                out[u.index] = (main, chunks, pos, module, [c.rows for c in us.chunks])
            self._templates[split_bytes] = out
        return self._templates[split_bytes]

    def __call__(self, resident, split_bytes=0):
        """Return the Streams for a resident set (unit indices) and split size."""
        key = (frozenset(resident), int(split_bytes or 0))
        st = self._cache.get(key)
        if st is not None:
            return st
        tpl = self.template(split_bytes)
        span = [1] * self.calls
        for u, (_, chunks, pos, _, _) in tpl.items():
            if chunks and u not in resident:
                span[pos] = len(chunks)
        start = [0] * (self.calls + 1)
        for p in range(self.calls):
            start[p + 1] = start[p] + span[p]
        items, owners = [], []
        for u, first, last in self.units:
            if u in resident:
                continue
            main, chunks, pos = tpl[u][:3]
            if main is not None:
                f, la = start[first], start[last + 1] - 1
                if chunks:                    # the rest lives across all chunk steps
                    f, la = min(f, start[pos]), max(la, start[pos + 1] - 1)
                items.append(arena.Item(main[0], main[1], f, la))
                owners.append(u)
            for j, (name, nbytes) in enumerate(chunks):
                items.append(arena.Item(name, nbytes, start[pos] + j, start[pos] + j))
                owners.append(u)
        step_call, share, first_of = [], [], []
        for p in range(self.calls):
            for j in range(span[p]):
                step_call.append(p)
                share.append(1.0 / span[p])
                first_of.append(j == 0)
        st = Streams(items=items, owners=owners, step_call=step_call, step_share=share,
                     step_first=first_of)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = st
        return st

    def executor_items(self, resident, split_bytes=0):
        """Return the executor's own (name, bytes, first_step, last_step) list (for tests)."""
        lay = slots.slot_layout(self.pack, self.modules, set(resident), split_bytes or None)
        return [(s.name, s.length, s.first_step, s.last_step) for s in lay.slots]

    def split_candidates(self):
        """Return split sizes worth trying: halvings of the largest splittable weight."""
        largest = 0
        for u in self.pack.units:
            sp = slots.splittable(self.pack, self.modules, u, PAGE)
            if sp is not None:
                largest = max(largest, sp.weight.nbytes)
        out = []
        s = largest // 2
        while s >= 256 << 10 and len(out) < 4:
            out.append(align_up(s))
            s //= 2
        return tuple(out)
