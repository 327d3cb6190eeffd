# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The arena allocator and its schedule simulation, shared by the executor and the planner.

Streamed weights live in one preallocated arena. Where each load unit goes is decided once, before
the first frame, by replaying one forward pass through a first-fit allocator (`plan_layout`); at
run time the reader puts every unit at its planned offset as soon as that range is free. Because
the layout comes from a replay of the recorded call order, (a) a budget that can never hold what
the pass needs is refused at load time with the unit and the bytes named, instead of deadlocking
in the middle of a frame, (b) every frame uses the same layout, and (c) the planner can predict
memory by calling the very same function. Pure Python, no I/O, deterministic.
"""

from dataclasses import dataclass, field

from demand_layering_ros.sizes import align_up, MB, PAGE


class ArenaTooSmall(ValueError):
    """The arena cannot hold what one step of the forward pass needs at once."""

    def __init__(self, message, item=None, needed=0, capacity=0, step=None):
        """Carry the failing item name, the bytes it needed and the arena capacity."""
        super().__init__(message)
        self.item = item
        self.needed = needed
        self.capacity = capacity
        self.step = step


class Allocator:
    """
    First-fit free list over [0, capacity) with aligned offsets.

    `alloc(n)` picks the lowest free range that fits (the simulation's policy); `claim(off, n)`
    takes a given range if it is entirely free (the executor's policy: put the unit where the
    simulation put it). `free(off)` returns a range and merges neighbours.
    """

    def __init__(self, capacity, alignment=PAGE):
        """Start with one free block covering the whole capacity (rounded down to alignment)."""
        self.alignment = int(alignment)
        self.capacity = int(capacity) // self.alignment * self.alignment
        self._free = [(0, self.capacity)] if self.capacity else []   # sorted (start, end)
        self._used = {}                                               # start -> end
        self.used = 0
        self.peak_used = 0
        self.high_water = 0        # highest end offset ever handed out (pages touched)

    def _take(self, index, start, nbytes):
        b0, b1 = self._free[index]
        end = start + nbytes
        pieces = [(b0, start)] if start > b0 else []
        if end < b1:
            pieces.append((end, b1))
        self._free[index:index + 1] = pieces
        self._used[start] = end
        self.used += nbytes
        self.peak_used = max(self.peak_used, self.used)
        self.high_water = max(self.high_water, end)
        return start

    def size_of(self, nbytes):
        """Return the bytes an allocation of `nbytes` really takes (aligned, at least one unit)."""
        return max(align_up(nbytes, self.alignment), self.alignment)

    def alloc(self, nbytes):
        """Return the offset of the lowest free range holding `nbytes`, or None."""
        nbytes = self.size_of(nbytes)
        for i, (b0, b1) in enumerate(self._free):
            if b1 - b0 >= nbytes:
                return self._take(i, b0, nbytes)
        return None

    def is_free(self, offset, nbytes):
        """Return True when [offset, offset + nbytes) lies inside one free block."""
        nbytes = self.size_of(nbytes)
        return self._find(offset, nbytes) is not None

    def _find(self, offset, nbytes):
        for i, (b0, b1) in enumerate(self._free):
            if b0 <= offset and offset + nbytes <= b1:
                return i
            if b0 > offset:
                break
        return None

    def claim(self, offset, nbytes):
        """Take exactly [offset, offset + nbytes) if it is free; return True on success."""
        if offset % self.alignment:
            raise ValueError(f'claim: offset {offset} is not a multiple of {self.alignment}')
        nbytes = self.size_of(nbytes)
        i = self._find(offset, nbytes)
        if i is None:
            return False
        self._take(i, offset, nbytes)
        return True

    def free(self, offset):
        """Return the allocation that starts at `offset` to the free list."""
        end = self._used.pop(offset, None)
        if end is None:
            raise ValueError(f'free: no allocation starts at offset {offset}')
        self.used -= end - offset
        i = 0
        while i < len(self._free) and self._free[i][0] < offset:
            i += 1
        start = offset
        if i > 0 and self._free[i - 1][1] == offset:
            i -= 1
            start = self._free[i][0]
            del self._free[i]
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (start, end))

    def largest_free(self):
        """Return the size of the largest free block."""
        return max((b1 - b0 for b0, b1 in self._free), default=0)

    def free_bytes(self):
        """Return the total free bytes."""
        return self.capacity - self.used


def describe_budget(budget_bytes):
    """Return how refusals name a budget: 'budget 0.59 MB (614400 bytes)'."""
    return f'budget {budget_bytes / MB:.2f} MB ({budget_bytes} bytes)'


@dataclass
class Item:
    """
    One thing that occupies arena space for a while: a load unit, or one chunk of a split unit.

    first_step / last_step: indices into the pass's step sequence of its first use and of the
    step after which it is released (both inclusive).
    """

    name: str
    nbytes: int
    first_step: int
    last_step: int


@dataclass
class Layout:
    """Where each item goes and when the simulated reader placed it."""

    capacity: int
    prefetch_depth: int | None
    offsets: list = field(default_factory=list)        # per item, in load order
    claim_step: list = field(default_factory=list)     # step before which it was placed
    peak_used: int = 0                                 # most bytes held at once
    high_water: int = 0                                # highest end offset (arena pages touched)


def load_order(items):
    """Return item indices sorted by first use (stable), the order the reader places them."""
    return sorted(range(len(items)), key=lambda i: (items[i].first_step, i))


def plan_layout(items, capacity, prefetch_depth=None, alignment=PAGE, budget_text=None):
    """
    Replay one pass of `items` through a first-fit allocator of `capacity` bytes.

    The simulated reader places items in first-use order, as early as possible: before each step
    it places every next item that fits and is at most `prefetch_depth` items ahead of the last
    item already in use (None: no limit); after each step it frees the items whose last step it
    was. Raises ArenaTooSmall naming the first item that does not fit when its step comes.
    Returns a Layout whose lists follow `items`' indexing.
    """
    alloc = Allocator(capacity, alignment)
    order = load_order(items)
    n = len(items)
    offsets = [None] * n
    claim_step = [None] * n
    steps = max((it.last_step for it in items), default=-1) + 1
    releases = [[] for _ in range(steps)]
    for i, it in enumerate(items):
        if it.last_step < it.first_step or it.first_step < 0:
            raise ValueError(f'item {it.name}: bad lifetime [{it.first_step}, {it.last_step}]')
        releases[it.last_step].append(i)
    k = 0          # next position in `order` to place
    started = 0    # positions in `order` whose first step has come
    for s in range(steps):
        while started < n and items[order[started]].first_step <= s:
            started += 1
        while k < n and (prefetch_depth is None or k < started + prefetch_depth):
            i = order[k]
            off = alloc.alloc(items[i].nbytes)
            if off is None:
                break
            offsets[i], claim_step[i] = off, s
            k += 1
        if k < started:
            it = items[order[k]]
            what = budget_text or f'an arena of {capacity} bytes'
            raise ArenaTooSmall(
                f'{what} cannot hold the weights needed at step {s}: unit {it.name!r} needs '
                f'{alloc.size_of(it.nbytes)} bytes while {alloc.used} bytes are held by units '
                f'still in use (largest free block {alloc.largest_free()} bytes)',
                item=it.name, needed=alloc.size_of(it.nbytes), capacity=alloc.capacity, step=s)
        for i in releases[s]:
            alloc.free(offsets[i])
    return Layout(capacity=alloc.capacity, prefetch_depth=prefetch_depth, offsets=offsets,
                  claim_step=claim_step, peak_used=alloc.peak_used, high_water=alloc.high_water)


def live_lower_bound(items, alignment=PAGE):
    """Return the most bytes that must be held at once (items spanning the same step)."""
    steps = max((it.last_step for it in items), default=-1) + 1
    delta = [0] * (steps + 1)
    for it in items:
        size = max(align_up(it.nbytes, alignment), alignment)
        delta[it.first_step] += size
        delta[it.last_step + 1] -= size
    best = cur = 0
    for d in delta:
        cur += d
        best = max(best, cur)
    return best


def min_layout(items, prefetch_depths=(None, 8, 2, 1), alignment=PAGE):
    """
    Return the Layout with the smallest feasible capacity over a few prefetch depths.

    First-fit capacity feasibility is close to monotone, so a binary search between the live-set
    lower bound and the total finds the boundary; the result is re-verified by `plan_layout`.
    """
    if not items:
        return Layout(capacity=0, prefetch_depth=None)
    lo = live_lower_bound(items, alignment)
    hi = sum(max(align_up(it.nbytes, alignment), alignment) for it in items)
    best = None
    for depth in prefetch_depths:
        a, b = lo // alignment, hi // alignment       # feasible(b) holds: everything fits
        limit = b if best is None else min(b, best.capacity // alignment)
        if not _feasible(items, limit * alignment, depth, alignment):
            continue
        b = limit
        while a < b:
            mid = (a + b) // 2
            if _feasible(items, mid * alignment, depth, alignment):
                b = mid
            else:
                a = mid + 1
        layout = plan_layout(items, b * alignment, depth, alignment)
        if best is None or layout.capacity < best.capacity:
            best = layout
        if best.capacity == lo:
            break
    return best


def _feasible(items, capacity, depth, alignment):
    try:
        plan_layout(items, capacity, depth, alignment)
    except ArenaTooSmall:
        return False
    return True
