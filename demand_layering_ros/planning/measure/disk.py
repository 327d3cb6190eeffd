# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The disk's O_DIRECT read time by request size, one request at a time and back to back.

Read through the pack file itself (O_DIRECT does not touch the page cache, so a pack read before
does not make the disk look faster). A reader that waits for free arena space issues one request
at a time; a reader running ahead queues them: the planner needs both times.
"""

import time

from demand_layering_ros.quantiles import median
from demand_layering_ros.sizes import MB

DISK_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)


def disk_points(pack, sizes, threads, budget_s=0.4, progress=None):
    """Measure O_DIRECT seconds per request of each size, back to back and one at a time."""
    from demand_layering_ros import direct_io
    lo = pack.data_offset
    span = pack.file_size - lo
    points = []
    with pack.reader(threads=threads) as reader:
        buf = direct_io.aligned_empty(max(sizes))
        for size in sizes:
            size = min(size, span // direct_io.PAGE * direct_io.PAGE)
            if size <= 0:
                continue
            slots = max(1, span // size)
            k, t0, isolated = 0, time.perf_counter(), []
            # one request at a time (what a reader waiting for free arena space sees)
            while k < 64 and (k < 3 or time.perf_counter() - t0 < budget_s / 2):
                off = lo + (k * 7919 % slots) * size
                t = time.perf_counter()
                reader.read_into(off, size, buf)
                isolated.append(time.perf_counter() - t)
                k += 1
            # back to back (what a reader running ahead sees); median of three batches
            n = max(3, min(128, k))
            batches = []
            for b in range(3):
                t = time.perf_counter()
                futs = [reader.submit(lo + ((k + b * n + j) * 7919 % slots) * size, size, buf)
                        for j in range(n)]
                for f in futs:
                    f.result()
                batches.append((time.perf_counter() - t) / n)
            streamed = median(batches)
            points.append({'request_bytes': size, 'seconds': median(isolated),
                           'seconds_streamed': streamed,
                           'mb_per_s': round(size / median(isolated) / MB, 1),
                           'mb_per_s_streamed': round(size / streamed / MB, 1)})
            if progress is not None:
                progress.update(1)
        mode, reason = reader.mode, reader.fallback_reason
    return {'mode': mode, 'fallback_reason': reason, 'threads': threads, 'points': points}
