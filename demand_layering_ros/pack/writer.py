# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Write a pack: lay the units out in call order and stream them into a safetensors file.

The weights file is standard safetensors, written by our own writer so that the tensors of each
load unit are contiguous, units follow first use, and every unit extent starts at an ALIGNMENT
offset and is padded to an ALIGNMENT multiple (padding tensors `__dlr_pad__.<n>`, uint8). Every
file goes through `atomic`, and the manifest comes last, so a directory with a manifest always
holds a complete pack.
"""

import json
from pathlib import Path
import shutil
import tempfile

from demand_layering_ros import atomic, direct_io
from demand_layering_ros.pack.format import (ALIGNMENT, CFG_FILE, dtype_name, EXTRA_FILE,
                                             FORMAT, MANIFEST_FILE, MERGE_BYTES, NAMES_FILE,
                                             PAD_PREFIX, safe_file_name, ST_CODES,
                                             STORED_DTYPES, stored_tensor, TENSOR_ALIGNMENT,
                                             valid_tensor_name, VERSION, WEIGHTS_FILE)
from demand_layering_ros.pack.store import Pack
from demand_layering_ros.pack.tracing import group_units, non_persistent_buffers, trace
from demand_layering_ros.sizes import align_up


def _tensor_bytes(t):
    """Return a flat uint8 CPU view of a tensor's bytes."""
    import torch
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)


def _layout(plans, call_order, span_end, tr, dtype=None):
    """
    Compute offsets relative to the data start; returns (units dicts, header entries, size).

    dtype: the stored dtype of floating point tensors (None: as the model has them).
    """
    entries, units = [], []
    pos, npad = 0, 0

    def pad(nbytes):
        nonlocal pos, npad
        if nbytes:
            entries.append((f'{PAD_PREFIX}{npad}', None, nbytes, pos))
            npad += 1
            pos += nbytes

    for i, p in enumerate(plans):
        start = pos
        tensors = []
        for name, t, module, attr, kind, aliases in p.tensors:
            t = stored_tensor(t, dtype)
            pad(align_up(pos, TENSOR_ALIGNMENT) - pos)
            nbytes = t.numel() * t.element_size()
            entries.append((name, t, nbytes, pos))
            tensors.append({'name': name, 'dtype': dtype_name(t.dtype), 'shape': list(t.shape),
                            'offset': pos, 'nbytes': nbytes, 'module': module, 'attr': attr,
                            'kind': kind, 'aliases': list(aliases)})
            pos += nbytes
        pad(align_up(pos, ALIGNMENT) - pos)
        positions = [k for k, u in enumerate(call_order) if u == i]
        names = {n for e in p.tensors for n in [e[0]] + e[5]}
        units.append({
            'index': i, 'name': p.modules[0] or '(root)', 'modules': list(p.modules),
            'offset': start, 'length': pos - start,
            'nbytes': sum(t['nbytes'] for t in tensors), 'checksum': None,
            'calls': len(positions),
            'first_call': positions[0] if positions else None,
            'last_call': max(span_end[k] for k in positions) if positions else None,
            'used_outside_forward': any(n in tr.outside_uses for n in names),
            'tensors': tensors})
    return units, entries, pos


def _header_bytes(entries, data_size):
    header = {'__metadata__': {'format': FORMAT, 'version': str(VERSION)}}
    for name, t, nbytes, pos in entries:
        if t is None:
            header[name] = {'dtype': 'U8', 'shape': [nbytes], 'data_offsets': [pos, pos + nbytes]}
        else:
            header[name] = {'dtype': ST_CODES[dtype_name(t.dtype)], 'shape': list(t.shape),
                            'data_offsets': [pos, pos + nbytes]}
    raw = json.dumps(header, separators=(',', ':')).encode()
    data_start = align_up(8 + len(raw), ALIGNMENT)
    return raw + b' ' * (data_start - 8 - len(raw)), data_start


def _write_units(f, header, units, entries, bar):
    """Write the header and every unit's bytes; set each unit's checksum as it goes."""
    import xxhash
    zeros = bytes(ALIGNMENT)
    f.write(len(header).to_bytes(8, 'little'))
    f.write(header)
    k = 0
    for u in units:
        h = xxhash.xxh3_64()
        end = u['offset'] + u['length']
        while k < len(entries) and entries[k][3] < end:
            name, t, nbytes, pos = entries[k]
            if t is None:
                chunk = zeros[:nbytes] if nbytes <= len(zeros) else bytes(nbytes)
            else:
                chunk = memoryview(_tensor_bytes(t).numpy())
            f.write(chunk)
            h.update(chunk)
            if bar is not None:
                bar.update(nbytes)
            k += 1
        u['checksum'] = h.hexdigest()


