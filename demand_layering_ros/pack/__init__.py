# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Weight packs: a model's weights on SSD laid out in execution order, one aligned extent per unit.

Demand Layering loads each layer's weights right before the layer runs, so the file must let the
reader fetch "the next unit" with one large aligned O_DIRECT read. A pack is a directory:

  weights.safetensors  standard safetensors (readable by `safetensors.torch.load_file`), written
                       by our own writer so that the tensors of each load unit are contiguous,
                       units follow first use, and every unit extent starts at a 4096-byte offset
                       and is padded to a 4096 multiple (padding tensors `__dlr_pad__.<n>`, uint8);
  manifest.json        format version, model constructor arguments, the traced call order and
                       the units (offset, length, xxh3_64 checksum, tensors);
  model.cfg            (darknet) the cfg text the model was built from;
  extra_buffers.safetensors  non-persistent buffers needed to run (absent when there are none).

`trace` records the order in which modules that own weights are called; `group_units` turns that
into load units; `write_pack` / `write_pack_from_module` write a pack; `Pack.open` validates one
(every byte range, name and size is checked before any data reaches a model) and gives the
executor `units`, `read_unit`, `verify_unit` and zero-copy `views`. No pickle anywhere.
"""

from dataclasses import asdict, dataclass, field, fields
import json
import os
from pathlib import Path
import re
import shutil
import time

from demand_layering_ros import direct_io

FORMAT = 'demand_layering_ros.pack'
VERSION = 1
ALIGNMENT = direct_io.PAGE
TENSOR_ALIGNMENT = 64        # inside a unit: any dtype view is aligned, and cache-line friendly
MERGE_BYTES = 64 << 10       # a unit this small merges into the unit always called right before
PAD_PREFIX = '__dlr_pad__.'
WEIGHTS_FILE = 'weights.safetensors'
MANIFEST_FILE = 'manifest.json'
EXTRA_FILE = 'extra_buffers.safetensors'
CFG_FILE = 'model.cfg'
NAMES_FILE = 'model.names'
MAX_HEADER_BYTES = 100 << 20

# manifest dtype name -> safetensors dtype code
ST_CODES = {
    'float64': 'F64', 'float32': 'F32', 'float16': 'F16', 'bfloat16': 'BF16',
    'int64': 'I64', 'int32': 'I32', 'int16': 'I16', 'int8': 'I8',
    'uint64': 'U64', 'uint32': 'U32', 'uint16': 'U16', 'uint8': 'U8', 'bool': 'BOOL',
    'float8_e4m3fn': 'F8_E4M3', 'float8_e5m2': 'F8_E5M2', 'complex64': 'C64',
}
_NAME_PART = re.compile(r'^[A-Za-z0-9_\-:+@]+$')


def _torch():
    import torch
    return torch


def dtype_of(name):
    """Return the torch dtype for a manifest dtype name ('float32')."""
    torch = _torch()
    if name not in ST_CODES or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f'unsupported dtype {name!r}')
    return getattr(torch, name)


def dtype_name(dtype):
    """Return the manifest name of a torch dtype (torch.float32 -> 'float32')."""
    name = str(dtype).replace('torch.', '')
    if name not in ST_CODES:
        raise ValueError(f'dtype {dtype} cannot be stored in a pack '
                         f'(supported: {", ".join(ST_CODES)})')
    return name


def itemsize(name):
    """Return the element size in bytes of a manifest dtype name."""
    return dtype_of(name).itemsize


class PackError(ValueError):
    """A pack is malformed or damaged; the message names the pack, the unit and the offset."""

    def __init__(self, message, pack=None, unit=None, offset=None):
        """Keep the location as attributes and put all of it in the message."""
        self.pack = str(pack) if pack is not None else None
        self.unit = unit
        self.offset = offset
        where = f'unit {unit!r}' if unit is not None else 'unit -'
        at = f'offset {offset}' if offset is not None else 'offset -'
        super().__init__(f'pack {self.pack}: {where}, {at}: {message}')


@dataclass
class TensorInfo:
    """One stored tensor: where it lives in the weights file and where it goes in the model."""

    name: str
    dtype: str
    shape: list
    offset: int              # absolute byte offset in the weights file
    nbytes: int
    module: str
    attr: str
    kind: str                # 'parameter' or 'buffer'
    aliases: list = field(default_factory=list)   # other state-dict names of the same tensor


@dataclass
class Unit:
    """
    One load unit: the tensors of one or more modules, read with a single aligned extent.

    calls / first_call / last_call refer to positions in the pack's `call_order`. last_call is
    the last position that starts while one of the unit's modules is still running (the same as
    its last call unless modules nest), so the unit may be dropped once position last_call + 1
    begins. Units never called in the trace have calls == 0 and first_call/last_call None.
    used_outside_forward: some tensor was used by a torch op while none of its owning modules
    was running (e.g. read by a parent's code); such units must stay resident.
    """

    index: int
    name: str
    modules: list
    offset: int
    length: int
    nbytes: int
    checksum: str
    calls: int
    first_call: object
    last_call: object
    tensors: list
    used_outside_forward: bool = False

    @property
    def end(self):
        """Return the first byte offset after the unit's extent."""
        return self.offset + self.length


# ----------------------------------------------------------------------------- tracing


@dataclass
class Trace:
    """
    Calls of weight-owning modules during one forward pass.

    calls[i] is the module name of the i-th call (pre-hook order); span_end[i] the index of the
    last call that started before call i returned; owners the names of all weight-owning modules
    in named_modules order; outside_uses maps tensor name -> call index at which the tensor was
    used by a torch op while none of its owners was running.
    """

    calls: list
    span_end: list
    owners: list
    outside_uses: dict
    seconds: float


def _owned(module):
    """Yield (attr, tensor, kind) for a module's own parameters and persistent buffers."""
    for attr, p in module._parameters.items():
        if p is not None:
            yield attr, p, 'parameter'
    for attr, b in module._buffers.items():
        if b is not None and attr not in module._non_persistent_buffers_set:
            yield attr, b, 'buffer'


def _module_names(model):
    """Return ({id(module): [names]}, [modules in first-seen order])."""
    names, order = {}, []
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) not in names:
            names[id(m)] = []
            order.append(m)
        names[id(m)].append(name)
    return names, order


