# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
This process's memory as the kernel counts it: RSS from /proc, its memory cgroup, cached files.

A streamed model is only frugal if the whole process is: the figures here are what `top`,
`tegrastats` and a memory cgroup see, and what the runtime's stats() and the node's diagnostics
report next to the weights. Linux only (elsewhere the functions return None or 0); no torch.
"""

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

PAGE = mmap.PAGESIZE
CGROUP_ROOT = Path('/sys/fs/cgroup')
NO_LIMIT = 1 << 62      # v1 reports 'no limit' as a huge number near 2**63


def read_text(path):
    """Return a small text file's contents (procfs, cgroupfs)."""
    with open(path, encoding='ascii') as f:
        return f.read()


def statm(pid='self'):
    """Return (resident bytes, of which file-backed or shared) of a process (default: this one)."""
    try:
        fields = read_text(f'/proc/{pid}/statm').split()
        return int(fields[1]) * PAGE, int(fields[2]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid='self'):
    """Return a process's resident set size in bytes (0 where /proc is missing)."""
    s = statm(pid)
    return s[0] if s is not None else 0


def anon_bytes():
    """Return this process's resident memory that no file backs (heap, stacks, tensors)."""
    s = statm()
    return s[0] - s[1] if s is not None else 0


def own_cgroup_paths(text=None):
    """Return {controller or '' for v2: relative path} from /proc/self/cgroup."""
    if text is None:
        text = read_text('/proc/self/cgroup')
    out = {}
    for line in text.splitlines():
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == '':
            out[''] = rel
        for c in controllers.split(','):
            if c:
                out[c] = rel
    return out


def v2_mount():
    """Return the cgroup2 mount point, or None."""
    try:
        mounts = read_text('/proc/self/mounts')
    except OSError:
        return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == 'cgroup2':
            return Path(fields[1])
    return None


def own_cgroup_dir():
    """Return (cgroup version 1 or 2, this process's memory cgroup directory), or None."""
    try:
        own = own_cgroup_paths()
    except OSError:
        return None
    v1 = CGROUP_ROOT / 'memory' / own.get('memory', '/').lstrip('/')
    if 'memory' in own and (v1 / 'memory.usage_in_bytes').exists():
        return 1, v1
    mount = v2_mount()
    if mount is not None and '' in own:
        d = mount / own[''].lstrip('/')
        if (d / 'memory.current').exists():
            return 2, d
    return None


def meminfo(text=None):
    """
    Return /proc/meminfo as {key: bytes} (values in kB are converted; counts stay counts).

    Linux only: raises OSError where /proc/meminfo is missing.
    """
    if text is None:
        text = read_text('/proc/meminfo')
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(':')
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ['kB'] else 1)
    return out


def parse_limit(text):
    """
    Return a cgroup memory limit in bytes, or None for no limit.

    v2 writes 'max'; v1 writes a huge page-rounded number (9223372036854771712) instead.
    """
    text = text.strip()
    if text == 'max':
        return None
    value = int(text)
    return None if value >= NO_LIMIT else value


def cgroup_limit_usage(version, d):
    """
    Return (limit bytes or None, usage bytes) of one memory cgroup directory.

    Usage is what the kernel charges against the limit (anonymous memory, page cache, kernel
    memory); raises OSError or ValueError where the files cannot be read.
    """
    limit_file, usage_file = (('memory.limit_in_bytes', 'memory.usage_in_bytes')
                              if version == 1 else ('memory.max', 'memory.current'))
    d = Path(d)
    return parse_limit(read_text(d / limit_file)), int(read_text(d / usage_file))


def own_cgroup_usage():
    """
    Return {'usage_bytes', 'rss_bytes', 'cache_bytes'} of this process's memory cgroup.

    rss_bytes includes shared anonymous memory; cache_bytes is file page cache only. On a
    robot that starts the node under a limit, this is the figure the kernel's OOM killer
    watches. Returns None where no memory cgroup can be read.
    """
    where = own_cgroup_dir()
    if where is None:
        return None
    version, d = where
    try:
        stat = dict(line.split(' ', 1) for line in read_text(d / 'memory.stat').splitlines()
                    if ' ' in line)
        usage = int(read_text(d / ('memory.usage_in_bytes' if version == 1
                                   else 'memory.current')))
        anon, cache = ('rss', 'cache') if version == 1 else ('anon', 'file')
        shmem = int(stat.get('shmem', 0))
        return {'usage_bytes': usage, 'rss_bytes': int(stat.get(anon, 0)) + shmem,
                'cache_bytes': int(stat.get(cache, 0)) - shmem}
    except (OSError, ValueError):
        return None


_libc = None
_BIT0 = bytes(i & 1 for i in range(256))       # mincore: bit 0 of each byte = page resident


def _get_libc():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        _libc = libc
    return _libc


def file_cached_bytes(path, offset=0, length=None):
    """Return how many bytes of `path` (in [offset, offset+length)) sit in the page cache."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = offset // PAGE * PAGE
        end = size if length is None else min(size, offset + length)
        n = end - start
        if n <= 0:
            return 0
        libc = _get_libc()
        addr = libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr in (None, ctypes.c_void_p(-1).value):
            e = ctypes.get_errno()
            raise OSError(e, f'mmap of {path} failed: {os.strerror(e)}')
        try:
            pages = (n + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(addr, n, vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f'mincore on {path} failed: {os.strerror(e)}')
            resident = vec.raw[:pages].translate(_BIT0).count(1)
        finally:
            libc.munmap(addr, n)
        return min(resident * PAGE, n)
    finally:
        os.close(fd)
