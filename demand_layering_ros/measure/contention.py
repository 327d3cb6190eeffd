# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
How much reading and computing at once slow each other down on this machine.

The executor reads and verifies the next slots while the model computes; both compete for the
cores, the memory bandwidth and the interpreter lock, so the simulation slows compute while the
reader is busy, and reads while compute runs, by the factors measured here. They are measured
the way the executor reads (the pack's units in order, in pieces of at most PIECE_BYTES, several
requests queued for the reader's threads, every byte hashed by its verify thread) and at the
torch thread count the profile runs at: on two cores at torch's default two threads, the
reader's and the verify thread's wake-ups preempt a compute thread, and a parallel region waits
for its slowest thread.
"""

import time

from demand_layering_ros.measure.machine import sync
from demand_layering_ros.quantiles import median

QUEUED = 4          # requests the background reader keeps in flight (the loader runs ahead)


def _requests(pack, piece_bytes, span):
    """Return the (offset, bytes) requests of one streamed pass: units in order, in pieces."""
    out = []
    for u in sorted((u for u in pack.units if u.calls), key=lambda u: u.offset):
        for a in range(0, u.length, piece_bytes):
            n = min(piece_bytes, u.length - a)
            if u.offset + a + n <= pack.data_offset + span:
                out.append((u.offset + a, n))
    return out or [(pack.data_offset, min(span, piece_bytes))]


def read_contention(pack, model, x, device, repeats, threads, progress=None):
    """
    Measure how reading and computing at once slow each other down.

    The resident model runs alone and while a background loop reads the pack as a fully
    streamed pass would (O_DIRECT through the executor's reader threads, `QUEUED` requests in
    flight, checksums), and the loop also runs alone for as long; alternately, `repeats` times.
    The ratios of the medians are the factors the simulation slows compute by while the reader
    is busy, and reads by (time per byte read while computing over time per byte alone).
    """
    import threading
    import torch
    from demand_layering_ros import direct_io
    from demand_layering_ros.runtime.options import PIECE_BYTES
    span = (pack.file_size - pack.data_offset) // direct_io.PAGE * direct_io.PAGE
    reqs = _requests(pack, PIECE_BYTES, span)
    biggest = max(n for _, n in reqs)
    stop = threading.Event()
    errors = []

    def reads(rates):
        try:
            bufs = [direct_io.aligned_empty(biggest) for _ in range(QUEUED)]
            with pack.reader(threads=threads) as reader:
                k, nbytes, flight = 0, 0, []
                t = time.perf_counter()
                while not stop.is_set() or flight:
                    while not stop.is_set() and len(flight) < QUEUED:
                        off, n = reqs[k % len(reqs)]
                        flight.append((reader.submit(off, n, bufs[k % QUEUED],
                                                     verify=direct_io.checksum), n))
                        k += 1
                    f, n = flight.pop(0)
                    f.result()
                    nbytes += n
                dt = time.perf_counter() - t
                if nbytes and dt > 0:
                    rates.append(dt / nbytes)
        except Exception as e:  # reported below; the measurement is then skipped
            errors.append(e)

    def run():
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        sync(device)
        return time.perf_counter() - t

    def with_reads(work, rates):
        stop.clear()
        th = threading.Thread(target=reads, args=(rates,), name='dlr-profile-reads',
                              daemon=True)
        th.start()
        time.sleep(0.002)
        try:
            return work()
        finally:
            stop.set()
            th.join()

    alone, loaded, read_alone, read_loaded = [], [], [], []
    for _ in range(repeats):
        alone.append(run())
        loaded.append(with_reads(run, read_loaded))
        with_reads(lambda: time.sleep(min(max(alone[-1], 0.02), 0.5)), read_alone)
        if progress is not None:
            progress.update(1)
    if errors or not read_alone or not read_loaded:
        return {'compute_slowdown': 1.0, 'read_slowdown': 1.0,
                'error': repr(errors[0]) if errors else 'no reads'}
    return {'compute_slowdown': round(max(1.0, median(loaded) / median(alone)), 4),
            'read_slowdown': round(max(1.0, median(read_loaded) / median(read_alone)), 4),
            'pattern': 'streamed pass', 'queued': QUEUED, 'piece_bytes': PIECE_BYTES,
            'threads': torch.get_num_threads(), 'reader_threads': threads,
            'alone_ms': round(1e3 * median(alone), 4),
            'alone_all_ms': [round(1e3 * v, 4) for v in alone],
            'with_reads_ms': round(1e3 * median(loaded), 4),
            'read_alone_ms_per_mb': round(1e3 * median(read_alone) * (1 << 20), 5),
            'read_while_computing_ms_per_mb': round(1e3 * median(read_loaded) * (1 << 20), 5)}
