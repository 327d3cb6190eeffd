# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Plan several profiled models under one memory budget: residents per model, one shared arena.

The models of a group run one pass at a time (one inference thread, cameras in turn),
so they share one arena and the group's weight memory is the arena plus every model's resident
units. For each model the single-model search (`search.Search`, one per split size the profile
found exact) gives its greedy path of resident sets; for each candidate arena size every model
takes one point of its path that fits the arena, and the combination the request asks for wins:

  budget: the least summed latency within the budget (and, with deadlines, meeting them);
  deadlines only: the least group memory meeting them; neither: the least group memory.

A model's deadline is checked against its predicted response: its own pass plus one pass of
every other model (each model has at most one frame queued, the newest, so a frame can wait for
one pass of each of the others). The reads of the model served next overlap the time the
others leave idle: with every frame period known, the head of each pass is read in the mean
idle time between two passes, (1 - utilisation) / (passes per ms), simulated as the single-model
planner simulates the idle time between frames (`simulate`, head start). Predictions are
written per model into the group PLAN.yaml (`group_plan.GroupPlan`).
"""

from dataclasses import dataclass
import itertools
import math
import time

from demand_layering_ros.layout import arena as arena_mod
from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.planning.planner import PlanInfeasible
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.search import pareto, Search, subsample
from demand_layering_ros.planning.simulate import simulate
from demand_layering_ros.planning.timing import load_profile, Timing
from demand_layering_ros.sizes import align_up, MB, mib, mib_up, PAGE

MAX_OPTIONS = 12              # points of each model's trade-off tried per arena size
ARENA_POINTS = 20             # shared arena sizes tried between the smallest and the widest


@dataclass
class Option:
    """One model's plan at a shared arena: resident bytes (with extra buffers) and latency."""

    memory: int
    latency: float
    point: object                 # search.Point
    largest: int                  # the largest streamed slot (the least a copy ring holds)


class GroupModel:
    """One model as the group planner sees it: its pass, its speeds, its trade-off paths."""

    def __init__(self, name, pack, profile, device=None, deadline_ms=None,
                 frame_period_ms=None):
        """Check the profile against the pack and walk the greedy paths of each split size."""
        self.name = name
        self.sched = Schedule.from_pack(pack)
        self.prof = load_profile(profile) if not isinstance(profile, dict) else profile
        self.timing = Timing.from_profile(self.prof, self.sched, device)
        self.deadline, self.period = deadline_ms, frame_period_ms
        exact = self.prof.get('split_exact') or {}
        splits = [sp for sp in self.sched.split_candidates if exact.get(str(sp))]
        self.searches = [Search(self.sched, self.timing, split_bytes=sp)
                         for sp in dict.fromkeys([0] + splits)]
        self.paths = [(se, se.greedy_path(max_rounds=None if se.split == 0 else 24))
                      for se in self.searches]
        self.full = self.searches[0].resident_point()
        self._options = {}

    @property
    def evaluations(self):
        """Return how many passes were simulated."""
        return sum(se.evaluations for se in self.searches)

    def floor(self):
        """Return the smallest arena any plan of this model streams through (0: none)."""
        return min((se.min_arena(r) for se, path in self.paths for r, _ in path
                    if se.items(r)), default=0)

    def widest(self):
        """Return the arena that holds every slot of the least resident plan at once."""
        se = self.searches[0]
        return se.streamed_bytes(self.paths[0][1][0][0])

    def options(self, arena):
        """Return the Pareto points (resident memory, latency) this model has at `arena`."""
        if arena in self._options:
            return self._options[arena]
        found = [self._option(self.full, self.searches[0])]
        for se, path in self.paths:
            for resident, _ in subsample(path, 16 if se.split == 0 else 6):
                if not se.items(resident) or se.min_arena(resident) > arena:
                    continue
                p = se.evaluate(resident, arena)
                if p is not None:
                    found.append(self._option(p, se))
        by_point = {id(o.point): o for o in found}
        front = pareto([o.point for o in found])
        ranked = [by_point[id(p)] for p in front]
        self._options[arena] = subsample(ranked, MAX_OPTIONS)
        return self._options[arena]

    def _option(self, point, se):
        st = se.streams(point.cfg.resident)
        largest = max((max(align_up(it.nbytes), PAGE) for it in st.items), default=0)
        return Option(point.sim.resident_bytes, point.latency, point, largest)

    def predict(self, point, head_start_ms):
        """Simulate a chosen point with a head start (ms of idle reading before the pass)."""
        cfg = point.cfg
        st = self.sched.streams(cfg.resident, cfg.split_bytes)
        if not st.items:
            return point.sim
        layout = arena_mod.plan_layout(st.items, cfg.arena_bytes, cfg.prefetch_depth)
        return simulate(self.sched, self.timing, cfg, layout=layout, streams=st,
                        head_start_ms=head_start_ms)


