# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Everything a model's configurations need before the first measured run, written once.

The pack, accelerate's offload folder, the planner's profile and the plans are kept under the
work directory and reused while the pack's source (spec, weights, input size) is unchanged.
"""

import json
import os
from pathlib import Path
import shutil
import time

from bench.configs import DL_KINDS
from bench.plans import make_plans, naive_plan
from demand_layering_ros import atomic
from demand_layering_ros.sizes import mib


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


def param_state(pk, state):
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
    state = param_state(pk, pk.load_state_dict())
    offload_state_dict(str(tmp), {k: v.contiguous() for k, v in state.items()})
    del state
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def prepare_model(key, src, work, device, configs, n_budgets, repeats, log):
    """
    Write (or reuse) the pack, accelerate's offload folder, the profile and the plans.

    Returns a dict with the paths, the pack's numbers and the plans; what failed is recorded
    under 'errors' so the other configurations still run.
    """
    from demand_layering_ros import pack as packmod
    from demand_layering_ros.planning import profiler, timing
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
    info.update(weights_mb=mib(s['payload_bytes'], 2), file_mb=mib(pk.total_bytes, 2),
                units=s['units'], calls=s['calls'], largest_unit_mb=mib(s['largest_unit'], 2),
                largest_module_param_bytes=max(module_params.values(), default=0),
                buffer_bytes=buffer_bytes, total_bytes=pk.total_bytes)
    if 'accelerate-disk' in configs or 'accelerate-disk-limited' in configs:
        try:
            info['offload_dir'] = str(write_accelerate_offload(pk, d / 'accelerate'))
        except Exception as e:  # noqa: B902 - recorded; the other configurations still run
            info['errors']['accelerate-disk'] = f'offload folder: {e!r}'
    if any(c in configs for c in ('naive', 'naive-limited') + DL_KINDS):
        try:
            info['plans'] = {'naive': naive_plan(pk)}
        except Exception as e:  # noqa: B902
            info['plans'] = {}
            info['errors']['naive'] = f'naive plan: {e!r}'
        prof_path = d / f'profile-{device.split(":")[0]}.json'
        try:
            log(f'{key}: profiling')
            prof = profiler.profile(pack_dir, device=device, repeats=repeats, progress=False)
            timing.save_profile(prof, prof_path)
            info['profile'] = str(prof_path)
            info['resident_profile_ms'] = prof.get('resident_latency_ms')
            log(f'{key}: planning')
            plans = make_plans(pk, prof, n_budgets if 'dl-budget' in configs else 0)
            info['plans'].update(plans)
            atomic.write_json(d / f'plans-{device.split(":")[0]}.json', plans)
        except Exception as e:  # noqa: B902
            for c in DL_KINDS:
                info['errors'][c] = f'profile/plan: {e!r}'
    return info
