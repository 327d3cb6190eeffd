# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Measure on this machine what a plan's latency and memory depend on (PROFILE.json).

The planner predicts a plan by replaying one pass, so its inputs must be measured where the
model will run: each call's compute time with the model fully resident (on camera-like pixels:
a flat image runs some nets 20% faster), the disk's O_DIRECT time by request size, the
checksum's cost, how much reading slows compute, on CUDA the host-to-device copy time, the
executor's own cost per pass and per slot, which split sizes stay bit-exact, and the activation
peak. Kept apart from `planner` so that planning (pure arithmetic on this dict) never imports
what profiling needs to run a model.
"""

import os
from pathlib import Path
import platform
import statistics
import time

from demand_layering_ros.planning.planner import _mb, Config, MB, PROFILE_FORMAT, Schedule
from demand_layering_ros.planning.planner import simulate
from demand_layering_ros.planning.planner import Timing, VERSION


def machine_info(device='cpu'):
    """Describe this machine: CPU model, cores, OS, and the accelerator when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'os': platform.platform(),
            'python': platform.python_version()}
    try:
        import torch
        info['torch'] = str(torch.__version__)
        info['torch_threads'] = torch.get_num_threads()
        if str(device).startswith('cuda') and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info['device_name'] = props.name
            info['device_memory_mb'] = round(props.total_memory / MB)
            info['integrated'] = bool(getattr(props, 'is_integrated', False))
        else:
            info['device_name'] = cpu
    except ImportError:
        pass
    return info


def _median(xs):
    return statistics.median(xs) if xs else 0.0


# ----------------------------------------------------------------------------- profiling

DISK_SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)
H2D_SIZES = (64 << 10, 1 << 20, 16 << 20)


def _resident_detector(pack, device):
    """Return (detector, model) with every weight of the pack loaded on `device`."""
    det = pack.build_detector(device=device, meta=True)
    try:
        from demand_layering_ros.runtime import executor
        model = executor.load_resident(pack.path, device=device)
    except (ImportError, AttributeError):
        model = None
    if model is None:
        state = pack.load_state_dict()
        state.update(pack.extra_buffers())
        model = det.model
        model.load_state_dict(state, strict=False, assign=True)
        model.to(device)
        for name, t in model.state_dict(keep_vars=True).items():
            if t.device.type == 'meta':
                raise ValueError(f'pack {pack.path}: tensor {name} was not restored from the '
                                 'pack (still on the meta device)')
        model.eval()
    if getattr(model, 'detector', None) is not None:
        det = model.detector
    return det, model


