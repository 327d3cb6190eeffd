# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Plan the memory-delay trade-off of a profiled pack for a budget and a deadline.

The paper found its operating points by sweeping a buffer size by hand. A robot integrator states
a weight-memory budget and a deadline instead, so `plan` takes what a plan depends on from a
profile (`profiler.profile`: each call's compute time, each unit's bytes, the disk's O_DIRECT
bandwidth by request size, on CUDA the host-to-device bandwidth), predicts each candidate by
replaying one pass (`simulate`), searches the resident set and arena size (`search`) and
returns the chosen Plan, whose `details` carry the predictions and the trade-off curve
(PLAN.yaml). `predict` re-simulates a given plan.

A prediction is honest about what varies: the profile was measured at one torch thread count
and the plan is made for that count only (`threads`); the disk's speed varies between the
profile's rounds, so a deadline is planned with the disk at its 90th percentile of read times
and a budget at its median, every plan carries the range from the fastest disk round and
compute to the slowest (`predicted_latency_range_ms`), and no prediction is below the pipeline
bound at the slowest disk rate the profile saw.

`plan_group` plans several profiled models under one memory budget: residents per model, one
shared arena. The models of a group run one pass at a time (one inference thread, cameras in
turn), so they share one arena and the group's weight memory is the arena plus every model's
resident units. For each model the single-model search (`search.Search`, one per split size
the profile found exact) gives its greedy path of resident sets; for each candidate arena size
every model takes one point of its path that fits the arena, and the combination the request
asks for wins:

  budget: the least summed latency within the budget (and, with deadlines, meeting them);
  deadlines only: the least group memory meeting them; neither: the least group memory.