def _tensor_owners(model):
    """Return {id(tensor): [module names]} over all weight-owning modules (by canonical name)."""
    names, order = _module_names(model)
    owners = {}
    for m in order:
        for _, t, _ in _owned(m):
            owners.setdefault(id(t), []).append(names[id(m)][0])
    return owners


def _full(module_name, attr):
    return f'{module_name}.{attr}' if module_name else attr


def trace(model, example_input):
    """
    Run `model(example_input)` once (eval, no_grad) and record the weight-owning module calls.

    Forward pre/post hooks go on every module that directly owns parameters or persistent buffers.
    A TorchFunctionMode also notes tensors used while none of their owning modules is running.
    """
    torch = _torch()
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    names, order = _module_names(model)
    owner_modules = [m for m in order if any(True for _ in _owned(m))]
    owner_names = [names[id(m)][0] for m in owner_modules]
    tensor_owner = _tensor_owners(model)
    tensor_name = {}
    for m in owner_modules:
        for attr, t, _ in _owned(m):
            tensor_name.setdefault(id(t), _full(names[id(m)][0], attr))
    calls, span_end, active, stack = [], [], {}, []
    outside = {}

    def pre(module, args):
        name = names[id(module)][0]
        calls.append(name)
        span_end.append(len(calls) - 1)
        stack.append(len(calls) - 1)
        active[name] = active.get(name, 0) + 1

    def post(module, args, output):
        name = names[id(module)][0]
        i = stack.pop()
        span_end[i] = len(calls) - 1
        active[name] -= 1

    class OutsideUses(TorchFunctionMode):

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for leaf in tree_flatten((args, kwargs))[0]:
                if isinstance(leaf, torch.Tensor) and id(leaf) in tensor_owner:
                    if not any(active.get(o, 0) for o in tensor_owner[id(leaf)]):
                        outside.setdefault(tensor_name[id(leaf)], len(calls) - 1)
            return func(*args, **kwargs)

    handles = []
    was_training = model.training
    try:
        for m in owner_modules:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), OutsideUses():
            model(example_input)
        seconds = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Trace(calls=calls, span_end=span_end, owners=owner_names, outside_uses=outside,
                 seconds=seconds)


# ----------------------------------------------------------------------------- grouping


@dataclass
class UnitPlan:
    """A unit before layout: its modules and (name, tensor, module, attr, kind, aliases)."""

    modules: list
    tensors: list
    nbytes: int = 0


def _collect_tensors(model):
    """
    Return (per-module tensor entries, aliases, ties) with tied tensors stored once.

    Entries are (name, tensor, module, attr, kind, aliases). A tensor reached through several
    module paths, or shared by several modules (same object, or same memory, dtype, shape and
    strides), is stored under its first name; the other names become aliases, and `ties` lists
    the groups of modules that share something (they must live in one unit).
    """
    names, order = _module_names(model)
    by_module, aliases = {}, {}
    by_id, by_memory, sharers = {}, {}, {}

    def memory_key(t):
        if not t.numel() or t.device.type == 'meta':
            return None
        return (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))

    for m in order:
        mname = names[id(m)][0]
        by_module.setdefault(mname, [])
        for attr, t, kind in _owned(m):
            full = _full(mname, attr)
            extra = [_full(n, attr) for n in names[id(m)][1:]]
            key = memory_key(t)
            entry = by_id.get(id(t)) or (by_memory.get(key) if key is not None else None)
            if entry is not None:
                entry[5].extend([full] + extra)
                for a in [full] + extra:
                    aliases[a] = entry[0]
                sharers[entry[0]].add(mname)
                continue
            entry = (full, t, mname, attr, kind, list(extra))
            for a in extra:
                aliases[a] = full
            by_id[id(t)] = entry
            if key is not None:
                by_memory[key] = entry
            sharers[full] = {mname}
            by_module[mname].append(entry)
    ties = [sorted(s) for s in sharers.values() if len(s) > 1]
    return by_module, aliases, ties