class _CallClock:
    """Forward pre/post hooks on the unit modules that time every call of one pass."""

    def __init__(self, model, module_names, cuda):
        """Put hooks on the modules (canonical names, like the pack trace)."""
        import torch
        self.torch = torch
        self.cuda = cuda
        self.events = []                 # (stamp, +1 pre / -1 post, module name)
        self.enabled = True
        first = {}
        for name, m in model.named_modules(remove_duplicate=False):
            first.setdefault(id(m), (name, m))
        wanted = set(module_names)
        self.handles = []
        for name, m in first.values():
            if name in wanted:
                self.handles.append(m.register_forward_pre_hook(self._hook(name, +1)))
                self.handles.append(m.register_forward_hook(self._post(name)))

    def _stamp(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _hook(self, name, sign):
        def pre(module, args):
            if self.enabled:
                self.events.append((self._stamp(), sign, name))
        return pre

    def _post(self, name):
        def post(module, args, output):
            if self.enabled:
                self.events.append((self._stamp(), -1, name))
        return post

    def remove(self):
        for h in self.handles:
            h.remove()

    def run(self, model, x):
        """Run one pass; return (events with ms from pass start, total ms)."""
        self.events = []
        t0 = self._stamp()
        with self.torch.no_grad():
            model(x)
        t1 = self._stamp()
        if self.cuda:
            self.torch.cuda.synchronize()
            ev = [(t0.elapsed_time(e), s, n) for e, s, n in self.events]
            return ev, t0.elapsed_time(t1)
        return [(1e3 * (t - t0), s, n) for t, s, n in self.events], 1e3 * (t1 - t0)


def _call_waits(calls, steps):
    """
    Return per-step ms waited for weights (before the call, within it) from an executor log.

    calls: stats()['calls'], [unit, start, wait (s), chunk] per call (chunk None) followed by
    one entry per chunk of a split layer. The wait of the call itself happens in the
    executor's pre-hook, before the profile's clock starts (gap); chunk waits happen inside
    the call (busy). A log that does not have `steps` calls gives zeros.
    """
    before, within = [], []
    for _, _, wait, chunk in calls:
        if chunk is None:
            before.append(1e3 * wait)
            within.append(0.0)
        elif within:
            within[-1] += 1e3 * wait
    if len(before) != steps:
        return [0.0] * steps, [0.0] * steps
    return before, within


def split_calls(events, total_ms, steps):
    """
    Split one timed pass into per-call busy and gap times (ms) and the tail.

    Between two hook events the time belongs to the call that started last while any hooked
    module is running (its weights are needed), and otherwise to the gap before the next call
    (weight-free work that may overlap the wait for the next unit), or to the tail after the
    last call.
    """
    busy = [0.0] * steps
    gap = [0.0] * steps
    tail = 0.0
    depth, cur, prev = 0, -1, 0.0
    for t, sign, _ in events:
        dt = max(t - prev, 0.0)
        if depth > 0:
            busy[cur] += dt
        elif cur + 1 < steps:
            gap[cur + 1] += dt
        else:
            tail += dt
        if sign > 0:
            cur += 1
            depth += 1
        else:
            depth -= 1
        prev = t
    tail += max(total_ms - prev, 0.0)
    return busy, gap, tail


def _disk_points(pack, sizes, threads, budget_s=0.4, progress=None):
    """Measure O_DIRECT seconds per request of each size, back to back and one at a time."""
    from demand_layering_ros import direct_io
    lo = pack.data_offset
    span = pack.file_size - lo
    points = []
    with pack.reader(threads=threads) as reader:
        buf = direct_io.aligned_empty(max(sizes))
        for size in sizes:
            size = min(size, span // direct_io.PAGE * direct_io.PAGE)
            if size <= 0:
                continue
            slots = max(1, span // size)
            k, t0, isolated = 0, time.perf_counter(), []
            # one request at a time (what a reader waiting for free arena space sees)
            while k < 64 and (k < 3 or time.perf_counter() - t0 < budget_s / 2):
                off = lo + (k * 7919 % slots) * size
                t = time.perf_counter()
                reader.read_into(off, size, buf)
                isolated.append(time.perf_counter() - t)
                k += 1
            # back to back (what a reader running ahead sees); median of three batches
            n = max(3, min(128, k))
            batches = []
            for b in range(3):
                t = time.perf_counter()
                futs = [reader.submit(lo + ((k + b * n + j) * 7919 % slots) * size, size, buf)
                        for j in range(n)]
                for f in futs:
                    f.result()
                batches.append((time.perf_counter() - t) / n)
            streamed = _median(batches)
            points.append({'request_bytes': size, 'seconds': _median(isolated),
                           'seconds_streamed': streamed,
                           'mb_per_s': round(size / _median(isolated) / MB, 1),
                           'mb_per_s_streamed': round(size / streamed / MB, 1)})
            if progress is not None:
                progress.update(1)
        mode, reason = reader.mode, reader.fallback_reason
    return {'mode': mode, 'fallback_reason': reason, 'threads': threads, 'points': points}


CALIBRATION_FAMILY = 'dlr-calibration'


def _calibration_family():
    """Register (once) a model family of N conv+batch-norm blocks on a 4x4 input."""
    import torch
    from torch import nn
    from demand_layering_ros.models import registry
    from demand_layering_ros.models.detector import Detector

    class Blocks(Detector):
        kind = 'classifier'

        def example_input(self, batch=1):
            return torch.ones(batch, 128, 4, 4, device=self.device)

        def postprocess(self, outputs, meta, **kwargs):
            return outputs

    def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
              **kwargs):
        def make():   # 128x128 convs (64 KiB) stay units of their own, each with its BN
            return nn.Sequential(*[nn.Sequential(nn.Conv2d(128, 128, 1), nn.BatchNorm2d(128))
                                   for _ in range(int(arg))]).eval()
        if meta:
            with torch.device('meta'):
                model = make()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0 if seed is None else seed)
                model = make().to(device)
        return Blocks('calibration', f'{CALIBRATION_FAMILY}:{arg}', model, ['x'],
                      input_size=(4, 4), build_args={'spec': f'{CALIBRATION_FAMILY}:{arg}'},
                      device=device)

    if CALIBRATION_FAMILY not in registry.families():
        registry.register(CALIBRATION_FAMILY, build)


def _executor_overhead(device, blocks=64, repeats=15, progress=None, disk=None):
    """
    Measure the executor's own costs: per pass, and per slot it hands to the model.

    A pass of `blocks` small conv+batch-norm units (tens of microseconds of compute each, about
    as many tensors per unit as a real conv layer) runs through an arena that holds all of it,
    once with every unit streamed and once with a quarter streamed; before each timed pass the
    loader has time to read everything, so no pass waits for a read. Against the same model
    fully resident (timed alternately) the two give the cost per streamed slot (the slope) and
    per pass (the rest). On a real model these would drown in its run-to-run noise. With `disk`
    (the profile's read times) a third run streams everything through the smallest arena, so
    each read waits for the release of the unit before it; the delay that makes the planner's
    own simulation of that pass match its measured time is the release-to-claim hand-off.
    """
    import tempfile
    import torch
    from demand_layering_ros.runtime import executor
    from demand_layering_ros import pack as P
    from demand_layering_ros.models import registry
    _calibration_family()
    det = registry.build(f'{CALIBRATION_FAMILY}:{blocks}', seed=0)
    x = det.example_input(1)
    with tempfile.TemporaryDirectory(prefix='dlr-calibration-') as tmp:
        pk = P.write_pack_from_module(det.model, x, tmp, {'spec': det.spec}, progress=False)
        names = [u.name for u in pk.units]
        few = len(names) // 4
        res = executor.load_resident(pk.path, device=device)
        dls = {n: executor.load(pk.path, device=device,
                                plan={'resident_units': names[:len(names) - n],
                                      'arena_bytes': sum(u.length for u in pk.units),
                                      'split_bytes': 0, 'prefetch_depth': None})
               for n in (len(names), few)}
        tight = None
        if disk:
            tight = executor.load(pk.path, device=device,
                                  plan={'resident_units': [], 'arena_bytes': None,
                                        'split_bytes': 0, 'prefetch_depth': None})
        xd = x.to(device)
        diffs = {n: [] for n in dls}
        res_ms, tight_ms = [], []
        try:
            with torch.no_grad():
                for r in range(repeats + 2):
                    for n, dl in dls.items():
                        time.sleep(0.01)             # the loader reads the whole pass
                        _sync(device)
                        t = time.perf_counter()
                        dl(xd)
                        _sync(device)
                        t_dl = time.perf_counter() - t
                        t = time.perf_counter()
                        res(xd)
                        _sync(device)
                        t_res = time.perf_counter() - t
                        if r >= 2:
                            diffs[n].append(1e3 * (t_dl - t_res) - dl.stats()['stall_ms'])
                            res_ms.append(1e3 * t_res)
                    if tight is not None:
                        tight(xd)                    # back to back: no idle head start
                        _sync(device)
                        t = time.perf_counter()
                        tight(xd)
                        _sync(device)
                        if r >= 2:
                            tight_ms.append(1e3 * (time.perf_counter() - t))
            many, some = _median(diffs[len(names)]), _median(diffs[few])
            per_slot = max((many - some) / (len(names) - few), 0.0)
            per_pass = max(some - per_slot * few, 0.0)
            out = {'overhead_ms_per_slot': round(per_slot, 6),
                   'overhead_ms_per_pass': round(per_pass, 4),
                   'calibration': {'slots': [len(names), few],
                                   'overhead_ms': [round(many, 4), round(some, 4)]},
                   'piece_bytes': getattr(executor, 'PIECE_BYTES', None)}
            if tight is not None:
                out['handoff_ms'] = _fit_handoff(pk, device, disk, out, _median(res_ms),
                                                 _median(tight_ms), tight.plan()['arena_bytes'])
                out['calibration']['tight_ms'] = round(_median(tight_ms), 4)
        finally:
            for dl in dls.values():
                dl.close()
            if tight is not None:
                tight.close()
    if progress is not None:
        progress.update(1)
    return out


def _fit_handoff(pk, device, disk, executor_costs, resident_ms, measured_ms, arena_bytes):
    """Return the hand-off delay (ms) at which the simulated tight pass takes `measured_ms`."""
    sched = Schedule.from_pack(pk)
    n = sched.steps
    prof = {'format': PROFILE_FORMAT, 'device': str(device).split(':')[0],
            'device_kind': 'cpu' if not str(device).startswith('cuda') else 'cuda',
            'steps': {'unit': list(sched.call_order), 'busy_ms': [resident_ms / n] * n,
                      'gap_ms': [0.0] * n, 'tail_ms': 0.0},
            'disk': disk, 'executor': dict(executor_costs)}
    timing = Timing.from_profile(prof, sched)
    cfg = Config(frozenset(), arena_bytes)

    def latency(h):
        timing.handoff = h
        return simulate(sched, timing, cfg).latency_ms

    lo, hi = 0.0, 5.0
    if latency(lo) >= measured_ms:
        return 0.0
    if latency(hi) <= measured_ms:
        return hi
    for _ in range(30):
        mid = (lo + hi) / 2
        if latency(mid) < measured_ms:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 5)