def response_times(latencies):
    """Return each model's response bound: its pass plus one pass of each other model."""
    total = sum(latencies)
    return [total for _ in latencies] if len(latencies) > 1 else list(latencies)


def idle_gap(latencies, periods):
    """Return the mean idle ms before a pass when every period is known (else 0)."""
    if not periods or any(p is None for p in periods):
        return 0.0
    rate = sum(1.0 / p for p in periods)
    busy = sum(lat / p for lat, p in zip(latencies, periods))
    return max(0.0, (1.0 - busy) / rate)


def plan_group(packs, profiles, budget_mb=None, deadlines=None, periods=None, device=None):
    """
    Choose each model's residents and split and the shared arena; return the GroupPlan.

    packs / profiles: {name: pack} and {name: PROFILE dict or path}; deadlines / periods:
    {name: ms or None}. An infeasible request raises planner.PlanInfeasible with the smallest
    group memory meeting the deadlines (min_budget_mb) and the smallest group plan
    (min_memory_mb).
    """
    deadlines, periods = deadlines or {}, periods or {}
    for what, values in (('deadline_ms', deadlines), ('frame_period_ms', periods),
                         ('budget_mb', {'': budget_mb})):
        for k, v in values.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not v > 0 or not math.isfinite(v)):
                raise ValueError(f'plan: {what} {k} must be a positive number, got {v!r}'
                                 .replace('  ', ' '))
    t0 = time.perf_counter()
    models = [GroupModel(n, packs[n], profiles[n], device, deadlines.get(n), periods.get(n))
              for n in packs]
    ring = any(m.timing.kind == 'cuda' for m in models)
    search = _Combinations(models, ring)
    best = search.choose(int(budget_mb * MB) if budget_mb is not None else None)
    if best is None:
        raise search.infeasible(budget_mb)
    info = {'evaluations': sum(m.evaluations for m in models), 'arena_sizes': search.tried,
            'seconds': round(time.perf_counter() - t0, 3)}
    return _group_plan(models, best, budget_mb, ring, info)


class _Combinations:
    """Every model's options at each candidate arena, combined; the request picks one."""

    def __init__(self, models, ring):
        self.models, self.ring = models, ring
        floors = {m.floor() for m in models} - {0}
        sizes = set(floors)
        if floors:
            lo, hi = min(floors), max(m.widest() for m in models)
            if hi > lo:
                sizes |= {int(lo * (hi / lo) ** (j / ARENA_POINTS)) // PAGE * PAGE
                          for j in range(1, ARENA_POINTS + 1)}
        self.sizes = sorted(sizes | {0})
        self.tried = 0

    def combos(self):
        """Yield (group memory, arena, options) for every feasible combination."""
        for arena in self.sizes:
            per = [m.options(arena) for m in self.models]
            if any(not opts for opts in per):
                continue
            self.tried += 1
            for opts in itertools.product(*per):
                if all(o.point.sim.arena_bytes == 0 for o in opts) and arena:
                    continue                      # nothing streams: the arena is not needed
                ring = max(o.largest for o in opts) if self.ring else 0
                yield arena + ring + sum(o.memory for o in opts), arena, opts

    def meets(self, opts):
        """
        Return True when every model with a deadline meets it (response bound).

        To the 0.0001 ms a plan states: a stated response works as a deadline.
        """
        resp = response_times([o.latency for o in opts])
        return all(m.deadline is None or r <= m.deadline + 1e-4
                   for m, r in zip(self.models, resp))

    def choose(self, budget):
        """Return (memory, arena, options) the request asks for, or None."""
        rows = list(self.combos())
        self.least = min(rows, key=lambda r: r[0], default=None)
        meeting = [r for r in rows if self.meets(r[2])]
        self.least_meeting = min(meeting, key=lambda r: r[0], default=None)
        if budget is not None:
            within = [r for r in meeting if r[0] <= budget]
            return min(within, key=lambda r: (sum(o.latency for o in r[2]), r[0]),
                       default=None)
        return min(meeting, key=lambda r: (r[0], sum(o.latency for o in r[2])), default=None)

    def infeasible(self, budget_mb):
        """Return the PlanInfeasible of a request no combination meets."""
        need = self.least_meeting[0] if self.least_meeting is not None else None
        least = self.least[0] if self.least is not None else None
        deadlines = {m.name: m.deadline for m in self.models if m.deadline is not None}
        msg = ['the group']
        if budget_mb is not None:
            msg.append(f'within budget {budget_mb:g} MB')
        if deadlines:
            msg.append(f"meeting deadlines {deadlines} (each model's pass plus one pass of "
                       'each other model)')
        msg.append('has no plan: ' + (f'the deadlines need at least {mib(need)} MB'
                                      if need is not None else 'the deadlines cannot be met')
                   + (f'; the smallest group plan needs {mib(least)} MB'
                      if least is not None else ''))
        return PlanInfeasible(' '.join(msg), budget_mb=budget_mb,
                              deadline_ms=deadlines or None, min_budget_mb=mib_up(need),
                              min_memory_mb=mib_up(least))


