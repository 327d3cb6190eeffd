# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Reliability: a hard memory limit holds, storage faults cost a frame and not the model, no pickle.

A detector on a robot runs for hours beside other nodes. These tests use the real executor on a
real model (yolov3-tiny's COCO weights, and a seeded yolov3 for the memory budget): the budget
is proved inside a memory cgroup whose limit kills the plain model; read errors, a truncated or
replaced pack file, a slow disk and a byte flipped on disk after start-up are injected into a
running model, and each must fail only the frame it hit, with an error naming the unit, leave no
thread, file descriptor or arena byte behind, and never let wrong data reach the model. The
oracle for outputs is the fully resident model (torch.equal).
"""

import ast
import errno
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import threading
import time

from demand_layering_ros import direct_io
from demand_layering_ros import loading
from demand_layering_ros import pack as pack_mod
from demand_layering_ros.models import assets
from demand_layering_ros.runtime import errors
import pytest
from tools import cgroups
import torch

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
SIZE = 96                       # input side: small, so compute stays cheap on two cores
FIGURES = {}                    # name -> number, printed for the RELIABILITY section


def _figure(name, n=1):
    FIGURES[name] = FIGURES.get(name, 0) + n


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Write a pack of the real COCO yolov3-tiny; return it, an input and the oracle outputs."""
    _, weights, _ = assets.yolov3_tiny()
    out = tmp_path_factory.mktemp('rel') / 'yolov3-tiny'
    pack = pack_mod.write_pack('darknet:yolov3-tiny', out, weights=weights,
                               input_size=(SIZE, SIZE), progress=False)
    torch.manual_seed(0)
    x = torch.rand(1, 3, SIZE, SIZE)
    ref = loading.load_resident(out)
    with torch.no_grad():
        expected = ref(x)
    del ref
    return pack, x, expected


def _equal(out, expected):
    return len(out) == len(expected) and all(torch.equal(a, b) for a, b in zip(out, expected))


def _resources():
    return threading.active_count(), cgroups.open_fd_count()


def _thread_names():
    return sorted(t.name for t in threading.enumerate())


def _unit_at(pack, offset):
    for u in pack.units:
        if u.offset <= offset < u.end:
            return u
    raise AssertionError(f'offset {offset} is in no unit')


class Injector:
    """A switchable storage fault: raise EIO on chunk reads that match, count what it did."""

    def __init__(self):
        self.lock = threading.Lock()
        self.match = None           # callable(offset, length) -> bool
        self.failed = []            # offsets of the reads it failed
        self.calls = 0

    def arm(self, match):
        with self.lock:
            self.match, self.failed = match, []

    def disarm(self):
        with self.lock:
            self.match = None

    def __call__(self, offset, length):
        with self.lock:
            self.calls += 1
            if self.match is not None and self.match(offset, length):
                self.failed.append(offset)
                raise OSError(errno.EIO, 'Input/output error (injected)')


def _until_error(model, x, expected, tries=2):
    """
    Run frames until one fails; return its exception.

    The loader starts reading the next pass's first units as soon as a pass ends, so a fault
    armed between frames may first hit the frame after next; a frame that still succeeds must
    be exact (its bytes were read and verified before the fault).
    """
    for _ in range(tries):
        try:
            out = model(x)
        except Exception as e:   # noqa: B902 - the caller checks what it is
            return e
        assert _equal(out, expected), 'a frame after the fault returned wrong outputs'
    raise AssertionError(f'no frame failed in {tries} tries')


def _message(err):
    """Return the error with its causes, as text."""
    parts = []
    while err is not None:
        parts.append(f'{type(err).__name__}: {err}')
        err = err.__cause__ or err.__context__
    return ' <- '.join(parts)


def _after(n):
    """Match the n-th chunk read from now on (and every later one until disarmed)."""
    state = {'seen': 0}

    def match(offset, length):
        state['seen'] += 1
        return state['seen'] > n
    return match


# ------------------------------------------------------------------------------ storage faults

def test_read_error_in_each_unit_fails_that_frame_then_recovers(tiny):
    pack, x, expected = tiny
    before = _resources()
    inj = Injector()
    model = loading.load(pack.path, fault_injector=inj)
    try:
        assert _equal(model(x), expected)
        committed = model.stats()['arena_committed_bytes']
        fds = cgroups.open_fd_count()
        # loader thread + two readers (streaming, and demand misses) of 2 lazily started workers
        max_threads = before[0] + 1 + 2 * 2
        names_before = _thread_names()
        for unit in pack.units:
            inj.arm(lambda off, n, u=unit: u.offset <= off < u.end)
            err = _until_error(model, x, expected)
            _figure('storage faults injected (read errors)')
            assert inj.failed, f'no read of unit {unit.name} happened in the pass'
            message = _message(err)
            assert unit.name in message, f'error does not name unit {unit.name}: {message}'
            inj.disarm()
            assert _equal(model(x), expected), f'wrong output after a fault in {unit.name}'
            _figure('frames recovered after a fault')
            assert threading.active_count() <= max_threads, (names_before, _thread_names())
            assert cgroups.open_fd_count() == fds
        # a fault in the middle of the pass, whatever unit that is
        inj.arm(_after(len(pack.units) // 2))
        err = _until_error(model, x, expected)
        failed_unit = _unit_at(pack, inj.failed[0])
        assert failed_unit.name in _message(err), _message(err)
        inj.disarm()
        for _ in range(3):
            assert _equal(model(x), expected)
        assert model.stats()['arena_committed_bytes'] == committed
        assert threading.active_count() <= max_threads, (names_before, _thread_names())
        assert cgroups.open_fd_count() == fds
    finally:
        model.close()
    assert _resources() == before


def test_truncated_then_restored_pack_file(tiny, tmp_path):
    pack, x, expected = tiny
    path = tmp_path / 'p'
    shutil.copytree(pack.path, path)
    wfile = path / pack_mod.WEIGHTS_FILE
    original = wfile.read_bytes()
    before = _resources()
    model = loading.load(path)
    try:
        assert _equal(model(x), expected)
        cut = pack.units[len(pack.units) // 2].offset + 8192
        os.truncate(wfile, cut)
        _figure('storage faults injected (truncation)')
        err = _until_error(model, x, expected)
        cut_unit = _unit_at(pack, cut)
        message = _message(err)
        assert any(u.name in message for u in pack.units if u.end > cut), \
            f'error names no unit past the cut at {cut} ({cut_unit.name}): {message}'
        with open(wfile, 'r+b') as f:        # the same inode: the model's open file sees it
            f.write(original)
            os.fsync(f.fileno())
        for _ in range(2):
            assert _equal(model(x), expected)
    finally:
        model.close()
    assert _resources() == before


def test_replaced_pack_file_never_feeds_wrong_weights(tiny, tmp_path):
    pack, x, expected = tiny
    path = tmp_path / 'p'
    shutil.copytree(pack.path, path)
    wfile = path / pack_mod.WEIGHTS_FILE
    original = wfile.read_bytes()
    model = loading.load(path)
    try:
        assert _equal(model(x), expected)
        junk = bytearray(original)
        for u in pack.units:                  # same size and header, every unit damaged
            junk[u.offset + u.length // 2] ^= 0xFF
        tmp = path / 'junk.tmp'
        tmp.write_bytes(bytes(junk))
        os.replace(tmp, wfile)
        _figure('storage faults injected (file replaced)')
        for _ in range(2):
            try:
                out = model(x)
            except Exception as e:   # noqa: B902 - any failure is fine if it names a unit
                assert any(u.name in _message(e) for u in pack.units), _message(e)
            else:
                assert _equal(out, expected), 'the replaced file fed wrong weights to the model'
        tmp.write_bytes(original)
        os.replace(tmp, wfile)
        assert _equal(model(x), expected)
    finally:
        model.close()


def test_byte_flipped_on_disk_after_start_is_caught_at_read_time(tiny, tmp_path):
    pack, x, expected = tiny
    path = tmp_path / 'p'
    shutil.copytree(pack.path, path)
    wfile = path / pack_mod.WEIGHTS_FILE
    model = loading.load(path)
    try:
        assert _equal(model(x), expected)
        for unit in (pack.units[0], pack.units[len(pack.units) // 2], pack.units[-1]):
            pos = unit.offset + unit.nbytes // 2
            fd = os.open(wfile, os.O_RDWR)
            try:
                old = os.pread(fd, 1, pos)
                os.pwrite(fd, bytes([old[0] ^ 0x40]), pos)
                os.fsync(fd)
                _figure('bytes flipped on disk')
                err = _until_error(model, x, expected)
                assert isinstance(err, pack_mod.PackError), _message(err)
                assert err.unit == unit.name and err.offset == unit.offset, str(err)
                assert 'checksum' in str(err) and unit.name in str(err)
                os.pwrite(fd, old, pos)
                os.fsync(fd)
            finally:
                os.close(fd)
            assert _equal(model(x), expected)
    finally:
        model.close()


def test_resident_units_keep_their_verified_bytes_when_the_disk_changes(tiny, tmp_path):
    pack, x, expected = tiny
    path = tmp_path / 'p'
    shutil.copytree(pack.path, path)
    wfile = path / pack_mod.WEIGHTS_FILE
    model = loading.load(path, budget_mb=pack.total_bytes / MIB + 1)
    try:
        assert model.stats()['streamed_units'] == 0
        assert _equal(model(x), expected)
        with open(wfile, 'r+b') as f:
            f.seek(pack.units[0].offset + 100)
            f.write(b'\x55' * 64)
        io = model.stats()['io_bytes']
        for _ in range(2):
            assert _equal(model(x), expected)
        assert model.stats()['io_bytes'] == io      # nothing was re-read
    finally:
        model.close()


def test_slow_disk_is_slower_but_exact(tiny):
    pack, x, expected = tiny
    rate = 200 * MIB                                       # ~0.18 s for this 35 MiB model
    model = loading.load(pack.path, throttle_bytes_per_s=rate)
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            out = model(x)
            took = time.perf_counter() - t0
            assert _equal(out, expected)
        # a full pass must read every streamed byte at no more than `rate`
        streamed = sum(u.length for u in pack.units)
        assert took >= 0.9 * streamed / rate, f'{took:.3f} s for {streamed} bytes at {rate}/s'
        _figure('frames on a throttled reader', 2)
    finally:
        model.close()


def test_reader_fault_hook_and_leaks_at_the_reader_level(tiny):
    """The same contract one level down: Reader + Pack.read_unit."""
    pack = tiny[0]
    before = _resources()
    inj = Injector()
    unit = max(pack.units, key=lambda u: u.length)
    with pack.reader(fault_injector=inj, threads=2) as reader:
        buf = direct_io.aligned_empty(unit.length)
        inj.arm(_after(0))
        with pytest.raises(OSError) as err:
            pack.read_unit(reader, unit, buf).result()
        assert str(pack.weights_path) in str(err.value) and err.value.errno == errno.EIO
        inj.disarm()
        pack.read_unit(reader, unit, buf).result()       # checksum verified in the worker
    assert _resources() == before


def test_a_program_that_forgets_close_still_exits(tiny):
    """Interpreter shutdown with a streaming model still open must not hang."""
    code = ('import sys, torch\n'
            'import demand_layering_ros as dlr\n'
            'model = dlr.load(sys.argv[1])\n'
            'for _ in range(2):\n'
            '    model(torch.rand(1, 3, %d, %d))\n'
            "print('frames done', flush=True)\n" % (SIZE, SIZE))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run([sys.executable, '-c', code, str(tiny[0].path)], env=env,
                              capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'the process hung at exit after: {e.stdout!r}')
    assert 'frames done' in proc.stdout and proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------------------ memory budget

CHILD = r"""
from demand_layering_ros import loading
from demand_layering_ros.pack import Pack
import json, sys, time
from tools import cgroups
import torch
import xxhash
mode, pack_dir, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
x = torch.rand(1, 3, int(sys.argv[4]), int(sys.argv[4]))
pack = Pack.open(pack_dir)
pack.build_detector(meta=True)
out, stats = None, {}
if mode == 'resident':
    model = loading.load_resident(pack)
elif mode == 'stream':
    model = loading.load(pack)
if mode != 'base':
    with torch.no_grad():
        for _ in range(frames):
            out = model(x)
    if mode == 'stream':
        stats = {k: v for k, v in model.stats().items() if k != 'timeline'}
        model.close()
h = xxhash.xxh3_64()
for t in out or []:
    h.update(t.contiguous().numpy().tobytes())
print(json.dumps({'hash': h.hexdigest(), 'stats': stats, 'rss': cgroups.process_rss()}))
"""


@pytest.fixture(scope='module')
def big_pack(tmp_path_factory):
    """Write a seeded yolov3 pack (248 MB): weights dominate the process, so limits bite."""
    out = tmp_path_factory.mktemp('budget') / 'yolov3'
    pack = pack_mod.write_pack('darknet:yolov3', out, seed=0, input_size=(SIZE, SIZE),
                               progress=False, verify=False)
    yield pack
    shutil.rmtree(out, ignore_errors=True)


def _child(mode, pack, limit=None, frames=2):
    cgroups.evict_file(pack.weights_path)      # nothing pre-charged to another cgroup
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=str(ROOT))
    res = cgroups.run_in_cgroup([sys.executable, '-c', CHILD, mode, str(pack.path),
                                 str(frames), str(SIZE)],
                                limit_bytes=limit, timeout=240, env=env, cwd=str(ROOT))
    data = json.loads(res.stdout.strip().splitlines()[-1]) if res.ok else None
    return res, data


def test_budget_holds_under_a_hard_limit_that_kills_the_resident_model(big_pack):
    avail = cgroups.cgroups_available()
    if not avail:
        pytest.skip(f'memory cgroups: {avail.reason}')
    probe = loading.load(big_pack.path)
    weight_peak = probe.stats()['arena_bytes'] + probe.stats()['resident_bytes']
    probe.close()
    model_bytes = big_pack.total_bytes

    base, _ = _child('base', big_pack)
    assert base.ok, base.stderr[-3000:]
    resident, res_data = _child('resident', big_pack)
    assert resident.ok, resident.stderr[-3000:]
    # activations and allocator slack of a forward pass: what the resident run needed beyond
    # the imports and its weights
    activations = max(0, resident.peak_bytes - base.peak_bytes - model_bytes)
    margin = 48 * MIB
    predicted = base.peak_bytes + weight_peak + activations
    limit = predicted + margin
    assert limit < resident.peak_bytes - 64 * MIB, (
        f'the test premise fails: limit {limit / MIB:.0f} MiB is not well below the resident '
        f'peak {resident.peak_bytes / MIB:.0f} MiB')

    stream, stream_data = _child('stream', big_pack, limit=limit)
    assert stream.ok, f'streamed run under {limit / MIB:.0f} MiB: {stream.summary()}\n' \
                      f'{stream.stderr[-3000:]}'
    assert stream_data['hash'] == res_data['hash'], 'streamed output differs from resident'
    assert stream.peak_bytes <= limit
    # page cache cannot hide weights: streaming adds no cache beyond what the imports bring,
    # and no page of the weights file stays cached
    assert stream_data['stats']['io_mode'] == 'direct', stream_data['stats']
    assert stream.peak_cache_bytes - base.peak_cache_bytes < 32 * MIB, \
        f'{stream.summary()} vs imports only: {base.summary()}'
    assert cgroups.file_cached_bytes(big_pack.weights_path) < MIB
    assert stream_data['stats']['peak_weight_bytes'] <= weight_peak

    killed, _ = _child('resident', big_pack, limit=limit)
    assert killed.oom_killed and not killed.ok, killed.summary()

    FIGURES.update({
        'budget: model MiB': round(model_bytes / MIB, 1),
        'budget: limit MiB': round(limit / MIB, 1),
        'budget: margin MiB': round(margin / MIB, 1),
        'budget: streamed peak MiB': round(stream.peak_bytes / MIB, 1),
        'budget: streamed page cache peak MiB': round(stream.peak_cache_bytes / MIB, 1),
        'budget: imports-only page cache peak MiB': round(base.peak_cache_bytes / MIB, 1),
        'budget: imports-only peak MiB': round(base.peak_bytes / MIB, 1),
        'budget: resident peak MiB (no limit)': round(resident.peak_bytes / MIB, 1),
        'budget: resident under the limit': 'OOM-killed' if killed.oom_killed else 'survived',
    })


def _node_in_cgroup(pack, limit=None, plan_file=None, frames=2, timeout=180, params=()):
    """
    Run the detector node executable in a memory cgroup and send it `frames` frames over DDS.

    Returns (CgroupResult, frames answered). The node is stopped with SIGINT once it answered
    them all (or when it died, or after `timeout`).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray
    domain = 100 + (os.getpid() * 17 + 3) % 100
    args = [sys.executable, '-m', 'demand_layering_ros.ros.node', '--ros-args',
            '-p', f'pack_path:={pack.path}', '-p', "image_topics:=['/bud/image_raw']",
            '-p', 'qos_reliability:=reliable']
    if plan_file:
        args += ['-p', f'plan_file:={plan_file}']
    for p in params:
        args += ['-p', p]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), OMP_NUM_THREADS='2',
               PYTHONPATH=os.pathsep.join(
                   p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))
    cgroups.evict_file(pack.weights_path)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    client = rclpy.create_node('budget_client', context=ctx)
    spinner = SingleThreadedExecutor(context=ctx)
    spinner.add_node(client)
    got = []
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    client.create_subscription(Detection2DArray, '/bud/detections', got.append, qos)
    pub = client.create_publisher(Image, '/bud/image_raw', qos)
    answered = 0
    try:
        with cgroups.start_in_cgroup(args, limit, env=env, cwd=str(ROOT)) as proc:
            end = time.monotonic() + timeout
            while answered < frames and proc.running() and time.monotonic() < end:
                msg = Image(height=SIZE, width=SIZE, encoding='rgb8', step=SIZE * 3)
                msg.data = bytes(SIZE * SIZE * 3)
                msg.header.frame_id = f'b{answered}'
                pub.publish(msg)
                t = time.monotonic() + 2.0
                while time.monotonic() < t and proc.running():
                    spinner.spin_once(timeout_sec=0.05)
                    if any(m.header.frame_id == f'b{answered}' for m in got):
                        answered += 1
                        break
            proc.send_signal(signal.SIGINT)
            res = proc.wait(timeout=60)
    finally:
        spinner.shutdown()
        client.destroy_node()
        ctx.try_shutdown()
    return res, answered


def test_node_budget_holds_under_a_hard_limit_that_kills_the_resident_node(big_pack, tmp_path):
    avail = cgroups.cgroups_available()
    if not avail:
        pytest.skip(f'memory cgroups: {avail.reason}')
    pytest.importorskip('rclpy')
    probe = loading.load(big_pack.path)
    weight_peak = probe.stats()['arena_bytes'] + probe.stats()['resident_bytes']
    probe.close()
    free, answered = _node_in_cgroup(big_pack)
    assert answered == 2 and free.returncode == 0, f'{free.summary()}\n{free.stderr[-3000:]}'
    # Room above the streaming node's own peak for what configure does once: profiling the pack
    # within the budget when there is no PROFILE.json (below) peaked 51 MiB above serving
    # (390 vs 339 MiB). 48 MiB used to pass while both processes carried torchvision's 85 MiB,
    # which the first detection imported (and of which part was reclaimable); Darknet packs no
    # longer import it.
    margin = 64 * MIB
    limit = free.peak_bytes + margin
    # the resident node needs all weights where the streaming one needs its arena
    assert limit < free.peak_bytes - weight_peak + big_pack.total_bytes - 64 * MIB

    held, answered = _node_in_cgroup(big_pack, limit)
    assert answered == 2 and held.returncode == 0 and not held.oom_killed, \
        f'{held.summary()}\n{held.stderr[-3000:]}'
    # a budget and no PROFILE.json: the node profiles the pack streamed within the budget (a
    # resident profile would be killed by this limit), plans with it and saves it
    saved = big_pack.path / 'PROFILE.json'
    assert not saved.exists()
    budget = (weight_peak + 16 * MIB) / MIB
    budgeted, answered = _node_in_cgroup(big_pack, limit, timeout=240,
                                         params=[f'memory_budget_mb:={budget:.1f}'])
    assert answered == 2 and budgeted.returncode == 0 and not budgeted.oom_killed, \
        f'{budgeted.summary()}\n{budgeted.stderr[-3000:]}'
    assert 'streamed within memory_budget_mb' in budgeted.stderr, budgeted.stderr[-3000:]
    from demand_layering_ros.planning import timing
    prof = timing.load_profile(saved)
    assert prof['mode'] == 'streamed' and prof['peak_weight_bytes'] <= budget * MIB
    saved.unlink()
    plan = tmp_path / 'resident.yaml'
    plan.write_text(json.dumps({'resident_units': [u.name for u in big_pack.units],
                                'arena_bytes': 0}))
    killed, answered = _node_in_cgroup(big_pack, limit, plan_file=plan, frames=1, timeout=120)
    assert killed.oom_killed and answered == 0, f'{killed.summary()}\n{killed.stderr[-3000:]}'
    # a deadline and no budget: profiled once at configure and saved for the next start
    timed, answered = _node_in_cgroup(big_pack, params=['deadline_ms:=60000.0'], timeout=240)
    assert answered == 2 and timed.returncode == 0, f'{timed.summary()}\n{timed.stderr[-3000:]}'
    assert saved.is_file() and 'saved the profile' in timed.stderr, timed.stderr[-3000:]
    prof = timing.load_profile(saved)
    assert prof['mode'] == 'resident' and prof['steps']['busy_ms']
    saved.unlink()
    FIGURES.update({
        'node budget: limit MiB': round(limit / MIB, 1),
        'node budget: streamed node peak MiB (no limit)': round(free.peak_bytes / MIB, 1),
        'node budget: streamed node peak MiB (under the limit)': round(held.peak_bytes / MIB, 1),
        'node budget: resident node under the limit': 'OOM-killed',
    })


# ------------------------------------------------------------------------------ security

class _Evil:
    """Unpickling this creates the file `path` (what an attacker's payload would run)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.fixture()
def evil(tmp_path):
    """Write a .pt 'weights' file whose unpickling creates a marker file."""
    path, marker = tmp_path / 'weights.pt', tmp_path / 'PWNED'
    torch.save({'conv.weight': _Evil(marker)}, path)      # saving runs nothing
    # the payload is live: an unsafe load does run it (so the test below can fail)
    torch.load(path, weights_only=False)
    assert marker.exists(), 'the pickle payload did not work; the test would prove nothing'
    marker.unlink()
    return path, marker


def test_pickle_disguised_as_weights_is_refused_everywhere(evil, tiny, tmp_path):
    path, marker = evil
    from demand_layering_ros.models import detector, registry
    with pytest.raises(ValueError, match='weights_only'):
        detector.load_state_dict_file(path)
    with pytest.raises(Exception):
        registry.build('darknet:yolov3-tiny', weights=str(path))
    try:
        registry.build('torchvision:fasterrcnn_mobilenet_v3_large_fpn', weights=str(path),
                       input_size=(64, 64))
    except Exception as e:   # noqa: B902 - any refusal; only the marker matters below
        assert 'PWNED' not in str(e)
    else:
        pytest.fail('a pickle was accepted as torchvision weights')
    for target in (pack_mod.WEIGHTS_FILE, pack_mod.MANIFEST_FILE, pack_mod.EXTRA_FILE):
        bad = tmp_path / f'pack-{target}'
        shutil.copytree(tiny[0].path, bad)
        shutil.copyfile(path, bad / target)
        if target == pack_mod.EXTRA_FILE:
            m = json.loads((bad / pack_mod.MANIFEST_FILE).read_text())
            m['extra_buffers_file'] = target
            (bad / pack_mod.MANIFEST_FILE).write_text(json.dumps(m))
        with pytest.raises(Exception):
            loading.load_resident(bad)
        with pytest.raises(Exception):
            loading.load(bad)
    assert not marker.exists(), 'a load path unpickled the payload'


def _unsafe_calls(tree):
    """Yield (line, text) for calls that can unpickle or execute data."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, 'module', None) or '']
            if any(n.split('.')[0] in ('pickle', 'cPickle', 'dill', 'marshal', 'shelve')
                   for n in names):
                yield node.lineno, 'imports a pickle-like module'
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
        owner = getattr(f.value, 'id', '') if isinstance(f, ast.Attribute) else ''
        kw = {k.arg: k.value for k in node.keywords}
        if owner == 'torch' and name == 'load':
            wo = kw.get('weights_only')
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                yield node.lineno, 'torch.load without weights_only=True'
        if owner in ('np', 'numpy') and name == 'load':
            ap = kw.get('allow_pickle')
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                yield node.lineno, 'np.load with allow_pickle'
        if owner == 'yaml' and name in ('load', 'unsafe_load', 'full_load', 'load_all'):
            yield node.lineno, f'yaml.{name} (use yaml.safe_load)'
        if isinstance(f, ast.Name) and name in ('eval', 'exec'):
            yield node.lineno, f'{name}()'


def test_no_load_path_can_unpickle():
    bad = []
    for path in sorted((ROOT / 'demand_layering_ros').rglob('*.py')):
        tree = ast.parse(path.read_text(), str(path))
        bad += [f'{path.name}:{line}: {what}' for line, what in _unsafe_calls(tree)]
    assert not bad, bad
    # the checker itself sees what it must
    probe = ast.parse('import pickle\ntorch.load(f)\ntorch.load(f, weights_only=False)\n'
                      'yaml.load(s)\nnp.load(f, allow_pickle=True)\neval(s)\n')
    assert len(list(_unsafe_calls(probe))) == 6


def test_manifest_names_cannot_escape_the_pack(tiny, tmp_path):
    src = tiny[0].path
    outside = tmp_path / 'outside.safetensors'
    shutil.copyfile(src / pack_mod.WEIGHTS_FILE, outside)

    def attempt(name, edit):
        d = tmp_path / name
        shutil.copytree(src, d)
        m = json.loads((d / pack_mod.MANIFEST_FILE).read_text())
        edit(d, m)
        (d / pack_mod.MANIFEST_FILE).write_text(json.dumps(m))
        with pytest.raises(pack_mod.PackError) as err:
            pack_mod.Pack.open(d)
        _figure('path escapes refused')
        return str(err.value)

    attempt('rel', lambda d, m: m.update(weights_file='../outside.safetensors'))
    attempt('abs', lambda d, m: m.update(weights_file=str(outside)))
    attempt('sub', lambda d, m: m.update(weights_file='x/../../outside.safetensors'))
    attempt('cfg', lambda d, m: m.update(model_files={'model.cfg': '../../etc/passwd'}))
    attempt('extra', lambda d, m: m.update(extra_buffers_file='/etc/passwd'))

    def symlink(d, m):
        (d / pack_mod.WEIGHTS_FILE).unlink()
        os.symlink(outside, d / pack_mod.WEIGHTS_FILE)
    msg = attempt('link', symlink)
    assert 'outside' in msg

    def tensor_name(d, m):
        m['units'][0]['tensors'][0]['name'] = '../../x'
    attempt('tensor', tensor_name)


def test_invalid_parameters_are_refused_before_use(tiny):
    pack = tiny[0]
    from demand_layering_ros.models import registry
    before = _resources()
    for bad in (-1, 0, float('nan'), 'ten', True):
        with pytest.raises(errors.ExecutorError, match='budget_mb'):
            loading.load(pack.path, budget_mb=bad)
    for plan in ({'arena_bytes': -4096}, {'prefetch_depth': 'x'}, {'staging': 'mmap'},
                 {'resident_units': 'layers.0'}, ['not', 'a', 'mapping']):
        with pytest.raises(errors.ExecutorError):
            loading.load(pack.path, plan=plan)
    for opts in ({'staging': 'bogus'}, {'device': 'tpu'}, {'split_bytes': -1},
                 {'prefetch_depth': -2}, {'threads': 'two'}):
        with pytest.raises((errors.ExecutorError, ValueError), match=list(opts)[0]):
            loading.load(pack.path, **opts)
    with pytest.raises(ValueError):
        direct_io.aligned_empty(-1)
    with pytest.raises(ValueError):
        registry.parse_input_size('0x416')
    with pytest.raises(ValueError):
        cgroups.MemoryCgroup(limit_bytes=1) if cgroups.cgroups_available() else \
            cgroups.run_in_cgroup([])
    assert _resources() == before, 'a refused load left threads or files open'


def test_zz_figures_add_up():
    """Every fault injected was answered by a recovered frame; print the figures (RELIABILITY)."""
    if not FIGURES:
        pytest.skip('no figure-producing test ran in this session')
    print('\nreliability figures:', json.dumps(FIGURES, sort_keys=True))
    injected = FIGURES.get('storage faults injected (read errors)')
    if injected is not None:
        assert FIGURES.get('frames recovered after a fault') == injected, FIGURES
    if os.environ.get('DLR_RELIABILITY_FIGURES'):
        Path(os.environ['DLR_RELIABILITY_FIGURES']).write_text(json.dumps(FIGURES, indent=1))
