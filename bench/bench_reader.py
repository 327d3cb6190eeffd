# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Benchmark the pack reader against the disk itself, and check that it leaves no page cache.

Demand Layering only pays off if streaming weights runs at the disk's speed and does not quietly
keep a second copy of the weights in the page cache (on a Jetson that is the same DRAM as the
budget). This script measures, in one run on one file:
  - `dd if=PACK/weights.safetensors of=/dev/null bs=4M iflag=direct` (the disk's own O_DIRECT
    sequential bandwidth), interleaved with the reader's whole-pack streams (unit by unit, in
    pack order, prefetch depth 2, checksums verified and not) so drift hits both alike;
  - the checksum's cost: xxh3_64 (and crc32 for comparison) over memory, and verify seconds as a
    share of read seconds;
  - page-cache growth over 10 whole-pack streams, each run in a child process inside its own
    memory cgroup (memory.stat `cache`: only what that process brought in), plus mincore(2) on
    the pack file and /proc/meminfo `Cached` after `echo 3 > /proc/sys/vm/drop_caches`
    (machine-wide: root only, benchmarks only, never tests); a plain buffered read is the
    control that shows the measurement can see cached pages.
Prints markdown tables (for BENCHMARKS.md). Usage:
  python bench/bench_reader.py [--pack DIR | --model darknet:yolov3 --input-size 416x416]
