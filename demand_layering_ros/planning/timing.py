# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The profile as the planner reads it: PROFILE.json, the speeds a plan's latency depends on.

A pack is profiled once per machine (`profiler.profile`) and planned many times (`planner.plan`
takes the dict or the path), so the file's format and reading it back checked (`load_profile`,
`save_profile`, `PROFILE_FORMAT`) sit here, below both: the planner reads profiles without
importing what measures them.

`Transfer` turns measured (request bytes, seconds) points into the time of any request size;
`Timing` gathers, per call position of the pass, the compute a profile measured and the
executor's own costs, after checking that the profile belongs to the pack being planned.

The disk's speed as a profile saw it over its rounds: a level per round, a median, extremes. A
virtual disk's speed flips from one minute to the next, so one number predicts one of its
states. A profile measures the disk in rounds (`measure.transfer.DiskRounds`); each round's level
is how many times slower than the median its reads were (the geometric mean over its request
sizes of 1 MiB and more: small requests are latency, not throughput). The planner predicts a
budget's plan at the median level, a deadline's at the 90th percentile of the read times
(`CONSERVATIVE_PCT`; with the four rounds a profile measures that is the slowest round), brackets
each prediction with the fastest and the slowest rounds (`disk_level`), and never predicts
faster than the pipeline bound at the slowest rate any round measured (`bound_rate`).

The pipeline bound of one pass (`pipeline_bound_ms`): no plan can be faster, whatever its arena
and read-ahead. The units not resident arrive from the disk one after another in first-use
order at one rate; call s starts once its unit has arrived and call s-1 has ended plus the
weight-free gap before it (gaps overlap the wait); the tail follows the last call. Compute is
the profile's, measured with the model resident, so the bound has no executor overhead, no
contention and an arena that never makes the reader wait. The planner never predicts below it
at the slowest rate its profile saw; the benchmarks hold measured passes against it at the rate
measured in their run.

