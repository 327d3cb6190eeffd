# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Plan the memory-delay trade-off of a profiled pack for a budget and a deadline.

The paper found its operating points by sweeping a buffer size by hand. A robot integrator states
a weight-memory budget and a deadline instead, so this module

  * takes what the plan depends on from a profile (`profiler.profile`, also reachable as
    `planner.profile`): each call's compute time with the model fully resident, each unit's
    bytes, the disk's O_DIRECT bandwidth by request size, on CUDA the host-to-device bandwidth,
    and the activation peak;
  * predicts what a plan achieves by replaying one pass in a discrete-event simulation of the
    executor (`simulate`): the reader places units in first-use order at the offsets the shared
    arena allocator gives them (`arena.plan_layout`, the very function the executor uses), waits
    for the range to be freed by the unit whose last call ended, and compute runs each call once
    its unit is in and the previous call is done;
  * searches the resident set (greedy by stall saved per byte) and the arena size (sweep and
    binary search) to minimise memory under a deadline or latency under a budget (`plan`).

Prediction and plan are plain dicts (PROFILE.json, PLAN.yaml), so the executor and the node can
plan on the fly (`plan_for`) or read a plan written earlier.
"""

from bisect import bisect_right
from dataclasses import dataclass, field
import json
import math
import os
from pathlib import Path
import time

from demand_layering_ros.runtime import arena
from demand_layering_ros.sizes import MB

PROFILE_FORMAT = 'demand_layering_ros.profile'
PLAN_FORMAT = 'demand_layering_ros.plan'
VERSION = 1
DEPTHS = (None, 8, 2, 1)            # prefetch depths the search tries (None: unlimited)
PAPER_POINTS = (                    # Ji et al., RTSS 2022, Jetson AGX Xavier, Darknet, NVMe
    {'label': 'paper: 96.5% less memory, +14.8% delay', 'reduction': 0.965,
     'overhead_rel': 0.148},
    {'label': 'paper: 88.4% less memory, < 1 ms delay', 'reduction': 0.884,
     'overhead_ms': 1.0},
)


class PlanInfeasible(ValueError):
    """
    No plan meets the request; carries the numbers that would be feasible.

    min_budget_mb: the smallest weight memory that meets the deadline (None: no plan meets it).
    best_latency_ms: the best predicted latency within the budget (None: nothing fits it).
    min_memory_mb / fastest_latency_ms: the extremes of the trade-off curve.
    """

    def __init__(self, message, budget_mb=None, deadline_ms=None, min_budget_mb=None,
                 best_latency_ms=None, min_memory_mb=None, fastest_latency_ms=None):
        """Keep the request and the feasible numbers as attributes."""
        super().__init__(message)
        self.budget_mb = budget_mb
        self.deadline_ms = deadline_ms
        self.min_budget_mb = min_budget_mb
        self.best_latency_ms = best_latency_ms
        self.min_memory_mb = min_memory_mb
        self.fastest_latency_ms = fastest_latency_ms

    def numbers(self):
        """Return the request and the feasible numbers as a dict."""
        return {'budget_mb': self.budget_mb, 'deadline_ms': self.deadline_ms,
                'min_budget_mb': self.min_budget_mb, 'best_latency_ms': self.best_latency_ms,
                'min_memory_mb': self.min_memory_mb,
                'fastest_latency_ms': self.fastest_latency_ms}


# ----------------------------------------------------------------------------- the pass


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
        return sum(max(arena.align_up(it.nbytes), arena.PAGE) for it in self.items)


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
        builder = executor_slot_builder(pack)
        sched = cls.from_manifest(pack.manifest, pack.path, extra, builder)
        if builder is not None:
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


class ExecutorSlots:
    """
    The executor's slot construction over the pack's model skeleton (no weights, no I/O).

    Calling it with (resident units, split_bytes) gives the Streams the executor would stream,
    so the planner replays what the executor does: which units split into chunks, each slot's
    bytes and lifetime, and the load order. The executor's own `_make_slots` runs once per
    split size (every unit streamed) to get each unit's slots; a resident set then only drops
    units and re-numbers the steps, the way `_make_slots` does (a test checks the two agree).
    """

    def __init__(self, pack, executor):
        """Build the skeleton on 'meta' and the executor's unit table."""
        det = pack.build_detector(device='cpu', meta=True)
        self.engine = executor._Engine(pack, det.model, 'cpu', timeline=False)
        self.engine.reader.close()          # slot construction reads nothing
        self.engine.sync_reader.close()
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
            e = self.engine
            e._make_slots(set(), split_bytes or None)
            out = {}
            for u in e.units:
                if not u.info.calls:
                    continue
                main = (u.main.name, u.main.length) if u.main is not None else None
                chunks = [(c.name, c.length) for c in u.chunks]
                pos = e.call_modules.index(u.split[1]) if u.chunks else None
                module = u.split[1] if u.chunks else None
                out[u.index] = (main, chunks, pos, module, [c.rows for c in u.chunks])
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
        slots = self.engine._make_slots(set(resident), split_bytes or None)
        return [(s.name, s.length, s.first_step, s.last_step) for s in slots]

    def split_candidates(self):
        """Return split sizes worth trying: halvings of the largest splittable weight."""
        e = self.engine
        largest = 0
        for u in e.units:
            sp = e._splittable(u, arena.PAGE)
            if sp is not None:
                largest = max(largest, sp[1].nbytes)
        out = []
        s = largest // 2
        while s >= 256 << 10 and len(out) < 4:
            out.append(arena.align_up(s))
            s //= 2
        return tuple(out)


def executor_slot_builder(pack):
    """Return ExecutorSlots for a pack, or None when the executor is not installed."""
    try:
        from demand_layering_ros.runtime import executor
    except ImportError:
        return None
    return ExecutorSlots(pack, executor)


# ----------------------------------------------------------------------------- speed models


class Transfer:
    """
    Seconds to move a request of n bytes, interpolated from measured (request bytes, seconds).

    Between points the rate (bytes/s) is interpolated in log request size; beyond the largest
    point the largest request's rate holds, below the smallest the smallest request's time.
    `queued` points (optional) give the time of a request queued right behind another (the
    reader's threads overlap them); without them queued requests take the same time.
    """

    def __init__(self, points, queued=None):
        """Keep points and queued points: iterables of (request_bytes, seconds_per_request)."""
        pts = sorted((int(n), float(s)) for n, s in points if int(n) > 0 and float(s) > 0)
        if not pts:
            raise ValueError('a transfer model needs at least one (bytes, seconds) point')
        self.sizes = [n for n, _ in pts]
        self.logs = [math.log(n) for n, _ in pts]
        self.rates = [n / s for n, s in pts]
        self.min_seconds = pts[0][1]
        self.queued = Transfer(queued) if queued else None

    @classmethod
    def constant(cls, bytes_per_s):
        """Return a model with one rate for every request size."""
        return cls([(1 << 20, (1 << 20) / float(bytes_per_s))])

    def rate(self, n):
        """Return the interpolated bytes/s for a request of n bytes."""
        if len(self.sizes) == 1 or n >= self.sizes[-1]:
            return self.rates[-1]
        if n <= self.sizes[0]:
            return self.rates[0]
        x = math.log(n)
        j = bisect_right(self.logs, x)
        x0, x1 = self.logs[j - 1], self.logs[j]
        w = (x - x0) / (x1 - x0)
        return self.rates[j - 1] * (1 - w) + self.rates[j] * w

    def seconds(self, n):
        """Return the seconds a request of n bytes takes on an idle reader."""
        if n <= 0:
            return 0.0
        if n <= self.sizes[0]:
            return self.min_seconds
        return n / self.rate(n)

    def seconds_queued(self, n):
        """Return the seconds a request of n bytes adds when queued behind another."""
        return (self.queued or self).seconds(n)


