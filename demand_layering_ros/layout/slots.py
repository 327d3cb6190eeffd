# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Slot layout: which byte ranges of a pack stream through the arena, and in which steps they live.

A slot is a byte range of the pack that takes arena space as one piece: a whole unit ('unit'),
a split unit minus its big weight ('rest'), or rows [r0, r1) of a split Conv2d/Linear weight
('chunk'). The runtime streams exactly these slots and the planner replays them, so both call
the same pure functions (no engine, no I/O, deterministic; a 'meta' skeleton is enough):

  modules = module_table(skeleton)          # {name: nn.Module}, duplicates kept
  splittable(pack, modules, unit, split_bytes) -> Split | None
      Whether pack Unit `unit` is computed in chunks at this split size, and how.
  slot_layout(pack, modules, residents=(), split_bytes=None) -> SlotLayout
      .slots: the slots of every streamed unit that is called, in layout order (a unit's main
              slot, then its chunks), with first_step/last_step in the pass's step sequence
              (a split layer's call takes one step per chunk);
      .units: {unit index: UnitSlots(main, chunks, split, call)} for every streamed unit,
              called or not (an uncalled unit's main slot has no steps: it is read on demand).
  items(slots) -> [arena.Item]; arena_layout(slots, capacity=None, prefetch_depth=None,
      budget_text=None) -> arena.Layout | None: where the slots go in the arena.

`residents` are unit indices; `split_bytes` None or 0 splits nothing. Slot names are unique:
'<unit>', '<unit>[rest]', '<unit>[r0:r1]'.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from demand_layering_ros.layout.arena import ArenaTooSmall, Item, min_layout, plan_layout
from demand_layering_ros.sizes import align_up, PAGE
from torch import nn

DEPTHS = (None, 8, 2, 1)          # prefetch depths tried, deepest first, when none is given


@dataclass(frozen=True)
class TensorSpec:
    """A tensor inside a slot: bytes [rel, rel + nbytes) of the slot, dtype name and shape."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    rel: int
    nbytes: int


@dataclass(frozen=True)
class SlotSpec:
    """One slot: a page-aligned range [file_offset, file_offset + length) of the pack."""

    unit: int
    kind: str                           # 'unit', 'rest' or 'chunk'
    name: str
    file_offset: int
    length: int
    tensors: Tuple[TensorSpec, ...]
    rows: Optional[Tuple[int, int]] = None     # a chunk's output rows [r0, r1)
    first_step: Optional[int] = None           # None: the unit is never called in the trace
    last_step: Optional[int] = None


@dataclass(frozen=True)
class Split:
    """How a unit splits: its Conv2d/Linear `module` (a name), that module's weight, the rest."""

    module: str
    weight: object                      # pack TensorInfo
    rest: tuple                         # the unit's other TensorInfos


@dataclass(frozen=True)
class UnitSlots:
    """A streamed unit's slots: main (whole unit or rest; may be None), chunks, split, call."""

    main: Optional[SlotSpec]
    chunks: Tuple[SlotSpec, ...] = ()
    split: Optional[Split] = None
    call: Optional[int] = None          # call position of the split module


@dataclass(frozen=True)
class SlotLayout:
    """The streamed slots (layout order) and each streamed unit's slots."""

    slots: Tuple[SlotSpec, ...]
    units: dict


def module_table(model):
    """Return {module name: module} over a model, every path of a shared module kept."""
    return dict(model.named_modules(remove_duplicate=False))


def call_modules(pack):
    """Return the module name of each call in the pack's traced pass."""
    return pack.manifest.get('call_modules') or []


def splittable(pack, modules, unit, split_bytes):
    """
    Return the Split of pack Unit `unit` at `split_bytes`, or None when it stays whole.

    A unit splits when it is called, larger than split_bytes, and owns a Conv2d (groups 1) or
    Linear weight above split_bytes with at least two output rows, called once per pass, whose
    bytes do not interleave with the unit's other tensors; the largest such weight is taken.
    """
    if not split_bytes or unit.length <= split_bytes or unit.calls == 0:
        return None
    calls = call_modules(pack)
    weights = [t for t in unit.tensors if t.attr == 'weight' and not t.aliases
               and type(modules.get(t.module)) in (nn.Conv2d, nn.Linear)]
    for w in sorted(weights, key=lambda t: -t.nbytes):
        mod = modules[w.module]
        if isinstance(mod, nn.Conv2d) and mod.groups != 1:
            continue
        if w.nbytes <= split_bytes or w.shape[0] < 2:
            continue
        if sum(1 for m in calls if m == w.module) != 1:
            continue
        rest = [t for t in unit.tensors if t is not w]
        if rest:
            lo = min(t.offset for t in rest)
            hi = max(t.offset + t.nbytes for t in rest)
            if not (hi <= w.offset or lo >= w.offset + w.nbytes):
                continue
        return Split(w.module, w, tuple(rest))
    return None


def _tensors(tensors, base):
    return tuple(TensorSpec(t.name, t.dtype, tuple(t.shape), t.offset - base, t.nbytes)
                 for t in tensors)


def _whole(unit, steps):
    return SlotSpec(unit.index, 'unit', unit.name, unit.offset, unit.length,
                    _tensors(unit.tensors, unit.offset), None, *steps)


def _rest(unit, rest, steps):
    lo = min(t.offset for t in rest) // PAGE * PAGE
    hi = align_up(max(t.offset + t.nbytes for t in rest))
    return SlotSpec(unit.index, 'rest', f'{unit.name}[rest]', lo, hi - lo, _tensors(rest, lo),
                    None, *steps)


def _chunks(unit, w, split_bytes, first):
    """Return the chunk slots of weight `w`, chunk j living in step first + j."""
    rows = w.shape[0]
    row_bytes = w.nbytes // rows
    per = max(1, split_bytes // row_bytes)
    out = []
    for j, r0 in enumerate(range(0, rows, per)):
        r1 = min(rows, r0 + per)
        start, end = w.offset + r0 * row_bytes, w.offset + r1 * row_bytes
        lo, hi = start // PAGE * PAGE, align_up(end)
        ref = TensorSpec(w.name, w.dtype, tuple([r1 - r0] + list(w.shape[1:])), start - lo,
                         end - start)
        step = None if first is None else first + j
        out.append(SlotSpec(unit.index, 'chunk', f'{unit.name}[{r0}:{r1}]', lo, hi - lo,
                            (ref,), (r0, r1), step, step))
    return out


def _chunk_count(w, split_bytes):
    rows = w.shape[0]
    per = max(1, split_bytes // (w.nbytes // rows))
    return -(-rows // per)


def slot_layout(pack, modules, residents=(), split_bytes=None):
    """Return the SlotLayout of the units not in `residents` (see the module docstring)."""
    residents = set(residents)
    calls = call_modules(pack)
    streamed = [u for u in pack.units if u.index not in residents]
    splits = {u.index: splittable(pack, modules, u, split_bytes) for u in streamed}
    span = [1] * len(pack.call_order)
    for u in streamed:
        sp = splits[u.index]
        if sp is not None:
            span[calls.index(sp.module)] = _chunk_count(sp.weight, split_bytes)
    start = [0] * (len(pack.call_order) + 1)
    for p in range(len(pack.call_order)):
        start[p + 1] = start[p] + span[p]
    units, slots = {}, []
    for u in streamed:
        sp = splits[u.index]
        if u.calls == 0:
            units[u.index] = UnitSlots(_whole(u, (None, None)))
            continue
        first, last = start[u.first_call], start[u.last_call + 1] - 1
        if sp is None:
            units[u.index] = UnitSlots(_whole(u, (first, last)))
            slots.append(units[u.index].main)
            continue
        pos = calls.index(sp.module)
        steps = (min(first, start[pos]), max(last, start[pos + 1] - 1))  # rest spans the chunks
        main = _rest(u, sp.rest, steps) if sp.rest else None
        chunks = _chunks(u, sp.weight, split_bytes, start[pos])
        units[u.index] = UnitSlots(main, tuple(chunks), sp, pos)
        slots += ([main] if main is not None else []) + chunks
    return SlotLayout(tuple(slots), units)


def items(slots):
    """Return the arena Items of slots (name, bytes, lifetime), in the same order."""
    return [Item(s.name, s.length, s.first_step, s.last_step) for s in slots]


def arena_layout(slots, capacity=None, prefetch_depth=None, budget_text=None):
    """
    Return where slots go in the arena (an arena.Layout), or None when there are none.

    capacity None: the smallest arena the schedule allows (`min_layout`, depth of its choice).
    Else the replay at `capacity` with `prefetch_depth`, or, when that is None, with the
    deepest of DEPTHS that fits; ArenaTooSmall (of the first depth tried) when none does.
    """
    its = items(slots)
    if capacity is None:
        return min_layout(its) if its else None
    if not its:
        return None
    err = None
    for d in ([prefetch_depth] if prefetch_depth is not None else DEPTHS):
        try:
            return plan_layout(its, capacity, d, budget_text=budget_text)
        except ArenaTooSmall as e:
            err = err or e
    raise err
