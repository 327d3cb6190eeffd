# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The machine a benchmark ran on: CPU, cores, memory, GPU, library versions, disk bandwidth.

The disk's sequential O_DIRECT bandwidth is measured on each pack during the run, since the
pipeline bound of every streaming configuration depends on it.
"""

import os
import statistics
import time


def disk_bandwidth(path, request_bytes=4 << 20, repeats=3):
    """
    Return the disk's sequential O_DIRECT read bandwidth over `path` (bytes/s), or None.

    One thread, `request_bytes` per request, the whole file, median of `repeats` - what
    `dd iflag=direct bs=4M` measures. O_DIRECT bypasses the page cache, so nothing is cached.
    """
    import mmap
    flags = os.O_RDONLY | getattr(os, 'O_DIRECT', 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = mmap.mmap(-1, request_bytes)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            off = 0
            while off < size:
                try:
                    n = os.preadv(fd, [buf], off)
                except OSError:
                    return None       # O_DIRECT refused (tmpfs, some FUSE)
                if n <= 0:
                    break
                off += n
            dt = time.perf_counter() - t0
            if dt > 0 and off:
                rates.append(off / dt)
        buf.close()
        return statistics.median(rates) if rates else None
    finally:
        os.close(fd)


def machine(device, bws):
    """Describe the machine: CPU, cores, memory, disk bandwidth, GPU, library versions."""
    from demand_layering_ros.measure.machine import machine_info
    info = machine_info(device)
    try:
        import accelerate
        info['accelerate'] = accelerate.__version__
    except ImportError:
        info['accelerate'] = None
    try:
        with open('/proc/meminfo') as f:
            info['memory_mb'] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    bws = [b for b in bws if b]
    if bws:
        info['disk_o_direct_mb_per_s'] = {'min': min(bws), 'median': statistics.median(bws),
                                          'max': max(bws)}
    return info