@dataclass
class Timing:
    """
    The speeds a plan's latency depends on, in milliseconds, per call position of the pass.

    busy[c]: the time call c runs with its weights in place; gap[c]: weight-free work between
    the previous call and call c (it can overlap the wait for c's weights); tail: work after
    the last call. read: O_DIRECT Transfer; copy: host-to-device Transfer (None: no copy
    stage); slot_overhead / pass_overhead: the executor's own cost per slot it hands to the
    model and per pass (when anything is streamed); handoff: the delay from a release to the
    loader claiming the freed range (thread wake-ups); contention / read_slowdown: how many
    times slower compute runs while the reader reads and verifies, and reads while compute
    runs; kind:
    'cpu', 'cuda' (discrete GPU) or 'unified' (integrated GPU: no copy stage); piece_bytes:
    the executor claims and reads a slot in pieces of this size (None: whole slots, as on a
    discrete GPU's staging path); verify_ms_per_byte: checksum time after a slot's last read;
    split_cost: {(split_bytes, unit): time of the chunked call / time of the whole call}.
    """

    busy: list
    gap: list
    tail: float
    read: Transfer
    copy: Transfer = None
    slot_overhead: float = 0.0
    pass_overhead: float = 0.0
    handoff: float = 0.0
    contention: float = 1.0
    read_slowdown: float = 1.0
    kind: str = 'cpu'
    resident_latency: float = None
    piece_bytes: int = None
    verify_ms_per_byte: float = 0.0
    split_cost: dict = field(default_factory=dict)

    @classmethod
    def from_profile(cls, prof, sched, device=None):
        """Check that the profile belongs to the pack's pass and build the timing."""
        steps = prof.get('steps', {})
        busy, gap = steps.get('busy_ms'), steps.get('gap_ms')
        where = prof.get('pack', {}).get('path', '?')
        if busy is None or gap is None:
            raise ValueError(f'profile of {where} lacks steps.busy_ms/gap_ms')
        if list(steps.get('unit', [])) != list(sched.call_order):
            raise ValueError(
                f'profile of {where} does not match pack {sched.pack_path}: the profiled call '
                f'order ({len(steps.get("unit", []))} calls) differs from the manifest '
                f'call_order ({sched.steps} calls); profile the pack again')
        if device is not None and str(device).split(':')[0] != prof.get('device', 'cpu'):
            raise ValueError(f'profile of {where} was measured on {prof.get("device")!r}, '
                             f'the plan is for {device!r}; profile on that device')
        disk = prof.get('disk', {}).get('points') or []
        if not disk:
            raise ValueError(f'profile of {where} has no disk read measurements')
        read = Transfer([(p['request_bytes'], p['seconds']) for p in disk],
                        [(p['request_bytes'], p['seconds_streamed']) for p in disk
                         if p.get('seconds_streamed')])
        h2d = (prof.get('h2d') or {}).get('points') or []
        kind = prof.get('device_kind', 'cpu')
        copy = Transfer([(p['request_bytes'], p['seconds']) for p in h2d]) \
            if kind == 'cuda' and h2d else None
        ex = prof.get('executor') or {}
        mutual = prof.get('contention') or {}
        piece = ex.get('piece_bytes') if kind != 'cuda' else None
        check = (prof.get('checksum') or {}).get('bytes_per_s')
        return cls(busy=[float(x) for x in busy], gap=[float(x) for x in gap],
                   tail=float(steps.get('tail_ms', 0.0)), read=read, copy=copy,
                   slot_overhead=float(ex.get('overhead_ms_per_slot', 0.0)),
                   pass_overhead=float(ex.get('overhead_ms_per_pass', 0.0)),
                   handoff=float(ex.get('handoff_ms', 0.0)),
                   contention=max(1.0, float(mutual.get('compute_slowdown', 1.0))),
                   read_slowdown=max(1.0, float(mutual.get('read_slowdown', 1.0))),
                   kind=kind, resident_latency=prof.get('resident_latency_ms'),
                   piece_bytes=int(piece) if piece else None,
                   verify_ms_per_byte=1e3 / float(check) if check else 0.0,
                   split_cost={(int(sp), int(u)): max(1.0, float(r))   # never faster
                               for sp, per in (prof.get('split_cost') or {}).items()
                               for u, r in per.items()})

    def floor(self):
        """Return the simulated latency with every unit resident."""
        return sum(self.busy) + sum(self.gap) + self.tail


# ----------------------------------------------------------------------------- simulation


@dataclass
class Config:
    """One candidate plan: resident units, arena bytes, prefetch depth, split size."""

    resident: frozenset
    arena_bytes: int
    prefetch_depth: object = None
    split_bytes: int = 0
    pinned: frozenset = frozenset()


@dataclass
class Sim:
    """What one simulated pass gives: latency, stalls, memory and (optionally) a timeline."""

    latency_ms: float
    stall_ms: float
    resident_bytes: int
    arena_bytes: int
    peak_weight_bytes: int
    read_busy_ms: float
    head_start_ms: float = 0.0
    step_stall: list = field(default_factory=list)
    timeline: list = field(default_factory=list)
    reads: list = field(default_factory=list)     # per slot: (owner unit, start, end) ms


def _pieces(nbytes, piece_bytes):
    """Return the (offset, bytes) pieces the executor claims a slot's range in."""
    if not piece_bytes or nbytes <= piece_bytes:
        return [(0, nbytes)]
    return [(a, min(piece_bytes, nbytes - a)) for a in range(0, nbytes, piece_bytes)]


