# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The pipeline bound of one pass: no plan can be faster, whatever its arena and read-ahead.

The units not resident arrive from the disk one after another in first-use order at one rate;
call s starts once its unit has arrived and call s-1 has ended plus the weight-free gap before
it (gaps overlap the wait); the tail follows the last call. Compute is the profile's, measured
with the model resident, so the bound has no executor overhead, no contention and an arena
that never makes the reader wait. The planner never predicts below it at the slowest rate its
profile saw; the benchmarks hold measured passes against it at the rate measured in their run.
"""


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
