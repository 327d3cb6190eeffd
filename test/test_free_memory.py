# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Free memory as the kernel counts it, read from the real files, and the watcher's kernel hooks.

MemAvailable is checked against /proc/meminfo and `free -b`; the cgroup headroom in a real
memory cgroup with a hard limit, where allocating 100 MiB must take 100 MiB off what is free;
the watcher against this kernel's PSI (a trigger where it can make one, a clean fallback to
polling where it cannot) and for the file descriptors it must give back.
"""

import errno
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

from demand_layering_ros import free_memory
from demand_layering_ros.free_memory import FreeMemoryWatcher
import pytest
from tools import cgroups

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
AVAIL = cgroups.cgroups_available()
needs_cgroups = pytest.mark.skipif(not AVAIL, reason=f'memory cgroups: {AVAIL.reason}')
linux = pytest.mark.skipif(not Path('/proc/meminfo').exists(), reason='needs /proc/meminfo')

CHILD = ('import json, sys\n'
         'from demand_layering_ros.free_memory import free_bytes\n'
         'before = free_bytes()\n'
         "b = bytearray(b'\\x01') * (100 << 20)\n"     # written: the pages are resident
         'after = free_bytes()\n'
         "print(json.dumps({'before': before, 'after': after}), flush=True)\n")


def proc_mem_available():
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemAvailable:'):
            value, unit = line.split()[1:3]
            assert unit == 'kB'
            return int(value) * 1024
    raise AssertionError('no MemAvailable in /proc/meminfo')


@linux
def test_mem_available_is_what_the_kernel_says():
    mine, theirs = free_memory.meminfo_available(), proc_mem_available()
    total = free_memory.meminfo()['MemTotal']
    assert 0 < mine <= total
    assert abs(mine - theirs) < 64 * MIB
    if shutil.which('free'):
        row = subprocess.run(['free', '-b'], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        header, mem = row[0].split(), row[1].split()
        free_says = int(mem[1 + header.index('available')])
        assert abs(mine - free_says) < 64 * MIB


def test_mem_available_missing_is_none_not_memfree():
    text = 'MemTotal:  1000 kB\nMemFree:  500 kB\n'        # a kernel older than 3.14
    assert free_memory.meminfo_available(text) is None
    assert free_memory.meminfo_available(text + 'MemAvailable:  700 kB\n') == 700 * 1024


@linux
def test_free_bytes_here_names_its_source():
    free, source = free_memory.free_bytes()
    room = free_memory.cgroup_headroom()
    available = free_memory.meminfo_available()
    assert free > 0
    if room is None or room[0] >= available + 64 * MIB:
        assert source == 'meminfo'
        assert abs(free - available) < 64 * MIB
    else:
        assert source in ('cgroup v1', 'cgroup v2', 'meminfo')


@needs_cgroups
def test_in_a_memory_cgroup_the_limit_is_what_is_free():
    env = dict(os.environ, PYTHONPATH=f'{ROOT}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    result = cgroups.run_in_cgroup([sys.executable, '-c', CHILD], limit_bytes=300 * MIB,
                                   timeout=60, env=env, cwd=str(ROOT))
    assert result.ok, result.summary() + result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    (before, src_before), (after, src_after) = got['before'], got['after']
    assert src_before == src_after == f'cgroup v{AVAIL.version}'
    assert 150 * MIB < before < 300 * MIB           # the limit less the interpreter
    assert abs((before - after) - 100 * MIB) < 10 * MIB, (before, after)
    print(f'in a 300 MiB cgroup: free {before / MIB:.1f} MiB, {after / MIB:.1f} after 100 MiB')


@needs_cgroups
def test_a_cgroup_without_a_limit_is_bound_by_its_parent():
    with cgroups.MemoryCgroup(300 * MIB) as cg:
        inner = cg.path / 'inner'
        os.mkdir(inner)                             # no limit of its own
        try:
            if cg.version == 2:
                assert Path(inner / 'memory.max').read_text().strip() == 'max'
            room = free_memory.cgroup_headroom((cg.version, inner))
            assert room is not None and room[1] == cg.version
            assert abs(room[0] - (300 * MIB - cg.usage_bytes())) < 4 * MIB
            # the tighter of the two wins, whichever level it is at
            limit_file = 'memory.limit_in_bytes' if cg.version == 1 else 'memory.max'
            (inner / limit_file).write_text(str(100 * MIB))
            assert abs(free_memory.cgroup_headroom((cg.version, inner))[0] - 100 * MIB) \
                < 4 * MIB
        finally:
            os.rmdir(inner)


def psi_trigger_possible():
    """Probe the kernel independently of the module: whether a memory PSI trigger works here."""
    for spec in (b'some 50000 1000000\0', b'some 100000 2000000\0'):
        try:
            fd = os.open('/proc/pressure/memory', os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            os.write(fd, spec)
            return True
        except OSError:
            pass
        finally:
            os.close(fd)
    return False


def open_fds():
    return set(os.listdir('/proc/self/fd'))


def assert_closed(fds):
    for fd in fds:
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF


@linux
def test_watcher_uses_psi_where_the_kernel_allows_and_returns_within_its_interval():
    fds_before = open_fds()
    w = FreeMemoryWatcher(interval_s=0.05)
    held = w.fds()
    assert ('psi' in w.notifications) == psi_trigger_possible(), w.unavailable
    if 'psi' in w.notifications:
        assert w.triggers['/proc/pressure/memory'] in free_memory.PSI_TRIGGERS
    for _ in range(5):
        t = time.monotonic()
        w.wait()
        assert time.monotonic() - t < 0.05 + 0.05
    free, source = w.read()
    assert free > 0 and source.startswith(('meminfo', 'cgroup v1', 'cgroup v2'))
    assert source.endswith(' + psi') == ('psi' in w.notifications)
    w.close()
    w.close()
    assert_closed(held)
    assert open_fds() <= fds_before


@linux
def test_watcher_falls_back_to_polling_without_a_pressure_file():
    w = FreeMemoryWatcher(interval_s=0.05, system_psi='/nonexistent/pressure/memory',
                          where=(1, '/nonexistent'))
    assert w.notifications == [] and w.fds() == []
    assert any('/nonexistent/pressure/memory' in why for why in w.unavailable)
    t = time.monotonic()
    assert w.wait() is False
    assert 0.04 < time.monotonic() - t < 0.1
    w.close()


@pytest.mark.skipif(not Path('/proc/pressure/memory').exists(), reason='no PSI here')
def test_watcher_falls_back_when_the_kernel_refuses_the_trigger():
    fds_before = open_fds()
    w = FreeMemoryWatcher(interval_s=0.02, psi_specs=('some 0 0', 'bogus'))  # EINVAL
    assert 'psi' not in w.notifications
    assert any('Invalid argument' in why for why in w.unavailable), w.unavailable
    t = time.monotonic()
    assert w.wait() is False        # no POLLERR busy loop on a trigger-less PSI fd
    assert time.monotonic() - t >= 0.015
    w.close()
    assert open_fds() <= fds_before


def test_watcher_interval_is_at_most_100_ms():
    for bad in (0, -1, 0.2):
        with pytest.raises(ValueError):
            FreeMemoryWatcher(interval_s=bad)


THRASH = ('import mmap, os, sys\n'
          "keep = bytearray(b'\\x01') * (20 << 20)\n"  # most of the limit: the file cache thrashes
          'while True:\n'
          '    fd = os.open(sys.argv[1], os.O_RDONLY)\n'
          '    m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\n'
          '    sum(m[i] for i in range(0, len(m), 4096))\n'
          '    m.close()\n'
          '    os.close(fd)\n')


@pytest.mark.slow
@needs_cgroups
def test_watcher_wakes_on_real_memory_pressure(tmp_path):
    """A process thrashing its page cache in a 32 MiB cgroup stalls; the PSI trigger fires."""
    w = FreeMemoryWatcher()
    if 'psi' not in w.notifications:
        w.close()
        pytest.skip(f'no PSI trigger here: {w.unavailable}')
    data = tmp_path / 'thrash.bin'
    with open(data, 'wb') as f:
        for _ in range(128):
            f.write(os.urandom(MIB))
    cgroups.evict_file(data)
    with w, cgroups.start_in_cgroup([sys.executable, '-I', '-S', '-c', THRASH, str(data)],
                                    limit_bytes=32 * MIB) as proc:
        t0, fired = time.monotonic(), None
        while fired is None and time.monotonic() - t0 < 15 and proc.running():
            if w.wait():
                fired = time.monotonic() - t0
        proc.cgroup.kill_all()
    assert fired is not None, 'no PSI notification in 15 s of page-cache thrashing'
    print(f'PSI trigger {w.triggers} fired after {fired:.2f} s of thrashing')