class _ReaderBusy:
    """
    The times the reader is busy (reading or verifying), and compute slowed down by it.

    Intervals arrive in time order; `advance(t, work)` returns when `work` ms of compute that
    starts at t ends if it runs `factor` times slower while the reader is busy (the measured
    contention of reads and checksums with compute for cores and memory bandwidth).
    """

    def __init__(self, factor):
        """Start with no busy time."""
        self.factor = factor
        self.spans = []
        self.j = 0

    def add(self, a, b):
        """Record that the reader is busy over [a, b) (a at or after earlier starts)."""
        if self.factor == 1.0 or b <= a:
            return
        if self.spans and a <= self.spans[-1][1]:
            self.spans[-1][1] = max(self.spans[-1][1], b)
        else:
            self.spans.append([a, b])

    def advance(self, t, work):
        """Return the end of `work` ms of compute starting at t."""
        if self.factor == 1.0:
            return t + work
        spans, c = self.spans, self.factor
        while self.j < len(spans) and spans[self.j][1] <= t:
            self.j += 1
        j = self.j
        while work > 1e-12:
            if j >= len(spans) or spans[j][0] >= t + work:
                return t + work
            a, b = spans[j]
            if a > t:
                work -= a - t
                t = a
            if work * c <= b - t:
                return t + work * c
            work -= (b - t) / c
            t = b
            j += 1
        return t


def _release_steps(items, order, offsets, piece_bytes=None, alignment=arena.PAGE):
    """
    Return, per load position, per piece of the slot, the step after which the piece is free.

    That is the largest last_step of the earlier-placed items overlapping the piece's range
    (-1: none). An interval map over the arena keeps, for each range, the last item placed.
    """
    starts, ends, owner_last = [], [], []      # disjoint segments, sorted by start
    out = []

    def query(lo, hi):
        j = bisect_right(starts, lo) - 1
        if j < 0 or ends[j] <= lo:
            j += 1
        worst, k = -1, j
        while k < len(starts) and starts[k] < hi:
            worst = max(worst, owner_last[k])
            k += 1
        return worst, j, k

    for i in order:
        it = items[i]
        lo = offsets[i]
        size = max(arena.align_up(it.nbytes, alignment), alignment)
        hi = lo + size
        out.append([query(lo + a, lo + a + n)[0] for a, n in _pieces(size, piece_bytes)])
        _, j, k = query(lo, hi)
        new_s, new_e, new_l = [], [], []
        if j < k and starts[j] < lo:
            new_s.append(starts[j])
            new_e.append(lo)
            new_l.append(owner_last[j])
        new_s.append(lo)
        new_e.append(hi)
        new_l.append(it.last_step)
        if j < k and ends[k - 1] > hi:
            new_s.append(hi)
            new_e.append(ends[k - 1])
            new_l.append(owner_last[k - 1])
        starts[j:k], ends[j:k], owner_last[j:k] = new_s, new_e, new_l
    return out


def simulate(sched, timing, cfg, layout=None, streams=None, head_start_ms=0.0, timeline=False):
    """
    Replay one pass of the executor with plan `cfg`; return a Sim (times in ms from pass start).

    Loader: takes slots in load order. It may claim a slot once the slot before it is wholly
    claimed and compute has acquired slot k - depth; it then claims the slot's range piece by
    piece (timing.piece_bytes; whole slots when None) as each piece's range is released by the
    earlier slot that used it last (plus timing.handoff, the threads' wake-up), and submits
    each piece's read at once. Reader: one in-order
    server; a read takes the back-to-back time when queued behind another and the one-at-a-
    time time when the disk was idle (pinned host units skip it). A slot is usable once all its
    pieces are in and its checksum is verified, then, on a discrete GPU, copied. Compute: step
    s starts when step s-1 is done plus the weight-free gap, and its slots are in; acquiring a
    slot costs the executor's per-slot overhead. `head_start_ms` lets the loader start that
    long before the pass (idle time between frames).
    Raises arena.ArenaTooSmall when the arena cannot hold the pass.
    """
    st = streams or sched.streams(cfg.resident, cfg.split_bytes)
    items, owners = st.items, st.owners
    if layout is None:
        layout = arena.plan_layout(items, cfg.arena_bytes, cfg.prefetch_depth)
    order = arena.load_order(items)
    n, steps = len(items), st.steps
    piece_bytes = timing.piece_bytes
    rel = _release_steps(items, order, layout.offsets, piece_bytes)
    last_rel = [max(r) for r in rel]
    depth = cfg.prefetch_depth
    gate = [items[order[k - depth]].first_step if depth is not None and k >= depth else -1
            for k in range(n)]
    busy = [timing.busy[c] * f for c, f in zip(st.step_call, st.step_share)]
    if cfg.split_bytes and timing.split_cost:       # a chunked call costs more than whole
        for j, (c, f) in enumerate(zip(st.step_call, st.step_share)):
            if f < 1.0:
                busy[j] *= timing.split_cost.get((cfg.split_bytes, sched.call_order[c]), 1.0)
    gap = [timing.gap[c] if first else 0.0 for c, first in zip(st.step_call, st.step_first)]
    base = [0.0] * steps          # when step s asks for its slots (pre-hook)
    end = [0.0] * steps
    start_w = [0.0] * steps
    ready = [None] * n            # load position -> time the slot is usable
    rows = [None] * n
    t0 = -head_start_ms
    t_whole = t_read = t_copy = t0
    read_busy = 0.0
    k = 0
    stall = 0.0
    step_stall = [0.0] * steps
    need_pos = {}                 # step -> load positions first used there
    for pos, i in enumerate(order):
        need_pos.setdefault(items[i].first_step, []).append(pos)
    oh, handoff = timing.slot_overhead, timing.handoff
    read, copy, verify = timing.read, timing.copy, timing.verify_ms_per_byte
    busy_reader = _ReaderBusy(timing.contention)
    slow = 1e3 * timing.read_slowdown
    for s in range(steps):
        base[s] = busy_reader.advance(end[s - 1] if s else 0.0, gap[s])
        while k < n and last_rel[k] < s and gate[k] <= s:
            i = order[k]
            nbytes = items[i].nbytes
            t = t_whole if gate[k] < 0 else max(t_whole, base[gate[k]])
            claims = sorted((max(t, end[r] + handoff) if r >= 0 else t, pn)
                            for r, (_, pn) in zip(rel[k], _pieces(
                                max(arena.align_up(nbytes), arena.PAGE), piece_bytes)))
            t_whole = claims[-1][0]
            if owners[i] in cfg.pinned:
                r0 = r1 = t_whole
            else:
                r0 = None
                for c, pn in claims:
                    a = max(c, t_read)
                    dur = slow * (read.seconds_queued(pn) if c < t_read else read.seconds(pn))
                    t_read = a + dur
                    read_busy += dur
                    r0 = a if r0 is None else r0
                    busy_reader.add(a, t_read)
                r1 = t_read + verify * nbytes
                busy_reader.add(t_read, r1)
            c0 = c1 = r1
            if copy is not None:
                c0 = max(r1, t_copy)
                c1 = c0 + 1e3 * copy.seconds(nbytes)
                t_copy = c1
            ready[k] = c1
            rows[k] = (i, r0, r1, c0, c1)
            k += 1
        need = base[s]
        acquired = 0
        for pos in need_pos.get(s, ()):
            if ready[pos] is None:
                raise RuntimeError(f'simulation: slot {items[order[pos]].name} was not placed '
                                   f'before step {s} (arena layout and simulation disagree)')
            need = max(need, ready[pos])
            acquired += 1
        start_w[s] = need
        step_stall[s] = need - base[s]
        stall += step_stall[s]
        end[s] = busy_reader.advance(need, busy[s] + oh * acquired)
    latency = busy_reader.advance(end[-1] if steps else 0.0, timing.tail) + (
        timing.pass_overhead if n else 0.0)
    resident_bytes = sched.bytes_of(cfg.resident) + sched.extra_bytes
    sim = Sim(latency_ms=latency, stall_ms=stall, resident_bytes=resident_bytes,
              arena_bytes=layout.capacity, peak_weight_bytes=resident_bytes + layout.capacity,
              read_busy_ms=read_busy, head_start_ms=head_start_ms, step_stall=step_stall,
              reads=[(owners[r[0]], r[1], r[2]) for r in rows if r is not None])
    if timeline:
        sim.timeline = _timeline(sched, st, rows, start_w, end, cfg.resident)
    return sim