def _runs(seq):
    out = []
    for u in seq:
        if not out or out[-1] != u:
            out.append(u)
    return out


def group_units(model, tr, merge_bytes=MERGE_BYTES):
    """
    Group the model's tensors into load units using a trace.

    One unit per weight-owning module, except: modules that share a tensor form one unit; a
    called unit of at most `merge_bytes` merges into the unit called right before it when, in
    the call sequence with repeats collapsed, every run of the earlier unit is immediately
    followed by a run of the later one and every run of the later one immediately preceded by
    the earlier (e.g. a BatchNorm after its conv, also across the 5 FPN levels of a shared
    head). Returns (units: list[UnitPlan] in first-use order, uncalled last; call_order;
    span_end; aliases).
    """
    by_module, aliases, ties = _collect_tensors(model)
    parent = {m: m for m in tr.owners}

    def find(m):
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    for group in ties:
        for other in group[1:]:
            parent[find(other)] = find(group[0])
    groups = {}
    for m in tr.owners:
        groups.setdefault(find(m), []).append(m)
    plans = {root: UnitPlan(modules=list(ms), tensors=[e for m in ms for e in by_module[m]])
             for root, ms in groups.items()}
    for p in plans.values():
        p.nbytes = sum(e[1].numel() * e[1].element_size() for e in p.tensors)
    seq = [find(m) for m in tr.calls]
    first = {}
    for i, g in enumerate(seq):
        first.setdefault(g, i)
    called = sorted(first, key=first.get)
    # merge tiny units into their predecessor
    merged_into = {}
    current = None
    for g in called:
        if current is not None and plans[g].nbytes <= merge_bytes:
            runs = _runs([merged_into.get(u, u) for u in seq])
            pa = [i for i, u in enumerate(runs) if u == current]
            pb = [i for i, u in enumerate(runs) if u == g]
            if len(pa) == len(pb) and all(b == a + 1 for a, b in zip(pa, pb)):
                plans[current].modules += plans[g].modules
                plans[current].tensors += plans[g].tensors
                plans[current].nbytes += plans[g].nbytes
                for k, v in list(merged_into.items()):
                    if v == g:
                        merged_into[k] = current
                merged_into[g] = current
                continue
        current = g
    called = [g for g in called if g not in merged_into]
    uncalled = [g for g in plans if g not in first]
    order = called + uncalled
    index = {g: i for i, g in enumerate(order)}
    call_order = [index[merged_into.get(g, g)] for g in seq]
    return [plans[g] for g in order], call_order, list(tr.span_end), aliases


# ----------------------------------------------------------------------------- writing


def _safe_file_name(name):
    return (isinstance(name, str) and name not in ('', '.', '..') and '/' not in name
            and '\\' not in name and '\x00' not in name and not os.path.isabs(name))


def _check_tensor_name(name):
    parts = name.split('.') if isinstance(name, str) else ['']
    return all(p and p != '..' and _NAME_PART.match(p) for p in parts)


def _tensor_bytes(t):
    """Return a flat uint8 CPU view of a tensor's bytes."""
    return t.detach().contiguous().cpu().reshape(-1).view(_torch().uint8)


