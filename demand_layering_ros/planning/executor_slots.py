# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The executor's own slot construction, run on the pack's model skeleton (no weights, no I/O).

The planner predicts what the executor does only if it streams the very slots the executor
streams: which units split into chunks, each slot's bytes and lifetime, the load order. So it
calls the runtime's own pure slot layout (`layout.slots`) instead of re-deriving them.
"""

from demand_layering_ros.layout import arena, slots
from demand_layering_ros.planning.streams import Streams
from demand_layering_ros.sizes import align_up, PAGE


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