def _timeline(sched, st, rows, start_w, end, resident):
    """Build executor-style timeline rows (seconds from pass start) per slot and resident unit."""
    span = {}
    for s, c in enumerate(st.step_call):
        u = sched.call_order[c]
        a, b = span.get(u, (start_w[s], end[s]))
        span[u] = (min(a, start_w[s]), max(b, end[s]))
    out = []
    for u in sched.called:
        if u in resident:
            a, b = span[u]
            out.append({'unit': u, 'name': sched.names[u], 'kind': 'resident',
                        'bytes': sched.lengths[u], 'read_start': None, 'read_end': None,
                        'copy_start': None, 'copy_end': None, 'compute_start': a / 1e3,
                        'compute_end': b / 1e3})
    for r in rows:
        if r is None:
            continue
        i, r0, r1, c0, c1 = r
        it, u = st.items[i], st.owners[i]
        a, b = (start_w[it.first_step], end[it.last_step]) if '[' in it.name else span[u]
        out.append({'unit': u, 'name': it.name, 'kind': 'chunk' if '[' in it.name else 'unit',
                    'bytes': it.nbytes, 'read_start': r0 / 1e3, 'read_end': r1 / 1e3,
                    'copy_start': c0 / 1e3 if c1 > c0 else None,
                    'copy_end': c1 / 1e3 if c1 > c0 else None,
                    'compute_start': a / 1e3, 'compute_end': b / 1e3})
    out.sort(key=lambda r: (r['compute_start'], r['read_start'] or 0.0))
    return out


# ----------------------------------------------------------------------------- search


@dataclass
class Point:
    """One evaluated plan on the trade-off curve."""

    cfg: Config
    sim: Sim

    @property
    def memory(self):
        """Return the predicted peak weight bytes."""
        return self.sim.peak_weight_bytes

    @property
    def latency(self):
        """Return the predicted latency in ms."""
        return self.sim.latency_ms