def _layout(plans, call_order, span_end, tr):
    """Compute offsets relative to the data start; returns (units dicts, header entries, size)."""
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
            pad(direct_io.align_up(pos, TENSOR_ALIGNMENT) - pos)
            nbytes = t.numel() * t.element_size()
            entries.append((name, t, nbytes, pos))
            tensors.append({'name': name, 'dtype': dtype_name(t.dtype), 'shape': list(t.shape),
                            'offset': pos, 'nbytes': nbytes, 'module': module, 'attr': attr,
                            'kind': kind, 'aliases': list(aliases)})
            pos += nbytes
        pad(direct_io.align_up(pos, ALIGNMENT) - pos)
        positions = [k for k, u in enumerate(call_order) if u == i]
        names = {n for e in p.tensors for n in [e[0]] + e[5]}
        units.append({
            'index': i, 'name': p.modules[0] or '(root)', 'modules': list(p.modules),
            'offset': start, 'length': pos - start, 'nbytes': p.nbytes, 'checksum': None,
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
    data_start = direct_io.align_up(8 + len(raw), ALIGNMENT)
    return raw + b' ' * (data_start - 8 - len(raw)), data_start


def _atomic_path(path):
    return path.with_name(f'.{path.name}.tmp-{os.getpid()}')


def _write_json(path, obj):
    tmp = _atomic_path(path)
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_weights(path, units, entries, data_size, progress):
    import xxhash
    header, data_start = _header_bytes(entries, data_size)
    tmp = _atomic_path(path)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=data_size, unit='B', unit_scale=True, desc=f'writing {path.name}')
    zeros = bytes(ALIGNMENT)
    try:
        with open(tmp, 'wb') as f:
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
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    for u in units:
        u['offset'] += data_start
        for t in u['tensors']:
            t['offset'] += data_start
    return data_start, data_start + data_size


def _non_persistent_buffers(model):
    names, order = _module_names(model)
    out = {}
    for m in order:
        for attr, b in m._buffers.items():
            if b is not None and attr in m._non_persistent_buffers_set:
                out[_full(names[id(m)][0], attr)] = b.detach().cpu().contiguous().clone()
    return out


def write_pack_from_module(model, example_input, out_dir, model_info, input_info=None,
                           merge_bytes=MERGE_BYTES, progress=True, extra_files=None,
                           source=None, file_roles=None):
    """
    Trace an already-built model and write a pack to `out_dir`; return the opened Pack.

    model_info: the constructor arguments (JSON) stored as manifest['model'].
    input_info: manifest['input'] (default: {'example': 'example_input', 'batch': 1}).
    extra_files: {file name in the pack: source path} copied in (e.g. {'model.cfg': cfg});
    file_roles: {role: file name} recorded as manifest['model_files'] (default: name -> name).
    String values of model_info equal to such a file name (or 'FAMILY:file name') are made
    absolute by Pack.model_args().
    Files are written under temporary names and renamed; the manifest comes last, so a directory
    with a manifest always holds a complete pack.
    """
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
        if not _safe_file_name(name):
            raise ValueError(f'extra file name {name!r} must be a plain file name')
    tr = trace(model, example_input)
    plans, call_order, span_end, aliases = group_units(model, tr, merge_bytes=merge_bytes)
    units, entries, data_size = _layout(plans, call_order, span_end, tr)
    for name, _, _, _ in entries:
        if not name.startswith(PAD_PREFIX) and not _check_tensor_name(name):
            raise ValueError(f'tensor name {name!r} cannot be stored in a pack '
                             '(allowed: dotted names of [A-Za-z0-9_-:+@] parts)')
    data_start, file_size = _write_weights(out / WEIGHTS_FILE, units, entries, data_size,
                                           progress)
    extra = _non_persistent_buffers(model)
    extra_file = None
    if extra:
        from safetensors.torch import save_file
        tmp = _atomic_path(out / EXTRA_FILE)
        save_file(extra, str(tmp), metadata={'format': FORMAT})
        os.replace(tmp, out / EXTRA_FILE)
        extra_file = EXTRA_FILE
    elif (out / EXTRA_FILE).exists():
        (out / EXTRA_FILE).unlink()
    for name, src in (extra_files or {}).items():
        tmp = _atomic_path(out / name)
        shutil.copyfile(src, tmp)
        os.replace(tmp, out / name)
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
    _write_json(out / MANIFEST_FILE, manifest)
    return Pack.open(out)


def _darknet_cfg_path(arg):
    p = Path(arg)
    if p.is_file():
        return p
    from demand_layering_ros.models import assets
    return Path(assets.darknet_cfg(arg))


def write_pack(spec, out_dir, weights=None, seed=None, input_size=None, progress=True,
               merge_bytes=MERGE_BYTES, verify=True):
    """
    Build `spec` through the registry, trace it and write a pack; return the opened Pack.

    For darknet the cfg text is copied into the pack as model.cfg and manifest['model']['spec']
    refers to it relative to the pack ('darknet:model.cfg'). verify=True reads the pack back
    (O_DIRECT, checksums) and compares every tensor with the model's state dict.
    """
    from demand_layering_ros.models import registry
    det = registry.build(spec, weights=weights, seed=seed, input_size=input_size)
    info = dict(registry.constructor_args(det))
    info['weights'] = None
    extra_files, roles = {}, {}
    family, arg = registry.split_spec(info.get('spec', spec))
    if family == 'darknet':
        extra_files[CFG_FILE] = _darknet_cfg_path(arg)
        roles['cfg'] = CFG_FILE
        info['spec'] = f'darknet:{CFG_FILE}'
        if info.get('names'):
            extra_files[NAMES_FILE] = Path(info['names'])
            roles['names'] = NAMES_FILE
            info['names'] = NAMES_FILE
    size = list(det.input_size) if det.input_size is not None else None
    input_info = {'example': 'detector.example_input', 'input_size': size, 'batch': 1}
    source = {'spec': spec, 'weights': str(weights) if weights else None, 'seed': seed}
    pack = write_pack_from_module(det.model, det.example_input(1), out_dir, info,
                                  input_info=input_info, merge_bytes=merge_bytes,
                                  progress=progress, extra_files=extra_files, source=source,
                                  file_roles=roles)
    if verify:
        pack.check_against(det.model.state_dict())
    return pack


# ----------------------------------------------------------------------------- reading


class Pack:
    """
    An opened, validated pack.

    Attributes: path (directory), manifest (dict), units (list[Unit]), weights_path,
    file_size, data_offset, call_order, uncalled_units, aliases ({alias: stored name}),
    module_unit ({module name: unit index}, aliases of module paths included).
    """

    def __init__(self, path, manifest):
        """Use Pack.open(path); this constructor does not validate."""
        self.path = Path(path)
        self.manifest = manifest
        tfields = [f.name for f in fields(TensorInfo)]
        ufields = [f.name for f in fields(Unit) if f.name != 'tensors']
        self.units = [Unit(**{k: u[k] for k in ufields if k in u},
                           tensors=[TensorInfo(**{k: t[k] for k in tfields if k in t})
                                    for t in u['tensors']])
                      for u in manifest['units']]
        self.weights_path = self.path / manifest['weights_file']
        self.file_size = manifest['file_size']
        self.data_offset = manifest['data_offset']
        self.call_order = manifest['call_order']
        self.uncalled_units = manifest['uncalled_units']
        self.aliases = manifest.get('aliases', {})
        self.module_unit = {}
        for u in self.units:
            for m in u.modules:
                self.module_unit[m] = u.index
        for alias, name in self.aliases.items():
            for u in self.units:
                for t in u.tensors:
                    if t.name == name:
                        self.module_unit.setdefault(alias.rpartition('.')[0], u.index)

    def __repr__(self):
        """Describe the pack briefly."""
        return (f'Pack({str(self.path)!r}, units={len(self.units)}, '
                f'bytes={self.file_size}, spec={self.manifest["model"].get("spec")!r})')

    @classmethod
    def open(cls, path):  # noqa: A003 - the name the team's design uses
        """Read and validate a pack directory; raise PackError naming what is wrong."""
        path = Path(path)
        mpath = path / MANIFEST_FILE
        if not path.is_dir():
            raise PackError(f'no such pack directory {path}', pack=path)
        if not mpath.is_file():
            raise PackError(f'missing {MANIFEST_FILE} (not a pack, or its writing did not '
                            'finish)', pack=path)
        try:
            with open(mpath, 'rb') as f:
                manifest = json.loads(f.read().decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise PackError(f'{MANIFEST_FILE} is not valid JSON: {e}', pack=path) from None
        _validate_manifest(path, manifest)
        pack = cls(path, manifest)
        _validate_file(pack)
        return pack

    @property
    def total_bytes(self):
        """Return the sum of all unit extents (what streaming the whole pack reads)."""
        return sum(u.length for u in self.units)

    def unit(self, name_or_index):
        """Return a unit by index or name."""
        if isinstance(name_or_index, int):
            return self.units[name_or_index]
        for u in self.units:
            if u.name == name_or_index:
                return u
        raise KeyError(f'pack {self.path}: no unit named {name_or_index!r}')

    def reader(self, **kwargs):
        """Return a direct_io.Reader over the weights file (kwargs as Reader)."""
        return direct_io.Reader(self.weights_path, **kwargs)

    def _checksum_error(self, unit, got):
        return PackError(f'checksum mismatch over [{unit.offset}, {unit.end}) '
                         f'({self.manifest["checksum_algorithm"]} {got}, manifest says '
                         f'{unit.checksum}): the weights file is damaged',
                         self.path, unit.name, unit.offset)

    def verify_unit(self, unit, buf):
        """Check a unit's checksum over buf[:unit.length]; raise PackError on mismatch."""
        mv = direct_io.as_memoryview(buf)
        if mv.nbytes < unit.length:
            raise PackError(f'buffer holds {mv.nbytes} bytes, unit extent is {unit.length}',
                            self.path, unit.name, unit.offset)
        got = direct_io.checksum(mv[:unit.length])
        if got != unit.checksum:
            raise self._checksum_error(unit, got)

    def read_unit(self, reader, unit, dest, verify=True):
        """
        Queue the read of one unit's extent into dest[:unit.length]; return a ReadFuture.

        dest: page-aligned uint8 tensor (aligned_empty), or a slice of one at a PAGE multiple.
        With verify=True the checksum is computed in the reader's verify thread as the chunks
        arrive; a mismatch makes the future raise PackError (pack, unit, offset), so damaged
        bytes never reach a model as long as callers wait on the future before using `views`.
        """
        if verify:
            return reader.submit(unit.offset, unit.length, dest, expected_checksum=unit.checksum,
                                 checksum_error=lambda got: self._checksum_error(unit, got))
        return reader.submit(unit.offset, unit.length, dest)

    def views(self, unit, buf):
        """
        Return {tensor name: tensor} as zero-copy views over a buffer holding the unit's extent.

        buf: uint8 tensor (CPU, pinned or CUDA) whose byte 0 is the unit's first byte. Alias
        names map to the same view.
        """
        torch = _torch()
        if not isinstance(buf, torch.Tensor):
            buf = torch.frombuffer(buf, dtype=torch.uint8)
        if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() < unit.length:
            raise PackError(f'view buffer must be 1-D uint8 with >= {unit.length} bytes, got '
                            f'{buf.dtype} {tuple(buf.shape)}', self.path, unit.name, unit.offset)
        out = {}
        for t in unit.tensors:
            start = t.offset - unit.offset
            v = buf[start:start + t.nbytes].view(dtype_of(t.dtype)).reshape(t.shape)
            out[t.name] = v
            for a in t.aliases:
                out[a] = v
        return out

    def load_state_dict(self, reader=None, verify=True, pin=False):
        """
        Read every unit (O_DIRECT) into one aligned buffer; return the state dict as views.

        The dict includes alias names (tied tensors) and no padding; all tensors share one
        buffer, so its memory is the pack's total extent size.
        """
        own = reader is None
        reader = reader or self.reader()
        try:
            buf = direct_io.aligned_empty(self.total_bytes, pin=pin)
            futures, pos, where = [], 0, []
            for u in self.units:
                futures.append(self.read_unit(reader, u, buf[pos:pos + u.length], verify))
                where.append(pos)
                pos += u.length
            for f in futures:
                f.result()
        finally:
            if own:
                reader.close()
        state = {}
        for u, pos in zip(self.units, where):
            state.update(self.views(u, buf[pos:pos + u.length]))
        return state

    def extra_buffers(self):
        """Return the non-persistent buffers needed to run ({} when the pack has none)."""
        name = self.manifest.get('extra_buffers_file')
        if not name:
            return {}
        from safetensors.torch import load_file
        return load_file(str(self.path / name))

    def model_args(self):
        """Return manifest['model'] with pack-relative files (darknet cfg) made absolute."""
        args = dict(self.manifest['model'])
        files = set(self.manifest.get('model_files', {}).values())
        root = self.path.resolve()
        for key, value in args.items():
            if not isinstance(value, str):
                continue
            if value in files:
                args[key] = str(root / value)
            elif key == 'spec' and value.partition(':')[2] in files:
                family, _, arg = value.partition(':')
                args[key] = f'{family}:{root / arg}'
        args['weights'] = None
        return args

    def build_detector(self, device='cpu', meta=True):
        """Build the model skeleton (meta=True: no weight memory) through the registry."""
        from demand_layering_ros.models import registry
        args = self.model_args()
        args.update(device=device, meta=meta)
        return registry.build(**args)

    def check_against(self, state_dict):
        """Read the whole pack back and compare every tensor with `state_dict` (torch.equal)."""
        torch = _torch()
        got = self.load_state_dict()
        missing = sorted(set(state_dict) - set(got))
        unexpected = sorted(set(got) - set(state_dict))
        if missing or unexpected:
            raise PackError(f'pack does not match the model: missing {missing[:5]}, '
                            f'unexpected {unexpected[:5]}', self.path)
        for name, t in state_dict.items():
            g = got[name]
            if g.dtype != t.dtype or g.shape != t.shape or not torch.equal(g, t.cpu()):
                u = self.unit(self.module_unit.get(name.rpartition('.')[0], 0))
                raise PackError(f'tensor {name} differs from the model', self.path, u.name,
                                u.offset)

    def summary(self):
        """Return a dict of headline numbers (for the CLI and logs)."""
        lengths = [u.length for u in self.units]
        return {'pack': str(self.path), 'spec': self.manifest['model'].get('spec'),
                'units': len(self.units), 'uncalled_units': len(self.uncalled_units),
                'calls': len(self.call_order), 'file_size': self.file_size,
                'payload_bytes': self.manifest['total_nbytes'],
                'largest_unit': max(lengths) if lengths else 0,
                'smallest_unit': min(lengths) if lengths else 0,
                'checksum_algorithm': self.manifest['checksum_algorithm']}


# ----------------------------------------------------------------------------- validation


def _need(cond, message, pack, unit=None, offset=None):
    if not cond:
        raise PackError(message, pack, unit, offset)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_manifest(path, m):
    """Check the manifest on its own: format, version, types, names, ranges, call order."""
    _need(isinstance(m, dict), 'manifest must be a JSON object', path)
    _need(m.get('format') == FORMAT, f'not a pack manifest (format {m.get("format")!r}, '
          f'expected {FORMAT!r})', path)
    _need(m.get('version') == VERSION, f'unknown pack format version {m.get("version")!r} '
          f'(this reader understands version {VERSION}); rewrite the pack with `pack`', path)
    for key in ('model', 'units', 'call_order', 'uncalled_units', 'file_size', 'data_offset',
                'weights_file', 'alignment', 'checksum_algorithm'):
        _need(key in m, f'manifest lacks {key!r}', path)
    _need(m['checksum_algorithm'] == direct_io.CHECKSUM_ALGORITHM,
          f'unknown checksum algorithm {m["checksum_algorithm"]!r}', path)
    _need(isinstance(m['model'], dict), "manifest 'model' must be an object", path)
    align = m['alignment']
    _need(_is_int(align) and align > 0 and align % direct_io.PAGE == 0,
          f'alignment {align!r} must be a positive multiple of {direct_io.PAGE}', path)
    names = [('weights_file', m['weights_file'])]
    if m.get('extra_buffers_file') is not None:
        names.append(('extra_buffers_file', m['extra_buffers_file']))
    files = m.get('model_files', {})
    _need(isinstance(files, dict), "manifest 'model_files' must be an object", path)
    names += [(f'model_files[{k!r}]', v) for k, v in files.items()]
    root = Path(path).resolve()
    for key, name in names:
        _need(_safe_file_name(name), f'{key} {name!r} must be a plain file name inside the '
              'pack (no path separators, no "..", not absolute)', path)
        resolved = (Path(path) / name).resolve()
        _need(resolved.parent == root, f'{key} {name!r} resolves to {resolved}, outside the '
              f'pack directory {root}', path)
    size, data_offset = m['file_size'], m['data_offset']
    _need(_is_int(size) and size >= 0, f'file_size {size!r} must be a non-negative integer',
          path)
    _need(_is_int(data_offset) and data_offset % align == 0 and 8 <= data_offset <= size,
          f'data_offset {data_offset!r} must be an aligned offset inside the file', path)
    units = m['units']
    _need(isinstance(units, list), "manifest 'units' must be a list", path)
    uncalled = m['uncalled_units']
    _need(isinstance(uncalled, list) and all(_is_int(i) and 0 <= i < len(units)
                                             for i in uncalled),
          'uncalled_units must list unit indices', path)
    aliases = m.get('aliases', {})
    _need(isinstance(aliases, dict), "manifest 'aliases' must be an object", path)
    call_order = m['call_order']
    _need(isinstance(call_order, list) and all(_is_int(c) and 0 <= c < len(units)
                                               for c in call_order),
          'call_order must list unit indices', path)
    seen_names, prev_end = set(), data_offset
    unit_keys = ('index', 'name', 'modules', 'offset', 'length', 'nbytes', 'checksum', 'calls',
                 'first_call', 'last_call', 'tensors')
    for i, u in enumerate(units):
        _need(isinstance(u, dict) and all(k in u for k in unit_keys),
              f'unit #{i} lacks one of {unit_keys}', path, unit=f'#{i}')
        name, off, length = u['name'], u['offset'], u['length']
        _need(isinstance(name, str) and name, f'unit #{i} has no name', path, f'#{i}')
        _need(u['index'] == i, f'unit index {u["index"]!r} != position {i}', path, name)
        _need(_is_int(off) and _is_int(length) and off >= 0 and length >= 0,
              f'offset/length {off!r}/{length!r} must be non-negative integers', path, name)
        _need(isinstance(u['modules'], list) and u['modules']
              and all(isinstance(x, str) for x in u['modules']),
              'modules must be a non-empty list of module names', path, name, off)
        _need(_is_int(u['nbytes']), 'nbytes must be an integer', path, name, off)
        _need(off % align == 0 and length % align == 0,
              f'extent [{off}, {off + length}) is not aligned to {align}', path, name, off)
        _need(off >= prev_end, f'extent starts before the previous unit ends ({prev_end}) or '
              'inside the header', path, name, off)
        _need(off + length <= size, f'extent [{off}, {off + length}) runs past the end of the '
              f'weights file ({size} bytes)', path, name, off)
        prev_end = off + length
        _need(isinstance(u['checksum'], str) and re.fullmatch(r'[0-9a-f]{16}', u['checksum']),
              f'bad checksum {u["checksum"]!r}', path, name, off)
        positions = [k for k, c in enumerate(call_order) if c == i]
        calls, first, last = u['calls'], u['first_call'], u['last_call']
        if positions:
            _need(calls == len(positions) and first == positions[0] and _is_int(last)
                  and positions[-1] <= last < len(call_order),
                  f'calls/first_call/last_call ({calls}, {first}, {last}) disagree with '
                  'call_order', path, name, off)
        else:
            _need(calls == 0 and first is None and last is None and i in uncalled,
                  'unit never appears in call_order but is not listed as uncalled',
                  path, name, off)
        tensors = u['tensors']
        _need(isinstance(tensors, list), 'tensors must be a list', path, name, off)
        payload = 0
        for t in tensors:
            _validate_tensor(path, name, off, length, t, seen_names)
            payload += t['nbytes']
        end = off
        for t in sorted(tensors, key=lambda t: t['offset']):
            _need(t['offset'] >= end, f'tensor {t["name"]} overlaps the tensor before it',
                  path, name, t['offset'])
            end = t['offset'] + t['nbytes']
        _need(u['nbytes'] == payload, f'nbytes {u["nbytes"]!r} != sum of tensor sizes '
              f'{payload}', path, name, off)
    for a, target in aliases.items():
        _need(_check_tensor_name(a) and isinstance(target, str) and target in seen_names,
              f'alias {a!r} -> {target!r} is not a stored tensor', path)


def _validate_tensor(path, unit_name, uoff, ulen, t, seen):
    keys = ('name', 'dtype', 'shape', 'offset', 'nbytes', 'module', 'attr', 'kind')
    _need(isinstance(t, dict) and all(k in t for k in keys), f'a tensor lacks one of {keys}',
          path, unit_name, uoff)
    name, off, nbytes = t['name'], t['offset'], t['nbytes']
    _need(_check_tensor_name(name) and not name.startswith(PAD_PREFIX),
          f'bad tensor name {name!r} (dotted [A-Za-z0-9_-:+@] parts only; no "/", "..")',
          path, unit_name, uoff)
    _need(_is_int(off) and _is_int(nbytes) and off >= 0 and nbytes >= 0,
          f'tensor {name}: offset/nbytes must be non-negative integers', path, unit_name, uoff)
    aliases = t.get('aliases', [])
    _need(isinstance(aliases, list) and all(_check_tensor_name(a) for a in aliases),
          f'bad alias names {aliases!r} of {name}', path, unit_name, off)
    _need(isinstance(t['module'], str) and isinstance(t['attr'], str)
          and _full(t['module'], t['attr']) == name,
          f'tensor {name}: module {t["module"]!r} + attr {t["attr"]!r} do not make its name',
          path, unit_name, off)
    _need(name not in seen, f'tensor {name} stored twice', path, unit_name, off)
    seen.add(name)
    dtype = t['dtype']
    _need(isinstance(dtype, str) and dtype in ST_CODES, f'tensor {name}: unknown dtype '
          f'{dtype!r}', path, unit_name, off)
    shape = t['shape']
    _need(isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape),
          f'tensor {name}: bad shape {shape!r}', path, unit_name, off)
    numel = 1
    for s in shape:
        numel *= s
    _need(nbytes == numel * itemsize(dtype),
          f'tensor {name}: nbytes {nbytes!r} != {numel} x {dtype}', path, unit_name, off)
    _need(uoff <= off and off + nbytes <= uoff + ulen,
          f'tensor {name}: bytes [{off}, {off + nbytes}) lie outside the unit extent '
          f'[{uoff}, {uoff + ulen})', path, unit_name, off)
    _need(off % itemsize(dtype) == 0, f'tensor {name}: offset not aligned to its dtype',
          path, unit_name, off)
    _need(t['kind'] in ('parameter', 'buffer'), f'tensor {name}: bad kind {t["kind"]!r}',
          path, unit_name, off)


def _validate_file(pack):
    """Check the weights file against the manifest: presence, size, safetensors header."""
    wp, units = pack.weights_path, pack.units
    first = units[0] if units else None
    fname, foff = (first.name, first.offset) if first else (None, None)
    if not wp.is_file():
        raise PackError(f'weights file {wp} is missing', pack.path, fname, foff)
    actual = wp.stat().st_size
    if actual != pack.file_size:
        bad = next((u for u in units if u.end > actual), None)
        if bad is not None:
            raise PackError(f'weights file is truncated: {actual} bytes on disk, manifest says '
                            f'{pack.file_size}; extent [{bad.offset}, {bad.end}) runs past the '
                            'end', pack.path, bad.name, bad.offset)
        raise PackError(f'weights file has {actual} bytes, manifest says {pack.file_size}',
                        pack.path, None, min(actual, pack.file_size))
    fd = os.open(wp, os.O_RDONLY)
    try:
        head = os.pread(fd, 8, 0)
        n = int.from_bytes(head, 'little') if len(head) == 8 else -1
        _need(8 + n == pack.data_offset and n <= MAX_HEADER_BYTES,
              f'safetensors header length {n} does not match data_offset {pack.data_offset}',
              pack.path, fname, 0)
        raw = os.pread(fd, n, 8)
        os.posix_fadvise(fd, 0, 8 + n, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise PackError(f'safetensors header is not valid JSON: {e}', pack.path, fname,
                        8) from None
    _need(isinstance(header, dict), 'safetensors header is not a JSON object', pack.path, fname,
          8)
    for u in units:
        for t in u.tensors:
            h = header.get(t.name)
            want = {'dtype': ST_CODES[t.dtype], 'shape': t.shape,
                    'data_offsets': [t.offset - pack.data_offset,
                                     t.offset - pack.data_offset + t.nbytes]}
            _need(isinstance(h, dict) and all(h.get(k) == v for k, v in want.items()),
                  f'tensor {t.name}: safetensors header says {h!r}, manifest says {want}',
                  pack.path, u.name, t.offset)


def unit_table(pack):
    """Return the units as plain dicts (for JSON output)."""
    return [dict(asdict(u), tensors=len(u.tensors)) for u in pack.units]


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser, command):
    """Add the `pack` command's options."""
    parser.add_argument('--model', help='model spec: torchvision:NAME, darknet:CFG, FAMILY:ARG')
    parser.add_argument('--weights', default=None, help='weights file (default: seeded random)')
    parser.add_argument('--seed', type=int, default=None, help='seed for random weights')
    parser.add_argument('--input-size', default=None, help='model input size HxW, e.g. 416x416')
    parser.add_argument('--out', help='pack directory to write')
    parser.add_argument('--merge-bytes', type=int, default=MERGE_BYTES,
                        help='merge units up to this size into the unit called right before '
                             '(0: one unit per module)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip reading the pack back and comparing it with the model')
    parser.add_argument('--check', metavar='PACK_DIR', default=None,
                        help='instead of writing: validate PACK_DIR and verify every checksum')


def run(args, command):
    """Write (or check) a pack; print a JSON summary line."""
    if args.check:
        pack = Pack.open(args.check)
        with pack.reader() as reader:
            buf = direct_io.aligned_empty(max([u.length for u in pack.units] + [0]))
            for u in pack.units:
                pack.read_unit(reader, u, buf).result()
            summary = dict(pack.summary(), io_mode=reader.mode, checked='ok')
        print(json.dumps(summary))
        return 0
    if not args.model or not args.out:
        raise SystemExit('pack: --model and --out are required (or --check PACK_DIR)')
    pack = write_pack(args.model, args.out, weights=args.weights, seed=args.seed,
                      input_size=args.input_size, merge_bytes=args.merge_bytes,
                      verify=not args.no_verify)
    print(json.dumps(pack.summary()))
    return 0
