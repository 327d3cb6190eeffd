# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Measure memory the way the kernel charges it: process RSS plus the page cache it causes.

A weight-streaming executor can look frugal in `ps` while the file it reads sits in the page
cache, which on a Jetson is the same DRAM. The honest measure is a memory cgroup: it charges
anonymous memory *and* the page cache a process brings in, enforces a hard limit (the OOM killer
acts at the limit) and records the peak. This module wraps the cgroup v1 memory controller (and
v2 where that is what a machine has), runs a command inside a fresh child cgroup, and offers the
plain per-process and per-file measurements that benchmarks and the reliability tests share
(those the runtime reports itself live in `demand_layering_ros.process_memory`, re-exported
here). Linux only; it imports neither torch nor ROS.
"""

from dataclasses import dataclass, field
import errno
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from demand_layering_ros import process_memory
from demand_layering_ros.process_memory import (CGROUP_ROOT, file_cached_bytes,  # noqa: F401
                                                meminfo, own_cgroup_paths, PAGE, read_text,
                                                rss_bytes, v2_mount)

PROC_SELF_CGROUP = Path('/proc/self/cgroup')
_read = read_text
_own_cgroup_paths = own_cgroup_paths
_v2_mount = v2_mount

# Runs in the child before the real command: wait until the parent has put this pid into the
# cgroup, then exec. `-I -S` keeps it tiny (no site, no venv .pth re-exec).
_WAIT_THEN_EXEC = ('import os, sys\n'
                   'r = int(sys.argv[1])\n'
                   'ok = os.read(r, 1)\n'
                   'os.close(r)\n'
                   'if ok != b"1":\n'
                   '    sys.exit(126)\n'
                   'os.execvp(sys.argv[2], sys.argv[2:])\n')


class CgroupError(RuntimeError):
    """A cgroup operation failed; the message names the cgroup file and the reason."""


class Availability:
    """Whether memory cgroups can be used here; false-y with a `reason` when they cannot."""

    def __init__(self, ok, reason, version=None, parent=None):
        """Record the answer, why, the cgroup version (1 or 2) and the parent cgroup dir."""
        self.ok = bool(ok)
        self.reason = reason
        self.version = version
        self.parent = parent

    def __bool__(self):
        """Return True when a child memory cgroup can be created."""
        return self.ok

    def __repr__(self):
        """Show the answer and the reason."""
        return f'Availability(ok={self.ok}, version={self.version}, reason={self.reason!r})'


def _write(path, value):
    try:
        with open(path, 'w', encoding='ascii') as f:
            f.write(str(value))
    except OSError as e:
        raise CgroupError(f'cannot write {value!r} to {path}: {e.strerror or e}') from e


def _probe():
    """Find a usable parent memory cgroup; return an Availability."""
    if not sys.platform.startswith('linux'):
        return Availability(False, f'memory cgroups are Linux-only (platform {sys.platform})')
    try:
        own = _own_cgroup_paths()
    except OSError as e:
        return Availability(False, f'cannot read {PROC_SELF_CGROUP}: {e}')
    v1_root = CGROUP_ROOT / 'memory'
    if 'memory' in own and (v1_root / 'memory.limit_in_bytes').exists():
        parent = v1_root / own['memory'].lstrip('/')
        if not parent.is_dir():
            return Availability(False, f'own memory cgroup {parent} is not visible here '
                                       '(another cgroup namespace?)', 1)
        if not os.access(parent, os.W_OK):
            return Availability(False, f'no permission to create a child of {parent} '
                                       f'(uid {os.geteuid()}; needs root or delegation)', 1)
        return Availability(True, f'cgroup v1 memory controller at {parent}', 1, parent)
    mount = _v2_mount()
    if mount is not None and '' in own:
        parent = mount / own[''].lstrip('/')
        try:
            controllers = _read(parent / 'cgroup.controllers').split()
        except OSError as e:
            return Availability(False, f'cannot read {parent}/cgroup.controllers: {e}', 2)
        if 'memory' not in controllers:
            return Availability(False, f'the memory controller is not enabled for {parent} '
                                       f'(cgroup v2 controllers: {" ".join(controllers)})', 2)
        if not os.access(parent, os.W_OK):
            return Availability(False, f'no permission to create a child of {parent} '
                                       f'(uid {os.geteuid()}; needs root or delegation)', 2)
        subtree = _read(parent / 'cgroup.subtree_control').split()
        if 'memory' not in subtree:
            procs = _read(parent / 'cgroup.procs').split()
            if procs and parent != mount:
                return Availability(False, f'cgroup v2: {parent} holds processes and does not '
                                           'delegate the memory controller to children '
                                           '(no-internal-process rule)', 2)
        return Availability(True, f'cgroup v2 memory controller at {parent}', 2, parent)
    return Availability(False, 'no memory cgroup controller is mounted (looked for '
                               f'{v1_root} and a cgroup2 mount)')


def cgroups_available():
    """
    Return an Availability: truthy when a child memory cgroup can be made, else with a reason.

    Usage: `avail = cgroups_available(); if not avail: pytest.skip(avail.reason)`.
    """
    return _probe()


class MemoryCgroup:
    """
    A fresh child memory cgroup of the current process's own cgroup, removed on close().

    v1 files: memory.limit_in_bytes, memory.max_usage_in_bytes (peak), memory.stat (rss, cache),
    memory.oom_control (oom_kill). v2 files: memory.max, memory.peak, memory.stat (anon, file),
    memory.events (oom_kill). The same methods work on both. Use as a context manager.
    """

    def __init__(self, limit_bytes=None, name=None):
        """Create the cgroup (and set the hard limit if given); raise CgroupError if unusable."""
        avail = _probe()
        if not avail:
            raise CgroupError(f'memory cgroups unavailable: {avail.reason}')
        self.version = avail.version
        self.parent = avail.parent
        self.name = name or f'dlr-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        if '/' in self.name or self.name in ('', '.', '..'):
            raise CgroupError(f'bad cgroup name {self.name!r}')
        if self.version == 2:
            subtree = self.parent / 'cgroup.subtree_control'
            if 'memory' not in _read(subtree).split():
                _write(subtree, '+memory')
        self.path = self.parent / self.name
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise CgroupError(f'cannot create cgroup {self.path}: {e.strerror or e}') from e
        self.limit_bytes = None
        self._closed = False
        try:
            if limit_bytes is not None:
                self.set_limit(limit_bytes)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        """Return self."""
        return self

    def __exit__(self, *exc):
        """Kill what is left inside and remove the cgroup."""
        self.close()

    def __repr__(self):
        """Show the path, version and limit."""
        return f'MemoryCgroup({str(self.path)!r}, v{self.version}, limit={self.limit_bytes})'

    def _file(self, v1, v2):
        return self.path / (v1 if self.version == 1 else v2)

    def set_limit(self, limit_bytes):
        """Set the hard limit (bytes; None removes it). Swap is limited to the same amount."""
        if limit_bytes is not None:
            limit_bytes = int(limit_bytes)
            if limit_bytes < PAGE:
                raise ValueError(f'memory limit must be at least one page ({PAGE} bytes), '
                                 f'got {limit_bytes}')
        if self.version == 1:
            value = -1 if limit_bytes is None else limit_bytes
            memsw = self.path / 'memory.memsw.limit_in_bytes'
            if limit_bytes is None and memsw.exists():
                _write(memsw, -1)       # memsw must stay >= limit: raise it first
            _write(self.path / 'memory.limit_in_bytes', value)
            if memsw.exists():
                try:
                    _write(memsw, value)
                except CgroupError:
                    pass                # swap accounting off: no swap to escape into
        else:
            value = 'max' if limit_bytes is None else limit_bytes
            _write(self.path / 'memory.max', value)
            swap = self.path / 'memory.swap.max'
            if swap.exists():
                _write(swap, 0 if limit_bytes is not None else 'max')
        self.limit_bytes = limit_bytes

    def add(self, pid):
        """Move process `pid` (all its threads) into this cgroup."""
        _write(self.path / 'cgroup.procs', int(pid))

    def pids(self):
        """Return the pids currently inside."""
        try:
            return [int(p) for p in _read(self.path / 'cgroup.procs').split()]
        except FileNotFoundError:
            return []

    def usage_bytes(self):
        """Return the memory charged now (anonymous + page cache + kernel)."""
        return int(_read(self._file('memory.usage_in_bytes', 'memory.current')))

    def peak_bytes(self):
        """Return the peak charge since creation or the last reset_peak()."""
        f = self._file('memory.max_usage_in_bytes', 'memory.peak')
        if not f.exists():
            raise CgroupError(f'{f} does not exist (kernel older than 5.19?); no peak recorded')
        return int(_read(f))

    def reset_peak(self):
        """Start a new peak measurement from the current usage."""
        _write(self._file('memory.max_usage_in_bytes', 'memory.peak'), 0)

    def stat(self):
        """Return memory.stat as {key: int}."""
        out = {}
        for line in _read(self.path / 'memory.stat').splitlines():
            key, _, value = line.partition(' ')
            if value.strip().lstrip('-').isdigit():
                out[key] = int(value)
        return out

    def shmem_bytes(self, stat=None):
        """Return shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, tmpfs) charged now."""
        stat = self.stat() if stat is None else stat
        return stat.get('shmem', 0)

    def rss_bytes(self, stat=None):
        """
        Return anonymous memory charged now, shared anonymous mappings included.

        The kernel files shared anonymous memory (what `mmap.mmap(-1, n)` gives, e.g. the
        reader's aligned buffers) under `cache`/`file`, but it is process memory, not a cached
        copy of a file; here it counts as RSS (v1 `rss + shmem`, v2 `anon + shmem`).
        """
        stat = self.stat() if stat is None else stat
        return stat.get('rss' if self.version == 1 else 'anon', 0) + self.shmem_bytes(stat)

    def cache_bytes(self, stat=None):
        """Return page cache of files charged now (v1 `cache`, v2 `file`, less shmem)."""
        stat = self.stat() if stat is None else stat
        return stat.get('cache' if self.version == 1 else 'file', 0) - self.shmem_bytes(stat)

    def oom_kills(self):
        """Return how many processes the OOM killer killed in this cgroup."""
        f = self._file('memory.oom_control', 'memory.events')
        for line in _read(f).splitlines():
            key, _, value = line.partition(' ')
            if key == 'oom_kill':
                return int(value)
        return 0

    def kill_all(self, sig=signal.SIGKILL):
        """Send `sig` to every process inside (processes this cgroup's user started)."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def close(self):
        """Kill what is left inside, uncharge its page cache and remove the directory."""
        if self._closed:
            return
        self._closed = True
        if not self.path.exists():
            return
        deadline = time.monotonic() + 5.0
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.01)
        if self.version == 1:
            try:
                _write(self.path / 'memory.force_empty', 0)
            except CgroupError:
                pass                    # best effort; rmdir reparents what is left
        while True:
            try:
                os.rmdir(self.path)
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(f'cannot remove cgroup {self.path}: '
                                      f'{e.strerror or e}') from e
                time.sleep(0.02)


@dataclass
class CgroupResult:
    """What a command did inside its memory cgroup (bytes; seconds)."""

    argv: list
    returncode: int
    oom_killed: bool
    timed_out: bool
    limit_bytes: object
    peak_bytes: int             # kernel-recorded peak charge: RSS + page cache + kernel
    peak_rss_bytes: int         # sampled peak of anonymous (incl. shared anonymous) memory
    peak_cache_bytes: int       # sampled peak of file page cache charged to the cgroup
    cache_bytes: int            # page cache still charged when the command ended
    max_rss_bytes: int          # ru_maxrss of the pid, forked pre-exec image included
    wall_s: float
    stdout: str
    stderr: str
    samples: list = field(default_factory=list, repr=False)   # (t, usage, rss, cache)

    @property
    def ok(self):
        """Return True when the command exited 0 without OOM kill or timeout."""
        return self.returncode == 0 and not self.oom_killed and not self.timed_out

    def summary(self):
        """Describe the outcome in one line (sizes in MiB)."""
        mib = 1 << 20
        limit = 'none' if self.limit_bytes is None else f'{self.limit_bytes / mib:.1f} MiB'
        state = ('OOM-killed' if self.oom_killed else 'timed out' if self.timed_out
                 else f'exit {self.returncode}')
        return (f'{state}; limit {limit}, peak {self.peak_bytes / mib:.1f} MiB '
                f'(rss {self.peak_rss_bytes / mib:.1f}, cache {self.peak_cache_bytes / mib:.1f}),'
                f' {self.wall_s:.2f} s')


class CgroupProcess:
    """
    A command running in its own fresh memory cgroup; `wait()` returns its CgroupResult.

    Made by start_in_cgroup(). While it runs, `pid` and `cgroup` are available (to signal it,
    talk to it, read its usage); a sampler thread records anonymous memory and page cache every
    `sample_interval` seconds. Use as a context manager: leaving it kills whatever still runs
    and removes the cgroup. Given an existing `cgroup`, the command joins it instead (several
    processes under one limit, as on a robot): then the cgroup and the other processes in it
    are left alone, and `oom_killed` means this command died of SIGKILL after the cgroup's
    OOM kill count rose.
    """

    def __init__(self, argv, limit_bytes=None, env=None, cwd=None, input_data=None,
                 sample_interval=0.01, cgroup=None):
        """Create the cgroup (or join `cgroup`), start the command inside it, start sampling."""
        self.argv = [os.fspath(a) for a in argv]
        if not self.argv:
            raise ValueError('start_in_cgroup: empty argv')
        if cgroup is not None and limit_bytes is not None:
            raise ValueError("start_in_cgroup: a limit is the cgroup's own; set it there")
        self.sample_interval = float(sample_interval)
        self.owns_cgroup = cgroup is None
        self.cgroup = MemoryCgroup(limit_bytes) if cgroup is None else cgroup
        self.oom_kills_before = self.cgroup.oom_kills()
        self.samples = []
        self.result = None
        self._peak = [0, 0]            # rss, cache
        self._stop = threading.Event()
        try:
            self._out = tempfile.TemporaryFile()
            self._err = tempfile.TemporaryFile()
            self._start(env, cwd, input_data)
        except BaseException:
            self._cleanup()
            raise
        self._sampler = threading.Thread(target=self._sample_loop, name='dlr-cgroup-sampler',
                                         daemon=True)
        self._sampler.start()

    def _start(self, env, cwd, input_data):
        r, w = os.pipe()
        wrapper = [sys.executable, '-I', '-S', '-c', _WAIT_THEN_EXEC, str(r)] + self.argv
        try:
            self.proc = subprocess.Popen(
                wrapper, stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
                stdout=self._out, stderr=self._err, env=env, cwd=cwd, pass_fds=(r,))
        finally:
            os.close(r)
        try:
            self.cgroup.add(self.proc.pid)
            os.write(w, b'1')
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            os.close(w)
        self.t0 = time.monotonic()
        if input_data is not None:
            try:
                self.proc.stdin.write(input_data.encode() if isinstance(input_data, str)
                                      else input_data)
            except BrokenPipeError:
                pass
            self.proc.stdin.close()

    @property
    def pid(self):
        """Return the command's process id."""
        return self.proc.pid

    def _sample(self):
        try:
            stat = self.cgroup.stat()
            rss, cache = self.cgroup.rss_bytes(stat), self.cgroup.cache_bytes(stat)
            usage = self.cgroup.usage_bytes()
        except (OSError, CgroupError):
            return
        self.samples.append((time.monotonic() - self.t0, usage, rss, cache))
        self._peak = [max(self._peak[0], rss), max(self._peak[1], cache)]

    def _sample_loop(self):
        while not self._stop.wait(self.sample_interval):
            self._sample()

    def output_so_far(self):
        """Return (stdout, stderr) written so far (without disturbing the command's writes)."""
        out = []
        for f in (self._out, self._err):
            size = os.fstat(f.fileno()).st_size
            out.append(os.pread(f.fileno(), size, 0).decode(errors='replace'))
        return tuple(out)

    def running(self):
        """Return True while the command has not exited (does not reap it)."""
        if self.result is not None:
            return False
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is None

    def send_signal(self, sig):
        """Send a signal to the command (not to other processes in its cgroup)."""
        if self.running():      # not Popen.send_signal: it would reap the process
            os.kill(self.proc.pid, sig)

    def wait(self, timeout=None):
        """Wait for the command (killing everything in the cgroup after `timeout` s)."""
        if self.result is not None:
            return self.result
        if timeout is not None and timeout <= 0:
            raise ValueError(f'timeout must be > 0, got {timeout}')
        timed_out = False
        rusage = None
        try:
            while True:
                pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
                if pid:
                    break
                if timeout is not None and time.monotonic() - self.t0 > timeout:
                    timed_out = True
                    if self.owns_cgroup:
                        self.cgroup.kill_all()
                    else:
                        os.kill(self.proc.pid, signal.SIGKILL)
                    _, status, rusage = os.wait4(self.proc.pid, 0)
                    break
                time.sleep(min(self.sample_interval, 0.01))
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:       # reaped elsewhere (e.g. Popen.poll on self.proc)
            if self.proc.returncode is None:
                raise
        wall = time.monotonic() - self.t0
        self._stop.set()
        self._sampler.join()
        cg = self.cgroup
        if self.owns_cgroup:
            cg.kill_all()       # stragglers the command left behind
        self._sample()
        stat = cg.stat()
        cache_now = cg.cache_bytes(stat)
        self._out.seek(0)
        self._err.seek(0)
        self.result = CgroupResult(
            argv=self.argv, returncode=self.proc.returncode, oom_killed=self._oom_killed(),
            timed_out=timed_out, limit_bytes=cg.limit_bytes, peak_bytes=cg.peak_bytes(),
            peak_rss_bytes=self._peak[0], peak_cache_bytes=max(self._peak[1], cache_now),
            cache_bytes=cache_now, wall_s=wall,
            max_rss_bytes=rusage.ru_maxrss * 1024 if rusage is not None else 0,
            stdout=self._out.read().decode(errors='replace'),
            stderr=self._err.read().decode(errors='replace'), samples=self.samples)
        self._cleanup()
        return self.result

    def _oom_killed(self):
        """Return True when the OOM killer ended this command (in a shared cgroup: SIGKILL)."""
        kills = self.cgroup.oom_kills()
        if self.owns_cgroup:
            return kills > 0
        return kills > self.oom_kills_before and self.proc.returncode == -signal.SIGKILL

    def _cleanup(self):
        self._stop.set()
        for f in (getattr(self, '_out', None), getattr(self, '_err', None)):
            if f is not None:
                f.close()
        if self.owns_cgroup:
            self.cgroup.close()

    def __enter__(self):
        """Return self."""
        return self

    def __exit__(self, *exc):
        """Kill the command if it still runs, reap it and remove the cgroup (if its own)."""
        if self.result is None:
            if self.owns_cgroup:
                self.cgroup.kill_all()
            elif self.running():
                os.kill(self.proc.pid, signal.SIGKILL)
            try:
                self.wait(timeout=30)
            except (OSError, CgroupError):
                self._cleanup()


def start_in_cgroup(argv, limit_bytes=None, env=None, cwd=None, input_data=None,
                    sample_interval=0.01, cgroup=None):
    """
    Start `argv` in a fresh child memory cgroup (optional hard limit); return a CgroupProcess.

    The child is in the cgroup before it executes the command (a tiny wrapper waits on a pipe
    until the parent has moved it), so every byte it allocates or pulls into the page cache is
    charged. `input_data` (bytes or str) is fed to its stdin. `cgroup`: a MemoryCgroup (or
    another command's `.cgroup`) to start it in instead, beside what runs there. Raises
    CgroupError when cgroups are unavailable (see cgroups_available).
    """
    return CgroupProcess(argv, limit_bytes, env=env, cwd=cwd, input_data=input_data,
                         sample_interval=sample_interval, cgroup=cgroup)


def run_in_cgroup(argv, limit_bytes=None, timeout=None, env=None, cwd=None, input_data=None,
                  sample_interval=0.01):
    """
    Run `argv` in a fresh child memory cgroup with an optional hard limit; return CgroupResult.

    As start_in_cgroup(...).wait(timeout): on timeout everything in the cgroup is killed and
    `timed_out` is set; the cgroup is removed afterwards.
    """
    if not argv:
        raise ValueError('run_in_cgroup: empty argv')
    if timeout is not None and timeout <= 0:
        raise ValueError(f'run_in_cgroup: timeout must be > 0, got {timeout}')
    with start_in_cgroup(argv, limit_bytes, env=env, cwd=cwd, input_data=input_data,
                         sample_interval=sample_interval) as proc:
        return proc.wait(timeout)


# --- page cache ---------------------------------------------------------------------------------

def page_cache_bytes():
    """Return the machine-wide page cache (`Cached` in /proc/meminfo), in bytes."""
    return meminfo()['Cached']


def drop_caches(level=3):
    """
    Write dirty pages back and drop the machine-wide page cache (root only; benchmarks only).

    Prefer evict_file() in tests: it forgets one file's pages without disturbing other work.
    """
    if level not in (1, 2, 3):
        raise ValueError(f'drop_caches: level must be 1, 2 or 3, got {level!r}')
    if os.geteuid() != 0:
        raise PermissionError('drop_caches needs root (writes /proc/sys/vm/drop_caches); '
                              'use evict_file(path) to drop one file from the page cache')
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w', encoding='ascii') as f:
        f.write(str(level))


def evict_file(path):
    """Write back and drop one file's pages from the page cache (no root needed)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- per-process figures ------------------------------------------------------------------------

def _status(pid):
    out = {}
    for line in _read(f'/proc/{pid}/status').splitlines():
        key, _, value = line.partition(':')
        out[key] = value.strip()
    return out


def _kb(value):
    parts = value.split()
    return int(parts[0]) * 1024 if parts else 0


def process_rss(pid=None):
    """Return a process's resident set size in bytes (default: this process)."""
    return rss_bytes('self' if pid is None else int(pid))


def process_peak_rss(pid=None):
    """Return a process's peak resident set size (VmHWM) in bytes."""
    return _kb(_status(os.getpid() if pid is None else int(pid)).get('VmHWM', '0 kB'))


def reset_peak_rss():
    """
    Reset this process's peak RSS (VmHWM) to its current RSS; return False where unsupported.

    Lets a test measure the peak of one call (e.g. that a lying image header allocates nothing
    big) with process_peak_rss() afterwards; uses /proc/self/clear_refs (Linux 4.0+).
    """
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
            f.write('5')
        return True
    except OSError:
        return False


def thread_count(pid=None):
    """Return the number of OS threads of a process (all threads, not only Python's)."""
    return int(_status(os.getpid() if pid is None else int(pid))['Threads'])


def open_fd_count(pid=None):
    """Return how many file descriptors a process has open."""
    pid = os.getpid() if pid is None else int(pid)
    return len(os.listdir(f'/proc/{pid}/fd'))


def process_snapshot(pid=None):
    """Return {'rss_bytes', 'peak_rss_bytes', 'threads', 'fds'} of a process (default: self)."""
    pid = os.getpid() if pid is None else int(pid)
    status = _status(pid)
    return {'rss_bytes': _kb(status.get('VmRSS', '0 kB')),
            'peak_rss_bytes': _kb(status.get('VmHWM', '0 kB')),
            'threads': int(status['Threads']),
            'fds': open_fd_count(pid)}


def own_cgroup_usage():
    """
    Return {'usage_bytes', 'rss_bytes', 'cache_bytes', 'limit_bytes'} of this process's cgroup.

    process_memory.own_cgroup_usage() plus the hard limit (None: unlimited); None where no
    memory cgroup can be read.
    """
    usage = process_memory.own_cgroup_usage()
    where = process_memory.own_cgroup_dir()
    if usage is None or where is None:
        return None
    try:
        limit = process_memory.cgroup_limit_usage(*where)[0]
    except (OSError, ValueError):
        limit = None
    return dict(usage, limit_bytes=limit)
