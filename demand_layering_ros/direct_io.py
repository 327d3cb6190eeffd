# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Move byte ranges from a file on SSD into aligned memory without filling the page cache.

Demand Layering reads each unit's weights right before the unit runs. On a Jetson the page cache
lives in the same DRAM the memory budget is about, so a plain read would quietly keep a second
copy of every weight. This module reads with O_DIRECT into page-aligned (or pinned) buffers, from
worker threads whose `os.preadv` releases the GIL so reads overlap with compute (checksums run
in one more thread, so the disk queue stays full while finished chunks are hashed). Where a file
system refuses O_DIRECT it falls back to buffered reads followed by
`posix_fadvise(POSIX_FADV_DONTNEED)`, and says so in `Reader.mode` / `Reader.fallback_reason`.

A unit's tensors become zero-copy views over the buffer the reader filled (see `pack.Pack.views`).
"""

import concurrent.futures
import errno
import mmap
import os
import threading
import time
from typing import Any, Optional, Union

from demand_layering_ros.sizes import align_up, PAGE
import numpy as np
import torch
import xxhash

CHUNK_BYTES = 4 << 20
CHECKSUM_ALGORITHM = 'xxh3_64'


def aligned_empty(nbytes, pin=False):
    """
    Return an uninitialised, page-aligned uint8 CPU tensor of `nbytes` bytes.

    pin=False: backed by an anonymous mmap (page-aligned by construction); the tensor keeps the
    mmap alive (torch.frombuffer holds a reference), so views and slices stay valid.
    pin=True: page-locked memory from CUDA's host allocator, the source of asynchronous
    host-to-device copies; it is page-aligned too (checked here).
    """
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f'aligned_empty: nbytes must be >= 0, got {nbytes}')
    if pin:
        if not torch.cuda.is_available():
            raise RuntimeError('aligned_empty(pin=True) needs CUDA (pinned host memory); '
                               'use pin=False on a CPU-only machine')
        t = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)[:nbytes]
    else:
        buf = mmap.mmap(-1, max(align_up(nbytes), PAGE))
        t = torch.frombuffer(buf, dtype=torch.uint8)[:nbytes]
    if t.data_ptr() % PAGE:
        raise RuntimeError(f'aligned_empty: allocator returned an address not aligned to {PAGE}: '
                           f'{t.data_ptr():#x}')
    return t


def as_memoryview(buf):
    """Return a writable flat byte memoryview over a uint8 CPU tensor or a buffer object."""
    if isinstance(buf, torch.Tensor):
        if buf.device.type != 'cpu':
            raise ValueError(f'destination must be a CPU (or pinned) tensor, got {buf.device}')
        if buf.dtype != torch.uint8 or not buf.is_contiguous():
            raise ValueError('destination tensor must be contiguous uint8, '
                             f'got {buf.dtype} contiguous={buf.is_contiguous()}')
        return memoryview(buf.numpy()).cast('B')
    mv = memoryview(buf)
    return mv if mv.format == 'B' and mv.ndim == 1 else mv.cast('B')


def address_of(mv):
    """Return the memory address of a memoryview's first byte."""
    if mv.nbytes == 0:
        return 0
    return np.frombuffer(mv, dtype=np.uint8).ctypes.data


def checksum(buf):
    """
    Return the xxh3_64 digest, as 16 hex digits, of a byte buffer or uint8 tensor.

    xxh3 runs at tens of GB/s and releases the GIL, so verifying every read costs a few percent of
    the read time (measured in bench/bench_reader.py); crc32 would cost about a fifth.
    """
    mv = as_memoryview(buf) if isinstance(buf, torch.Tensor) else buf
    return xxhash.xxh3_64_hexdigest(mv)


class ReadError(OSError):
    """A read from the pack file failed; names the file, offset and length."""

    def __init__(self, err, message, path, offset, length):
        """Build an OSError subclass carrying the file, offset and length of the failed read."""
        super().__init__(err, f'{path}: read of {length} bytes at offset {offset} failed: '
                              f'{message}')
        self.filename = path
        self.offset = offset
        self.length = length


class ChecksumError(ValueError):
    """The bytes read do not hash to the expected checksum."""

    def __init__(self, path, offset, length, expected, got):
        """Name the file, the byte range and both digests."""
        super().__init__(f'{path}: checksum mismatch over [{offset}, {offset + length}): '
                         f'{CHECKSUM_ALGORITHM} {got}, expected {expected}')
        self.filename = path
        self.offset = offset
        self.length = length
        self.expected = expected
        self.got = got