class Search:
    """
    Evaluates plans for one pack, profile and split size, with caches; walks the trade-off.

    frame_period_ms: when set, the loader preloads the first slots in the idle time between
    frames (the executor starts on the next pass as soon as one ends): a pass starts with a
    head start of max(0, period - latency), found by iterating from zero head start (each
    iterate is an upper bound of the latency).
    """

    def __init__(self, sched, timing, split_bytes=0, frame_period_ms=None, depths=DEPTHS,
                 pinned=frozenset()):
        """Keep the pass and the speeds; nothing is simulated yet."""
        self.sched = sched
        self.timing = timing
        self.split = int(split_bytes or 0)
        self.period = frame_period_ms
        self.depths = depths
        self.pinned = frozenset(pinned)
        self._evals = {}
        self._min = {}
        self._streams = {}
        self.evaluations = 0

    def streams(self, resident):
        """Return the executor's slots for a resident set at this split size (cached)."""
        st = self._streams.get(resident)
        if st is None:
            if len(self._streams) > 4096:
                self._streams.clear()
            st = self._streams[resident] = self.sched.streams(resident, self.split)
        return st

    def items(self, resident):
        """Return the arena items for a resident set."""
        return self.streams(resident).items

    def streamed_bytes(self, resident):
        """Return the arena bytes that hold every streamed slot at once."""
        return self.streams(resident).total_bytes

    def lower_bound(self, resident):
        """Return the live-set lower bound of the arena for a resident set."""
        return arena.live_lower_bound(self.items(resident))

    def config(self, resident, arena_bytes, depth):
        """Return a Config at this search's split size."""
        return Config(resident=resident, arena_bytes=arena_bytes, prefetch_depth=depth,
                      split_bytes=self.split, pinned=self.pinned - resident)

    def simulate(self, cfg, timeline=False):
        """Simulate a config with the frame-period head start; None if the arena is too small."""
        st = self.sched.streams(cfg.resident, cfg.split_bytes)
        try:
            layout = arena.plan_layout(st.items, cfg.arena_bytes, cfg.prefetch_depth)
        except arena.ArenaTooSmall:
            return None
        self.evaluations += 1
        sim = simulate(self.sched, self.timing, cfg, layout=layout, streams=st,
                       timeline=timeline)
        if self.period:
            for _ in range(4):
                head = max(0.0, self.period - sim.latency_ms)
                if head <= sim.head_start_ms + 1e-6:
                    break
                sim = simulate(self.sched, self.timing, cfg, layout=layout, streams=st,
                               head_start_ms=head, timeline=timeline)
        return sim

    def evaluate(self, resident, arena_bytes, depths=None):
        """Return the best Point over prefetch depths for a resident set and arena (or None)."""
        arena_bytes = int(arena_bytes) // arena.PAGE * arena.PAGE
        if not self.items(resident):
            arena_bytes = 0
        key = (resident, arena_bytes, depths)
        if key in self._evals:
            return self._evals[key]
        best = None
        for d in (depths or self.depths):
            sim = self.simulate(self.config(resident, arena_bytes, d))
            if sim is not None and (best is None or sim.latency_ms < best.latency - 1e-9):
                best = Point(self.config(resident, arena_bytes, d), sim)
            if not self.items(resident):
                break
        self._evals[key] = best
        return best

    def min_arena(self, resident, hint=None):
        """
        Return the smallest arena (over prefetch depths) that holds the pass.

        Like arena.min_layout, a binary search per depth between the live-set lower bound and
        a feasible size; `hint` (a size known or likely to be feasible, e.g. the arena of a
        smaller resident set) narrows it. First-fit feasibility is close to monotone.
        """
        if resident in self._min:
            return self._min[resident]
        items = self.items(resident)
        if not items:
            self._min[resident] = 0
            return 0
        page = arena.PAGE
        lo = arena.live_lower_bound(items) // page
        top = self.streamed_bytes(resident) // page
        best = None
        for d in self.depths:
            hi = top if best is None else best - 1
            if hint is not None and lo <= hint // page < hi and self._fits(items, hint, d):
                hi = hint // page
            if hi < lo or not self._fits(items, hi * page, d):
                continue
            a, b = lo, hi
            if self._fits(items, a * page, d):
                b = a
            while b - a > 1:
                mid = (a + b) // 2
                if self._fits(items, mid * page, d):
                    b = mid
                else:
                    a = mid
            best = b
            if best == lo:
                break
        self._min[resident] = best * page
        return self._min[resident]

    @staticmethod
    def _fits(items, capacity, depth):
        try:
            arena.plan_layout(items, capacity, depth)
        except arena.ArenaTooSmall:
            return False
        return True

    def resident_point(self):
        """Return the fully resident Point."""
        return self.evaluate(self.sched.resident_all(), 0)

    def greedy_path(self, candidates=6, max_rounds=None, rounds_hint=64):
        """
        Grow the resident set from the units that must stay, by the best stall saved per byte.

        Each round simulates the current set at its smallest arena, estimates for every streamed
        unit the stall its residency would save (its read time, bounded by the stall left after
        its read began) per byte, simulates the `candidates` best estimates exactly and adds the
        one with the most latency saved per byte of memory added (with many units, the few best
        at once, so about `rounds_hint` rounds reach full residency). Stops when what is left of
        the stall is negligible, everything is resident, or after `max_rounds`.
        Returns [(resident set, Point at its smallest arena)].
        """
        sched = self.sched
        resident = frozenset(sched.forced)
        floor = self.resident_point().latency
        tolerance = max(0.005, 1e-4 * floor)
        batch = max(1, math.ceil(len(sched.called) / rounds_hint))
        path = []
        a = None
        while True:
            a = self.min_arena(resident, hint=a)
            point = self.evaluate(resident, a)
            path.append((resident, point))
            streamed = [u for u in sched.called if u not in resident]
            if (not streamed or point.latency <= floor + tolerance
                    or (max_rounds is not None and len(path) > max_rounds)):
                break
            est = self._estimates(point, streamed)
            ranked = sorted(streamed, key=lambda u: -est[u])[:max(candidates, batch)]
            scored = []
            for u in ranked:
                r2 = resident | {u}
                if not self.items(r2):
                    p2, mem2 = self.resident_point(), sched.bytes_of(r2) + sched.extra_bytes
                else:
                    lb2 = self.lower_bound(r2)
                    p2 = self.evaluate(r2, max(a, lb2), depths=(point.cfg.prefetch_depth,))
                    # the memory the set reaches once its arena shrinks to the new bound
                    mem2 = sched.bytes_of(r2) + sched.extra_bytes + lb2
                if p2 is None:
                    continue
                saved = point.latency - p2.latency
                scored.append((saved / max(mem2 - point.memory, arena.PAGE), u))
            scored.sort(reverse=True)
            chosen = [u for score, u in scored[:batch] if score > 0] or [ranked[0]]
            resident = resident | set(chosen)
        return path

    def _estimates(self, point, streamed):
        """Estimate, per streamed unit, the stall its residency saves, per byte."""
        sim = point.sim
        reads = {}
        for owner, r0, r1 in sim.reads:
            a, b = reads.get(owner, (r0, 0.0))
            reads[owner] = (min(a, r0), b + (r1 - r0))
        stalls = sim.step_stall
        suffix = [0.0] * (len(stalls) + 1)
        for s in range(len(stalls) - 1, -1, -1):
            suffix[s] = suffix[s + 1] + stalls[s]
        st = self.streams(point.cfg.resident)
        first_step = {}
        for it, owner in zip(st.items, st.owners):
            first_step[owner] = min(first_step.get(owner, it.first_step), it.first_step)
        est = {}
        for u in streamed:
            _, dur = reads.get(u, (0.0, 0.0))
            saved = min(dur, suffix[first_step.get(u, 0)])
            est[u] = saved / max(self.sched.lengths[u], 1)
        return est

    def smallest_arena_meeting(self, resident, deadline_ms, hi=None):
        """Return the Point with the smallest arena meeting the deadline (or None)."""
        lo = self.min_arena(resident)
        top = self.streamed_bytes(resident)
        hi = top if hi is None else min(hi, top)
        if not self.items(resident):
            p = self.evaluate(resident, 0)
            return p if p is not None and p.latency <= deadline_ms else None
        if hi < lo:
            return None
        p_hi = self.evaluate(resident, hi)
        if p_hi is None or p_hi.latency > deadline_ms:
            return None
        p_lo = self.evaluate(resident, lo)
        if p_lo is not None and p_lo.latency <= deadline_ms:
            return p_lo
        a, b = lo // arena.PAGE, hi // arena.PAGE
        best = p_hi
        while b - a > 1:
            mid = (a + b) // 2
            p = self.evaluate(resident, mid * arena.PAGE)
            if p is not None and p.latency <= deadline_ms:
                b, best = mid, p
            else:
                a = mid
        return best

    def _neighbours(self, resident, moves=8):
        """Yield resident sets one unit away: the largest few dropped, the largest few added."""
        size = self.sched.lengths
        for u in sorted(resident - self.sched.forced, key=lambda u: -size[u])[:moves]:
            yield resident - {u}
        streamed = sorted((u for u in self.sched.called if u not in resident),
                          key=lambda u: -self.sched.lengths[u])
        for u in streamed[:moves]:
            yield resident | {u}

    def polish_deadline(self, point, deadline_ms, rounds=4):
        """Improve a plan meeting the deadline by one-unit moves while memory drops."""
        fixed = self.sched.extra_bytes
        for _ in range(rounds):
            better = None
            for r2 in self._neighbours(point.cfg.resident):
                room = point.memory - self.sched.bytes_of(r2) - fixed
                if room < 0 or (self.items(r2) and room < self.lower_bound(r2)):
                    continue
                p = self.smallest_arena_meeting(r2, deadline_ms, hi=room)
                if p is not None and p.memory < (better or point).memory:
                    better = p
            if better is None:
                return point
            point = better
        return point

    def polish_budget(self, point, budget_bytes, rounds=4):
        """Improve a plan within the budget by one-unit moves while latency drops."""
        fixed = self.sched.extra_bytes
        for _ in range(rounds):
            better = None
            for r2 in self._neighbours(point.cfg.resident):
                room = budget_bytes - self.sched.bytes_of(r2) - fixed
                if room < 0 or (self.items(r2) and room < self.min_arena(r2)):
                    continue
                p = self.evaluate(r2, min(room, self.streamed_bytes(r2)))
                if p is not None and p.memory <= budget_bytes and \
                        p.latency < (better or point).latency - 1e-9:
                    better = p
            if better is None:
                return point
            point = better
        return point

    def sweep(self, resident, n=8):
        """Return Points at n arena sizes from the smallest to holding every streamed slot."""
        if not self.items(resident):
            p = self.evaluate(resident, 0)
            return [p] if p else []
        lo = self.min_arena(resident)
        hi = self.streamed_bytes(resident)
        sizes = {lo, hi}
        if lo > 0 and hi > lo:
            sizes |= {int(lo * (hi / lo) ** (j / (n - 1))) // arena.PAGE * arena.PAGE
                      for j in range(1, n - 1)}
        return [p for p in (self.evaluate(resident, s) for s in sorted(sizes)) if p]


