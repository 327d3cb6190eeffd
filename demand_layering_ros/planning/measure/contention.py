# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
How much reading and computing at once slow each other down on this machine.

The executor reads and verifies the next slots while the model computes; both compete for the
cores, the memory bandwidth and the interpreter lock, so the simulation slows compute while the
reader is busy, and reads while compute runs, by the factors measured here.
"""

import time

from demand_layering_ros.planning.measure.machine import sync
from demand_layering_ros.quantiles import median


def read_contention(pack, model, x, device, repeats, threads, progress=None):
    """
    Measure how reading and computing at once slow each other down.

    The resident model runs alone and while a background loop reads the pack (O_DIRECT, the
    executor's reader threads and checksum, requests of the pack's median unit size), and the
    loop also runs alone for as long; alternately, `repeats` times. The ratios of the medians
    are the factors the simulation slows compute by while the reader is busy, and reads by
    (they compete for the cores, the memory bandwidth and the interpreter lock).
    """
    import threading
    import torch
    from demand_layering_ros import direct_io
    span = (pack.file_size - pack.data_offset) // direct_io.PAGE * direct_io.PAGE
    sizes = sorted(u.length for u in pack.units if u.calls)
    step = max(direct_io.PAGE, min(sizes[len(sizes) // 2] if sizes else span, span))
    stop = threading.Event()
    errors = []

    def reads(times):
        try:
            buf = direct_io.aligned_empty(step)
            with pack.reader(threads=threads) as reader:
                off = 0
                while not stop.is_set():
                    if off + step > span:
                        off = 0
                    t = time.perf_counter()
                    reader.submit(pack.data_offset + off, step, buf,
                                  verify=direct_io.checksum).result()
                    times.append(time.perf_counter() - t)
                    off += step
        except Exception as e:  # reported below; the measurement is then skipped
            errors.append(e)

    def run():
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        sync(device)
        return time.perf_counter() - t

    def with_reads(work, times):
        stop.clear()
        th = threading.Thread(target=reads, args=(times,), name='dlr-profile-reads',
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
        with_reads(lambda: time.sleep(min(alone[-1], 0.5)), read_alone)
        if progress is not None:
            progress.update(1)
    if errors or not read_alone or not read_loaded:
        return {'compute_slowdown': 1.0, 'read_slowdown': 1.0,
                'error': repr(errors[0]) if errors else 'no reads'}
    return {'compute_slowdown': round(max(1.0, median(loaded) / median(alone)), 4),
            'read_slowdown': round(max(1.0, median(read_loaded) / median(read_alone)), 4),
            'request_bytes': step, 'alone_ms': round(1e3 * median(alone), 4),
            'with_reads_ms': round(1e3 * median(loaded), 4),
            'read_alone_ms': round(1e3 * median(read_alone), 5),
            'read_while_computing_ms': round(1e3 * median(read_loaded), 5)}
