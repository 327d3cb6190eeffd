# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The C allocator's share of a model's memory: fewer glibc arenas, and configure's leftovers freed.

glibc gives every thread that calls malloc an arena of its own (up to 8 per core), and each keeps
what it freed for reuse by that thread alone. A node's threads (DDS, executor, the inference
thread, the reader and loader threads) then each hold a copy of the frames and activations they
once touched: measured on the yolov3-tiny node, 40-90 MiB in per-thread arenas after a few
dozen frames, more than the weights. `limit_arenas` caps the process at ARENAS arenas (threads
share them and reuse each other's frees), once, at the first load, unless MALLOC_ARENA_MAX is
set or DLR_MALLOC_ARENAS=0; `trim` gives freed heap pages back to the kernel (after configure:
the plan search, manifest parsing and load-time checks leave garbage nobody reuses). Both are
no-ops where the C library is not glibc.
"""

import ctypes
import ctypes.util
import os
import threading

ARENAS = 2                 # malloc arenas of the whole process (glibc's default: 8 per core)
M_ARENA_MAX = -8           # mallopt parameter (malloc.h)

_lock = threading.Lock()
_state = {'libc': None, 'limited': None}


def _glibc():
    """Return glibc as a ctypes library, or False where malloc is not glibc's."""
    if _state['libc'] is None:
        lib = False
        try:
            cand = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            if hasattr(cand, 'mallopt') and hasattr(cand, 'malloc_trim') and \
                    hasattr(cand, 'gnu_get_libc_version'):
                lib = cand
        except OSError:
            pass
        _state['libc'] = lib
    return _state['libc']


def limit_arenas(arenas=ARENAS):
    """
    Cap the process's malloc arenas (once); return the cap in effect, or None when untouched.

    Threads that already have an arena keep it; later ones share. Skipped when the user chose
    (MALLOC_ARENA_MAX in the environment) or opted out (DLR_MALLOC_ARENAS=0); DLR_MALLOC_ARENAS=N
    sets another cap.
    """
    with _lock:
        if _state['limited'] is not None:
            return _state['limited'] or None
        _state['limited'] = 0
        if 'MALLOC_ARENA_MAX' in os.environ:
            return None
        want = os.environ.get('DLR_MALLOC_ARENAS', str(arenas))
        try:
            want = int(want)
        except ValueError:
            return None
        libc = _glibc()
        if want <= 0 or not libc or libc.mallopt(M_ARENA_MAX, want) != 1:
            return None
        _state['limited'] = want
        return want


def trim():
    """Give the heap pages malloc holds free back to the kernel; return True if it did."""
    libc = _glibc()
    return bool(libc) and bool(libc.malloc_trim(0))


def arena_count():
    """Return how many malloc arenas glibc has (one <heap nr=...> in malloc_info), or None."""
    libc = _glibc()
    if not libc:
        return None
    import re
    import tempfile
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    fd, path = tempfile.mkstemp(prefix='dlr-malloc-info-')
    os.close(fd)
    try:
        fp = libc.fopen(path.encode(), b'w')
        if not fp:
            return None
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        with open(path) as f:
            return len(re.findall('<heap nr=', f.read()))
    finally:
        os.unlink(path)
