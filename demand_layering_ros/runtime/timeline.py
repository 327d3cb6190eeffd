# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The last pass's timeline: when each slot was read, copied and computed, and each call's wait.

Stamps are perf_counter floats on the host (the reader's own timing is always host time); on
CUDA compute and copies are stamped with events, which the CUDA clock maps onto the same axis
(`cuda_staging.CudaClock`). Rows are seconds from the start of the pass; a unit read before the
pass began (between frames) has a negative read_start.
"""

import time


class HostClock:
    """Stamps are perf_counter floats; `when` turns one into seconds from the pass start."""

    def stamp(self, now=None):
        """Return a stamp of now (`now`: a perf_counter value taken already)."""
        return time.perf_counter() if now is None else now

    def ref(self):
        """Re-anchor device stamps to host time (nothing to do on the host)."""

    def when(self, value, t0):
        """Return a stamp as seconds from `t0` (None stays None)."""
        if value is None:
            return None
        if isinstance(value, float):
            return value - t0
        return self.event_time(value, t0)

    def event_time(self, value, t0):
        """Return a device event's time from `t0`; the host has none."""
        return None


class Timeline:
    """Compute stamps and the call log of one pass (nothing is recorded when not enabled)."""

    def __init__(self, clock, enabled):
        """Stamp with `clock`; `enabled` False makes every method a no-op."""
        self.clock = clock
        self.enabled = enabled
        self.recording = False
        self.t0 = 0.0
        self.log = []

    def begin(self, t0):
        """Start a pass at perf_counter time t0."""
        self.t0 = t0
        self.log = []
        self.recording = True

    def end(self):
        """Stop logging calls (the pass is over)."""
        self.recording = False

    def stamp(self, rec, key):
        """Record a stamp of now as rec[key]."""
        if self.enabled:
            rec[key] = self.clock.stamp()

    def log_call(self, unit, wait, chunk):
        """Log a call (or a split layer's chunk): unit index, start once its data is in, wait."""
        if not (self.enabled and self.recording):
            return
        self.log.append((unit, self.clock.stamp(time.perf_counter()), wait, chunk))

    def calls(self):
        """Return the call log as [unit, start s, wait s, chunk] rows."""
        return [[u, self.clock.when(start, self.t0), wait, chunk]
                for u, start, wait, chunk in self.log]

    def rows(self, units):
        """Return one row per resident unit that ran and per streamed slot, in first-use order."""
        rows = []
        for u in sorted(units, key=lambda u: (u.info.first_call is None,
                                              u.info.first_call or 0)):
            if u.resident or u.chunks == [] and u.main is None:
                if 'compute_start' in u.t:
                    rows.append(self._row(u, u.name, 'resident', u.info.length, {}, u.t))
                continue
            for s in ([u.main] if u.main is not None else []) + u.chunks:
                if 'read_start' not in s.t and 'compute_start' not in u.t:
                    continue
                comp = s.t if s.kind == 'chunk' else u.t
                rows.append(self._row(u, s.name, s.kind, s.length, s.t, comp))
        return rows

    def _row(self, u, name, kind, nbytes, io, comp):
        when = self.clock.when
        return {'unit': u.index, 'name': name, 'kind': kind, 'bytes': nbytes,
                'read_start': when(io.get('read_start'), self.t0),
                'read_end': when(io.get('read_end'), self.t0),
                'copy_start': when(io.get('copy_start'), self.t0),
                'copy_end': when(io.get('copy_end'), self.t0),
                'compute_start': when(comp.get('compute_start'), self.t0),
                'compute_end': when(comp.get('compute_end'), self.t0)}