def _write_weights(path, units, entries, data_size, progress):
    """Write the weights file atomically; make unit and tensor offsets absolute."""
    header, data_start = _header_bytes(entries, data_size)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=data_size, unit='B', unit_scale=True, desc=f'writing {path.name}')
    try:
        atomic.write_bytes(path, lambda f: _write_units(f, header, units, entries, bar), 'wb')
    finally:
        if bar is not None:
            bar.close()
    for u in units:
        u['offset'] += data_start
        for t in u['tensors']:
            t['offset'] += data_start
    return data_start, data_start + data_size


def _write_extra_buffers(out, extra):
    """Write the non-persistent buffers (or remove a stale file); return the file name or None."""
    if extra:
        from safetensors.torch import save
        data = save(extra, metadata={'format': FORMAT})
        atomic.write_bytes(out / EXTRA_FILE, lambda f: f.write(data), 'wb')
        return EXTRA_FILE
    if (out / EXTRA_FILE).exists():
        (out / EXTRA_FILE).unlink()
    return None


def _copy_file(src, dst):
    """Copy `src` to `dst` atomically."""
    def copy(f):
        with open(src, 'rb') as s:
            shutil.copyfileobj(s, f)
    atomic.write_bytes(dst, copy, 'wb')


def storage_dtype(dtype):
    """Return the torch dtype for `pack --dtype` (a name, a torch dtype or None: as the model)."""
    if dtype is None:
        return None
    name = dtype_name(dtype) if not isinstance(dtype, str) else dtype
    if name not in STORED_DTYPES:
        raise ValueError(f'a pack stores weights as one of {", ".join(STORED_DTYPES)}, '
                         f'not {dtype!r}')
    import torch
    return getattr(torch, name)


def write_pack_from_module(model, example_input, out_dir, model_info, input_info=None,
                           merge_bytes=MERGE_BYTES, progress=True, extra_files=None,
                           source=None, file_roles=None, dtype=None):
    """
    Trace an already-built model and write a pack to `out_dir`; return the opened Pack.

    model_info: the constructor arguments (JSON) stored as manifest['model'].
    input_info: manifest['input'] (default: {'example': 'example_input', 'batch': 1}).
    extra_files: {file name in the pack: source path} copied in (e.g. {'model.cfg': cfg});
    file_roles: {role: file name} recorded as manifest['model_files'] (default: name -> name).
    String values of model_info equal to such a file name (or 'FAMILY:file name') are made
    absolute by Pack.model_args().
    dtype: store floating point weights as 'float16' or 'bfloat16' (half the bytes) or
    'float32' (None: as the model has them); recorded as manifest['stored_dtype'].
    Files are written under temporary names and renamed; the manifest comes last, so a directory
    with a manifest always holds a complete pack.
    """
    dtype = storage_dtype(dtype)
    on_meta = [n for n, t in model.state_dict().items() if t.device.type == 'meta']
    if on_meta:
        raise ValueError(f'cannot pack a model whose weights are on the meta device '
                         f'({len(on_meta)} tensors, e.g. {on_meta[0]}); build it with real '
                         'weights (meta=False)')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_FILE).exists():
        (out / MANIFEST_FILE).unlink()
    for name in (extra_files or {}):
        if not safe_file_name(name):
            raise ValueError(f'extra file name {name!r} must be a plain file name')
    tr = trace(model, example_input)
    plans, call_order, span_end, aliases = group_units(model, tr, merge_bytes=merge_bytes)
    units, entries, data_size = _layout(plans, call_order, span_end, tr, dtype)
    for name, _, _, _ in entries:
        if not name.startswith(PAD_PREFIX) and not valid_tensor_name(name):
            raise ValueError(f'tensor name {name!r} cannot be stored in a pack '
                             '(allowed: dotted names of [A-Za-z0-9_-:+@] parts)')
    data_start, file_size = _write_weights(out / WEIGHTS_FILE, units, entries, data_size,
                                           progress)
    extra = non_persistent_buffers(model)
    extra_file = _write_extra_buffers(out, extra)
    for name, src in (extra_files or {}).items():
        _copy_file(src, out / name)
    files = dict(file_roles) if file_roles else {n: n for n in (extra_files or {})}
    called = [u['index'] for u in units if u['calls']]
    manifest = {
        'format': FORMAT,
        'version': VERSION,
        'model': model_info,
        'input': input_info or {'example': 'example_input', 'batch': 1},
        'source': source or {},
        'weights_file': WEIGHTS_FILE,
        'file_size': file_size,
        'data_offset': data_start,
        'alignment': ALIGNMENT,
        'tensor_alignment': TENSOR_ALIGNMENT,
        'stored_dtype': dtype_name(dtype) if dtype is not None else None,
        'checksum_algorithm': direct_io.CHECKSUM_ALGORITHM,
        'total_nbytes': sum(u['nbytes'] for u in units),
        'merge_bytes': merge_bytes,
        'trace_seconds': round(tr.seconds, 6),
        'call_order': call_order,
        'call_modules': list(tr.calls),
        'units': units,
        'uncalled_units': [u['index'] for u in units if not u['calls']],
        'called_units': len(called),
        'aliases': aliases,
        'outside_uses': tr.outside_uses,
        'extra_buffers_file': extra_file,
        'extra_buffers': sorted(extra),
        'model_files': files,
    }
    atomic.write_json(out / MANIFEST_FILE, manifest)
    return Pack.open(out)