def pareto(points):
    """Return the points no other point beats on both memory and latency, by memory."""
    out = []
    for p in sorted(points, key=lambda p: (p.memory, p.latency)):
        if not out or p.latency < out[-1].latency - 1e-9:
            out.append(p)
    return out


# ----------------------------------------------------------------------------- planning


def _mb(nbytes):
    """Return MiB rounded to 0.001 (for reports)."""
    return None if nbytes is None else round(nbytes / MB, 3)


def _ms_up(ms, digits=4):
    """Return milliseconds rounded up, so a stated latency works as a deadline."""
    return None if ms is None else math.ceil(ms * 10 ** digits - 1e-9) / 10 ** digits


def _mb_up(nbytes):
    """Return MiB rounded up to 0.001, so a stated peak is never below the true bytes."""
    return None if nbytes is None else math.ceil(nbytes * 1000 / MB) / 1000


def _subsample(path, k=16):
    if len(path) <= k:
        return list(path)
    idx = sorted({round(j * (len(path) - 1) / (k - 1)) for j in range(k)})
    return [path[j] for j in idx]


def plan(pack, profile, budget_mb=None, deadline_ms=None, frame_period_ms=None, device=None,
         host_budget_mb=0, sweep_points=8, splits=None):
    """
    Choose resident units, arena size, split size and prefetch depth; return the plan dict.

    deadline only: the smallest predicted weight memory whose predicted latency meets it.
    budget only: the best predicted latency whose predicted weight memory fits it.
    both: the best latency within the budget, refused unless it also meets the deadline.
    neither: the smallest-memory plan. An infeasible request raises PlanInfeasible with the
    smallest budget that meets the deadline and the best latency within the budget.
    host_budget_mb: on a discrete GPU, pinned host memory for a middle tier (units copied from
    host instead of read from disk) when the executor supports one; 0 disables it.
    splits: split sizes to try (default: no split, and the halvings of the largest layer that
    the profile found bit-exact on its device).
    """
    sched = Schedule.from_pack(pack)
    prof = load_profile(profile) if not isinstance(profile, dict) else profile
    timing = Timing.from_profile(prof, sched, device)
    for name, v in (('budget_mb', budget_mb), ('deadline_ms', deadline_ms),
                    ('frame_period_ms', frame_period_ms)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not v > 0 or not math.isfinite(v)):
            raise ValueError(f'plan: {name} must be a positive number, got {v!r}')
    pinned = _pinned_tier(sched, timing, host_budget_mb)
    t0 = time.perf_counter()
    if splits is None:
        exact = prof.get('split_exact') or {}
        splits = [sp for sp in sched.split_candidates if exact.get(str(sp))]
    split_sizes = [0] + list(splits)
    searches = [Search(sched, timing, split_bytes=sp, frame_period_ms=frame_period_ms,
                       pinned=pinned) for sp in dict.fromkeys(split_sizes)]
    paths = [(se, se.greedy_path(max_rounds=None if se.split == 0 else 24)) for se in searches]
    full = searches[0].resident_point()
    curve = [full]
    for se, path in paths:
        curve += [p for _, p in path]
        for resident, _ in _subsample(path, 16 if se.split == 0 else 6):
            curve += se.sweep(resident, n=sweep_points)
    min_point = min((p for _, path in paths for _, p in path),
                    key=lambda p: (p.memory, p.latency))
    fastest = min(curve, key=lambda p: (p.latency, p.memory))
    budget = None if budget_mb is None else int(budget_mb * MB)

    def best_under_deadline(deadline):
        best = full if full.latency <= deadline else None
        owner = searches[0]
        for se, path in paths:
            for resident, _ in path:
                fixed = sched.bytes_of(resident) + sched.extra_bytes
                if best is not None and fixed + se.lower_bound(resident) >= best.memory:
                    continue
                hi = None if best is None else best.memory - fixed
                p = se.smallest_arena_meeting(resident, deadline, hi=hi)
                if p is not None and (best is None or p.memory < best.memory):
                    best, owner = p, se
        return owner.polish_deadline(best, deadline) if best is not None else None

    def best_within_budget(budget_bytes):
        best = full if full.memory <= budget_bytes else None
        owner = searches[0]
        for se, path in paths:
            for resident, _ in path:
                room = budget_bytes - sched.bytes_of(resident) - sched.extra_bytes
                if not se.items(resident) or room < se.min_arena(resident):
                    continue
                p = se.evaluate(resident, min(room, se.streamed_bytes(resident)))
                if p is not None and p.memory <= budget_bytes and (
                        best is None or (p.latency, p.memory) < (best.latency, best.memory)):
                    best, owner = p, se
        if best is not None:
            best = owner.polish_budget(best, budget_bytes)
        if best is not None and best.sim.arena_bytes:
            # the same latency with less arena: shrink while the prediction holds
            tight = owner.smallest_arena_meeting(best.cfg.resident, best.latency * 1.001 + 1e-3,
                                                 hi=best.sim.arena_bytes)
            if tight is not None and tight.memory <= best.memory:
                best = tight
        return best

    if deadline_ms is not None and budget is None:
        chosen = best_under_deadline(deadline_ms)
        if chosen is None:
            raise PlanInfeasible(
                f'deadline {deadline_ms:g} ms cannot be met: the fastest plan is predicted at '
                f'{fastest.latency:.3f} ms ({_mb(fastest.memory)} MB of weights)',
                deadline_ms=deadline_ms, min_budget_mb=None,
                best_latency_ms=_ms_up(fastest.latency),
                min_memory_mb=_mb_up(min_point.memory),
                fastest_latency_ms=_ms_up(fastest.latency))
    elif budget is not None:
        chosen = best_within_budget(budget)
        if chosen is None or (deadline_ms is not None and chosen.latency > deadline_ms):
            need = best_under_deadline(deadline_ms) if deadline_ms is not None else None
            msg = [f'budget {budget_mb:g} MB']
            if chosen is None:
                msg.append(f'is below the smallest plan ({_mb(min_point.memory)} MB: '
                           f'{_mb(min_point.sim.resident_bytes)} MB resident + '
                           f'{_mb(min_point.sim.arena_bytes)} MB arena)')
            else:
                msg.append(f'gives at best {chosen.latency:.3f} ms')
            if deadline_ms is not None:
                msg.append(f'and deadline {deadline_ms:g} ms '
                           + (f'needs at least {_mb(need.memory)} MB' if need is not None
                              else f'cannot be met at all (fastest {fastest.latency:.3f} ms)'))
            min_budget = _mb_up(need.memory) if need is not None else None
            if deadline_ms is None:
                min_budget = _mb_up(min_point.memory)
            raise PlanInfeasible(
                ' '.join(msg), budget_mb=budget_mb, deadline_ms=deadline_ms,
                min_budget_mb=min_budget,
                best_latency_ms=_ms_up(chosen.latency) if chosen is not None else None,
                min_memory_mb=_mb_up(min_point.memory),
                fastest_latency_ms=_ms_up(fastest.latency))
    else:
        chosen = min_point
    curve.append(chosen)
    evaluations = sum(se.evaluations for se in searches)
    return _plan_dict(sched, prof, timing, chosen, full, min_point, curve,
                      {'evaluations': evaluations, 'seconds': round(time.perf_counter() - t0, 3),
                       'split_sizes': [se.split for se in searches]},
                      request={'budget_mb': budget_mb, 'deadline_ms': deadline_ms,
                               'frame_period_ms': frame_period_ms,
                               'host_budget_mb': host_budget_mb})