class ReadFuture(concurrent.futures.Future):
    """
    Future of one `Reader.submit`; after completion also carries timing (perf_counter s).

    Attributes: offset, length, t_submit, t_start (first chunk began), t_end (done, after
    verification), verify_seconds (time spent hashing and in `verify`, mostly overlapped with
    reads), checksum (hex digest when a checksum was requested).
    """

    def __init__(self, offset, length):
        """Record the request; timing fields fill in as chunks run."""
        super().__init__()
        self.offset = offset
        self.length = length
        self.t_submit = time.perf_counter()
        self.t_start = None
        self.t_end = None
        self.verify_seconds = 0.0
        self.checksum = None


class _Request:
    """Book-keeping of one submit: chunks finish in any order, are hashed in file order."""

    def __init__(self, fut, mv, chunks, expected, checksum_error, verify):
        self.fut = fut
        self.mv = mv
        self.chunks = chunks              # [(file offset, memoryview)]
        self.expected = expected
        self.checksum_error = checksum_error
        self.verify = verify
        self.hasher = xxhash.xxh3_64() if expected is not None else None
        self.done = [False] * len(chunks)
        self.finished = 0                 # chunks read or failed
        self.next_hash = 0                # first chunk not yet fed to the hasher
        self.error = None
        self.final = False
        self.lock = threading.Lock()
        self.hash_lock = threading.Lock()


class ReadPool:
    """
    The I/O threads and the verify thread of one or more Readers: one queue, served in order.

    A Reader makes its own pool; Readers of several files (models sharing one memory budget)
    can share one instead, so the files' reads go through one set of threads and one queue.
    Whoever made a shared pool closes it, after its Readers.
    """

    def __init__(self, threads=2):
        """Start `threads` reader threads and one verify thread (lazily, on first use)."""
        self.threads = max(1, int(threads))
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix='dlr-reader')
        # Checksums and verify callbacks run here, so reader threads go straight on to the next
        # read and the disk queue stays full while finished chunks are hashed.
        self.verify_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='dlr-verify')

    def close(self):
        """Wait for queued work and stop the threads."""
        self.pool.shutdown(wait=True)
        self.verify_pool.shutdown(wait=True)