def _predict(models, opts):
    """Return per-model Sims with the idle head start, iterated to a fixed point."""
    periods = [m.period for m in models]
    sims = [o.point.sim for o in opts]
    for _ in range(4):
        gap = idle_gap([s.latency_ms for s in sims], periods)
        if all(abs(gap - s.head_start_ms) < 1e-6 for s in sims):
            break
        sims = [m.predict(o.point, gap) for m, o in zip(models, opts)]
    return sims


def _group_plan(models, best, budget_mb, ring, info):
    """Return the GroupPlan of a chosen combination, with per-model predictions."""
    memory, arena, opts = best
    sims = _predict(models, opts)
    lats = [s.latency_ms for s in sims]
    resp = response_times(lats)
    plans = {}
    for m, o, sim, r in zip(models, opts, sims, resp):
        cfg, sched = o.point.cfg, m.sched
        plans[m.name] = Plan(
            resident_units=tuple(sched.names[u] for u in sched.called if u in cfg.resident),
            arena_bytes=arena, split_bytes=int(cfg.split_bytes or 0),
            prefetch_depth=cfg.prefetch_depth,
            staging='zero_copy' if m.timing.kind == 'unified' else 'copy',
            predicted_latency_ms=round(sim.latency_ms, 4),
            predicted_peak_weight_mb=mib_up(o.memory + arena),
            details={'pack': sched.pack_path, 'model': sched.spec,
                     'deadline_ms': m.deadline, 'frame_period_ms': m.period,
                     'predicted_response_ms': round(r, 4),
                     'predicted_stall_ms': round(sim.stall_ms, 4),
                     'predicted_resident_mb': mib(o.memory),
                     'head_start_ms': round(sim.head_start_ms, 4),
                     'fully_resident': {'weight_mb': mib(m.full.memory),
                                        'predicted_latency_ms': round(m.full.latency, 4)},
                     'profile': {'device': m.prof.get('device', 'cpu'),
                                 'mode': m.prof.get('mode', 'resident')}})
    ring_bytes = max((o.largest for o in opts), default=0) if ring and arena else 0
    busy = [lat / m.period for lat, m in zip(lats, models) if m.period]
    return GroupPlan(
        models=plans, arena_bytes=arena, staging_bytes=ring_bytes,
        staging=next(iter(plans.values())).staging, budget_mb=budget_mb,
        predicted_peak_weight_mb=mib_up(memory),
        details={'source': 'planner', 'predicted_peak_weight_bytes': int(memory),
                 'fully_resident_mb': mib(sum(m.full.memory for m in models)),
                 'utilisation': round(sum(busy), 4) if len(busy) == len(models) else None,
                 'request': {'budget_mb': budget_mb,
                             'deadline_ms': {m.name: m.deadline for m in models},
                             'frame_period_ms': {m.name: m.period for m in models}},
                 'search': info})
