# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Search the resident set and the arena size of a pack for the best memory-delay trade-off.

`Search` evaluates plans of one split size (caching simulations and smallest arenas): it grows
the resident set greedily by stall saved per byte, sweeps arena sizes, and binary-searches the
smallest arena meeting a deadline. `TradeOff` runs one Search per split size and picks the plan
for a request: the least memory under a deadline, or the best latency within a budget.
"""

from dataclasses import dataclass
import math

from demand_layering_ros.layout import arena
from demand_layering_ros.layout.slots import DEPTHS
from demand_layering_ros.planning.simulate import Config, Sim, simulate
from demand_layering_ros.planning.timing import pipeline_bound_ms


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
    iterate is an upper bound of the latency). Without a head start no latency is below the
    pipeline bound at the slowest disk rate the profile saw (timing.bound_rate).
    """

    def __init__(self, sched, timing, split_bytes=0, frame_period_ms=None, depths=DEPTHS):
        """Keep the pass and the speeds; nothing is simulated yet."""
        self.sched = sched
        self.timing = timing
        self.split = int(split_bytes or 0)
        self.period = frame_period_ms
        self.depths = depths
        self._evals = {}
        self._min = {}
        self._streams = {}
        self._bounds = {}
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
                      split_bytes=self.split)

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
        if not sim.head_start_ms:
            sim.bound_ms = self.bound(cfg.resident)
            sim.latency_ms = max(sim.latency_ms, sim.bound_ms)
        return sim

    def bound(self, resident):
        """Return the pipeline limit in ms of a resident set at timing.bound_rate (0: none)."""
        rate = self.timing.bound_rate
        if not rate:
            return 0.0
        b = self._bounds.get(resident)
        if b is None:
            t = self.timing
            b = self._bounds[resident] = pipeline_bound_ms(self.sched, t.busy, t.gap, t.tail,
                                                           resident, rate)
        return b

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


def subsample(path, k=16):
    """Return at most k entries of a path, evenly spread, first and last included."""
    if len(path) <= k:
        return list(path)
    idx = sorted({round(j * (len(path) - 1) / (k - 1)) for j in range(k)})
    return [path[j] for j in idx]


class TradeOff:
    """
    The memory-delay trade-off of one pack: a Search per split size, its greedy path, sweeps.

    Built once per plan; `under_deadline` and `within_budget` pick a Point from it (None when
    none qualifies). `curve` holds every point evaluated on the way (the trade-off picture),
    `full` is the fully resident point, `smallest` the least memory on any greedy path and
    `fastest` the lowest latency on the curve.
    """

    def __init__(self, sched, timing, splits=(), frame_period_ms=None, sweep_points=8):
        """Search every split size (0: no split, then `splits`) and sweep along the paths."""
        self.sched = sched
        self.searches = [Search(sched, timing, split_bytes=sp, frame_period_ms=frame_period_ms)
                         for sp in dict.fromkeys([0] + list(splits))]
        self.paths = [(se, se.greedy_path(max_rounds=None if se.split == 0 else 24))
                      for se in self.searches]
        self.full = self.searches[0].resident_point()
        self.curve = [self.full]
        for se, path in self.paths:
            self.curve += [p for _, p in path]
            for resident, _ in subsample(path, 16 if se.split == 0 else 6):
                self.curve += se.sweep(resident, n=sweep_points)
        self.smallest = min((p for _, path in self.paths for _, p in path),
                            key=lambda p: (p.memory, p.latency))
        self.fastest = min(self.curve, key=lambda p: (p.latency, p.memory))

    @property
    def evaluations(self):
        """Return how many passes were simulated."""
        return sum(se.evaluations for se in self.searches)

    @property
    def split_sizes(self):
        """Return the split sizes searched (0: none)."""
        return [se.split for se in self.searches]

    def under_deadline(self, deadline):
        """Return the Point of least memory predicted to meet the deadline (or None)."""
        sched, full = self.sched, self.full
        best = full if full.latency <= deadline else None
        owner = self.searches[0]
        for se, path in self.paths:
            for resident, _ in path:
                fixed = sched.bytes_of(resident) + sched.extra_bytes
                if best is not None and fixed + se.lower_bound(resident) >= best.memory:
                    continue
                hi = None if best is None else best.memory - fixed
                p = se.smallest_arena_meeting(resident, deadline, hi=hi)
                if p is not None and (best is None or p.memory < best.memory):
                    best, owner = p, se
        return owner.polish_deadline(best, deadline) if best is not None else None

    def within_budget(self, budget_bytes):
        """Return the Point of best predicted latency within the budget (or None)."""
        sched, full = self.sched, self.full
        best = full if full.memory <= budget_bytes else None
        owner = self.searches[0]
        for se, path in self.paths:
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