class Reader:
    """
    Parallel O_DIRECT reader of one file into caller-provided aligned buffers.

    Reader(path, threads=2, direct=True, throttle_bytes_per_s=None, fault_injector=None,
           pool=None)
      mode: 'direct' or 'buffered'; fallback_reason: why not direct (None in direct mode).
      read_into(offset, length, dest): blocking read of [offset, offset+length) into dest[:length].
      submit(offset, length, dest, verify=None, expected_checksum=None, checksum_error=None)
        -> ReadFuture (non-blocking; requests are served in submission order, each split into
        chunk_bytes pieces spread over the threads). expected_checksum (xxh3_64 hex) is checked
        while the chunks land; `verify(memoryview)` runs in the verify thread once all data is in.
        A failed read, a checksum mismatch or a verify exception becomes the future's exception.
      bytes_read, seconds: bytes delivered and wall seconds during which any read was in flight.
      throttle_bytes_per_s: cap the aggregate rate (simulates a slow disk in tests).
      fault_injector(offset, length): called before every chunk read; may raise OSError to
        simulate a failing disk.
      pool: a ReadPool shared with other Readers (None: the Reader makes its own of `threads`);
        close() then waits for this file's reads only and leaves the pool running.
    In direct mode offset, length and the destination address must be multiples of PAGE (pack
    units always are). The object is thread-safe; use it as a context manager or call close().
    """

    def __init__(self, path: Union[str, os.PathLike], threads: int = 2, direct: bool = True,
                 throttle_bytes_per_s: Optional[float] = None, fault_injector: Any = None,
                 chunk_bytes: int = CHUNK_BYTES, pool: Optional['ReadPool'] = None) -> None:
        """Open `path` (O_DIRECT if possible) and start (or share) the worker threads."""
        self.path = os.fspath(path)
        self.threads = max(1, int(threads)) if pool is None else pool.threads
        self.chunk_bytes = align_up(max(int(chunk_bytes), PAGE))
        self.throttle_bytes_per_s = throttle_bytes_per_s
        self.fault_injector = fault_injector
        self.bytes_read = 0
        self.seconds = 0.0
        self.mode = 'buffered'
        self.fallback_reason = None
        self._fd = None
        self._stats_lock = threading.Lock()
        self._in_flight = 0
        self._busy_since = 0.0
        self._throttle_lock = threading.Lock()
        self._throttle_next = 0.0
        self._closed = False
        self._pending = set()             # futures not done yet (a shared pool's close waits)
        if direct:
            self._open_direct()
        else:
            self.fallback_reason = 'direct=False requested by caller'
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
            # No readahead: pages read ahead of a chunk would stay cached after its DONTNEED.
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.file_size = os.fstat(self._fd).st_size
        self._own_pool = pool is None
        self._read_pool = ReadPool(self.threads) if pool is None else pool
        self._pool = self._read_pool.pool
        self._verify_pool = self._read_pool.verify_pool

    def _open_direct(self):
        flags = os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0)
        o_direct = getattr(os, 'O_DIRECT', 0)
        if not o_direct:
            self.fallback_reason = 'O_DIRECT is not available on this platform'
            return
        try:
            fd = os.open(self.path, flags | o_direct)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.fallback_reason = f'O_DIRECT open refused ({e.strerror}) on {self.path}'
            return
        # Some file systems (FUSE, network) accept the flag and refuse the first read instead.
        size = os.fstat(fd).st_size
        if size:
            probe = mmap.mmap(-1, PAGE)
            try:
                os.preadv(fd, [probe], 0)
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EINVAL:
                    raise
                self.fallback_reason = f'O_DIRECT read refused ({e.strerror}) on {self.path}'
                return
            finally:
                probe.close()
        self._fd = fd
        self.mode = 'direct'

    def __enter__(self):
        """Return self."""
        return self

    def __exit__(self, *exc):
        """Close the reader."""
        self.close()

    def close(self):
        """Wait for queued reads, stop the workers and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._own_pool:
            self._read_pool.close()
        else:
            with self._stats_lock:
                pending = list(self._pending)
            concurrent.futures.wait(pending)
        if self.mode == 'buffered':
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(self._fd)

    def __repr__(self):
        """Describe the file and mode."""
        return (f'Reader({self.path!r}, mode={self.mode!r}, threads={self.threads}, '
                f'fallback_reason={self.fallback_reason!r})')

    def read_into(self, offset: int, length: int, dest: Any, verify: Any = None,
                  expected_checksum: Optional[int] = None) -> Any:
        """Read [offset, offset+length) into dest[:length]; block until done."""
        self.submit(offset, length, dest, verify=verify,
                    expected_checksum=expected_checksum).result()

    def submit(self, offset, length, dest, verify=None, expected_checksum=None,
               checksum_error=None):
        """
        Queue a read of [offset, offset+length) into dest[:length]; return a ReadFuture.

        expected_checksum: hex xxh3_64 of the whole range. Chunks are hashed in file order as
        they arrive, in the reader's verify thread, so hashing overlaps the remaining reads; a
        mismatch fails the future with `checksum_error(got)` if given (it returns an exception
        instance) else with ChecksumError. verify(memoryview): any further check, run in the
        verify thread after all data arrived.
        """
        if self._closed:
            raise ValueError(f'Reader for {self.path} is closed')
        offset, length = int(offset), int(length)
        mv = as_memoryview(dest)
        if offset < 0 or length < 0:
            raise ValueError(f'{self.path}: negative offset/length {offset}/{length}')
        if mv.nbytes < length:
            raise ValueError(f'{self.path}: destination holds {mv.nbytes} bytes, '
                             f'read at offset {offset} needs {length}')
        if mv.readonly:
            raise ValueError(f'{self.path}: destination buffer is read-only')
        mv = mv[:length]
        if self.mode == 'direct':
            addr = address_of(mv)
            if offset % PAGE or length % PAGE or addr % PAGE:
                raise ValueError(
                    f'{self.path}: O_DIRECT read needs offset, length and buffer address aligned '
                    f'to {PAGE}: offset={offset} length={length} address={addr:#x}')
        fut = ReadFuture(offset, length)
        fut.set_running_or_notify_cancel()
        if not self._own_pool:
            with self._stats_lock:
                self._pending.add(fut)
            fut.add_done_callback(self._done)
        chunks = [(offset + a, mv[a:a + self.chunk_bytes])
                  for a in range(0, length, self.chunk_bytes)]
        req = _Request(fut, mv, chunks, expected_checksum, checksum_error, verify)
        if not chunks:
            fut.t_start = time.perf_counter()
            self._finish(req)
            return fut
        for k in range(len(chunks)):
            try:
                self._pool.submit(self._chunk, req, k)
            except RuntimeError as e:    # the pool is shut down (interpreter exit)
                self._unsent(req, len(chunks) - k, e)
                break
        return fut

    def _unsent(self, req, n, err):
        """Fail a request whose last `n` chunks never reach a thread (close() never waits)."""
        with req.lock:
            if req.error is None:
                req.error = err
            req.finished += n
            last = req.finished == len(req.chunks)
        if last:
            self._finish(req)

    def _done(self, fut):
        with self._stats_lock:
            self._pending.discard(fut)

    def _chunk(self, req, k):
        fut = req.fut
        with req.lock:
            if fut.t_start is None:
                fut.t_start = time.perf_counter()
            failed = req.error is not None
        if not failed:
            off, mv = req.chunks[k]
            self._begin()
            nbytes = 0
            try:
                self._read_fully(off, mv)
                nbytes = mv.nbytes
            except BaseException as e:  # noqa: B902 - handed to the waiting caller
                with req.lock:
                    if req.error is None:
                        req.error = e
            finally:
                self._end(nbytes)
        with req.lock:
            req.done[k] = True
            req.finished += 1
            last = req.finished == len(req.chunks)
            failed = req.error is not None
        if failed:
            if last:
                self._finish(req)
        elif req.hasher is not None or (last and req.verify is not None):
            self._verify_pool.submit(self._guarded, self._hash_ready, req)
        else:
            self._hash_ready(req)

    def _guarded(self, fn, req):
        try:
            fn(req)
        except BaseException as e:  # noqa: B902 - never lose a future in a pool thread
            if not req.fut.done():
                req.fut.set_exception(e)

    def _hash_ready(self, req):
        """Feed finished chunks to the hasher in file order; the one who ends it finishes."""
        n = len(req.chunks)
        while req.hash_lock.acquire(blocking=False):
            try:
                while True:
                    with req.lock:
                        k = req.next_hash
                        if k == n or not req.done[k] or req.error is not None:
                            break
                        req.next_hash += 1
                    if req.hasher is not None:
                        t0 = time.perf_counter()
                        req.hasher.update(req.chunks[k][1])
                        req.fut.verify_seconds += time.perf_counter() - t0
            finally:
                req.hash_lock.release()
            with req.lock:
                if req.next_hash == n:
                    if req.final:
                        return
                    req.final = True
                    break
                if req.error is not None or not req.done[req.next_hash]:
                    return      # the worker that finishes that chunk carries on
        else:
            return              # another worker holds the hash lock and will see our chunk
        self._finish(req)

    def _finish(self, req):
        fut = req.fut
        error = req.error
        if error is None and req.hasher is not None:
            fut.checksum = req.hasher.hexdigest()
            if fut.checksum != req.expected:
                error = (req.checksum_error(fut.checksum) if req.checksum_error is not None
                         else ChecksumError(self.path, fut.offset, fut.length, req.expected,
                                            fut.checksum))
        if error is None and req.verify is not None:
            t0 = time.perf_counter()
            try:
                req.verify(req.mv)
            except BaseException as e:  # noqa: B902 - handed to the waiting caller
                error = e
            fut.verify_seconds += time.perf_counter() - t0
        fut.t_end = time.perf_counter()
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    def _begin(self):
        with self._stats_lock:
            if self._in_flight == 0:
                self._busy_since = time.perf_counter()
            self._in_flight += 1

    def _end(self, nbytes):
        with self._stats_lock:
            self._in_flight -= 1
            self.bytes_read += nbytes
            if self._in_flight == 0:
                self.seconds += time.perf_counter() - self._busy_since

    def _throttle(self, nbytes):
        if not self.throttle_bytes_per_s:
            return
        with self._throttle_lock:
            now = time.perf_counter()
            start = max(now, self._throttle_next)
            self._throttle_next = start + nbytes / float(self.throttle_bytes_per_s)
            done_at = self._throttle_next
        delay = done_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _read_fully(self, offset, mv):
        """Read exactly len(mv) bytes at offset, retrying short reads."""
        length = mv.nbytes
        if self.fault_injector is not None:
            try:
                self.fault_injector(offset, length)
            except OSError as e:
                raise ReadError(e.errno or errno.EIO, f'injected fault: {e}', self.path,
                                offset, length) from e
        done = 0
        while done < length:
            pos = offset + done
            try:
                if self.mode == 'direct' and (pos % PAGE or (length - done) % PAGE):
                    # Only after a short read at the end of a file that is not a PAGE multiple.
                    n = self._read_unaligned_tail(pos, mv[done:])
                else:
                    n = os.preadv(self._fd, [mv[done:]], pos)
            except OSError as e:
                raise ReadError(e.errno, e.strerror or str(e), self.path, pos,
                                length - done) from e
            if n == 0:
                size = os.fstat(self._fd).st_size
                raise ReadError(errno.EIO, f'unexpected end of file (file size {size})',
                                self.path, pos, length - done)
            done += n
        if self.mode == 'buffered':
            os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_DONTNEED)
        self._throttle(length)

    def _read_unaligned_tail(self, pos, mv):
        fd = os.open(self.path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
        try:
            n = os.preadv(fd, [mv], pos)
            os.posix_fadvise(fd, pos, mv.nbytes, os.POSIX_FADV_DONTNEED)
            return n
        finally:
            os.close(fd)
