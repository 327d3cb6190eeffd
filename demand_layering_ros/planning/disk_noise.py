# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The disk's speed as a profile saw it over its rounds: a level per round, a median, extremes.

A virtual disk's speed flips from one minute to the next, so one number predicts one of its
states. A profile measures the disk in rounds (`measure.disk.DiskRounds`); each round's level
is how many times slower than the median its reads were (the geometric mean over its request
sizes of 1 MiB and more: small requests are latency, not throughput). The planner predicts a
budget's plan at the median level, a deadline's at the 90th percentile of the read times
(`CONSERVATIVE_PCT`; with the four rounds a profile measures that is the slowest round), brackets
each prediction with the fastest and the slowest rounds, and never predicts faster than the
pipeline bound at the slowest rate any round measured (`bound_rate`).
"""

import math

from demand_layering_ros.quantiles import nearest_rank

CONSERVATIVE_PCT = 90           # deadline plans: the 90th percentile of the rounds' read times
BOUND_REQUEST_BYTES = 4 << 20   # the rate of the pipeline bound: requests of this size
THROUGHPUT_BYTES = 1 << 20      # request sizes from here on tell the disk's level


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


def level(disk, pct):
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
