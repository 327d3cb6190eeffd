# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The memory-accounting module: a cgroup limit really kills, peaks and page cache are really seen.

Every memory figure the project reports comes from tools.cgroups, so these tests
check it against the kernel's own behaviour with real subprocesses: an allocation over the hard
limit is OOM-killed, one under it survives with the peak it really had, a buffered read is
charged as page cache and an O_DIRECT read is not.
"""

import mmap
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest
from tools import cgroups

MIB = 1 << 20
AVAIL = cgroups.cgroups_available()
needs_cgroups = pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')

ALLOC = ('import sys, time\n'
         'n = int(sys.argv[1]) << 20\n'
         "b = bytearray(b'\\x01') * n\n"        # written, so the pages are really resident
         "print('allocated', len(b), flush=True)\n")

READ_BUFFERED = ('import sys\n'
                 "with open(sys.argv[1], 'rb') as f:\n"
                 '    while f.read(1 << 20):\n'
                 '        pass\n')

READ_DIRECT = ('import mmap, os, sys\n'
               'fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)\n'
               'buf = mmap.mmap(-1, 1 << 20)\n'
               'off = 0\n'
               'while True:\n'
               '    n = os.preadv(fd, [buf], off)\n'
               '    if n <= 0:\n'
               '        break\n'
               '    off += n\n'
               "print('read', off)\n")


def _py(code, *args):
    return [sys.executable, '-c', code] + [str(a) for a in args]


def test_availability_is_a_bool_with_a_reason():
    avail = cgroups.cgroups_available()
    assert isinstance(bool(avail), bool)
    assert isinstance(avail.reason, str) and avail.reason
    if avail:
        assert avail.version in (1, 2) and Path(avail.parent).is_dir()


def test_own_cgroup_paths_parses_v1_and_v2_lines():
    text = ('9:name=systemd:/\n4:memory:/a/b\n3:cpu,cpuacct:/c\n0::/unified/x\n')
    paths = cgroups._own_cgroup_paths(text)
    assert paths['memory'] == '/a/b'
    assert paths['cpu'] == paths['cpuacct'] == '/c'
    assert paths[''] == '/unified/x'


@needs_cgroups
def test_allocation_over_the_limit_is_oom_killed():
    res = cgroups.run_in_cgroup(_py(ALLOC, 200), limit_bytes=100 * MIB, timeout=60)
    assert res.oom_killed, res.summary()
    assert res.returncode == -9 and not res.ok
    assert 'allocated' not in res.stdout
    assert res.peak_bytes <= 100 * MIB


@needs_cgroups
def test_allocation_under_the_limit_survives_with_its_real_peak():
    res = cgroups.run_in_cgroup(_py(ALLOC, 200), limit_bytes=400 * MIB, timeout=60)
    assert res.ok, res.summary() + res.stderr[-2000:]
    assert f'allocated {200 * MIB}' in res.stdout
    # 200 MiB of data plus an interpreter: the cgroup saw all of it and not much more.
    assert 200 * MIB <= res.peak_bytes < 260 * MIB, res.summary()
    # ru_maxrss also counts the pre-exec image forked from this (large) process: a floor only
    assert res.max_rss_bytes >= 200 * MIB, res.max_rss_bytes
    assert res.peak_rss_bytes <= res.peak_bytes, res.summary()
    assert res.limit_bytes == 400 * MIB


@pytest.fixture()
def cold_file(tmp_path):
    path = tmp_path / 'blob.bin'
    block = os.urandom(MIB)
    with open(path, 'wb') as f:
        for _ in range(48):
            f.write(block)
    cgroups.evict_file(path)
    return path


@needs_cgroups
def test_buffered_read_is_charged_as_page_cache_and_o_direct_is_not(cold_file):
    size = cold_file.stat().st_size
    assert cgroups.file_cached_bytes(cold_file) < size // 10
    direct = cgroups.run_in_cgroup(_py(READ_DIRECT, cold_file), timeout=60)
    assert direct.ok, direct.stderr[-2000:]
    assert f'read {size}' in direct.stdout
    assert direct.cache_bytes < 4 * MIB, direct.summary()
    assert cgroups.file_cached_bytes(cold_file) < size // 10

    buffered = cgroups.run_in_cgroup(_py(READ_BUFFERED, cold_file), timeout=60)
    assert buffered.ok, buffered.stderr[-2000:]
    assert buffered.cache_bytes >= size * 0.9, buffered.summary()
    assert buffered.peak_bytes >= size * 0.9
    assert buffered.peak_bytes - direct.peak_bytes >= size * 0.8


@needs_cgroups
def test_shared_anonymous_memory_counts_as_rss_not_page_cache():
    code = ('import mmap\n'
            'm = mmap.mmap(-1, 64 << 20)\n'
            "m.write(b'\\x01' * (64 << 20))\n"
            "print('ok')\n")
    res = cgroups.run_in_cgroup(_py(code), timeout=60)
    assert res.ok, res.stderr[-2000:]
    assert res.peak_rss_bytes >= 64 * MIB, res.summary()
    assert res.peak_cache_bytes < 4 * MIB, res.summary()


def test_file_cached_bytes_follows_reads_and_eviction(cold_file):
    size = cold_file.stat().st_size
    assert cgroups.file_cached_bytes(cold_file) < size // 10
    with open(cold_file, 'rb') as f:
        f.seek(8 * MIB)
        f.read(8 * MIB)
    part = cgroups.file_cached_bytes(cold_file, 8 * MIB, 8 * MIB)
    assert part >= 8 * MIB * 0.9
    assert cgroups.file_cached_bytes(cold_file, 32 * MIB, 8 * MIB) < MIB
    cgroups.evict_file(cold_file)
    assert cgroups.file_cached_bytes(cold_file) < size // 10


@needs_cgroups
def test_timeout_kills_everything_and_removes_the_cgroup(tmp_path):
    pidfile = tmp_path / 'grandchild.pid'
    code = ('import subprocess, sys, time\n'
            "p = subprocess.Popen(['sleep', '60'])\n"
            f'open({str(pidfile)!r}, "w").write(str(p.pid))\n'
            'time.sleep(60)\n')
    before = set(os.listdir(AVAIL.parent))
    res = cgroups.run_in_cgroup(_py(code), timeout=3)
    assert res.timed_out and not res.ok and res.returncode == -9
    grandchild = int(pidfile.read_text())
    # the grandchild was in the cgroup too and got killed (it may linger as a zombie of no one)
    try:
        state = Path(f'/proc/{grandchild}/stat').read_text().split(')')[-1].split()[0]
    except FileNotFoundError:
        state = 'gone'
    assert state in ('gone', 'Z', 'X')
    assert set(os.listdir(AVAIL.parent)) == before


@needs_cgroups
def test_started_process_can_be_talked_to_and_signalled():
    code = ('import signal, sys, time\n'
            'def stop(*args):\n'
            "    print('interrupted', flush=True)\n"
            '    sys.exit(0)\n'
            'signal.signal(signal.SIGINT, stop)\n'
            "bufs = [bytearray(b'\\x02') * (32 << 20)]\n"
            "print('ready', flush=True)\n"
            'time.sleep(60)\n')
    with cgroups.start_in_cgroup(_py(code), limit_bytes=256 * MIB) as proc:
        assert proc.cgroup.pids() == [proc.pid]
        deadline = time.monotonic() + 30
        # not the RSS: the venv's interpreter re-executes itself once at start-up
        while 'ready' not in proc.output_so_far()[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cgroups.process_rss(proc.pid) >= 32 * MIB and proc.running()
        assert proc.cgroup.usage_bytes() >= 16 * MIB
        proc.send_signal(signal.SIGINT)
        res = proc.wait(timeout=30)
    assert res.ok and res.stdout.split() == ['ready', 'interrupted'], res.summary() + res.stderr
    assert res.peak_bytes >= 32 * MIB and res.peak_rss_bytes >= 24 * MIB, res.summary()
    assert len(res.samples) > 0 and not proc.running()
    assert not proc.cgroup.path.exists()


@needs_cgroups
def test_memory_cgroup_limit_and_peak_reset():
    with cgroups.MemoryCgroup(limit_bytes=64 * MIB) as cg:
        assert cg.path.is_dir() and cg.limit_bytes == 64 * MIB
        proc = subprocess.Popen(['sleep', '30'])
        try:
            cg.add(proc.pid)
            assert cg.pids() == [proc.pid]
            assert cg.oom_kills() == 0
            assert cg.usage_bytes() >= 0 and cg.peak_bytes() >= cg.usage_bytes()
            cg.reset_peak()
            cg.set_limit(None)
            assert cg.limit_bytes is None
        finally:
            proc.kill()
            proc.wait()
        path = cg.path
    assert not path.exists()
    with pytest.raises(ValueError, match='at least one page'):
        cgroups.MemoryCgroup(limit_bytes=100)


def test_process_figures_move_with_what_the_process_does():
    snap = cgroups.process_snapshot()
    assert snap['rss_bytes'] == pytest.approx(cgroups.process_rss(), rel=0.2)
    assert snap['peak_rss_bytes'] >= snap['rss_bytes'] * 0.9
    assert cgroups.process_peak_rss() >= snap['rss_bytes'] * 0.9
    fds = cgroups.open_fd_count()
    r, w = os.pipe()
    try:
        assert cgroups.open_fd_count() == fds + 2
    finally:
        os.close(r)
        os.close(w)
    threads = cgroups.thread_count()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert cgroups.thread_count() == threads + 1
    finally:
        stop.set()
        t.join()
    rss = cgroups.process_rss()
    # fresh pages from the kernel: a bytearray may reuse memory malloc already holds (after
    # other tests in the same process) and leave RSS where it was
    blob = mmap.mmap(-1, 64 * MIB)
    for off in range(0, 64 * MIB, mmap.PAGESIZE):
        blob[off] = 1
    assert cgroups.process_rss() - rss >= 60 * MIB
    blob.close()
    if cgroups.reset_peak_rss():
        assert cgroups.process_peak_rss() < cgroups.process_rss() + 16 * MIB


def test_machine_wide_page_cache_and_meminfo():
    info = cgroups.meminfo()
    assert 0 < cgroups.page_cache_bytes() < info['MemTotal']
    usage = cgroups.own_cgroup_usage()
    if AVAIL:
        assert usage is not None and usage['usage_bytes'] > 0
    with pytest.raises(ValueError):
        cgroups.drop_caches(level=7)