A profile corrected by what the runtime measured (`corrected_profile`): the online correction
of a plan's latency. When the passes a plan runs persistently take `ratio` times the latency it
expected (`runtime.feedback`), the profile no longer describes the machine. One number cannot
tell compute from the disk, so every time the profile holds is scaled by it: the corrected
profile predicts the running plan at what was measured, and a new plan for a deadline takes the
memory the machine as it is now needs. The correction is cumulative and recorded
(`correction`).
"""

from bisect import bisect_right
from copy import copy as shallow_copy, deepcopy
from dataclasses import dataclass, field, replace
import json
import math

from demand_layering_ros import atomic
from demand_layering_ros.quantiles import nearest_rank


PROFILE_FORMAT = 'demand_layering_ros.profile'
PROFILE_VERSION = 2      # 2: `threads` and `disk.rounds` added; version 1 files still load
CONSERVATIVE_PCT = 90           # deadline plans: the 90th percentile of the rounds' read times
BOUND_REQUEST_BYTES = 4 << 20   # the rate of the pipeline bound: requests of this size
THROUGHPUT_BYTES = 1 << 20      # request sizes from here on tell the disk's level


def load_profile(path):
    """Read PROFILE.json and check its format."""
    with open(path) as f:
        prof = json.load(f)
    if prof.get('format') != PROFILE_FORMAT:
        raise ValueError(f'{path}: not a profile (format {prof.get("format")!r}, expected '
                         f'{PROFILE_FORMAT!r})')
    return prof


def save_profile(profile, path):
    """Write a profile dict as PROFILE.json (indented JSON, atomically); return the path."""
    return atomic.write_json(path, profile)


def round_levels(disk):
    """Return per round its read time over the median (1.0 each when there are no rounds)."""
    med = {p['request_bytes']: p for p in disk.get('points') or []}
    big = [n for n in med if n >= THROUGHPUT_BYTES]
    use = set(big) if big else set(med)
    out = []
    for r in disk.get('rounds') or []:
        logs = [math.log(p[k] / med[p['request_bytes']][k])
                for p in r.get('points') or [] if p['request_bytes'] in use
                for k in ('seconds', 'seconds_streamed')
                if p.get(k) and med[p['request_bytes']].get(k)]
        if logs:
            out.append(math.exp(sum(logs) / len(logs)))
    return out or [1.0]


def disk_level(disk, pct):
    """
    Return the read-time factor of the disk at percentile `pct` of the rounds.

    0: the fastest round; 50: the median (1.0 by construction, up to rounding); 90: the
    conservative level of deadline plans; 100: the slowest round. Nearest rank: always a round.
    """
    levels = round_levels(disk)
    if pct <= 0:
        return min(levels)
    return nearest_rank(levels, pct) if pct != 50 else 1.0


def bound_rate(disk, request_bytes=BOUND_REQUEST_BYTES):
    """
    Return the slowest rate (bytes/s) the profile saw at requests of `request_bytes`, or None.

    One request at a time (what `dd iflag=direct bs=4M` measures), at the largest measured size
    up to `request_bytes`, the slowest over the rounds (the median points when there are none).
    """
    rounds = [r.get('points') or [] for r in disk.get('rounds') or []] or \
        [disk.get('points') or []]
    rates = []
    for pts in rounds:
        fit = [p for p in pts if p['request_bytes'] <= request_bytes and p.get('seconds')] or \
            sorted((p for p in pts if p.get('seconds')), key=lambda p: p['request_bytes'])[:1]
        if fit:
            p = max(fit, key=lambda p: p['request_bytes'])
            rates.append(p['request_bytes'] / p['seconds'])
    return min(rates) if rates else None


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

    def scaled(self, factor):
        """Return the same model with every request `factor` times slower."""
        out = shallow_copy(self)
        out.rates = [r / factor for r in self.rates]
        out.min_seconds = self.min_seconds * factor
        out.queued = self.queued.scaled(factor) if self.queued is not None else None
        return out


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
    split_cost: {(split_bytes, unit): time of the chunked call / time of the whole call};
    bound_rate: the slowest disk rate (bytes/s) the profile saw: no prediction is faster than
    the pipeline bound at it (None: no floor); disk_level: how many times slower than the
    profile's median the reads are taken (`disk_level`).
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
    bound_rate: float = None
    disk_level: float = 1.0

    @classmethod
    def from_profile(cls, prof, sched, device=None, disk_pct=50):
        """
        Check that the profile belongs to the pack's pass and build the timing.

        disk_pct: the percentile of the profile's disk rounds the reads are taken at (50: the
        median; 90: the conservative level of deadline plans; see `disk_level`).
        """
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
        level = disk_level(prof['disk'], disk_pct)
        if level != 1.0:
            read = read.scaled(level)
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
                               for u, r in per.items()},
                   bound_rate=bound_rate(prof['disk']), disk_level=level)

    def scaled(self, compute=1.0, disk=1.0):
        """
        Return this timing with compute `compute` times and the disk `disk` times slower.

        Compute covers the calls, gaps, tail, the executor's own costs and the checksum (all
        CPU); the disk covers reads and the bound's rate. Scaling both by one factor scales
        every simulated latency by it (without a frame period), which is how a measured drift
        corrects a plan's prediction.
        """
        return replace(
            self, busy=[b * compute for b in self.busy], gap=[g * compute for g in self.gap],
            tail=self.tail * compute, read=self.read.scaled(disk) if disk != 1.0 else self.read,
            slot_overhead=self.slot_overhead * compute,
            pass_overhead=self.pass_overhead * compute, handoff=self.handoff * compute,
            verify_ms_per_byte=self.verify_ms_per_byte * compute,
            bound_rate=self.bound_rate / disk if self.bound_rate else self.bound_rate,
            disk_level=self.disk_level * disk,
            resident_latency=self.resident_latency * compute
            if self.resident_latency is not None else None)

    def floor(self):
        """Return the simulated latency with every unit resident."""
        return sum(self.busy) + sum(self.gap) + self.tail


def pipeline_bound_ms(sched, busy, gap, tail, resident, bytes_per_s):
    """
    Return the bound (ms) of a pass of `sched` with units `resident` (indices) kept in memory.

    busy, gap: per call position (ms); tail: ms after the last call; bytes_per_s: the disk.
    Units the pack forces resident (`sched.forced`) never stream.
    """
    keep = set(resident) | set(sched.forced)
    arrive, disk = {}, 0.0
    for u in sched.call_order:
        if u not in arrive:
            if u in keep:
                arrive[u] = 0.0
            else:
                disk += 1e3 * sched.lengths[u] / bytes_per_s
                arrive[u] = disk
    t = 0.0
    for s, u in enumerate(sched.call_order):
        t = max(t + gap[s], arrive[u]) + busy[s]
    return t + float(tail or 0.0)


def _scale_points(points, ratio):
    for p in points or []:
        for key in ('seconds', 'seconds_streamed'):
            if p.get(key):
                p[key] *= ratio
        for key in ('mb_per_s', 'mb_per_s_streamed'):
            if p.get(key):
                p[key] = round(p[key] / ratio, 1)


def corrected_profile(prof, ratio, why=''):
    """Return a copy of PROFILE dict `prof` with every time `ratio` times longer."""
    if not ratio or ratio <= 0:
        raise ValueError(f'a correction ratio must be positive, got {ratio!r}')
    out = deepcopy(prof)
    steps = out.get('steps') or {}
    for key in ('busy_ms', 'gap_ms'):
        if key in steps:
            steps[key] = [v * ratio for v in steps[key]]
    if steps.get('tail_ms') is not None:
        steps['tail_ms'] *= ratio
    for key in ('resident_latency_ms', 'hooked_latency_ms'):
        if out.get(key) is not None:
            out[key] *= ratio
    out['resident_latency_all_ms'] = [v * ratio for v in out.get('resident_latency_all_ms')
                                      or []]
    mutual = out.get('contention') or {}
    if mutual.get('alone_all_ms'):
        mutual['alone_all_ms'] = [v * ratio for v in mutual['alone_all_ms']]
    disk = out.get('disk') or {}
    _scale_points(disk.get('points'), ratio)
    for r in disk.get('rounds') or []:
        _scale_points(r.get('points'), ratio)
    _scale_points((out.get('h2d') or {}).get('points'), ratio)
    ex = out.get('executor') or {}
    for key in ('overhead_ms_per_slot', 'overhead_ms_per_pass', 'handoff_ms'):
        if ex.get(key) is not None:
            ex[key] *= ratio
    check = out.get('checksum') or {}
    if check.get('bytes_per_s'):
        check['bytes_per_s'] /= ratio
    before = (prof.get('correction') or {}).get('ratio', 1.0)
    out['correction'] = {'ratio': round(before * ratio, 6), 'last_ratio': round(ratio, 6),
                         'why': why}
    return out
