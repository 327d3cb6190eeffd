# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One configuration, measured in its own process: `python -m bench.harness --worker JOB`.

The parent places the process in a fresh memory cgroup before it starts, so everything it
imports and caches is charged to it. The worker loads the configuration's model, times the
passes, reads its own I/O counters, cgroup usage and the page cache over the weight files, and
writes one result JSON; any failure is recorded in that file, never raised to the parent.
"""

import json
import os
from pathlib import Path
import time

from bench.configs import BenchError, STREAMING
from bench.prepare import param_state
from demand_layering_ros import atomic, load, load_resident
from demand_layering_ros.pack.format import WEIGHTS_FILE


def read_bytes_self():
    """Return the bytes this process caused to be read from storage (/proc/self/io)."""
    try:
        with open('/proc/self/io', encoding='ascii') as f:
            for line in f:
                if line.startswith('read_bytes:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _set_tensor(model, name, tensor, param):
    import torch
    mod_name, _, attr = name.rpartition('.')
    mod = model.get_submodule(mod_name) if mod_name else model
    if param:
        mod._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[attr] = tensor


def _skeleton_with_buffers(pk, device):
    """
    Return (detector, model): the model on 'meta' with only its buffers materialised.

    The buffers (batch-norm statistics, a few KB) are read with pread and then dropped from the
    page cache, so the accelerate configurations start from the same cold cache as the others.
    """
    import torch
    from demand_layering_ros.pack import dtype_of
    det = pk.build_detector(device=device, meta=True)
    model = det.model
    fd = os.open(pk.weights_path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)        # no readahead
        for u in pk.units:
            for t in u.tensors:
                if t.kind != 'buffer':
                    continue
                raw = bytearray(os.pread(fd, t.nbytes, t.offset))
                v = torch.frombuffer(raw, dtype=torch.uint8).view(dtype_of(t.dtype))
                v = v.reshape(t.shape).to(device)
                for name in [t.name] + list(t.aliases):
                    _set_tensor(model, name, v, param=False)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    for name, v in pk.extra_buffers().items():
        _set_tensor(model, name, v.to(device), param=False)
    return det, model.eval()


def _mmap_model(pk):
    """Return (detector, model, mapping): every tensor a view into a private file mapping."""
    import mmap
    import torch
    from demand_layering_ros.pack import dtype_of
    det = pk.build_detector(device='cpu', meta=True)
    model = det.model
    with open(pk.weights_path, 'rb') as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    base = torch.frombuffer(mm, dtype=torch.uint8)
    for u in pk.units:
        for t in u.tensors:
            v = base[t.offset:t.offset + t.nbytes].view(dtype_of(t.dtype)).reshape(t.shape)
            for name in [t.name] + list(t.aliases):
                _set_tensor(model, name, v, param=t.kind == 'parameter')
    for name, v in pk.extra_buffers().items():
        _set_tensor(model, name, v, param=False)
    return det, model.eval(), mm


def _build_runner(job, pk):
    """Return (model, example input, peak weight bytes or None, extra) for a job's config."""
    kind, device = job['kind'], job['device']
    extra = {}
    if kind == 'resident':
        model = load_resident(pk.path, device=device)
        det = pk.build_detector(device=device, meta=True)
        return model, det.timing_input(1), pk.total_bytes, extra
    if kind in STREAMING:
        model = load(pk.path, device=device, plan=job['plan'])
        return model, model.detector.timing_input(1), None, extra
    if kind == 'accelerate-disk':
        import accelerate
        det, model = _skeleton_with_buffers(pk, device)
        accelerate.disk_offload(model, job['offload_dir'], execution_device=device,
                                offload_buffers=False)
        return model, det.timing_input(1), job['accelerate_weight_bytes'], extra
    if kind == 'accelerate-cpu':
        import accelerate
        det, model = _skeleton_with_buffers(pk, device)
        state = param_state(pk, pk.load_state_dict())
        accelerate.cpu_offload(model, execution_device=device, offload_buffers=False,
                               state_dict=state)
        return model, det.timing_input(1), pk.total_bytes, extra
    if kind == 'mmap':
        if str(device).startswith('cuda'):
            raise BenchError('mmap: a discrete GPU cannot use a file mapping in place')
        det, model, mm = _mmap_model(pk)
        extra['mapping'] = mm
        return model, det.timing_input(1), 0, extra
    raise BenchError(f'unknown configuration kind {kind!r}')


def _limit_own_cgroup(limit_bytes):
    """Set this process's own memory cgroup's hard limit (v1 or v2); return the limit."""
    with open('/proc/self/cgroup', encoding='ascii') as f:
        lines = [line.rstrip('\n').split(':', 2) for line in f]
    v1 = [rel for _, ctl, rel in lines if 'memory' in ctl.split(',')]
    if v1:
        path = Path('/sys/fs/cgroup/memory') / v1[0].lstrip('/') / 'memory.limit_in_bytes'
    else:
        rel = [rel for _, ctl, rel in lines if ctl == ''][0]
        path = Path('/sys/fs/cgroup') / rel.lstrip('/') / 'memory.max'
    try:
        path.write_text(str(int(limit_bytes)))
    except OSError as e:
        raise BenchError(f'cannot set the memory limit {limit_bytes} in {path}: {e}') from e
    return int(limit_bytes)


def _cgroup_now():
    from tools import cgroups
    return cgroups.own_cgroup_usage()


