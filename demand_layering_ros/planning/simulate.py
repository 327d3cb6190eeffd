# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Replay one pass of the executor for a candidate plan: a discrete-event simulation, in ms.

The reader places slots in first-use order at the offsets the shared arena allocator gives them
(`arena.plan_layout`, the very function the executor uses), waits for each range to be freed by
the slot whose last step ended, and compute runs each step once its slots are in and the
previous step is done. Pure arithmetic on a Schedule, a Timing and a Config: the search calls
it thousands of times per plan.

Below it, the replay fitted to measured passes: the executor's hand-off delay and the reads'
slowdown under compute are the values at which the replay of a measured tight pass takes its
measured time (`measure.executor_costs` runs the passes, the profiler calls these).
"""

from bisect import bisect_right
from dataclasses import dataclass, field, replace

from demand_layering_ros.layout import arena
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.timing import PROFILE_FORMAT, Timing
from demand_layering_ros.sizes import align_up, PAGE


@dataclass
class Config:
    """One candidate plan: resident units, arena bytes, prefetch depth, split size."""

    resident: frozenset
    arena_bytes: int
    prefetch_depth: object = None
    split_bytes: int = 0


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
    bound_ms: float = 0.0         # the pipeline bound the latency was held to (0: none)
    step_stall: list = field(default_factory=list)
    timeline: list = field(default_factory=list)
    reads: list = field(default_factory=list)     # per slot: (owner unit, start, end) ms


def pieces(nbytes, piece_bytes):
    """Return the (offset, bytes) pieces the executor claims a slot's range in."""
    if not piece_bytes or nbytes <= piece_bytes:
        return [(0, nbytes)]
    return [(a, min(piece_bytes, nbytes - a)) for a in range(0, nbytes, piece_bytes)]


class ReaderBusy:
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


def release_steps(items, order, offsets, piece_bytes=None, alignment=PAGE):
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
        size = max(align_up(it.nbytes, alignment), alignment)
        hi = lo + size
        out.append([query(lo + a, lo + a + n)[0] for a, n in pieces(size, piece_bytes)])
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


class SimLoader:
    """
    The executor's loader and reader in one simulated pass: when each slot becomes usable.

    It may claim a slot once the slot before it is wholly claimed and compute has acquired slot
    k - depth; it then claims the slot's range piece by piece (timing.piece_bytes; whole slots
    when None) as each piece's range is released by the earlier slot that used it last (plus
    timing.handoff, the threads' wake-up), and submits each piece's read at once. Reader: one
    in-order server; a read takes the back-to-back time when queued behind another and the
    one-at-a-time time when the disk was idle. A slot is usable once all its pieces are in and
    its checksum is verified, then, on a discrete GPU, copied.
    """

    def __init__(self, items, offsets, timing, depth, head_start_ms=0.0):
        """Order the slots and find what each waits for; the clocks start at -head_start_ms."""
        self.items = items
        self.order = order = arena.load_order(items)
        self.n = n = len(items)
        self.timing = timing
        self.rel = release_steps(items, order, offsets, timing.piece_bytes)
        self.last_rel = [max(r) for r in self.rel]
        self.gate = [items[order[k - depth]].first_step if depth is not None and k >= depth
                     else -1 for k in range(n)]
        self.reader = ReaderBusy(timing.contention)
        self.slow = 1e3 * timing.read_slowdown
        self.t_whole = self.t_read = self.t_copy = -head_start_ms
        self.read_busy = 0.0
        self.k = 0                      # the next load position
        self.ready = [None] * n         # load position -> time the slot is usable
        self.rows = [None] * n          # load position -> (item, read start/end, copy start/end)

    def first_used(self):
        """Return {step: load positions first used at that step}."""
        need_pos = {}
        for pos, i in enumerate(self.order):
            need_pos.setdefault(self.items[i].first_step, []).append(pos)
        return need_pos

    def load_until(self, s, base, end):
        """Load every slot the loader may start before step s runs (base/end: step times)."""
        while self.k < self.n and self.last_rel[self.k] < s and self.gate[self.k] <= s:
            self.load(self.k, base, end)
            self.k += 1

    def load(self, k, base, end):
        """Claim, read, verify and copy the slot at load position k."""
        i = self.order[k]
        nbytes = self.items[i].nbytes
        gate, timing = self.gate[k], self.timing
        t = self.t_whole if gate < 0 else max(self.t_whole, base[gate])
        handoff, read = timing.handoff, timing.read
        claims = sorted((max(t, end[r] + handoff) if r >= 0 else t, pn)
                        for r, (_, pn) in zip(self.rel[k], pieces(
                            max(align_up(nbytes), PAGE), timing.piece_bytes)))
        self.t_whole = claims[-1][0]
        t_read, r0 = self.t_read, None
        for c, pn in claims:
            a = max(c, t_read)
            dur = self.slow * (read.seconds_queued(pn) if c < t_read else read.seconds(pn))
            t_read = a + dur
            self.read_busy += dur
            r0 = a if r0 is None else r0
            self.reader.add(a, t_read)
        self.t_read = t_read
        r1 = t_read + timing.verify_ms_per_byte * nbytes
        self.reader.add(t_read, r1)
        c0 = c1 = r1
        if timing.copy is not None:
            c0 = max(r1, self.t_copy)
            c1 = c0 + 1e3 * timing.copy.seconds(nbytes)
            self.t_copy = c1
        self.ready[k] = c1
        self.rows[k] = (i, r0, r1, c0, c1)


