# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Measured pass times against the plan's prediction: what tells a plan that it no longer holds.

A plan predicts one pass from a profile measured minutes or months before; the machine may have
changed since (other load, a slower disk, another thread count). The model feeds every pass of
one frame into a `LatencyFeedback`: the median of the recent passes against the plan's expected
latency is the drift; a drift beyond 10% over at least half the recent window is persistent
(one slow frame is not), and the node re-plans with its profile corrected by it
(`planning.timing.corrected_profile`) while the command line warns once.
"""

from collections import deque

from demand_layering_ros.quantiles import median

WINDOW = 16         # recent passes the measured latency is the median of
MIN_PASSES = 8      # passes needed before a drift counts (a median over at least half the window)
TOLERANCE = 0.10    # a drift beyond this fraction of the expected latency is reported
SKIP = 1            # passes not counted after a (re)configuration: the first one starts cold


class LatencyFeedback:
    """
    The recent pass times of one configuration against its plan's prediction.

    predicted_ms: the plan's predicted_latency_ms (None: no plan, nothing to compare);
    expected_ms: the latency the plan expects on a typical run (a deadline plan predicts with
    the disk at a slow percentile and expects its median; default: predicted_ms). `add(ms)`
    records a pass; the measured latency is the median of the last `window` passes.
    """

    def __init__(self, predicted_ms=None, expected_ms=None, window=WINDOW,
                 min_passes=MIN_PASSES, tolerance=TOLERANCE, skip=SKIP):
        """Start with no pass recorded."""
        self.predicted_ms = predicted_ms
        self.expected_ms = expected_ms if expected_ms is not None else predicted_ms
        self.recent = deque(maxlen=window)
        self.min_passes = min_passes
        self.tolerance = tolerance
        self.skip = skip
        self.passes = 0

    @classmethod
    def for_plan(cls, plan, **kw):
        """Return the feedback of a Plan (None: no prediction to hold it to)."""
        if plan is None:
            return cls(**kw)
        expected = ((plan.details or {}).get('prediction') or {}).get('expected_latency_ms')
        return cls(plan.predicted_latency_ms, expected, **kw)

    def add(self, ms):
        """Record one pass of one frame (ms); the first `skip` passes are not counted."""
        self.passes += 1
        if self.passes > self.skip and ms is not None:
            self.recent.append(float(ms))

    @property
    def measured_ms(self):
        """Return the median of the recent passes (None before any)."""
        return median(self.recent) if self.recent else None

    @property
    def ratio(self):
        """Return measured over expected latency (None without both)."""
        m = self.measured_ms
        return m / self.expected_ms if m is not None and self.expected_ms else None

    @property
    def drifted(self):
        """Return True when enough recent passes put the median beyond the tolerance."""
        r = self.ratio
        return (r is not None and len(self.recent) >= self.min_passes
                and abs(r - 1.0) > self.tolerance)

    def as_dict(self):
        """Return the stats() keys: predicted, expected, measured latency, ratio, drift."""
        m, r = self.measured_ms, self.ratio
        return {'predicted_latency_ms': self.predicted_ms,
                'expected_latency_ms': self.expected_ms,
                'measured_latency_ms': round(m, 4) if m is not None else None,
                'latency_ratio': round(r, 4) if r is not None else None,
                'latency_drift': self.drifted}

    def describe(self):
        """Return one line saying how far the measured latency is from the expected one."""
        r = self.ratio
        if r is None:
            return 'no prediction to compare with'
        return (f'measured {self.measured_ms:.1f} ms per pass (median of the last '
                f'{len(self.recent)}) against {self.expected_ms:.1f} ms expected by the plan: '
                f'{(r - 1) * 100:+.0f}%')