def worker(job_path):
    """Run one configuration as described by a job file; write its result JSON. Returns 0."""
    with open(job_path) as f:
        job = json.load(f)
    t_start = time.perf_counter()
    result = {'config': job['config'], 'kind': job['kind'], 'pid': os.getpid()}
    try:
        _measure(job, result, t_start)
    except Exception as e:  # noqa: B902 - reported in the result, the parent goes on
        import traceback
        result['status'] = 'error'
        result['error'] = f'{type(e).__name__}: {e}'
        result['traceback'] = traceback.format_exc()[-3000:]
    result['seconds'] = round(time.perf_counter() - t_start, 2)
    atomic.write_json(job['result'], result)
    return 0


def _measure(job, result, t_start):
    """Load the configuration's model, time its passes and fill `result` (status 'ok')."""
    import torch
    import accelerate  # noqa: F401 - every configuration imports the same libraries
    import torchvision  # noqa: F401
    from demand_layering_ros import loading  # noqa: F401
    from demand_layering_ros.runtime import malloc  # noqa: F401
    from demand_layering_ros.pack import Pack
    malloc.limit_arenas()        # every configuration runs with the runtime's malloc settings
    if job.get('threads'):
        torch.set_num_threads(int(job['threads']))
    cuda = str(job['device']).startswith('cuda')

    def sync():
        if cuda:
            torch.cuda.synchronize(torch.device(job['device']))   # the model's GPU

    pk = Pack.open(job['pack'])
    base = _cgroup_now() if job.get('cgroup') else None
    if job.get('limit_above_base') is not None:
        if base is None:
            raise BenchError(f'{job["config"]} needs its own memory cgroup to be limited')
        limit = base['usage_bytes'] + int(job['limit_above_base'])
        result['limit_bytes'] = _limit_own_cgroup(limit)
    io0 = read_bytes_self()
    load0 = os.getloadavg()[0]
    result['import_seconds'] = round(time.perf_counter() - t_start, 3)
    t = time.perf_counter()
    model, x, weight_bytes, extra = _build_runner(job, pk)
    x = to_device(x, job['device'])
    sync()
    result['load_seconds'] = round(time.perf_counter() - t, 3)
    io1 = read_bytes_self()
    lat, stalls, timelines, io2 = _timed_passes(job, model, x, sync)
    io3 = read_bytes_self()
    result['load_average'] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    end = _cgroup_now() if job.get('cgroup') else None
    result['latencies_ms'] = lat
    if hasattr(model, 'stats'):
        weight_bytes = _executor_result(model, result, lat, stalls, timelines)
    result['peak_weight_bytes'] = weight_bytes
    if io0 is not None:
        result['read_bytes_load'] = io1 - io0
        result['read_bytes_warmup'] = io2 - io1
        result['read_bytes_passes'] = io3 - io2
    if base is not None and end is not None:
        result['base_bytes'] = base['usage_bytes']
        result['base_cache_bytes'] = base['cache_bytes']
        result['end_cache_bytes'] = end['cache_bytes']
        result['cache_growth_bytes'] = end['cache_bytes'] - base['cache_bytes']
    result['weights_cached_bytes'] = cached_bytes(job)
    result['status'] = 'ok'
    if hasattr(model, 'close'):
        model.close()
    del extra


def _timed_passes(job, model, x, sync):
    """Run the warm-up and timed passes; return (latencies, stalls, timelines, io at start)."""
    import torch
    lat, stalls, timelines = [], [], []
    with torch.no_grad():
        for i in range(job['warmup'] + job['passes']):
            if i == job['warmup']:
                io2 = read_bytes_self()
            sync()
            t = time.perf_counter()
            out = model(x)
            sync()
            dt = 1e3 * (time.perf_counter() - t)
            del out
            if i >= job['warmup']:
                lat.append(round(dt, 4))
                if hasattr(model, 'stats'):
                    st = model.stats()
                    stalls.append(round(st['stall_ms'] or 0.0, 4))
                    # as JSON text: a pass's event dicts are ~30 KB of Python objects (ssdlite),
                    # the benchmark's own memory, which it would charge to the configuration
                    timelines.append(json.dumps(st.get('timeline')))
    return lat, stalls, timelines, io2


def _executor_result(model, result, lat, stalls, timelines):
    """Record an executor's own numbers in `result`; return its peak weight bytes."""
    st = model.stats()
    result['stall_ms'] = stalls
    result['executor'] = {k: st.get(k) for k in (
        'peak_weight_bytes', 'budget_bytes', 'resident_bytes', 'arena_bytes',
        'io_mode', 'io_fallback_reason', 'demand_misses', 'resident_units',
        'streamed_units', 'split_units', 'prefetch_depth', 'passes', 'activation_peak_bytes',
        'pinned_bytes')}
    # the timeline of the pass whose latency is the median one, not an outlier
    mid = sorted(range(len(lat)), key=lambda i: lat[i])[(len(lat) - 1) // 2]
    result['timeline'] = json.loads(timelines[mid]) if timelines else st.get('timeline')
    result['timeline_latency_ms'] = lat[mid] if lat else None
    return st['peak_weight_bytes']


def to_device(x, device):
    """Move a model input (a tensor, or a list/tuple of them for torchvision) to `device`."""
    import torch
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def weight_files(job):
    """Return the files a configuration reads its weights from."""
    if job['kind'] == 'accelerate-disk' and job.get('offload_dir'):
        return sorted(Path(job['offload_dir']).glob('*.dat'))
    return [Path(job['pack']) / WEIGHTS_FILE]


def cached_bytes(job):
    """Return the bytes of the weight files in the page cache (None when unknown)."""
    from tools import cgroups
    total = 0
    for p in weight_files(job):
        try:
            total += cgroups.file_cached_bytes(p)
        except OSError:
            return None
    return total
