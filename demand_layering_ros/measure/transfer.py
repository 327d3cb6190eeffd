# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What moving a streamed slot's bytes costs: the disk's reads, the checksum, the copy to a GPU.

The disk's O_DIRECT read time by request size, one request at a time and back to back, in
rounds. Read through the pack file itself (O_DIRECT does not touch the page cache, so a pack
read before does not make the disk look faster). A reader that waits for free arena space
issues one request at a time; a reader running ahead queues them: the planner needs both times.
The disk's speed is not one number (the virtual disk of the development machine flips between
~1.3 and ~2.7 GB/s from one minute to the next), so a profile measures it in rounds spread over
its run (`DiskRounds`) and keeps every round: the planner predicts from their median and
brackets its prediction with the fastest and the slowest (`planning.timing.disk_level`).

The speed of the executor's slot checksum (`checksum_speed`), which it runs after a slot's last
read: verification sits between a slot's read and its use, so its cost per byte is part of
every streamed slot's delay in the planner's simulation.

The pinned host-to-device copy time by request size (`h2d_points`, discrete GPU only): there
every streamed slot is read into host memory and then copied to the device arena by a copy
stream; the planner's simulation needs that stage's speed, timed by CUDA events.
"""

import time

from demand_layering_ros.quantiles import median
from demand_layering_ros.sizes import MB

DISK_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
DISK_ROUNDS = 4         # before, between and after the other measurements of a profile
H2D_SIZES = (64 << 10, 1 << 20, 16 << 20)


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
            points.append(_point(size, median(isolated), median(batches)))
            if progress is not None:
                progress.update(1)
        mode, reason = reader.mode, reader.fallback_reason
    return {'mode': mode, 'fallback_reason': reason, 'threads': threads, 'points': points}


def _point(size, seconds, streamed):
    return {'request_bytes': size, 'seconds': seconds, 'seconds_streamed': streamed,
            'mb_per_s': round(size / seconds / MB, 1),
            'mb_per_s_streamed': round(size / streamed / MB, 1)}


class DiskRounds:
    """
    The disk measured in rounds at several moments of a profile; `result()` is its 'disk'.

    Each `measure(when)` is one round of `disk_points` (every request size). The result keeps
    the rounds (`rounds`: when, seconds since the first, points) and, as `points`, the median
    over rounds of each size's times: what a profile without rounds had.
    """

    def __init__(self, pack, sizes, threads, budget_s=0.3, progress=None):
        """Measure nothing yet."""
        self.pack, self.sizes, self.threads = pack, sizes, threads
        self.budget_s, self.progress = budget_s, progress
        self.t0 = None
        self.rounds = []
        self.mode = self.reason = None

    def measure(self, when):
        """Measure one round now; `when` names the moment (e.g. 'start', 'end')."""
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        got = disk_points(self.pack, self.sizes, self.threads, self.budget_s, self.progress)
        self.mode, self.reason = got['mode'], got['fallback_reason']
        self.rounds.append({'at': when, 'at_s': round(now - self.t0, 2),
                            'points': got['points']})

    def result(self):
        """Return PROFILE.json's 'disk': mode, per-size medians over the rounds, the rounds."""
        by_size = {}
        for r in self.rounds:
            for p in r['points']:
                by_size.setdefault(p['request_bytes'], []).append(p)
        points = [_point(size, median([p['seconds'] for p in ps]),
                         median([p['seconds_streamed'] for p in ps]))
                  for size, ps in sorted(by_size.items())]
        return {'mode': self.mode, 'fallback_reason': self.reason, 'threads': self.threads,
                'points': points, 'rounds': self.rounds}


def checksum_speed(nbytes=16 << 20, repeats=5):
    """Measure the executor's slot checksum (xxh3_64 over host memory) in bytes per second."""
    from demand_layering_ros import direct_io
    buf = direct_io.aligned_empty(nbytes)
    buf.fill_(7)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        direct_io.checksum(buf)
        times.append(time.perf_counter() - t)
    return {'algorithm': direct_io.CHECKSUM_ALGORITHM,
            'bytes_per_s': round(nbytes / median(times))}


def h2d_points(sizes, device, progress=None):
    """Measure pinned host -> device copy seconds per request size (CUDA events)."""
    import torch
    device = torch.device(device)
    points = []
    for size in sizes:
        src = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(size, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device)     # where copy_ runs: dst's device
        times = []
        for _ in range(6):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            dst.copy_(src, non_blocking=True)
            b.record(stream)
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        s = median(times[1:])
        points.append({'request_bytes': size, 'seconds': s, 'mb_per_s': round(size / s / MB, 1)})
        del src, dst
        if progress is not None:
            progress.update(1)
    return {'points': points}