def _darknet_cfg_path(arg):
    p = Path(arg)
    if p.is_file():
        return p
    from demand_layering_ros.models import assets
    return Path(assets.darknet_cfg(arg))


def write_pack(spec, out_dir, weights=None, seed=None, input_size=None, progress=True,
               merge_bytes=MERGE_BYTES, verify=True, dtype=None, trust_pickle=False):
    """
    Build `spec` through the registry, trace it and write a pack; return the opened Pack.

    For darknet the cfg text is copied into the pack as model.cfg and manifest['model']['spec']
    refers to it relative to the pack ('darknet:model.cfg'). verify=True reads the pack back
    (O_DIRECT, checksums) and compares every tensor with the model's state dict (cast to the
    stored dtype). dtype: see write_pack_from_module. A detector with `pack_files()` (the
    ultralytics family) gives the files the pack stores instead (its configuration as model.yaml).
    trust_pickle: let the family read a pickled model file (an Ultralytics .pt); the pack itself
    holds no pickle.
    """
    from demand_layering_ros.models import registry
    options = {'trust_pickle': True} if trust_pickle else {}
    det = registry.build(spec, weights=weights, seed=seed, input_size=input_size, **options)
    info = dict(registry.constructor_args(det))
    info['weights'] = None
    with tempfile.TemporaryDirectory(prefix='dlr-pack-') as tmp:
        extra_files, roles = _model_files(det, info, spec, Path(tmp))
        return _write_detector_pack(det, info, extra_files, roles, spec, out_dir, weights, seed,
                                    progress, merge_bytes, verify, dtype)


def _model_files(det, info, spec, tmp):
    """Return ({pack file: source path}, {role: pack file}); point `info` at the pack's files."""
    from demand_layering_ros.models import registry
    extra_files, roles = {}, {}
    if hasattr(det, 'pack_files'):
        blobs, file_roles, updates = det.pack_files()
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
            extra_files[name] = tmp / name
        roles.update(file_roles)
        info.update(updates)
        return extra_files, roles
    family, arg = registry.split_spec(info.get('spec', spec))
    if family == 'darknet':
        extra_files[CFG_FILE] = _darknet_cfg_path(arg)
        roles['cfg'] = CFG_FILE
        info['spec'] = f'darknet:{CFG_FILE}'
        if info.get('names'):
            extra_files[NAMES_FILE] = Path(info['names'])
            roles['names'] = NAMES_FILE
            info['names'] = NAMES_FILE
    return extra_files, roles


def _write_detector_pack(det, info, extra_files, roles, spec, out_dir, weights, seed, progress,
                         merge_bytes, verify, dtype):
    """Write the pack of a built detector (see write_pack); return the opened Pack."""
    size = list(det.input_size) if det.input_size is not None else None
    input_info = {'example': 'detector.example_input', 'input_size': size, 'batch': 1}
    source = {'spec': spec, 'weights': str(weights) if weights else None, 'seed': seed}
    pack = write_pack_from_module(det.model, det.example_input(1), out_dir, info,
                                  input_info=input_info, merge_bytes=merge_bytes,
                                  progress=progress, extra_files=extra_files, source=source,
                                  file_roles=roles, dtype=dtype)
    if verify:
        stored = storage_dtype(dtype)
        pack.check_against({k: stored_tensor(t, stored)
                            for k, t in det.model.state_dict().items()})
    return pack
