# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The speeds a plan's latency depends on, taken from a profile: compute per call, disk, copy.

`Transfer` turns measured (request bytes, seconds) points into the time of any request size;
`Timing` gathers, per call position of the pass, the compute a profile measured and the
executor's own costs, after checking that the profile belongs to the pack being planned.
"""

from bisect import bisect_right
from copy import copy as shallow_copy
from dataclasses import dataclass, field, replace
import math

from demand_layering_ros.planning import disk_noise


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
    profile's median the reads are taken (`disk_noise`).
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
        median; 90: the conservative level of deadline plans; see `disk_noise`).
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
        level = disk_noise.level(prof['disk'], disk_pct)
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
                   bound_rate=disk_noise.bound_rate(prof['disk']), disk_level=level)

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