def step_times(sched, timing, cfg, st):
    """Return per step the compute ms with its weights in place and the weight-free gap before."""
    busy = [timing.busy[c] * f for c, f in zip(st.step_call, st.step_share)]
    if cfg.split_bytes and timing.split_cost:       # a chunked call costs more than whole
        for j, (c, f) in enumerate(zip(st.step_call, st.step_share)):
            if f < 1.0:
                busy[j] *= timing.split_cost.get((cfg.split_bytes, sched.call_order[c]), 1.0)
    gap = [timing.gap[c] if first else 0.0 for c, first in zip(st.step_call, st.step_first)]
    return busy, gap


def simulate(sched, timing, cfg, layout=None, streams=None, head_start_ms=0.0, timeline=False):
    """
    Replay one pass of the executor with plan `cfg`; return a Sim (times in ms from pass start).

    The loader and reader run as `SimLoader` says. Compute: step s starts when step s-1 is done
    plus the weight-free gap, and its slots are in; acquiring a slot costs the executor's
    per-slot overhead; compute runs slower while the reader is busy (`ReaderBusy`).
    `head_start_ms` lets the loader start that long before the pass (idle time between
    frames). Raises arena.ArenaTooSmall when the arena cannot hold the pass.
    """
    st = streams or sched.streams(cfg.resident, cfg.split_bytes)
    if layout is None:
        layout = arena.plan_layout(st.items, cfg.arena_bytes, cfg.prefetch_depth)
    steps = st.steps
    busy, gap = step_times(sched, timing, cfg, st)
    loader = SimLoader(st.items, layout.offsets, timing, cfg.prefetch_depth, head_start_ms)
    reader, ready, oh = loader.reader, loader.ready, timing.slot_overhead
    base = [0.0] * steps          # when step s asks for its slots (pre-hook)
    end = [0.0] * steps
    start_w = [0.0] * steps
    step_stall = [0.0] * steps
    stall = 0.0
    need_pos = loader.first_used()
    for s in range(steps):
        base[s] = reader.advance(end[s - 1] if s else 0.0, gap[s])
        loader.load_until(s, base, end)
        need = base[s]
        acquired = 0
        for pos in need_pos.get(s, ()):
            if ready[pos] is None:
                raise RuntimeError(f'simulation: slot {st.items[loader.order[pos]].name} was '
                                   f'not placed before step {s} (arena layout and simulation '
                                   'disagree)')
            need = max(need, ready[pos])
            acquired += 1
        start_w[s] = need
        step_stall[s] = need - base[s]
        stall += step_stall[s]
        end[s] = reader.advance(need, busy[s] + oh * acquired)
    latency = reader.advance(end[-1] if steps else 0.0, timing.tail) + (
        timing.pass_overhead if loader.n else 0.0)
    resident_bytes = sched.bytes_of(cfg.resident) + sched.extra_bytes
    sim = Sim(latency_ms=latency, stall_ms=stall, resident_bytes=resident_bytes,
              arena_bytes=layout.capacity, peak_weight_bytes=resident_bytes + layout.capacity,
              read_busy_ms=loader.read_busy, head_start_ms=head_start_ms, step_stall=step_stall,
              reads=[(st.owners[r[0]], r[1], r[2]) for r in loader.rows if r is not None])
    if timeline:
        sim.timeline = _timeline(sched, st, loader.rows, start_w, end, cfg.resident)
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