def executor_has_middle_tier():
    """Return True when the executor keeps pinned host units (a `pinned_host_units` plan key)."""
    try:
        from demand_layering_ros.runtime import executor
    except ImportError:
        return False
    return 'pinned_host_units' in getattr(executor, 'PLAN_KEYS', ())


def _pinned_tier(sched, timing, host_budget_mb):
    """Return the units to keep in pinned host memory (discrete GPU only; largest first)."""
    if (timing.kind != 'cuda' or not host_budget_mb or timing.copy is None
            or not executor_has_middle_tier()):
        return frozenset()
    room = int(host_budget_mb * MB)
    out = []
    for u in sorted(sched.called, key=lambda u: -sched.lengths[u]):
        if sched.lengths[u] <= room:
            out.append(u)
            room -= sched.lengths[u]
    return frozenset(out)


def _point_row(p, full):
    return {'weight_mb': _mb_up(p.memory), 'latency_ms': round(p.latency, 4),
            'resident_mb': _mb(p.sim.resident_bytes), 'arena_mb': _mb(p.sim.arena_bytes),
            'resident_units': len(p.cfg.resident), 'prefetch_depth': p.cfg.prefetch_depth,
            'split_bytes': p.cfg.split_bytes,
            'reduction_pct': round(100.0 * (1 - p.memory / full.memory), 2)
            if full.memory else 0.0,
            'overhead_ms': round(p.latency - full.latency, 4)}


def _plan_dict(sched, prof, timing, chosen, full, min_point, curve, search, request):
    kind = timing.kind
    staging = 'zero_copy' if kind == 'unified' else 'copy'
    uniq = {}
    for p in curve:
        uniq.setdefault((p.memory, round(p.latency, 6)), p)
    points = sorted(uniq.values(), key=lambda p: (p.memory, p.latency))
    front = {id(p) for p in pareto(points)}
    alts = [dict(_point_row(p, full), pareto=id(p) in front) for p in points]
    return {
        'format': PLAN_FORMAT,
        'version': VERSION,
        'pack': sched.pack_path,
        'model': sched.spec,
        'device': prof.get('device', 'cpu'),
        'device_kind': kind,
        'staging': staging,
        'resident_units': [sched.names[u] for u in sched.called if u in chosen.cfg.resident],
        'pinned_host_units': [sched.names[u] for u in sched.called if u in chosen.cfg.pinned],
        'arena_bytes': int(chosen.sim.arena_bytes),
        'split_bytes': int(chosen.cfg.split_bytes or 0),
        'prefetch_depth': chosen.cfg.prefetch_depth,
        'predicted_latency_ms': _ms_up(chosen.latency),
        'predicted_peak_weight_mb': _mb_up(chosen.memory),
        'predicted_peak_weight_bytes': int(chosen.memory),
        'predicted_stall_ms': round(chosen.sim.stall_ms, 4),
        'predicted_resident_mb': _mb(chosen.sim.resident_bytes),
        'predicted_arena_mb': _mb(chosen.sim.arena_bytes),
        'pinned_host_mb': _mb(sum(sched.lengths[u] for u in chosen.cfg.pinned)),
        'head_start_ms': round(chosen.sim.head_start_ms, 4),
        'fully_resident': {'weight_mb': _mb(full.memory),
                           'predicted_latency_ms': round(full.latency, 4),
                           'measured_latency_ms': timing.resident_latency},
        'smallest': _point_row(min_point, full),
        'reduction_pct': round(100.0 * (1 - chosen.memory / full.memory), 2)
        if full.memory else 0.0,
        'overhead_ms': round(chosen.latency - full.latency, 4),
        'request': request,
        'search': search,
        'profile': {'machine': prof.get('machine', {}), 'mode': prof.get('mode', 'resident'),
                    'read_mb_per_s': round(timing.read.rate(1 << 24) / MB, 1),
                    'slot_overhead_ms': timing.slot_overhead,
                    'pass_overhead_ms': timing.pass_overhead},
        'alternatives': alts,
    }


def config_of(plan_dict, sched):
    """Return the Config a plan dict describes (for re-simulating a plan)."""
    resident = frozenset(sched.index(n) for n in plan_dict.get('resident_units', []))
    resident |= sched.forced
    pinned = frozenset(sched.index(n) for n in plan_dict.get('pinned_host_units', []) or [])
    return Config(resident=resident, arena_bytes=int(plan_dict.get('arena_bytes', 0)),
                  prefetch_depth=plan_dict.get('prefetch_depth'), pinned=pinned,
                  split_bytes=int(plan_dict.get('split_bytes') or 0))


def predict(pack, profile, plan_dict, frame_period_ms=None, timeline=False):
    """Simulate a given plan; return the Sim (the same prediction `plan` makes)."""
    sched = Schedule.from_pack(pack)
    prof = load_profile(profile) if not isinstance(profile, dict) else profile
    timing = Timing.from_profile(prof, sched)
    cfg = config_of(plan_dict, sched)
    search = Search(sched, timing, split_bytes=cfg.split_bytes, frame_period_ms=frame_period_ms,
                    pinned=cfg.pinned)
    sim = search.simulate(cfg, timeline=timeline)
    if sim is None:
        raise arena.ArenaTooSmall(f'plan arena of {cfg.arena_bytes} bytes cannot hold the pass '
                                  f'of {sched.pack_path}')
    return sim


# ----------------------------------------------------------------------------- files


def load_profile(path):
    """Read PROFILE.json and check its format."""
    with open(path) as f:
        prof = json.load(f)
    if prof.get('format') != PROFILE_FORMAT:
        raise ValueError(f'{path}: not a profile (format {prof.get("format")!r}, expected '
                         f'{PROFILE_FORMAT!r})')
    return prof