A model's deadline is checked against its predicted response: its own pass plus one pass of
every other model (each model has at most one frame queued, the newest, so a frame can wait for
one pass of each of the others). The reads of the model served next overlap the time the
others leave idle: with every frame period known, the head of each pass is read in the mean
idle time between two passes, (1 - utilisation) / (passes per ms), simulated as the single-model
planner simulates the idle time between frames (`simulate`, head start). Predictions are
written per model into the group PLAN.yaml (`layout.group_plan.GroupPlan`).
"""

from dataclasses import dataclass
import itertools
import math
import time

from demand_layering_ros.layout import threads as thread_count
from demand_layering_ros.layout.arena import ArenaTooSmall, plan_layout
from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.planning.schedule import Schedule
from demand_layering_ros.planning.search import pareto, Search, subsample, TradeOff
from demand_layering_ros.planning.simulate import Config, simulate
from demand_layering_ros.planning.timing import bound_rate, CONSERVATIVE_PCT, disk_level
from demand_layering_ros.planning.timing import load_profile, Timing
from demand_layering_ros.quantiles import median
from demand_layering_ros.sizes import align_up, MB, mib, mib_up, PAGE, pinned_size

MAX_OPTIONS = 12              # points of each model's trade-off tried per arena size
ARENA_POINTS = 20             # shared arena sizes tried between the smallest and the widest


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


def _ms_up(ms, digits=4):
    """Return milliseconds rounded up, so a stated latency works as a deadline."""
    return None if ms is None else math.ceil(ms * 10 ** digits - 1e-9) / 10 ** digits


def _mb_up(nbytes):
    """Return MiB rounded up to 0.001, so a stated peak is never below the true bytes."""
    return None if nbytes is None else math.ceil(nbytes * 1000 / MB) / 1000


def plan(pack, profile, budget_mb=None, deadline_ms=None, frame_period_ms=None, device=None,
         sweep_points=8, splits=None, threads=None):
    """
    Choose resident units, arena size, split size and prefetch depth; return the Plan.

    deadline only: the smallest predicted weight memory whose predicted latency meets it.
    budget only: the best predicted latency whose predicted weight memory fits it.
    both: the best latency within the budget, refused unless it also meets the deadline.
    neither: the smallest-memory plan. An infeasible request raises PlanInfeasible with the
    smallest budget that meets the deadline and the best latency within the budget.
    profile: the PROFILE dict or a PROFILE.json path. splits: split sizes to try (default: no
    split, and the halvings of the largest layer that the profile found bit-exact on its
    device). threads: the torch thread count the plan will run with (default: this process's);
    a profile measured at another count raises threads.ThreadMismatch.
    """
    sched = Schedule.from_pack(pack)
    prof = load_profile(profile) if not isinstance(profile, dict) else profile
    threads = thread_count.check_profile(prof, threads)
    disk_pct = CONSERVATIVE_PCT if deadline_ms is not None else 50
    timing = Timing.from_profile(prof, sched, device, disk_pct=disk_pct)
    for name, v in (('budget_mb', budget_mb), ('deadline_ms', deadline_ms),
                    ('frame_period_ms', frame_period_ms)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not v > 0 or not math.isfinite(v)):
            raise ValueError(f'plan: {name} must be a positive number, got {v!r}')
    t0 = time.perf_counter()
    if splits is None:
        exact = prof.get('split_exact') or {}
        splits = [sp for sp in sched.split_candidates if exact.get(str(sp))]
    trade = TradeOff(sched, timing, splits, frame_period_ms, sweep_points)
    reserve = int(prof.get('convert_reserve_bytes') or 0)
    chosen = _choose_within(trade, budget_mb, deadline_ms, reserve)
    for _ in range(3):     # a pinned copy ring (discrete CUDA) comes out of the budget too
        staging = staging_bytes(sched, timing, chosen)
        if budget_mb is None or chosen.memory + staging + reserve <= budget_mb * MB:
            break
        chosen = _choose_within(trade, budget_mb - staging / MB, deadline_ms, reserve)
    trade.curve.append(chosen)
    search = {'evaluations': trade.evaluations, 'seconds': round(time.perf_counter() - t0, 3),
              'split_sizes': trade.split_sizes}
    request = {'budget_mb': budget_mb, 'deadline_ms': deadline_ms,
               'frame_period_ms': frame_period_ms}
    out = _plan_dict(sched, prof, timing, chosen, trade, search, request)
    out['threads'] = threads
    if reserve:                 # the float32 copies are weight memory the executor counts
        out['predicted_conversion_mb'] = mib(reserve)
        out['predicted_peak_weight_bytes'] += reserve
        out['predicted_peak_weight_mb'] = _mb_up(out['predicted_peak_weight_bytes'])
        out.update(memory_prediction(prof, chosen.memory + reserve,
                                     staging_bytes(sched, timing, chosen)))
    out.update(_honest(sched, prof, chosen, frame_period_ms, device, disk_pct))
    return Plan.from_dict(out)


def compute_spread(prof):
    """
    Return (fastest, slowest) resident pass over their median, of all the profile timed.

    The resident passes of the call timing and of the contention measurement (alone) are the
    same model on the same input at different moments of the profile: their spread is how much
    compute itself varied on this machine. (1, 1) when fewer than two were timed.
    """
    plain = [float(v) for v in prof.get('resident_latency_all_ms') or [] if v]
    plain += [float(v) for v in (prof.get('contention') or {}).get('alone_all_ms') or [] if v]
    if len(plain) < 2:
        return 1.0, 1.0
    mid = median(plain)
    return min(plain) / mid, max(plain) / mid


def _honest(sched, prof, chosen, frame_period_ms, device, disk_pct):
    """Return the plan's range, expected latency and what they rest on (PLAN.yaml keys)."""
    cfg = chosen.cfg
    fast, slow = compute_spread(prof)

    def at(pct, compute=1.0, floor=True):
        timing = Timing.from_profile(prof, sched, device, disk_pct=pct)
        if compute != 1.0:
            timing = timing.scaled(compute=compute)
        if not floor:       # the fast end: the disk at its fastest, not held to its slowest
            timing.bound_rate = None
        se = Search(sched, timing, split_bytes=cfg.split_bytes, frame_period_ms=frame_period_ms)
        return se.simulate(cfg).latency_ms

    expected = at(50) if disk_pct != 50 else chosen.latency
    lo, hi = at(0, fast, floor=False), at(100, slow)
    disk = prof.get('disk') or {}
    rate = bound_rate(disk)
    return {
        'predicted_latency_range_ms': [round(min(lo, chosen.latency), 4),
                                       _ms_up(max(hi, chosen.latency))],
        'prediction': {
            'disk_percentile': disk_pct,
            'disk_level': round(disk_level(disk, disk_pct), 4),
            'disk_rounds': len(disk.get('rounds') or []) or 1,
            'expected_latency_ms': round(expected, 4),
            'bound_ms': round(chosen.sim.bound_ms, 4),
            'bound_mb_per_s': round(rate / MB, 1) if rate else None,
            'compute_spread': [round(fast, 4), round(slow, 4)]},
    }


def staging_bytes(sched, timing, point):
    """
    Return the pinned staging a plan needs besides its weights (0 but on a discrete GPU).

    There the runtime reads each streamed slot into a pinned ring before copying it to the
    device; within a budget the ring is the largest slot rounded up to a power of two (what
    torch's pinned allocator hands out).
    """
    if timing.kind != 'cuda':
        return 0
    items = sched.streams(point.cfg.resident, point.cfg.split_bytes or 0).items
    return pinned_size(max((it.nbytes for it in items), default=0))


def _choose_within(trade, budget_mb, deadline_ms, reserve):
    """
    Return _choose's point for a budget less `reserve` bytes (conversion copies; 0: none).

    A float16 pack on the CPU lands as float32 copies outside the residents and the arena the
    trade-off counts; the engine refuses a plan whose weights and copies exceed the budget.
    """
    if budget_mb is None or not reserve:
        return _choose(trade, budget_mb, deadline_ms)
    what = f'{mib(reserve)} MB of float32 copies of the weights as they land'
    if budget_mb * MB <= reserve:
        raise PlanInfeasible(f'budget {budget_mb:g} MB cannot hold the {what}',
                             budget_mb=budget_mb, deadline_ms=deadline_ms,
                             min_memory_mb=_mb_up(trade.smallest.memory + reserve))
    try:
        return _choose(trade, budget_mb - reserve / MB, deadline_ms)
    except PlanInfeasible as e:
        nums = dict(e.numbers(), budget_mb=budget_mb)
        for k in ('min_budget_mb', 'min_memory_mb'):
            if nums[k] is not None:
                nums[k] = _mb_up(nums[k] * MB + reserve)
        raise PlanInfeasible(f'{e} (what is left of budget {budget_mb:g} MB after the {what})',
                             **nums) from None


def _choose(trade, budget_mb, deadline_ms):
    """Return the Point a request asks for, or raise PlanInfeasible with the feasible numbers."""
    if deadline_ms is not None and budget_mb is None:
        chosen = trade.under_deadline(deadline_ms)
        if chosen is None:
            fastest = trade.fastest
            raise PlanInfeasible(
                f'deadline {deadline_ms:g} ms cannot be met: the fastest plan is predicted at '
                f'{fastest.latency:.3f} ms ({mib(fastest.memory)} MB of weights)',
                deadline_ms=deadline_ms, min_budget_mb=None,
                best_latency_ms=_ms_up(fastest.latency),
                min_memory_mb=_mb_up(trade.smallest.memory),
                fastest_latency_ms=_ms_up(fastest.latency))
        return chosen
    if budget_mb is not None:
        chosen = trade.within_budget(int(budget_mb * MB))
        if chosen is None or (deadline_ms is not None and chosen.latency > deadline_ms):
            raise _over_budget(trade, chosen, budget_mb, deadline_ms)
        return chosen
    return trade.smallest


def _over_budget(trade, chosen, budget_mb, deadline_ms):
    """Return the PlanInfeasible of a budget (and deadline) no plan meets."""
    need = trade.under_deadline(deadline_ms) if deadline_ms is not None else None
    smallest, fastest = trade.smallest, trade.fastest
    msg = [f'budget {budget_mb:g} MB']
    if chosen is None:
        msg.append(f'is below the smallest plan ({mib(smallest.memory)} MB: '
                   f'{mib(smallest.sim.resident_bytes)} MB resident + '
                   f'{mib(smallest.sim.arena_bytes)} MB arena)')
    else:
        msg.append(f'gives at best {chosen.latency:.3f} ms')
    if deadline_ms is not None:
        msg.append(f'and deadline {deadline_ms:g} ms '
                   + (f'needs at least {mib(need.memory)} MB' if need is not None
                      else f'cannot be met at all (fastest {fastest.latency:.3f} ms)'))
    min_budget = _mb_up(need.memory) if need is not None else None
    if deadline_ms is None:
        min_budget = _mb_up(smallest.memory)
    return PlanInfeasible(
        ' '.join(msg), budget_mb=budget_mb, deadline_ms=deadline_ms,
        min_budget_mb=min_budget,
        best_latency_ms=_ms_up(chosen.latency) if chosen is not None else None,
        min_memory_mb=_mb_up(smallest.memory),
        fastest_latency_ms=_ms_up(fastest.latency))


def _point_row(p, full):
    return {'weight_mb': _mb_up(p.memory), 'latency_ms': round(p.latency, 4),
            'resident_mb': mib(p.sim.resident_bytes), 'arena_mb': mib(p.sim.arena_bytes),
            'resident_units': len(p.cfg.resident), 'prefetch_depth': p.cfg.prefetch_depth,
            'split_bytes': p.cfg.split_bytes,
            'reduction_pct': round(100.0 * (1 - p.memory / full.memory), 2)
            if full.memory else 0.0,
            'overhead_ms': round(p.latency - full.latency, 4)}


def _plan_dict(sched, prof, timing, chosen, trade, search, request):
    """Return the PLAN.yaml mapping of a chosen point and the trade-off it was chosen from."""
    full = trade.full
    uniq = {}
    for p in trade.curve:
        uniq.setdefault((p.memory, round(p.latency, 6)), p)
    points = sorted(uniq.values(), key=lambda p: (p.memory, p.latency))
    front = {id(p) for p in pareto(points)}
    return {
        'pack': sched.pack_path,
        'model': sched.spec,
        'device': prof.get('device', 'cpu'),
        'device_kind': timing.kind,
        'staging': 'zero_copy' if timing.kind == 'unified' else 'copy',
        'resident_units': [sched.names[u] for u in sched.called if u in chosen.cfg.resident],
        'arena_bytes': int(chosen.sim.arena_bytes),
        'split_bytes': int(chosen.cfg.split_bytes or 0),
        'prefetch_depth': chosen.cfg.prefetch_depth,
        'predicted_latency_ms': _ms_up(chosen.latency),
        'predicted_peak_weight_mb': _mb_up(chosen.memory),
        'predicted_peak_weight_bytes': int(chosen.memory),
        'predicted_stall_ms': round(chosen.sim.stall_ms, 4),
        'predicted_resident_mb': mib(chosen.sim.resident_bytes),
        'predicted_arena_mb': mib(chosen.sim.arena_bytes),
        **memory_prediction(prof, chosen.memory, staging_bytes(sched, timing, chosen)),
        'head_start_ms': round(chosen.sim.head_start_ms, 4),
        'fully_resident': {'weight_mb': mib(full.memory),
                           'predicted_latency_ms': round(full.latency, 4),
                           'measured_latency_ms': timing.resident_latency},
        'smallest': _point_row(trade.smallest, full),
        'reduction_pct': round(100.0 * (1 - chosen.memory / full.memory), 2)
        if full.memory else 0.0,
        'overhead_ms': round(chosen.latency - full.latency, 4),
        'request': request,
        'search': search,
        'profile': {'machine': prof.get('machine', {}), 'mode': prof.get('mode', 'resident'),
                    'threads': thread_count.profile_threads(prof),
                    'read_mb_per_s': round(timing.read.rate(1 << 24) / MB, 1),
                    'slot_overhead_ms': timing.slot_overhead,
                    'pass_overhead_ms': timing.pass_overhead},
        'alternatives': [dict(_point_row(p, full), pareto=id(p) in front) for p in points],
    }


def memory_prediction(prof, weight_bytes, staging):
    """
    Return the plan's prediction of the whole process's memory, beside its weights (MiB).

    runtime baseline (the profiling process's anonymous memory before it loaded any weight:
    interpreter, torch, this package; shared library pages, which a memory cgroup charges to
    whoever read them first, not counted; a node adds ROS on top) + peak weights + the
    activation peak the profile measured + pinned staging. None where the profile did not
    measure a part.
    """
    base, act = prof.get('runtime_baseline_bytes'), prof.get('activation_peak_bytes')
    total = None if base is None or act is None else base + weight_bytes + act + staging
    return {'predicted_activation_mb': mib(act), 'predicted_staging_mb': mib(staging),
            'runtime_baseline_mb': mib(base), 'predicted_total_mb': _mb_up(total)}


def config_of(plan, sched):
    """Return the Config a plan (a Plan, a mapping or a PLAN.yaml path) describes."""
    plan = Plan.coerce(plan)
    resident = frozenset(sched.index(n) for n in plan.resident_units or ())
    resident |= sched.forced
    return Config(resident=resident, arena_bytes=int(plan.arena_bytes or 0),
                  prefetch_depth=plan.prefetch_depth, split_bytes=int(plan.split_bytes or 0))


def predict(pack, profile, plan, frame_period_ms=None, timeline=False, disk_pct=50,
            compute=1.0, disk=1.0):
    """
    Simulate a given plan; return the Sim (a budget's prediction; disk_pct 90: a deadline's).

    compute / disk: the machine as measured now, that many times slower than the profile saw it
    (a drift; the disk relative to the round at disk_pct), to tell the model's own error from
    the machine's.
    """
    sched = Schedule.from_pack(pack)
    prof = load_profile(profile) if not isinstance(profile, dict) else profile
    timing = Timing.from_profile(prof, sched, disk_pct=disk_pct)
    if compute != 1.0 or disk != 1.0:
        timing = timing.scaled(compute=compute, disk=disk)
    cfg = config_of(plan, sched)
    search = Search(sched, timing, split_bytes=cfg.split_bytes, frame_period_ms=frame_period_ms)
    sim = search.simulate(cfg, timeline=timeline)
    if sim is None:
        raise ArenaTooSmall(f'plan arena of {cfg.arena_bytes} bytes cannot hold the pass '
                            f'of {sched.pack_path}')
    return sim


@dataclass
class Option:
    """One model's plan at a shared arena: resident bytes (with extra buffers) and latency."""

    memory: int
    latency: float
    point: object                 # search.Point
    largest: int                  # the largest streamed slot (the least a copy ring holds)


class PlannedMember:
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
        layout = plan_layout(st.items, cfg.arena_bytes, cfg.prefetch_depth)
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
    {name: ms or None}. An infeasible request raises PlanInfeasible with the smallest
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
    models = [PlannedMember(n, packs[n], profiles[n], device, deadlines.get(n), periods.get(n))
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