# ------------------------------------------------ the replay fitted to measured passes

HANDOFF_MAX_MS = 20.0


def fit_handoff(pk, device, disk, executor_costs, resident_ms, measured_ms, arena_bytes):
    """Return the hand-off delay (ms) at which the simulated tight pass takes `measured_ms`."""
    sched = Schedule.from_pack(pk)
    n = sched.steps
    prof = {'format': PROFILE_FORMAT, 'device': str(device).split(':')[0],
            'device_kind': 'cpu' if not str(device).startswith('cuda') else 'cuda',
            'steps': {'unit': list(sched.call_order), 'busy_ms': [resident_ms / n] * n,
                      'gap_ms': [0.0] * n, 'tail_ms': 0.0},
            'disk': disk, 'executor': dict(executor_costs)}
    timing = Timing.from_profile(prof, sched)
    return solve_handoff(sched, timing, Config(frozenset(), arena_bytes), measured_ms)


def solve_handoff(sched, timing, cfg, measured_ms, hi=5.0, **sim_kw):
    """Return the hand-off (ms, 0..hi) at which `simulate(cfg)` takes `measured_ms`."""
    def latency(h):
        timing.handoff = h
        return simulate(sched, timing, cfg, **sim_kw).latency_ms
    return round(solve_increasing(latency, measured_ms, 0.0, hi), 5)


def solve_increasing(f, target, lo, hi, steps=30):
    """Return x in [lo, hi] with f(x) = target for an increasing f (clamped at the ends)."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _config(sched, probe):
    return Config(frozenset(sched.forced), int(probe['arena_bytes'] or 0),
                  probe['prefetch_depth'], int(probe.get('split_bytes') or 0))


def fit_probe_handoff(sched, timing, probe):
    """Return the hand-off (ms) at which the replay of the tight pass takes its measured time."""
    return solve_handoff(sched, timing, _config(sched, probe), probe['measured_ms'],
                         hi=HANDOFF_MAX_MS)


def fit_two_probes(sched, timing, whole, split, rounds=4):
    """
    Return (hand-off ms, read slowdown) that replay both tight passes at their measured times.

    One pass cannot tell a cost per hand-off from reads slower than measured alone: fitted to
    the unsplit pass only, the stall of a few large units became a hand-off cost that the
    planner then charged on every chunk of a split plan (yolov3's smallest plan predicted 4.6x
    its time). The split pass hands off several times more often over the same bytes, so the
    difference between the two passes is the hand-offs' and the rest is the reads'.
    """
    cfg_whole, cfg_split = _config(sched, whole), _config(sched, split)
    base = timing.read_slowdown
    slow, handoff = 1.0, 0.0
    for _ in range(rounds):
        t = replace(timing, read_slowdown=base * slow)
        handoff = solve_handoff(sched, t, cfg_split, split['measured_ms'], hi=HANDOFF_MAX_MS)
        slow = _solve_read(sched, replace(timing, handoff=handoff), cfg_whole,
                           whole['measured_ms'], base)
    return handoff, round(base * slow, 5)


def _solve_read(sched, timing, cfg, measured_ms, base, hi=20.0):
    """
    Return the factor on read_slowdown at which `simulate(cfg)` takes `measured_ms`.

    Reads under compute are never faster than alone (Timing clamps read_slowdown at 1), so
    the factor does not go below what takes the slowdown to 1.
    """

    def latency(f):
        return simulate(sched, replace(timing, read_slowdown=base * f), cfg).latency_ms
    return solve_increasing(latency, measured_ms, min(1.0, 1.0 / base), hi, steps=25)