def write_json(obj, path):
    """Write a dict as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)


def write_plan(plan_dict, path):
    """Write a plan as YAML (atomically)."""
    import yaml
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
        yaml.safe_dump(plan_dict, f, sort_keys=False, default_flow_style=None, width=99)
    os.replace(tmp, path)


def read_plan(path):
    """Read PLAN.yaml (or JSON) into a dict and check the keys the executor needs."""
    import yaml
    with open(path) as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ValueError(f'{path}: a plan must be a mapping')
    for key in ('resident_units', 'arena_bytes', 'prefetch_depth'):
        if key not in d:
            raise ValueError(f'{path}: plan lacks {key!r}')
    return d


def profile(pack_dir, device='cpu', **kwargs):
    """Measure a pack on this machine (`profiler.profile`), so one import plans and profiles."""
    from demand_layering_ros.planning import profiler
    return profiler.profile(pack_dir, device=device, **kwargs)


# ----------------------------------------------------------------------------- on the fly


def plan_for(pack_dir, budget_mb=None, deadline_ms=None, profile=None, device='cpu',
             frame_period_ms=None, repeats=2):
    """
    Plan at start-up: read PROFILE.json if given (a path or dict), else profile quickly here.

    Used by the executor and the node when they get a budget or deadline instead of a plan.
    Profiling here stays within the budget (streamed when the weights exceed it).
    """
    if profile is None:
        prof = globals()['profile'](pack_dir, device=device, repeats=repeats, warmup=1,
                                    progress=False, disk_sizes=(256 << 10, 4 << 20),
                                    activation=False, budget_mb=budget_mb)
    elif isinstance(profile, dict):
        prof = profile
    else:
        prof = load_profile(profile)
    return plan(pack_dir, prof, budget_mb=budget_mb, deadline_ms=deadline_ms,
                frame_period_ms=frame_period_ms, device=device)


def executor_timeline(pack_dir, plan_dict, device='cpu', passes=2):
    """Run the executor with a plan and return its stats() after the last pass (None if absent)."""
    try:
        from demand_layering_ros.runtime import executor
    except ImportError:
        return None
    import torch
    model = executor.load(pack_dir, device=device, plan=plan_dict)
    try:
        x = model.detector.timing_input(1)
        with torch.no_grad():
            for _ in range(passes):
                model(x)
        return model.stats()
    finally:
        model.close()


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser, command):
    """Add the options of the `profile` and `plan` commands."""
    parser.add_argument('pack_dir', metavar='PACK_DIR', help='weight pack directory')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    if command == 'profile':
        parser.add_argument('--out', default=None,
                            help='PROFILE.json to write (default PACK_DIR/PROFILE.json)')
        parser.add_argument('--repeats', type=int, default=5,
                            help='timed passes; medians are kept (default 5)')
        parser.add_argument('--budget-mb', type=float, default=None,
                            help='weight memory the profile may use (MiB); when the weights '
                                 'exceed it the model runs streamed within it, not resident')
        parser.add_argument('--no-progress', action='store_true', help='no progress bar')
        return
    parser.add_argument('--profile', default=None,
                        help='PROFILE.json (default PACK_DIR/PROFILE.json, else profile now)')
    parser.add_argument('--budget-mb', type=float, default=None,
                        help='weight memory budget in MiB: minimise latency within it')
    parser.add_argument('--deadline-ms', type=float, default=None,
                        help='latency deadline: minimise weight memory subject to it')
    parser.add_argument('--frame-period-ms', type=float, default=None,
                        help='time between frames; idle time preloads the first units')
    parser.add_argument('--host-budget-mb', type=float, default=0,
                        help='discrete GPU only: pinned host memory for a middle tier (0: off)')
    parser.add_argument('--out', default=None,
                        help='PLAN.yaml to write (default PACK_DIR/PLAN.yaml)')
    parser.add_argument('--no-plots', action='store_true', help='do not write the PNG plots')
    parser.add_argument('--simulate-timeline', action='store_true',
                        help='draw the simulated timeline instead of running the executor')


def run(args, command):
    """Run `profile` or `plan`; return the exit status (3: the request is infeasible)."""
    import sys
    pack_dir = Path(args.pack_dir)
    if command == 'profile':
        prof = profile(pack_dir, device=args.device, repeats=max(1, args.repeats),
                       progress=not args.no_progress, budget_mb=args.budget_mb)
        out = Path(args.out or pack_dir / 'PROFILE.json')
        write_json(prof, out)
        print(json.dumps({'profile': str(out), 'mode': prof['mode'],
                          'resident_latency_ms': prof['resident_latency_ms'],
                          'weight_mb': _mb(prof['weight_bytes']),
                          'read_mb_per_s': [p['mb_per_s'] for p in prof['disk']['points']],
                          'io_mode': prof['disk']['mode'],
                          'activation_peak_mb': prof['activation_peak_mb']}))
        return 0
    prof_path = args.profile or (pack_dir / 'PROFILE.json')
    if args.profile is None and not Path(prof_path).is_file():
        print(f'plan: no profile given and {prof_path} does not exist: profiling now',
              file=sys.stderr)
        prof = profile(pack_dir, device=args.device, progress=True, budget_mb=args.budget_mb)
        write_json(prof, prof_path)
    else:
        prof = load_profile(prof_path)
    try:
        result = plan(pack_dir, prof, budget_mb=args.budget_mb, deadline_ms=args.deadline_ms,
                      frame_period_ms=args.frame_period_ms, device=args.device,
                      host_budget_mb=args.host_budget_mb)
    except PlanInfeasible as e:
        print(f'plan: infeasible: {e}', file=sys.stderr)
        print(json.dumps({'infeasible': True, **e.numbers()}))
        return 3
    out = Path(args.out or pack_dir / 'PLAN.yaml')
    result['profile']['path'] = str(prof_path)
    write_plan(result, out)
    pictures = {}
    if not args.no_plots:
        from demand_layering_ros import plots
        stem = out.with_suffix('')
        pictures['tradeoff'] = str(plots.tradeoff(result, f'{stem}_tradeoff.png'))
        stats, source = None, 'simulated'
        if not args.simulate_timeline:
            try:
                stats = executor_timeline(pack_dir, result, device=args.device)
                source = 'executor' if stats else 'simulated'
            except Exception as e:  # the picture must not hide the plan: say so and simulate
                print(f'plan: executor run for the timeline failed ({type(e).__name__}: {e}); '
                      'drawing the simulated timeline', file=sys.stderr)
        if stats is not None:
            rows = stats.get('timeline') or []
        else:
            rows = predict(pack_dir, prof, result, frame_period_ms=args.frame_period_ms,
                           timeline=True).timeline
        measured = f', measured {stats["latency_ms"]:.1f} ms' if stats else ''
        pictures['timeline'] = str(plots.timeline(
            rows, f'{stem}_timeline.png',
            title=f'{pack_dir.name} ({result["model"]}): {source} pass, predicted '
                  f'{result["predicted_latency_ms"]:.1f} ms{measured}'))
    print(json.dumps({'plan': str(out), 'predicted_latency_ms': result['predicted_latency_ms'],
                      'predicted_peak_weight_mb': result['predicted_peak_weight_mb'],
                      'fully_resident_mb': result['fully_resident']['weight_mb'],
                      'reduction_pct': result['reduction_pct'],
                      'overhead_ms': result['overhead_ms'],
                      'resident_units': len(result['resident_units']),
                      'arena_mb': result['predicted_arena_mb'], **pictures}))
    return 0
