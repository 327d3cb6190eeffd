# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Percentiles and medians of measured times, with one definition for the whole project.

Linear interpolation between the two nearest ranks (numpy's default), so p50 of an even count is
the mean of the middle two; an empty list gives nan, so a report with no frames says so instead
of failing. The side-by-side benchmark reports the nearest rank instead (`nearest_rank`): a p99
that is always one of the measured passes, the slowest of 20.
"""

import math


def percentile(values, q):
    """Return the q-th percentile of `values`, q in 0..100; nan when there are none."""
    s = sorted(values)
    if not s:
        return float('nan')
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values):
    """Return the median of `values`; nan when there are none."""
    return percentile(values, 50)


def nearest_rank(values, q):
    """Return the nearest-rank q-th percentile of a non-empty list, q in 0..100 (a sample)."""
    xs = sorted(values)
    if not xs:
        raise ValueError('percentile of an empty list')
    k = max(1, math.ceil(q / 100.0 * len(xs)))
    return xs[k - 1]
