# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The streaming reader: aligned buffers, O_DIRECT, the buffered fallback, errors, page cache.

Page-cache residency is measured per file with mincore(2) (not /proc/meminfo, which other
processes disturb), so the tests can tell a reader that leaves pages behind from one that does not.
"""

import ctypes
import errno
import fcntl
import gc
import mmap
import os
from pathlib import Path
import shutil
import subprocess
import tempfile
import threading
import time

from demand_layering_ros import direct_io
from demand_layering_ros.direct_io import aligned_empty, PAGE, Reader, ReadError
import pytest
import torch

_libc = ctypes.CDLL(None, use_errno=True)


def cached_pages(path):
    """Return (resident, total) page-cache pages of a file, via mmap + mincore."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    with open(path, 'rb') as f:
        m = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        npages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * npages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        rc = _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec)
        assert rc == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vec), npages
    finally:
        del addr
        m.close()


def drop_file_cache(path):
    """Write back and drop one file's cached pages (only that file, not the machine's cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_file(path, nbytes, seed=0):
    data = torch.randint(0, 256, (nbytes,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))
    Path(path).write_bytes(data.numpy().tobytes())
    return data


def test_aligned_empty_is_page_aligned_and_outlives_its_mmap():
    for n in (0, 1, 4095, 4096, 3 * 4096 + 5):
        t = aligned_empty(n)
        assert t.dtype == torch.uint8 and t.numel() == n
        assert t.data_ptr() % PAGE == 0
    t = aligned_empty(3 * PAGE)
    part = t[PAGE:]
    del t
    gc.collect()
    part.fill_(7)      # the mmap must still be mapped
    assert int(part.sum()) == 7 * 2 * PAGE


@pytest.mark.skipif(not torch.cuda.is_available(), reason='pinned memory needs CUDA')
def test_aligned_empty_pinned():
    t = aligned_empty(5 * PAGE + 3, pin=True)
    assert t.is_pinned() and t.data_ptr() % PAGE == 0 and t.numel() == 5 * PAGE + 3


def test_direct_mode_reads_exact_bytes_with_o_direct(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 6 * (1 << 20) + 3 * PAGE)
    with Reader(path, threads=3, chunk_bytes=1 << 20) as r:
        assert r.mode == 'direct' and r.fallback_reason is None
        assert fcntl.fcntl(r._fd, fcntl.F_GETFL) & os.O_DIRECT
        dest = aligned_empty(data.numel())
        r.read_into(0, data.numel(), dest)
        assert torch.equal(dest, data)
        # unit-like pieces at aligned offsets, queued together
        sub = aligned_empty(5 * PAGE)
        futs = [r.submit(k * PAGE, PAGE, sub[(k - 3) * PAGE:(k - 2) * PAGE])
                for k in range(3, 8)]
        for f in futs:
            f.result()
            assert f.t_start is not None and f.t_end >= f.t_start
        assert torch.equal(sub, data[3 * PAGE:8 * PAGE])
        assert r.bytes_read == data.numel() + 5 * PAGE
        assert r.seconds > 0
        with pytest.raises(ValueError, match='aligned'):
            r.read_into(100, PAGE, dest)
        with pytest.raises(ValueError, match='aligned'):
            r.read_into(0, PAGE, dest[1:PAGE + 1])


def test_reads_leave_no_page_cache(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 4 << 20)
    dest = aligned_empty(data.numel())
    drop_file_cache(path)
    assert cached_pages(path)[0] == 0
    with Reader(path, direct=True) as r:
        r.read_into(0, data.numel(), dest)
    assert torch.equal(dest, data) and cached_pages(path)[0] == 0
    with Reader(path, direct=False) as r:
        assert r.mode == 'buffered' and 'direct=False' in r.fallback_reason
        dest.zero_()
        r.read_into(0, data.numel(), dest)
    assert torch.equal(dest, data) and cached_pages(path)[0] == 0
    # the measurement itself can see cached pages: a plain read leaves them behind
    path.read_bytes()
    assert cached_pages(path)[0] == cached_pages(path)[1]
    drop_file_cache(path)


@pytest.fixture
def no_direct_dir():
    """Yield a directory on a file system that refuses O_DIRECT (ramfs mount, else tmpfs)."""
    def refuses(d):
        probe = Path(d) / '.probe'
        probe.write_bytes(b'x' * PAGE)
        try:
            os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
            return False
        except OSError as e:
            return e.errno == errno.EINVAL
        finally:
            probe.unlink()

    mnt = tempfile.mkdtemp(prefix='dlr-ramfs-')
    mounted = False
    if os.geteuid() == 0 and shutil.which('mount'):
        mounted = subprocess.run(['mount', '-t', 'ramfs', 'ramfs', mnt],
                                 capture_output=True).returncode == 0
    try:
        if mounted and refuses(mnt):
            yield Path(mnt)
        elif os.path.isdir('/dev/shm') and refuses('/dev/shm'):
            d = Path(tempfile.mkdtemp(dir='/dev/shm'))
            yield d
            shutil.rmtree(d)
        else:
            pytest.skip('no file system here refuses O_DIRECT (tmpfs accepts it since Linux 6.6; '
                        'mounting ramfs needs root)')
    finally:
        if mounted:
            subprocess.run(['umount', mnt], check=True)
        os.rmdir(mnt)


def test_fallback_to_buffered_where_o_direct_is_refused(no_direct_dir):
    path = no_direct_dir / 'data.bin'
    data = make_file(path, 2 << 20)
    with Reader(path) as r:
        assert r.mode == 'buffered'
        assert 'O_DIRECT' in r.fallback_reason and str(path) in r.fallback_reason
        assert not fcntl.fcntl(r._fd, fcntl.F_GETFL) & os.O_DIRECT
        dest = bytearray(data.numel())          # buffered mode takes any buffer
        r.read_into(0, data.numel(), dest)
    assert bytes(dest) == data.numpy().tobytes()


def test_read_past_end_raises_read_error_with_offset(tmp_path):
    path = tmp_path / 'short.bin'
    make_file(path, 2 * PAGE + 100)
    dest = aligned_empty(4 * PAGE)
    for direct in (True, False):
        with Reader(path, direct=direct) as r:
            with pytest.raises(ReadError, match=r'offset (8292|8192)') as e:
                r.read_into(PAGE, 3 * PAGE, dest)
            assert isinstance(e.value, OSError) and e.value.filename == str(path)
            # what exists was read, the tail past EOF is reported
            assert e.value.offset in (2 * PAGE, 2 * PAGE + 100)


def test_fault_injector_error_names_offset_and_reader_recovers(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 8 * PAGE)
    bad = {'offset': 4 * PAGE}

    def injector(offset, length):
        if offset <= bad['offset'] < offset + length:
            raise OSError(errno.EIO, 'simulated media error')

    with Reader(path, threads=2, chunk_bytes=2 * PAGE, fault_injector=injector) as r:
        dest = aligned_empty(8 * PAGE)
        with pytest.raises(ReadError, match=f'offset {4 * PAGE}') as e:
            r.read_into(0, 8 * PAGE, dest)
        assert e.value.errno == errno.EIO and 'simulated media error' in str(e.value)
        bad['offset'] = -1
        r.read_into(0, 8 * PAGE, dest)
        assert torch.equal(dest, data)


def test_a_read_the_shut_down_pool_refuses_fails_and_close_does_not_wait(tmp_path):
    # At interpreter exit Python shuts every thread pool down while the loader may still read
    # ahead: the future must fail, not stay pending for close() to wait on for ever.
    path = tmp_path / 'data.bin'
    make_file(path, 8 * PAGE)
    pool = direct_io.ReadPool(2)
    r = Reader(path, chunk_bytes=2 * PAGE, pool=pool)
    pool.pool.shutdown(wait=True)
    fut = r.submit(0, 8 * PAGE, aligned_empty(8 * PAGE))
    assert isinstance(fut.exception(timeout=5), RuntimeError)
    closer = threading.Thread(target=r.close)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), 'Reader.close() waits for a read that never started'
    pool.close()


def test_verify_runs_in_worker_and_its_error_reaches_the_caller(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 4 * PAGE)
    expected = direct_io.checksum(data)
    assert expected == direct_io.checksum(data.numpy().tobytes())
    seen = []

    def verify(mv):
        assert threading.current_thread().name.startswith('dlr-verify')
        seen.append(direct_io.checksum(mv))
        if seen[-1] != expected:
            raise ValueError('checksum mismatch')

    with Reader(path) as r:
        dest = aligned_empty(4 * PAGE)
        f = r.submit(0, 4 * PAGE, dest, verify=verify)
        f.result()
        assert seen == [expected] and f.verify_seconds >= 0
        f = r.submit(PAGE, 3 * PAGE, dest, verify=verify)
        with pytest.raises(ValueError, match='checksum mismatch'):
            f.result()


def test_throttle_limits_rate(tmp_path):
    path = tmp_path / 'data.bin'
    make_file(path, 1 << 20)
    with Reader(path, throttle_bytes_per_s=10 << 20, chunk_bytes=256 << 10) as r:
        dest = aligned_empty(1 << 20)
        t0 = time.perf_counter()
        r.read_into(0, 1 << 20, dest)
        assert time.perf_counter() - t0 >= 0.09     # 1 MiB at 10 MiB/s


def test_streaming_checksum_in_file_order_across_threads(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 3 << 20)
    gen = torch.Generator().manual_seed(5)
    for threads, chunk in ((1, PAGE), (3, 2 * PAGE), (4, 64 << 10)):
        with Reader(path, threads=threads, chunk_bytes=chunk) as r:
            futs = []
            for _ in range(20):
                a = int(torch.randint(0, data.numel() // PAGE, (1,), generator=gen))
                b = int(torch.randint(a, data.numel() // PAGE + 1, (1,), generator=gen))
                dest = aligned_empty((b - a) * PAGE)
                want = direct_io.checksum(data[a * PAGE:b * PAGE])
                futs.append((r.submit(a * PAGE, (b - a) * PAGE, dest, expected_checksum=want),
                             dest, a, b, want))
            for f, dest, a, b, want in futs:
                f.result(timeout=30)
                assert f.checksum == want
                assert torch.equal(dest, data[a * PAGE:b * PAGE])
            dest = aligned_empty(data.numel())
            with pytest.raises(direct_io.ChecksumError, match='checksum mismatch') as e:
                r.read_into(0, data.numel(), dest, expected_checksum='0' * 16)
            assert e.value.offset == 0 and e.value.got == direct_io.checksum(data)


def test_read_error_wins_over_checksum_and_never_hangs(tmp_path):
    path = tmp_path / 'data.bin'
    data = make_file(path, 64 * PAGE)

    def injector(offset, length):
        if offset == 40 * PAGE:
            raise OSError(errno.EIO, 'bad block')

    with Reader(path, threads=3, chunk_bytes=4 * PAGE, fault_injector=injector) as r:
        dest = aligned_empty(data.numel())
        f = r.submit(0, data.numel(), dest, expected_checksum=direct_io.checksum(data))
        with pytest.raises(ReadError, match=f'offset {40 * PAGE}'):
            f.result(timeout=30)
