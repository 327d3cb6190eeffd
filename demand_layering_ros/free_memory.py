# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
How much memory is free for this process, the way the kernel counts it, and a watcher for it.

A node that leaves `keep_free_mb` to the rest of the robot must know what is free *now*. That
is the smaller of the machine's MemAvailable (not MemFree: on a Jetson the page cache is the
same DRAM and reclaimable) and, where this process sits in a memory cgroup with a limit, that
limit minus the cgroup's usage (the OOM killer acts at the limit, whatever the machine has
free). Cgroups nest: every ancestor with a limit counts. The watcher wakes its caller when the
kernel reports memory pressure (PSI triggers, cgroup v2 memory.events) and at least every poll
interval otherwise, so the reading is never staler than that. Linux only; no torch, no ROS.
"""

import os
from pathlib import Path
import select

from demand_layering_ros.process_memory import cgroup_limit_usage, meminfo, own_cgroup_dir

SYSTEM_PSI = Path('/proc/pressure/memory')
MAX_INTERVAL_S = 0.1
# A stall of 50 ms of some task within 1 s. Without CAP_SYS_RESOURCE the kernel (6.5+) only
# accepts windows that are multiples of 2 s, hence the second spec. Each is NUL-terminated: the
# kernel overwrites the last byte written with NUL.
PSI_TRIGGERS = ('some 50000 1000000', 'some 100000 2000000')
_LIMIT_FILE = {1: 'memory.limit_in_bytes', 2: 'memory.max'}


def meminfo_available(text=None):
    """Return MemAvailable in bytes from /proc/meminfo (or `text`); None where it is missing."""
    try:
        return meminfo(text).get('MemAvailable')
    except OSError:
        return None


def cgroup_headroom(where=None):
    """
    Return (limit minus usage in bytes, cgroup version) for this process's memory cgroup.

    The tightest of the cgroup and its ancestors that have a limit (a child without a limit
    of its own is still bound by its parent's). None where no memory cgroup is readable or no
    limit is set anywhere up the tree. `where` is (version, directory) as own_cgroup_dir()
    returns it (default: this process's).
    """
    where = own_cgroup_dir() if where is None else where
    if where is None:
        return None
    version, d = where
    best = None
    d = Path(d)
    while (d / _LIMIT_FILE[version]).exists():
        try:
            limit, usage = cgroup_limit_usage(version, d)
        except (OSError, ValueError):
            limit = None
        if limit is not None:
            room = max(0, limit - usage)
            best = room if best is None else min(best, room)
        if d.parent == d:
            break
        d = d.parent
    return None if best is None else (best, version)


def free_bytes(where=None):
    """
    Return (free bytes now, source): the smaller of MemAvailable and the cgroup's headroom.

    source is 'meminfo', 'cgroup v1' or 'cgroup v2', naming which figure was smaller;
    (None, None) where neither can be read (not Linux).
    """
    available = meminfo_available()
    room = cgroup_headroom(where)
    if room is not None and (available is None or room[0] < available):
        return room[0], f'cgroup v{room[1]}'
    if available is None:
        return None, None
    return available, 'meminfo'


def _psi_trigger(path, specs=PSI_TRIGGERS):
    """
    Return (fd with a PSI trigger on `path`, the spec accepted) or (None, why not).

    Tries each spec in turn (privileged first); the fd must stay open for the trigger to live.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, f'{path}: {e.strerror or e}'
    why = 'no trigger spec given'
    for spec in specs:
        try:
            os.write(fd, spec.encode('ascii') + b'\0')
            return fd, spec
        except OSError as e:
            why = f'{path} {spec!r}: {e.strerror or e}'
    os.close(fd)
    return None, why


def _events_fd(path):
    """Return (fd on a cgroup v2 memory.events, read once, 'events') or (None, why not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return None, f'{path}: {e.strerror or e}'
    try:
        os.pread(fd, 4096, 0)       # kernfs signals POLLPRI on changes after the last read
    except OSError as e:
        os.close(fd)
        return None, f'{path}: {e.strerror or e}'
    return fd, 'events'


class FreeMemoryWatcher:
    """
    Wait for a change in free memory: a kernel pressure notification or a poll interval.

    Registers a PSI trigger on /proc/pressure/memory and, on cgroup v2, on the cgroup's
    memory.pressure, and watches its memory.events (high, max, oom): each wakes wait() at
    once. Where none can be created (no file, EPERM, EINVAL, PSI disabled) wait() is a plain
    sleep of the poll interval; `notifications` names what is in use and `unavailable` why
    the rest is not, `triggers` which spec each file accepted. Not thread-safe: one thread
    calls wait(). close() releases the fds.
    """

    def __init__(self, interval_s=MAX_INTERVAL_S, where=None, system_psi=SYSTEM_PSI,
                 psi_specs=PSI_TRIGGERS):
        """Set up the notifications that this kernel and cgroup allow."""
        if not 0 < interval_s <= MAX_INTERVAL_S:
            raise ValueError(f'interval_s must be in (0, {MAX_INTERVAL_S}], got {interval_s}')
        self.interval_s = float(interval_s)
        self.where = own_cgroup_dir() if where is None else where
        self.unavailable = []
        self.triggers = {}          # path -> the trigger spec the kernel accepted
        self._poll = select.poll()
        self._fds = {}              # fd -> 'psi' or 'events'
        paths = [(system_psi, 'psi')]
        if self.where is not None and self.where[0] == 2:
            d = Path(self.where[1])
            paths += [(d / 'memory.pressure', 'psi'), (d / 'memory.events', 'events')]
        for path, kind in paths:
            fd, what = (_psi_trigger(path, psi_specs) if kind == 'psi' else _events_fd(path))
            if fd is None:
                self.unavailable.append(what)
                continue
            self.triggers[str(path)] = what
            self._fds[fd] = kind
            self._poll.register(fd, select.POLLPRI)

    @property
    def notifications(self):
        """Return the kinds of kernel notification in use, e.g. ['psi'] ([] when polling)."""
        return sorted(set(self._fds.values()))

    def fds(self):
        """Return the file descriptors held open (for tests and diagnostics)."""
        return sorted(self._fds)

    def wait(self, timeout_s=None):
        """
        Block until a notification or `timeout_s` (default and at most the poll interval).

        Return True when the kernel signalled pressure, False when the time ran out.
        """
        timeout_s = self.interval_s if timeout_s is None else min(timeout_s, self.interval_s)
        if not self._fds:
            if timeout_s > 0:
                select.select([], [], [], timeout_s)
            return False
        events = self._poll.poll(max(0, int(timeout_s * 1000 + 0.999)))
        fired = False
        for fd, mask in events:
            kind = self._fds.get(fd)
            if kind is None:
                continue
            if mask & (select.POLLNVAL | select.POLLHUP) or \
                    (kind == 'psi' and mask & select.POLLERR):
                self._drop(fd, f'{kind} fd {fd} reported poll error {mask:#x}')
                continue
            if kind == 'events':
                try:
                    os.pread(fd, 4096, 0)   # re-arm: kernfs keeps POLLPRI until it is read
                except OSError as e:
                    self._drop(fd, f'memory.events: {e.strerror or e}')
                    continue
            fired = True
        return fired

    def read(self):
        """Return (free bytes, memory source with its notifications, e.g. 'cgroup v1 + psi')."""
        free, source = free_bytes(self.where)
        if source is not None:
            source = ' + '.join([source] + self.notifications)
        return free, source

    def _drop(self, fd, why):
        self.unavailable.append(why)
        self._poll.unregister(fd)
        del self._fds[fd]
        os.close(fd)

    def close(self):
        """Release the triggers' file descriptors (idempotent)."""
        for fd in list(self._fds):
            self._poll.unregister(fd)
            del self._fds[fd]
            os.close(fd)

    def __enter__(self):
        """Return self."""
        return self

    def __exit__(self, *exc):
        """Close."""
        self.close()