def _read_contention(pack, model, x, device, repeats, threads, progress=None):
    """
    Measure how reading and computing at once slow each other down.

    The resident model runs alone and while a background loop reads the pack (O_DIRECT, the
    executor's reader threads and checksum, requests of the pack's median unit size), and the
    loop also runs alone for as long; alternately, `repeats` times. The ratios of the medians
    are the factors the simulation slows compute by while the reader is busy, and reads by
    (they compete for the cores, the memory bandwidth and the interpreter lock).
    """
    import threading
    import torch
    from demand_layering_ros import direct_io
    span = (pack.file_size - pack.data_offset) // direct_io.PAGE * direct_io.PAGE
    sizes = sorted(u.length for u in pack.units if u.calls)
    step = max(direct_io.PAGE, min(sizes[len(sizes) // 2] if sizes else span, span))
    stop = threading.Event()
    errors = []

    def reads(times):
        try:
            buf = direct_io.aligned_empty(step)
            with pack.reader(threads=threads) as reader:
                off = 0
                while not stop.is_set():
                    if off + step > span:
                        off = 0
                    t = time.perf_counter()
                    reader.submit(pack.data_offset + off, step, buf,
                                  verify=direct_io.checksum).result()
                    times.append(time.perf_counter() - t)
                    off += step
        except Exception as e:  # reported below; the measurement is then skipped
            errors.append(e)

    def run():
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        _sync(device)
        return time.perf_counter() - t

    def with_reads(work, times):
        stop.clear()
        th = threading.Thread(target=reads, args=(times,), name='dlr-profile-reads',
                              daemon=True)
        th.start()
        time.sleep(0.002)
        try:
            return work()
        finally:
            stop.set()
            th.join()

    alone, loaded, read_alone, read_loaded = [], [], [], []
    for _ in range(repeats):
        alone.append(run())
        loaded.append(with_reads(run, read_loaded))
        with_reads(lambda: time.sleep(min(alone[-1], 0.5)), read_alone)
        if progress is not None:
            progress.update(1)
    if errors or not read_alone or not read_loaded:
        return {'compute_slowdown': 1.0, 'read_slowdown': 1.0,
                'error': repr(errors[0]) if errors else 'no reads'}
    return {'compute_slowdown': round(max(1.0, _median(loaded) / _median(alone)), 4),
            'read_slowdown': round(max(1.0, _median(read_loaded) / _median(read_alone)), 4),
            'request_bytes': step, 'alone_ms': round(1e3 * _median(alone), 4),
            'with_reads_ms': round(1e3 * _median(loaded), 4),
            'read_alone_ms': round(1e3 * _median(read_alone), 5),
            'read_while_computing_ms': round(1e3 * _median(read_loaded), 5)}


def _checksum_speed(nbytes=16 << 20, repeats=5):
    """Measure the executor's slot checksum (xxh3_64 over host memory) in bytes per second."""
    from demand_layering_ros import direct_io
    buf = direct_io.aligned_empty(nbytes)
    buf.fill_(7)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        direct_io.checksum(buf)
        times.append(time.perf_counter() - t)
    return {'algorithm': direct_io.CHECKSUM_ALGORITHM,
            'bytes_per_s': round(nbytes / _median(times))}


def _split_exactness(pack, sched, device, model, progress=None):
    """
    Check, per candidate split size, that the executor's chunked layers give bit-exact outputs.

    Computing a layer by chunks of output channels can pick other kernels than the whole layer
    (a different blocking or algorithm) and change the last bits; a plan uses only split sizes
    whose outputs were torch.equal to the resident model's here, on a seeded random image.
    """
    import numpy as np
    import torch
    from demand_layering_ros.runtime import executor
    out = {}
    if not sched.split_candidates:
        return out
    det = pack.build_detector(device=device, meta=True)
    h, w = det.input_size or (416, 416)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = det.preprocess([img])[0]
    with torch.no_grad():
        want = model(x)
    for split in sched.split_candidates:
        dl = executor.load(pack.path, device=device,
                           plan={'resident_units': [], 'arena_bytes': None,
                                 'split_bytes': split, 'prefetch_depth': None})
        try:
            with torch.no_grad():
                got = dl(x)
            out[str(split)] = _equal(got, want)
        finally:
            dl.close()
        if progress is not None:
            progress.update(1)
    return out


def _split_costs(model, x, sched, splits, device, repeats=7, progress=None):
    """
    Time each split layer computed by chunks (as the executor does) against the whole layer.

    Chunks of output rows run one convolution (or linear) each and are concatenated; smaller
    kernels use the machine less well, so a split plan's compute is slower. Returns
    {split: {unit: chunked time / whole time}} from the layer's real input in one pass.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F
    modules = {}
    for name, m in model.named_modules(remove_duplicate=False):
        modules.setdefault(name, m)
    wanted = {}
    for sp in splits:
        for u, (_, chunks, _, module, rows) in sched.slot_builder.template(sp).items():
            if chunks:
                wanted.setdefault(module, []).append((sp, u, rows))
    if not wanted:
        return {}
    inputs = {}

    def grab(name):
        def pre(module, args):
            inputs.setdefault(name, args[0])
        return pre

    hooks = [modules[name].register_forward_pre_hook(grab(name)) for name in wanted]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()

    def clock(fn):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t

    def ratio(whole, chunked):
        """Return the median chunked/whole time of alternating runs (load drift cancels)."""
        whole(), chunked()
        return _median([clock(chunked) / max(clock(whole), 1e-9) for _ in range(repeats)])

    out = {}
    with torch.no_grad():
        for name, uses in wanted.items():
            mod, xin = modules[name], inputs[name]
            conv = isinstance(mod, nn.Conv2d)

            def part(r0, r1, mod=mod, xin=xin, conv=conv):
                b = mod.bias[r0:r1] if mod.bias is not None else None
                w = mod.weight[r0:r1]
                return mod._conv_forward(xin, w, b) if conv else F.linear(xin, w, b)

            rows_all = mod.weight.shape[0]
            for sp, u, rows in uses:
                r = ratio(lambda: part(0, rows_all),
                          lambda: torch.cat([part(a, b) for a, b in rows], dim=1 if conv else -1))
                out.setdefault(str(sp), {})[str(u)] = round(r, 4)
            if progress is not None:
                progress.update(1)
    return out


def _equal(a, b):
    import torch
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _h2d_points(sizes, device, progress=None):
    """Measure pinned host -> device copy seconds per request size (CUDA events)."""
    import torch
    points = []
    for size in sizes:
        src = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        dst = torch.empty(size, dtype=torch.uint8, device=device)
        times = []
        for _ in range(6):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src, non_blocking=True)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        s = _median(times[1:])
        points.append({'request_bytes': size, 'seconds': s, 'mb_per_s': round(size / s / MB, 1)})
        del src, dst
        if progress is not None:
            progress.update(1)
    return {'points': points}


def _activation_peak_cpu(model, x):
    """Return the most bytes held by tensors allocated during one pass (torch profiler)."""
    import torch
    from torch.profiler import profile as tprofile, ProfilerActivity
    with torch.no_grad(), tprofile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        model(x)
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in p.events()
                    if e.self_cpu_memory_usage)
    cur = peak = 0
    for _, d in deltas:
        cur += d
        peak = max(peak, cur)
    return peak


def _sync(device):
    if str(device).startswith('cuda'):
        import torch
        torch.cuda.synchronize()


def profile(pack_dir, device='cpu', repeats=5, warmup=1, progress=True, disk_sizes=DISK_SIZES,
            reader_threads=None, activation=True, executor_overhead=True, check_splits=True,
            budget_mb=None):
    """
    Measure, on this machine, what a plan's latency and memory depend on; return PROFILE dict.

    Per call of the pass (model fully resident, timed by forward pre/post hooks on the units'
    modules, CUDA events on a GPU): the time it needs its weights (busy) and the weight-free
    time before it (gap); medians over `repeats` passes after `warmup`, scaled to add up to the
    median unhooked pass. Also each unit's bytes, the O_DIRECT read time by request size, alone
    and back to back (the pack file itself: O_DIRECT does not touch the page cache), the
    checksum speed, how much reading slows compute, on CUDA the pinned host-to-device copy
    time, the executor's own cost per slot and per pass, which split sizes give bit-exact
    outputs and what chunking costs each split layer, the activation peak, the resident
    end-to-end latency (no hooks) and the machine (torch's thread count included: plan and run
    with the same).

    budget_mb: when the weights do not fit it, the model is not loaded resident: it runs
    streamed through the executor within the budget, and each call's wait for its weights
    (the executor's call log) is taken out of the times, so the budget holds while profiling
    (a robot whose memory never held the whole model can still plan). Split sizes are then not
    checked (the planner uses none) and the resident latency is the sum of the parts.
    """
    import torch
    from demand_layering_ros.pack import Pack
    pack = Pack.open(pack_dir)
    sched = Schedule.from_pack(pack)
    device = str(device)
    cuda = device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f'profile: device {device!r} requested but CUDA is not available')
    threads = reader_threads or _executor_reader_threads()
    streamed = budget_mb is not None and pack.total_bytes > budget_mb * MB
    limit = budget_mb * MB if streamed else float('inf')    # the read buffer is weights too
    sizes = [s for s in disk_sizes
             if s <= min(max(pack.file_size - pack.data_offset, 0), limit)] or \
        [direct_io_page()]
    check_splits = check_splits and not streamed
    total = warmup + repeats + len(sizes) + (len(H2D_SIZES) if cuda else 0) + 1 + \
        (1 if executor_overhead else 0) + max(3, repeats) + \
        (len(sched.split_candidates) if check_splits else 0)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f'profile {Path(pack_dir).name}', unit='step')
    t_start = time.perf_counter()
    try:
        if streamed:
            from demand_layering_ros.runtime import executor
            model = executor.load(pack.path, device=device, budget_mb=budget_mb)
            det = model.detector
        else:
            det, model = _resident_detector(pack, device)
        x = det.timing_input(1)
        modules = [m for u in pack.units for m in u.modules]
        # hooked after the executor's own hooks: a call's clock starts once its weights are in
        clock = _CallClock(getattr(model, 'module', model) if streamed else model, modules, cuda)
        passes, plain, waits = [], [], []
        try:
            for r in range(warmup + repeats):
                # hooked and plain passes alternate, so both see the same machine load
                ev, total_ms = clock.run(model, x)
                if r >= warmup:
                    passes.append((ev, total_ms))
                    if streamed:
                        waits.append(_call_waits(model.stats().get('calls') or [], sched.steps))
                if not streamed:    # streamed, an unhooked pass includes waits: not used
                    clock.enabled = False
                    _sync(device)
                    t = time.perf_counter()
                    with torch.no_grad():
                        model(x)
                    _sync(device)
                    if r >= warmup:
                        plain.append(1e3 * (time.perf_counter() - t))
                    clock.enabled = True
                if bar is not None:
                    bar.update(1)
        finally:
            clock.remove()
        names = [n for _, s, n in passes[0][0] if s > 0]
        unit_of = [pack.module_unit.get(n) for n in names]
        if unit_of != list(sched.call_order):
            raise ValueError(f'pack {pack.path}: the profiled pass calls {len(unit_of)} unit '
                             f'modules in an order that differs from the manifest call_order '
                             f'({sched.steps} calls); was the pack written for another input '
                             'size or model version?')
        splits = [split_calls(ev, tot, sched.steps) for ev, tot in passes]
        if streamed:    # waiting for weights is no part of the model's own time
            splits = [([max(0.0, b - w) for b, w in zip(bs, within)],
                       [max(0.0, g - w) for g, w in zip(gs, before)], t)
                      for (bs, gs, t), (before, within) in zip(splits, waits)]
        busy = [_median([b[s] for b, _, _ in splits]) for s in range(sched.steps)]
        gap = [_median([g[s] for _, g, _ in splits]) for s in range(sched.steps)]
        tail = _median([t for _, _, t in splits])
        hooked = _median([tot for _, tot in passes])
        total = sum(busy) + sum(gap) + tail
        # Per-call medians of a noisy machine sum to less than a typical pass (delays are
        # skewed); scale them so the calls of one pass add up to the median unhooked pass.
        # Streamed, the unhooked pass includes waits for weights: the parts are the estimate.
        resident_ms = total if streamed else _median(plain)
        scale = resident_ms / total if total > 0 else 1.0
        busy = [b * scale for b in busy]
        gap = [g * scale for g in gap]
        tail *= scale
        act = None
        if activation:
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    model(x)
                torch.cuda.synchronize()
                act = torch.cuda.max_memory_allocated() - base
            else:
                try:
                    act = _activation_peak_cpu(model, x)
                except Exception:  # the profiler is optional: the plan does not need it
                    act = None
        if bar is not None:
            bar.update(1)
        disk = _disk_points(pack, sizes, threads, progress=bar)
        overhead, exact = None, {}
        if executor_overhead and sched.slot_builder is not None:
            overhead = _executor_overhead(device, progress=bar, disk=disk)
        split_cost = {}
        if check_splits and sched.slot_builder is not None:
            exact = _split_exactness(pack, sched, device, model, progress=bar)
            split_cost = _split_costs(model, x, sched, [sp for sp in sched.split_candidates
                                                        if exact.get(str(sp))], device,
                                      repeats=max(3, min(7, repeats)))
        checksum = _checksum_speed()
        contention = _read_contention(pack, model, x, device, max(3, repeats), threads,
                                      progress=bar) if sched.slot_builder is not None else None
        peak = None
        if streamed:
            peak = model.stats()['peak_weight_bytes']
            model.close()
        del model, det
        h2d = _h2d_points(H2D_SIZES, device, progress=bar) if cuda else None
    finally:
        if bar is not None:
            bar.close()
    info = machine_info(device)
    kind = 'cpu'
    if cuda:
        kind = 'unified' if info.get('integrated') else 'cuda'
    per_unit = {}
    for s, u in enumerate(sched.call_order):
        per_unit.setdefault(u, []).append(round(busy[s], 5))
    return {
        'format': PROFILE_FORMAT,
        'version': VERSION,
        'pack': {'path': str(pack.path), 'spec': sched.spec, 'file_size': pack.file_size,
                 'units': len(pack.units), 'calls': sched.steps,
                 'input': pack.manifest.get('input')},
        'device': device.split(':')[0],
        'device_kind': kind,
        'machine': info,
        'repeats': repeats,
        'mode': 'streamed' if streamed else 'resident',
        'budget_mb': budget_mb if streamed else None,
        'peak_weight_bytes': peak,
        'resident_latency_ms': round(resident_ms, 4),
        'resident_latency_all_ms': [round(v, 4) for v in plain],
        'hooked_latency_ms': round(hooked, 4),
        'steps_scale': round(scale, 5),
        'activation_peak_bytes': act,
        'activation_peak_mb': _mb(act),
        'weight_bytes': sum(pack.units[u].length for u in sched.called),
        'units': [{'index': u.index, 'name': u.name, 'bytes': u.length, 'nbytes': u.nbytes,
                   'calls': u.calls, 'compute_ms': per_unit.get(u.index, [])}
                  for u in pack.units],
        'steps': {'unit': list(sched.call_order), 'busy_ms': [round(b, 5) for b in busy],
                  'gap_ms': [round(g, 5) for g in gap], 'tail_ms': round(tail, 5)},
        'disk': disk,
        'h2d': h2d,
        'executor': overhead,
        'checksum': checksum,
        'contention': contention,
        'split_exact': exact,
        'split_cost': split_cost,
        'seconds': round(time.perf_counter() - t_start, 2),
    }


def direct_io_page():
    """Return the O_DIRECT alignment unit."""
    from demand_layering_ros import direct_io
    return direct_io.PAGE


def _executor_reader_threads():
    """Return the reader thread count the executor uses (2 when it does not say)."""
    try:
        from demand_layering_ros.runtime import executor
        return int(getattr(executor, 'READER_THREADS', 2))
    except ImportError:
        return 2