"""

import argparse
import json
import os
from pathlib import Path
import platform
import re
import statistics
import subprocess
import sys
import time
import zlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demand_layering_ros import direct_io  # noqa: E402
from demand_layering_ros import pack as packmod  # noqa: E402
from tools import cgroups  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def dd_direct(path):
    """Run dd with O_DIRECT over the file; return GB/s from dd's own byte count and time."""
    p = subprocess.run(['dd', f'if={path}', 'of=/dev/null', 'bs=4M', 'iflag=direct'],
                       capture_output=True, text=True, check=True)
    m = re.search(r'(\d+) bytes .* copied, ([\d.]+) s', p.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e9


def stream(pack, reader, bufs, verify):
    """Read every unit in pack order, `len(bufs)` in flight; return (GB/s, verify share)."""
    pending = []
    t0 = time.perf_counter()
    read_s = verify_s = 0.0
    for i, u in enumerate(pack.units):
        if len(pending) == len(bufs):
            f = pending.pop(0)
            f.result()
            verify_s += f.verify_seconds
        pending.append(pack.read_unit(reader, u, bufs[i % len(bufs)], verify=verify))
    for f in pending:
        f.result()
        verify_s += f.verify_seconds
    read_s = time.perf_counter() - t0
    return pack.total_bytes / read_s / 1e9, verify_s / read_s


def hash_speed(nbytes=256 << 20, repeats=5):
    """Return best-of-`repeats` (xxh3 GB/s, crc32 GB/s) over an in-memory buffer."""
    buf = direct_io.aligned_empty(nbytes)
    buf.fill_(1)
    mv = direct_io.as_memoryview(buf)
    out = []
    for fn in (direct_io.checksum, zlib.crc32):
        best = float('inf')
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(mv)
            best = min(best, time.perf_counter() - t0)
        out.append(nbytes / best / 1e9)
    return out


def ensure_pack(args):
    """Return an opened pack: --pack, or written from --model into bench/out."""
    if args.pack:
        return packmod.Pack.open(args.pack)
    out = ROOT / 'bench' / 'out' / ('pack-' + re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model))
    try:
        return packmod.Pack.open(out)
    except packmod.PackError:
        return packmod.write_pack(args.model, out, input_size=args.input_size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('--pack', help='existing pack directory')
    ap.add_argument('--model', default='darknet:yolov3')
    ap.add_argument('--input-size', default='416x416')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--threads', default='1,2,4')
    ap.add_argument('--chunk-mib', default='1,4')
    ap.add_argument('--depth', type=int, default=2,
                    help='units in flight (prefetch depth) while streaming the pack')
    ap.add_argument('--cache-passes', type=int, default=10)
    ap.add_argument('--child-stream', choices=['direct', 'buffered', 'plain'],
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_stream:
        return child_stream(args)

    pack = ensure_pack(args)
    path = pack.weights_path
    total = pack.total_bytes
    big = max(u.length for u in pack.units)
    bufs = [direct_io.aligned_empty(big) for _ in range(max(1, args.depth))]
    configs = [(int(t), int(c)) for t in args.threads.split(',')
               for c in args.chunk_mib.split(',')]
    print(f'# bench_reader: {pack.manifest["model"].get("spec")} ({total / 1e6:.1f} MB, '
          f'{len(pack.units)} units, largest {big / 1e6:.1f} MB), prefetch depth {len(bufs)}, '
          f'{platform.node()}, '
          f'{os.cpu_count()} CPUs, kernel {platform.release()}\n')

    # 1. throughput, interleaved with dd; verify on/off back to back for a paired overhead
    dd, results = [], {c: {True: [], False: []} for c in configs}
    overhead = {c: [] for c in configs}
    readers = {c: direct_io.Reader(path, threads=c[0], chunk_bytes=c[1] << 20) for c in configs}
    mode = readers[configs[0]].mode
    shares = {c: [] for c in configs}
    for _ in range(args.rounds):
        dd.append(dd_direct(path))
        for c in configs:
            plain, _ = stream(pack, readers[c], bufs, False)
            checked, share = stream(pack, readers[c], bufs, True)
            results[c][False].append(plain)
            results[c][True].append(checked)
            overhead[c].append(plain / checked - 1)
            shares[c].append(share)
    dd.append(dd_direct(path))      # closes the last round: each round is bracketed by two dd
    for r in readers.values():
        r.close()
    dd_med = statistics.median(dd)
    # The virtio disk flips between a slow and a fast mode from one read of the file to the
    # next (dd runs 2x apart), so a ratio of medians depends on which mode the dd runs hit; the
    # per-round ratio against the mean of the dd runs just before and after it is steadier.
    bracket = [(dd[i] + dd[i + 1]) / 2 for i in range(args.rounds)]

    def paired(xs):
        return statistics.median(x / b for x, b in zip(xs, bracket))
    print(f'Reader mode: {mode}. dd bs=4M iflag=direct: median {dd_med:.3f} GB/s '
          f'(runs: {", ".join(f"{x:.2f}" for x in dd)}); {args.rounds} rounds, each: dd, then '
          'per reader config one stream without and one with checksums; one more dd at the end. '
          'Medians; "paired" is the median over rounds of the stream against the mean of the dd '
          'runs before and after it:\n')
    print('| threads | chunk | GB/s, no checksum | % of dd median | paired % of dd | '
          'GB/s, xxh3 verified | % of dd median | paired % of dd | verify wall-time cost '
          '| hashing CPU time / stream time |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for c in configs:
        a = statistics.median(results[c][False])
        b = statistics.median(results[c][True])
        print(f'| {c[0]} | {c[1]} MiB | {a:.3f} | {100 * a / dd_med:.0f}% | '
              f'{100 * paired(results[c][False]):.0f}% | {b:.3f} | {100 * b / dd_med:.0f}% | '
              f'{100 * paired(results[c][True]):.0f}% | '
              f'{100 * statistics.median(overhead[c]):+.1f}% | '
              f'{100 * statistics.median(shares[c]):.1f}% |')

    # 2. checksum cost
    xxh, crc = hash_speed()
    print(f'\nChecksum over memory (256 MiB, best of 5): xxh3_64 {xxh:.1f} GB/s, crc32 '
          f'{crc:.1f} GB/s. At the dd speed, hashing alone would take {100 * dd_med / xxh:.1f}% '
          f'(xxh3) or {100 * dd_med / crc:.1f}% (crc32) of the read time; the reader hashes '
          'each chunk as it lands, in its own verify thread, so most of it overlaps later reads '
          '(wall-time cost column).\n')

    # 3. page cache: each streaming run in its own child process and memory cgroup
    page_cache(pack, args)
    return 0


def child_stream(args):
    """Child side: stream the pack `passes` times; print cgroup/file page-cache figures."""
    pack = packmod.Pack.open(args.pack)
    path = pack.weights_path
    bufs = [direct_io.aligned_empty(max(u.length for u in pack.units)) for _ in range(2)]
    mode = mode_used = args.child_stream
    # warm-up pass: code paths fault in their library pages now, not during the measurement
    with direct_io.Reader(path, direct=mode == 'direct') as r:
        stream(pack, r, bufs, True)
    cgroups.evict_file(path)
    before = cgroups.own_cgroup_usage()
    cached_before = cgroups.page_cache_bytes()
    for _ in range(args.cache_passes):
        if mode == 'plain':
            with open(path, 'rb', buffering=0) as f:
                while f.read(4 << 20):
                    pass
        else:
            with direct_io.Reader(path, direct=mode == 'direct') as r:
                stream(pack, r, bufs, True)
                mode_used = r.mode
    cached_after = cgroups.page_cache_bytes()
    after = cgroups.own_cgroup_usage()
    cg_delta = after['cache_bytes'] - before['cache_bytes'] if after and before else None
    print(json.dumps({'mode': mode_used if mode != 'plain' else 'plain',
                      'cgroup_cache_delta': cg_delta,
                      'meminfo_cached_delta': cached_after - cached_before,
                      'file_cached': cgroups.file_cached_bytes(path)}))
    cgroups.evict_file(path)
    return 0


def page_cache(pack, args):
    """Run the page-cache experiment: O_DIRECT, buffered + DONTNEED, and a plain-read control."""
    total = pack.total_bytes
    root = os.geteuid() == 0
    rows = []
    for label, mode in (('Reader, O_DIRECT', 'direct'),
                        ('Reader, buffered + DONTNEED (fallback path)', 'buffered'),
                        ('plain buffered read (control)', 'plain')):
        if root:
            cgroups.drop_caches()
        argv = [sys.executable, __file__, '--pack', str(pack.path), '--child-stream', mode,
                '--cache-passes', str(args.cache_passes)]
        try:
            res = cgroups.run_in_cgroup(argv, timeout=600)
            out, cg = res.stdout, True
            if not res.ok:
                raise RuntimeError(f'child failed: {res.summary()}\n{res.stderr[-2000:]}')
        except cgroups.CgroupError:
            p = subprocess.run(argv, capture_output=True, text=True, check=True)
            out, cg = p.stdout, False
        fig = json.loads(out.strip().splitlines()[-1])
        rows.append((f'{label} [{fig["mode"]}]', fig['meminfo_cached_delta'],
                     fig['cgroup_cache_delta'] if cg else None, fig['file_cached']))
    if root:
        cgroups.drop_caches()
    print(f'Page cache growth over {args.cache_passes} whole-pack streams '
          f'({args.cache_passes * total / 1e6:.0f} MB read; goal < 5 MB). Each run in a child '
          'process in its own memory cgroup'
          f'{", machine caches dropped first (echo 3 > drop_caches)" if root else ""}; the child '
          'streams once to warm up, evicts the pack file, then measures around the streams. '
          '/proc/meminfo also counts what other processes on the machine do meanwhile:\n')
    print('| reader | memory.stat cache delta (own cgroup) | pack file cached after (mincore) '
          '| /proc/meminfo Cached delta (whole machine) |')
    print('|---|---:|---:|---:|')
    for label, delta, cg_delta, file_bytes in rows:
        cg_txt = f'{cg_delta / 1e6:+.2f} MB' if cg_delta is not None else 'n/a'
        print(f'| {label} | {cg_txt} | {file_bytes / 1e6:.2f} MB | {delta / 1e6:+.2f} MB |')


if __name__ == '__main__':
    sys.exit(main())
