# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Run a model while only a budgeted part of its weights is in memory: Demand Layering.

The model is built as a skeleton on torch's 'meta' device (no weight memory). Forward hooks give
each load unit's modules real tensors just before they run and take them away after the unit's
last call in the pass. The tensors are zero-copy views into an arena (CPU: the memory the reader
wrote with O_DIRECT; CUDA: a device arena fed from a pinned staging ring by a copy stream, or,
for unified memory, page-locked device-mapped host memory used in place). A loader thread reads
units in first-use order into the offsets that `arena.plan_layout` chose by replaying the pass,
as early as space and `prefetch_depth` allow, so reading overlaps compute; when a pass ends it
starts on the next pass at once. Units called out of the recorded order are read on demand
(`demand_misses`): slower, never wrong. Units above `split_bytes` (a Conv2d or Linear) are
computed in chunks of output channels so the largest layer no longer sets the memory floor.
Chunked results are not guaranteed bit-identical: a BLAS, oneDNN or cuDNN may pick another
kernel for a chunk. Most CPU tests were exact (Darknet Conv2d, torchvision's 51 MB box-head
Linear), but yolov3-tiny at 64x64 with 2 threads differed by up to 1.2e-7 (float32, 1.2 MB
chunks of layers 10/12/14/21); the planner only uses split sizes it measured exact, and the CUDA
test prints the largest difference it sees. Without a split (a budget above the largest unit),
outputs are always bit-identical.
"""

import copy
import functools
import mmap
import os
import threading
import time
import weakref

from demand_layering_ros import direct_io
from demand_layering_ros.pack import dtype_of, Pack, PackError
from demand_layering_ros.runtime.arena import Allocator, ArenaTooSmall, Item, load_order
from demand_layering_ros.runtime.arena import min_layout, plan_layout
from demand_layering_ros.sizes import align_up, MB, PAGE
import torch
from torch import nn
import torch.nn.functional as F
import xxhash

READER_THREADS = 2                # O_DIRECT worker threads per open pack file
PIECE_BYTES = 4 * MB              # a slot's range is claimed and read piece by piece
EMPTY, READING, READY, FAILED, DONE = 'empty', 'reading', 'ready', 'failed', 'done'
PLAN_KEYS = ('resident_units', 'arena_bytes', 'split_bytes', 'prefetch_depth', 'staging',
             'predicted_latency_ms', 'predicted_peak_weight_mb')
STAGINGS = ('copy', 'zero_copy')
WAIT_TIMEOUT_S = 300.0            # a wait this long for one unit is reported, not endured


class ExecutorError(RuntimeError):
    """The executor cannot run as configured (bad plan, bad option, broken pipeline)."""


class UnitReadError(OSError):
    """Reading a unit from the pack failed (I/O error, short file); names pack, unit, offset."""

    def __init__(self, err, pack, unit, offset):
        """Wrap the reader's error with the unit it was reading."""
        super().__init__(getattr(err, 'errno', None) or 5,
                         f'pack {pack}: unit {unit!r}, offset {offset}: read failed: {err}')
        self.pack, self.unit, self.offset = str(pack), unit, offset


def _named(err, pack, unit, offset):
    """Return the exception to raise for a failed read: PackErrors already name the unit."""
    if isinstance(err, (PackError, UnitReadError)) or not isinstance(err, OSError):
        return err
    e = UnitReadError(err, pack, unit, offset)
    e.__cause__ = err
    return e


# ----------------------------------------------------------------------------- plans


def read_plan(plan):
    """Return a plan as a dict: None -> {}, a dict as is, a path -> parsed PLAN.yaml/.json."""
    if plan is None:
        return {}
    if isinstance(plan, (str, os.PathLike)):
        import yaml
        path = os.fspath(plan)
        try:
            with open(path) as f:
                plan = yaml.safe_load(f)
        except OSError as e:
            raise ExecutorError(f'cannot read plan {path}: {e}') from e
        except yaml.YAMLError as e:
            raise ExecutorError(f'plan {path} is not valid YAML: {e}') from e
        where = path
    else:
        where = 'plan'
    if not isinstance(plan, dict):
        raise ExecutorError(f'{where}: a plan must be a mapping with keys {PLAN_KEYS}, '
                            f'got {type(plan).__name__}')
    plan = dict(plan)
    resident = plan.get('resident_units')
    if resident is not None and (not isinstance(resident, (list, tuple))
                                 or not all(isinstance(n, str) for n in resident)):
        raise ExecutorError(f'{where}: resident_units must be a list of unit names')
    for key in ('arena_bytes', 'split_bytes', 'prefetch_depth'):
        v = plan.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ExecutorError(f'{where}: {key} must be a non-negative integer or null, '
                                f'got {v!r}')
    staging = plan.get('staging')
    if staging is not None and staging not in STAGINGS:
        raise ExecutorError(f'{where}: staging must be one of {STAGINGS}, got {staging!r}')
    return plan


def check_options(device='cpu', staging='copy', threads=READER_THREADS, split_bytes=None,
                  prefetch_depth=None, staging_bytes=None):
    """Validate load() options before anything is opened; return the torch.device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ExecutorError(f'device {device!r} is not a torch device: {e}') from None
    if dev.type not in ('cpu', 'cuda'):
        raise ExecutorError(f'device {device!r}: only cpu and cuda are supported')
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ExecutorError(f'device {device!r}: CUDA is not available on this machine')
    if staging not in STAGINGS:
        raise ExecutorError(f'staging must be one of {STAGINGS}, got {staging!r}')
    for name, value, low in (('threads', threads, 1), ('split_bytes', split_bytes, 0),
                             ('prefetch_depth', prefetch_depth, 0),
                             ('staging_bytes', staging_bytes, 0)):
        if value is None and name != 'threads':
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ExecutorError(f'{name} must be an integer >= {low}'
                                f'{" or None" if name != "threads" else ""}, got {value!r}')
    return dev


# ----------------------------------------------------------------------------- bookkeeping


class _Target:
    """One place a tensor goes: module._parameters[attr] or module._buffers[attr]."""

    __slots__ = ('module', 'attr', 'kind', 'placeholder')

    def __init__(self, module, attr, kind):
        self.module = module
        self.attr = attr
        self.kind = kind
        table = module._parameters if kind == 'parameter' else module._buffers
        self.placeholder = table[attr]          # the meta tensor put back on release

    def put(self, tensor):
        if self.kind == 'parameter':
            self.module._parameters[self.attr] = tensor
        else:
            self.module._buffers[self.attr] = tensor

    def unset(self):
        self.put(self.placeholder)


class _TensorRef:
    """A tensor of a slot: where it is in the slot's bytes and where it goes in the model."""

    __slots__ = ('name', 'dtype', 'shape', 'rel', 'nbytes', 'targets')

    def __init__(self, name, dtype, shape, rel, nbytes, targets):
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.rel = rel
        self.nbytes = nbytes
        self.targets = targets

    def view(self, buf):
        t = buf[self.rel:self.rel + self.nbytes]
        if self.dtype != torch.uint8:
            t = t.view(self.dtype)
        return t.view(self.shape)


class _Slot:
    """
    A byte range of the pack that occupies arena space as one piece.

    kind 'unit' (a whole unit), 'rest' (a split unit minus its big weight) or 'chunk' (rows
    [r0, r1) of a split weight). Per pass: state, read/copy timing; per layout: offset, rank.
    """

    def __init__(self, unit, kind, name, file_offset, length, tensors, rows=None):
        self.unit = unit
        self.kind = kind
        self.name = name
        self.file_offset = file_offset
        self.length = length
        self.tensors = tensors
        self.rows = rows
        self.checksum = None            # expected digest for rest/chunk slots (unit: manifest)
        self.offset = None              # arena offset from the layout
        self.pieces = [(0, length)]     # (offset in slot, bytes): claimed as they come free
        self.rank = None                # position in load order
        self.first_step = self.last_step = None
        self.overlaps = []              # slots whose arena ranges overlap this one (incl. self)
        self.release_seq = -1           # CUDA: order of the last release event
        self.release_event = None
        self.reset()

    def reset(self):
        self.state = EMPTY
        self.claimed = False            # holds some of its arena range (claim to release)
        self.got = []                   # indices of the pieces claimed so far
        self.inflight = 0               # pieces claimed and not yet read and verified
        self.pieces_done = 0
        self.error = None
        self.buf = None                 # the bytes the model uses (host or device)
        self.wait_event = None          # CUDA: copy stream waits for this before overwriting
        self.copy_event = None
        self.t = {}                     # read/copy/compute start/end (floats or CUDA events)

    @property
    def whole(self):
        """Return True once every piece of the range is claimed."""
        return len(self.got) == len(self.pieces)

    def missing(self):
        """Return the (offset in slot, bytes) pieces not claimed yet."""
        return [p for i, p in enumerate(self.pieces) if i not in self.got]


class _Unit:
    """Run-time state of one load unit."""

    def __init__(self, info, targets_by_tensor):
        self.info = info
        self.index = info.index
        self.name = info.name
        self.calls = info.calls
        self.targets = targets_by_tensor          # tensor name -> [_Target]
        self.modules = []
        self.leaf = True                          # no other unit's module runs inside ours
        self.resident = False
        self.main = None                          # _Slot holding everything but a split weight
        self.chunks = []                          # _Slot per chunk of a split weight
        self.split = None                         # (module, weight targets) when split
        self.reset()

    def reset(self):
        self.done = 0
        self.active = 0
        self.loaded = False
        self.lease = None                         # a demand miss's bytes (see _miss)
        self.t = {}


# ----------------------------------------------------------------------------- zero-copy


class _DeviceArray:
    """Expose host memory mapped into the GPU's address space to torch.as_tensor."""

    def __init__(self, addr, nbytes):
        self.__cuda_array_interface__ = {'shape': (nbytes,), 'typestr': '|u1',
                                         'data': (addr, False), 'version': 3}


def _mapped_host_arena(nbytes, device):
    """Return (host uint8 tensor, CUDA uint8 tensor over the same memory, unregister fn)."""
    nbytes = max(align_up(nbytes), PAGE)
    buf = mmap.mmap(-1, nbytes)
    host = torch.frombuffer(buf, dtype=torch.uint8)
    addr = host.data_ptr()
    rc = int(torch.cuda.cudart().cudaHostRegister(addr, nbytes, 2))   # 2: cudaHostRegisterMapped
    if rc != 0:
        raise ExecutorError(f'cudaHostRegister of a {nbytes}-byte zero-copy arena failed '
                            f'(cudaError {rc}); use staging=copy')
    with torch.cuda.device(device):
        dev = torch.as_tensor(_DeviceArray(addr, nbytes), device=device)

    def unregister():
        torch.cuda.synchronize(device)
        torch.cuda.cudart().cudaHostUnregister(host.data_ptr())   # before the mmap goes

    return host, dev, unregister


# ----------------------------------------------------------------------------- the engine


class _Engine:
    """
    Everything that runs a demand-layered pass; owned by a DemandLayeredModel.

    It never references the DemandLayeredModel, so dropping the model finalises the engine
    (threads stopped, arena freed) without waiting for the cyclic garbage collector.
    """

    def __init__(self, pack, model, device, staging='copy', threads=READER_THREADS, direct=True,
                 timeline=True, sync=True, throttle_bytes_per_s=None, fault_injector=None,
                 split_bytes=None, prefetch_depth=None, staging_bytes=None):
        self.pack = pack
        self.model = model
        self.device = check_options(device=device, staging=staging, threads=threads,
                                    split_bytes=split_bytes, prefetch_depth=prefetch_depth,
                                    staging_bytes=staging_bytes)
        if self.device.type == 'cuda' and self.device.index is None:
            self.device = torch.device('cuda', torch.cuda.current_device())
        self.cuda = self.device.type == 'cuda'
        self.opts = {'staging': staging, 'split_bytes': split_bytes,
                     'prefetch_depth': prefetch_depth, 'staging_bytes': staging_bytes}
        self.timeline_on = timeline
        self.sync = sync
        self.cond = threading.Condition()
        self.pass_lock = threading.Lock()
        self.closed = False
        self.configured = False
        self.hooks = []
        self.loader = None
        self.passes = 0
        self.total_misses = 0
        self.last = {'latency_ms': None, 'stall_ms': 0.0, 'demand_misses': 0, 'timeline': []}
        self.peak = 0
        self.transient_bytes = 0
        self._build_units()
        reader_kw = {'threads': threads, 'direct': direct, 'fault_injector': fault_injector,
                     'throttle_bytes_per_s': throttle_bytes_per_s}
        self.reader = pack.reader(**reader_kw)
        try:
            self.sync_reader = pack.reader(**reader_kw)   # misses, residents, load-time checks
        except BaseException:
            self.reader.close()
            raise

    # ------------------------------------------------------------------ structure

    def _build_units(self):
        modules = dict(self.model.named_modules(remove_duplicate=False))
        self.modules = modules
        self.units = []
        managed = set()
        for info in self.pack.units:
            targets = {}
            for t in info.tensors:
                lst, seen = [], set()
                for full in [t.name] + list(t.aliases):
                    mname, _, attr = full.rpartition('.')
                    mod = modules.get(mname)
                    if mod is None:
                        raise PackError(f'tensor {full}: the model has no module {mname!r}',
                                        self.pack.path, info.name, t.offset)
                    if attr in mod._parameters:
                        kind = 'parameter'
                    elif attr in mod._buffers:
                        kind = 'buffer'
                    else:
                        raise PackError(f'tensor {full}: module {mname!r} has no parameter or '
                                        f'buffer {attr!r}', self.pack.path, info.name, t.offset)
                    if (id(mod), attr) in seen:
                        continue
                    seen.add((id(mod), attr))
                    managed.add((id(mod), attr))
                    placeholder = (mod._parameters if kind == 'parameter' else mod._buffers)[attr]
                    have = None if placeholder is None else list(placeholder.shape)
                    if have != list(t.shape):
                        raise PackError(f'tensor {full}: pack shape {t.shape} does not match '
                                        f'the model ({have})', self.pack.path, info.name,
                                        t.offset)
                    lst.append(_Target(mod, attr, kind))
                targets[t.name] = lst
            unit = _Unit(info, targets)
            unit.modules = [modules[m] for m in info.modules if m in modules]
            self.units.append(unit)
        owners = [(u, m) for u in self.units for m in u.info.modules]
        for u in self.units:
            u.leaf = not any(v is not u and (m == '' or n.startswith(m + '.'))
                             for m in u.info.modules for v, n in owners)
        # Non-persistent buffers (anchors and the like) stay resident for the model's life.
        self.extra = {}
        for name, tensor in self.pack.extra_buffers().items():
            mname, _, attr = name.rpartition('.')
            mod = modules.get(mname)
            if mod is None or attr not in mod._buffers:
                raise PackError(f'extra buffer {name}: no such buffer in the model',
                                self.pack.path)
            managed.add((id(mod), attr))
            self.extra[name] = (_Target(mod, attr, 'buffer'), tensor)
        for mname, mod in modules.items():
            for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is not None and t.is_meta and (id(mod), attr) not in managed:
                    raise PackError(f'{mname}.{attr} of the model is not stored in the pack '
                                    '(it would stay on the meta device)', self.pack.path)
        self.call_modules = self.pack.manifest.get('call_modules') or []

    def _splittable(self, unit, split_bytes):
        """Return (module, weight TensorInfo, rest tensors) if the unit can be split, else None."""
        info = unit.info
        if not split_bytes or info.length <= split_bytes or info.calls == 0:
            return None
        weights = [t for t in info.tensors if t.attr == 'weight' and not t.aliases
                   and type(self.modules.get(t.module)) in (nn.Conv2d, nn.Linear)]
        for w in sorted(weights, key=lambda t: -t.nbytes):
            mod = self.modules[w.module]
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                continue
            if w.nbytes <= split_bytes or w.shape[0] < 2:
                continue
            if sum(1 for m in self.call_modules if m == w.module) != 1:
                continue
            rest = [t for t in info.tensors if t is not w]
            if rest:
                lo = min(t.offset for t in rest)
                hi = max(t.offset + t.nbytes for t in rest)
                if not (hi <= w.offset or lo >= w.offset + w.nbytes):
                    continue
            return mod, w, rest
        return None

    def _tensor_refs(self, unit, tensors, base):
        return [_TensorRef(t.name, dtype_of(t.dtype), t.shape, t.offset - base, t.nbytes,
                           unit.targets[t.name]) for t in tensors]

    def _make_slots(self, residents, split_bytes):
        """Build the slots of every streamed, called unit and their lifetimes in steps."""
        calls = self.pack.call_order
        span = [1] * len(calls)
        for unit in self.units:
            unit.main, unit.chunks, unit.split = None, [], None
            unit.resident = unit.index in residents
            info = unit.info
            if unit.resident:
                continue
            sp = self._splittable(unit, split_bytes)
            if sp is None:
                unit.main = _Slot(unit, 'unit', info.name, info.offset, info.length,
                                  self._tensor_refs(unit, info.tensors, info.offset))
                continue
            mod, w, rest = sp
            if rest:
                lo = min(t.offset for t in rest) // PAGE * PAGE
                hi = align_up(max(t.offset + t.nbytes for t in rest))
                unit.main = _Slot(unit, 'rest', f'{info.name}[rest]', lo, hi - lo,
                                  self._tensor_refs(unit, rest, lo))
            rows = w.shape[0]
            row_bytes = w.nbytes // rows
            per = max(1, split_bytes // row_bytes)
            dt = dtype_of(w.dtype)
            for r0 in range(0, rows, per):
                r1 = min(rows, r0 + per)
                start, end = w.offset + r0 * row_bytes, w.offset + r1 * row_bytes
                lo, hi = start // PAGE * PAGE, align_up(end)
                ref = _TensorRef(w.name, dt, [r1 - r0] + list(w.shape[1:]), start - lo,
                                 end - start, [])
                unit.chunks.append(_Slot(unit, 'chunk', f'{info.name}[{r0}:{r1}]', lo,
                                         hi - lo, [ref], rows=(r0, r1)))
            unit.split = (mod, w.module)
            pos = self.call_modules.index(w.module)
            span[pos] = len(unit.chunks)
        start = [0] * (len(calls) + 1)
        for p in range(len(calls)):
            start[p + 1] = start[p] + span[p]
        slots = []
        for unit in self.units:
            info = unit.info
            if unit.resident or info.calls == 0:
                continue
            if unit.main is not None:
                unit.main.first_step = start[info.first_call]
                unit.main.last_step = start[info.last_call + 1] - 1
                slots.append(unit.main)
            if unit.chunks:
                pos = self.call_modules.index(unit.split[1])
                for j, c in enumerate(unit.chunks):
                    c.first_step = c.last_step = start[pos] + j
                    slots.append(c)
                if unit.main is not None:          # the rest lives across all chunk steps
                    unit.main.first_step = min(unit.main.first_step, start[pos])
                    unit.main.last_step = max(unit.main.last_step, start[pos + 1] - 1)
        return slots

    # ------------------------------------------------------------------ configuration

    def configure(self, budget_bytes=None, plan=None):
        """Choose residents, split and arena; load residents; start the loader."""
        plan = read_plan(plan)
        staging = plan.get('staging') or self.opts['staging']
        split_bytes = plan.get('split_bytes', self.opts['split_bytes'])
        depth = plan.get('prefetch_depth', self.opts['prefetch_depth'])
        forced = {u.index for u in self.units if u.info.used_outside_forward}
        total = sum(u.info.length for u in self.units)
        budget_text = (f'budget {budget_bytes / MB:.2f} MB ({budget_bytes} bytes)'
                       if budget_bytes is not None else None)

        def layout_for(residents, split, capacity=None):
            slots = self._make_slots(residents, split)
            items = [Item(s.name, s.length, s.first_step, s.last_step) for s in slots]
            if capacity is None:
                return slots, min_layout(items) if items else None
            if not items:
                return slots, None
            err = None
            for d in ([depth] if depth is not None else [None, 8, 2, 1]):
                try:
                    return slots, plan_layout(items, capacity, d, budget_text=budget_text)
                except ArenaTooSmall as e:
                    err = err or e
            raise err

        def resident_bytes(residents):
            return sum(self.units[i].info.length for i in residents)

        if 'resident_units' in plan or 'arena_bytes' in plan:
            names = {u.name: u.index for u in self.units}
            unknown = [n for n in plan.get('resident_units') or [] if n not in names]
            if unknown:
                raise ExecutorError(f'plan names units the pack {self.pack.path} does not '
                                    f'have: {unknown[:5]}')
            residents = forced | {names[n] for n in plan.get('resident_units') or []}
            res_b = resident_bytes(residents)
            capacity = plan.get('arena_bytes')
            slots, layout = layout_for(residents, split_bytes, capacity)
            need = res_b + self._extra_bytes() + (layout.capacity if layout else 0)
            if budget_bytes is not None and need > budget_bytes:
                raise ArenaTooSmall(f'{budget_text} is below the plan: resident units, extra '
                                    f'buffers and the arena need {need} bytes', needed=need,
                                    capacity=budget_bytes)
        elif budget_bytes is not None and budget_bytes >= total + self._extra_bytes():
            residents = {u.index for u in self.units}
            slots, layout = layout_for(residents, None)
        elif budget_bytes is not None:
            residents, slots, layout, split_bytes = self._fit_budget(
                budget_bytes, forced, split_bytes, layout_for, resident_bytes, budget_text)
        else:
            residents = set(forced)
            slots, layout = layout_for(residents, split_bytes)
        self.budget_bytes = budget_bytes
        self.staging = staging
        self.split_bytes = split_bytes
        self.plan_in = plan
        self._install(residents, slots, layout)

    def _extra_bytes(self):
        return sum(t.numel() * t.element_size() for _, t in self.extra.values())

    def _fit_budget(self, budget, forced, split_bytes, layout_for, resident_bytes, budget_text):
        """Pick split size, residents and arena for a budget without a plan."""
        forced_b = resident_bytes(forced) + self._extra_bytes()
        if forced_b > budget:
            raise ArenaTooSmall(f'{budget_text} cannot hold the units that must stay resident '
                                f'({forced_b} bytes)', needed=forced_b, capacity=budget)
        candidates = [split_bytes]
        if split_bytes is None:
            largest = max((u.info.length for u in self.units), default=0)
            s = largest // 2
            while s >= PAGE * 16:
                candidates.append(align_up(s))
                s //= 2
        best = None
        for split in candidates:
            slots, layout = layout_for(forced, split)
            need = forced_b + (layout.capacity if layout else 0)
            if best is None or need < best[0]:
                best = (need, split, slots, layout)
            if need <= budget:
                break
        need, split, slots, layout = best
        if need > budget:
            # Name the unit that does not fit: replay at the arena the budget leaves.
            layout_for(forced, split, budget - forced_b)
            raise ArenaTooSmall(f'{budget_text} is too small: the smallest feasible plan '
                                f'needs {need} bytes', needed=need, capacity=budget)
        # Spend three quarters of what is left on resident units from the head of the pass
        # (they are read while nothing else can overlap), the rest on a deeper arena.
        spare = (budget - need) * 3 // 4
        residents = set(forced)
        order = sorted((u for u in self.units if u.calls and u.index not in forced
                        and u.info.length <= spare), key=lambda u: u.info.first_call)
        for u in order:
            if u.info.length <= spare:
                residents.add(u.index)
                spare -= u.info.length
        while True:
            capacity = budget - resident_bytes(residents) - self._extra_bytes()
            try:
                slots, layout = layout_for(residents, split, capacity)
                return residents, slots, layout, split
            except ArenaTooSmall:
                if residents == forced:
                    raise
                residents.discard(max(residents - forced,
                                      key=lambda i: self.units[i].info.first_call))

    def _install(self, residents, slots, layout):
        """Allocate memory, load residents, hash split slots, hook modules, start the loader."""
        self.slots = slots
        self.layout = layout
        capacity = layout.capacity if layout is not None else 0
        self.arena_bytes = capacity
        if slots:
            direct = not self.cuda or self.staging == 'zero_copy'
            for s, off in zip(slots, layout.offsets):
                s.offset = off
                step = PIECE_BYTES if direct else s.length   # CUDA copy: the staging is whole
                s.pieces = [(a, min(step, s.length - a)) for a in range(0, s.length, step)]
            order = load_order([Item(s.name, s.length, s.first_step, s.last_step)
                                for s in slots])
            self.order = [slots[i] for i in order]
            for r, s in enumerate(self.order):
                s.rank = r
            spans = sorted(((s.offset, s.offset + s.length, s) for s in slots),
                           key=lambda x: x[0])
            for s in slots:
                s.overlaps = [q for a, b, q in spans if a < s.offset + s.length
                              and s.offset < b]
        else:
            self.order = []
        self.alloc = Allocator(capacity)
        self.touched = 0
        self.arena_host = self.arena_dev = None
        self.unregister = None
        self.staging_buf = None
        if capacity:
            if not self.cuda:
                self.arena_host = self.arena_dev = direct_io.aligned_empty(capacity)
            elif self.staging == 'zero_copy':
                self.arena_host, self.arena_dev, self.unregister = _mapped_host_arena(
                    capacity, self.device)
                self.touched = capacity
            else:
                self.arena_dev = torch.empty(capacity, dtype=torch.uint8, device=self.device)
                self.touched = capacity
                largest = max(s.length for s in slots)
                st = self.opts['staging_bytes'] or min(capacity, max(2 * largest, 64 * MB))
                st = max(align_up(st), largest)
                self.staging_buf = direct_io.aligned_empty(st, pin=True)
                self.staging_alloc = Allocator(st)
                self.staging_fifo = []
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self._ref_clock()
        self._load_residents(residents)
        self._hash_split_slots()
        self._install_hooks()
        self.started = 0
        self.cursor = 0
        self.gen = 1
        self.loaded_gen = 0
        self.hold = False
        self.busy = False
        self.stop = False
        self.in_pass = False
        self.loader_error = None
        self.release_seq = 0
        self._note_peak()
        self.configured = True
        if self.order:
            self.loader = threading.Thread(target=self._loader_main, name='dlr-loader',
                                           daemon=True)
            self.loader.start()

    def _load_residents(self, residents):
        units = sorted((self.units[i] for i in residents), key=lambda u: u.info.offset)
        total = sum(u.info.length for u in units)
        self.resident_bytes = total + self._extra_bytes()
        self.resident_buf = None
        if total:
            host = direct_io.aligned_empty(total, pin=self.cuda)
            futures, pos = [], 0
            for u in units:
                futures.append(self.pack.read_unit(self.sync_reader, u.info,
                                                   host[pos:pos + u.info.length]))
                pos += u.info.length
            for u, f in zip(units, futures):
                try:
                    f.result()
                except OSError as e:
                    raise _named(e, self.pack.path, u.name, u.info.offset) from e
            buf = host.to(self.device) if self.cuda else host
            del host
            self.resident_buf = buf
            pos = 0
            for u in units:
                for t in u.info.tensors:
                    rel = pos + t.offset - u.info.offset
                    ref = _TensorRef(t.name, dtype_of(t.dtype), t.shape, rel, t.nbytes,
                                     u.targets[t.name])
                    v = ref.view(buf)
                    for tgt in ref.targets:
                        tgt.put(v)
                pos += u.info.length
        for tgt, tensor in self.extra.values():
            tgt.put(tensor.to(self.device))

    def _scratch(self):
        """Return host memory of at least the largest slot, for load-time hashing."""
        if self.arena_host is not None:
            return self.arena_host
        return self.staging_buf

    def _hash_split_slots(self):
        """
        Verify each split unit against the manifest once and remember its pieces' digests.

        The manifest's checksum covers a whole unit; a chunk is read on its own, so at load
        time the unit is streamed through the arena (verifying the manifest digest) and each
        chunk's digest is recorded, then checked on every later read of that chunk.
        """
        split = [u for u in self.units if u.chunks]
        if not split:
            return
        scratch = self._scratch()
        piece = min(scratch.numel(), 8 * MB) // PAGE * PAGE
        self.touched = max(self.touched, piece)
        for u in split:
            info = u.info
            h = xxhash.xxh3_64()
            for off in range(info.offset, info.end, piece):
                n = min(piece, info.end - off)
                try:
                    self.sync_reader.read_into(off, n, scratch[:n])
                except OSError as e:
                    raise _named(e, self.pack.path, info.name, off) from e
                h.update(direct_io.as_memoryview(scratch[:n]))
            if h.hexdigest() != info.checksum:
                raise PackError(f'checksum mismatch over [{info.offset}, {info.end}) '
                                f'(xxh3_64 {h.hexdigest()}, manifest says {info.checksum}): '
                                'the weights file is damaged', self.pack.path, info.name,
                                info.offset)
            for s in ([u.main] if u.main is not None else []) + u.chunks:
                self.sync_reader.read_into(s.file_offset, s.length, scratch[:s.length])
                self.touched = max(self.touched, s.length)
                s.checksum = direct_io.checksum(scratch[:s.length])

    def _verifier(self, slot):
        if slot.kind == 'unit':
            info = slot.unit.info
            return lambda mv: self.pack.verify_unit(info, mv)

        def verify(mv):
            got = direct_io.checksum(mv[:slot.length])
            if got != slot.checksum:
                raise PackError(f'checksum mismatch over [{slot.file_offset}, '
                                f'{slot.file_offset + slot.length}) ({slot.name}: xxh3_64 '
                                f'{got}, verified at load as {slot.checksum}): the weights file '
                                'changed or is damaged', self.pack.path, slot.unit.name,
                                slot.file_offset)
        return verify

    def _install_hooks(self):
        streamed = any(not u.resident for u in self.units)
        for u in self.units:
            if u.resident and not (streamed and self.timeline_on):
                continue
            for m in u.modules:
                self.hooks.append(m.register_forward_pre_hook(functools.partial(self._pre, u)))
                self.hooks.append(m.register_forward_hook(functools.partial(self._post, u)))
            if u.split is not None:
                mod = u.split[0]
                mod.forward = functools.partial(self._chunked_forward, u, mod)

    # ------------------------------------------------------------------ teardown

    def teardown(self):
        """Stop the loader, wait for reads, put meta tensors back, free the arena."""
        if not self.configured:
            return
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        if self.loader is not None:
            self.loader.join()
            self.loader = None
        self._wait_reads()
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for u in self.units:
            self._unset(u)
            if u.split is not None:
                u.split[0].__dict__.pop('forward', None)
            for lst in u.targets.values():
                for tgt in lst:
                    tgt.unset()
            u.reset()
            u.main, u.chunks, u.split = None, [], None
        for tgt, _ in self.extra.values():
            tgt.unset()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.slots, self.order = [], []
        if self.unregister is not None:
            self.unregister()
            self.unregister = None
        self.resident_buf = None
        self.arena_host = self.arena_dev = None
        self.staging_buf = None
        self.configured = False

    def close(self):
        """Tear down and close the files (idempotent)."""
        if self.closed:
            return
        self.teardown()
        self.reader.close()
        self.sync_reader.close()
        self.closed = True

    def _wait_reads(self):
        with self.cond:
            while any(s.inflight for s in self.slots):
                self.cond.wait(1.0)

    def _unclaim(self, slot):
        """Give back every piece a slot holds (lock held, no read in flight)."""
        for i in slot.got:
            self.alloc.free(slot.offset + slot.pieces[i][0])
        slot.got, slot.claimed, slot.buf = [], False, None
        self.cond.notify_all()

    # ------------------------------------------------------------------ loader thread

    def _loader_main(self):
        """Place and read the slots of each pass in load order (the pipeline's first stage)."""
        if self.cuda:
            torch.cuda.set_device(self.device)
        walked = 0                                   # the generation the cursor belongs to
        try:
            while True:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()
                    while not self.stop and (self.hold or self.loaded_gen == self.gen):
                        self.cond.wait()
                    if self.stop:
                        return
                    gen = self.gen
                    if walked != gen:
                        walked, self.cursor = gen, 0
                    self.busy = True
                if self._walk():
                    with self.cond:
                        if not self.hold and self.cursor >= len(self.order):
                            self.loaded_gen = gen
        except BaseException as e:  # noqa: B902 - reported to the forward pass that waits
            with self.cond:
                self.loader_error = e
                self.busy = False
                self.cond.notify_all()

    def _walk(self):
        """
        Claim and read slots from the cursor on; return False when told to hold or stop.

        A slot's range is claimed piece by piece as the pieces come free, and each piece is
        read at once, so most of a large unit is read while the unit before it still runs.
        """
        while True:
            batch = None
            with self.cond:
                r = self.cursor
                if r >= len(self.order):
                    return True
                slot = self.order[r]
                while batch is None:
                    if self.stop or self.hold:
                        return False
                    if self.cursor != r:             # an eviction moved the cursor back
                        break
                    if slot.state not in (EMPTY, READING) or slot.whole:
                        self.cursor = r + 1          # done by a miss, failed, or all claimed
                        break
                    depth = self.layout.prefetch_depth
                    if depth is None or r < self.started + depth:
                        new = [i for i, (a, n) in enumerate(slot.pieces)
                               if i not in slot.got and self.alloc.claim(slot.offset + a, n)]
                        if new:
                            slot.got += new
                            slot.inflight += len(new)
                            slot.state, slot.claimed = READING, True
                            self.touched = max(self.touched, self.alloc.high_water)
                            self._note_peak()
                            if self.cuda:
                                slot.wait_event = self._latest_release(slot)
                            if slot.whole:
                                self.cursor = r + 1
                            batch = (slot, new)
                            break
                    self.cond.wait()
            if batch is not None:
                self._start_read(*batch)

    def _evict_for(self, nbytes):
        """
        Free arena space for a demand miss by dropping prefetched slots not yet in use.

        Only slots beyond every slot the pass has asked for are dropped (no view points into
        them); the loader's cursor moves back so it reads them again. Caller holds the lock.
        Returns an arena offset, or None when nothing more can be dropped.
        """
        while True:
            off = self.alloc.alloc(nbytes)
            if off is not None:
                return off
            ahead = self.order[self.started:]
            victims = [s for s in ahead if s.claimed and not s.inflight]
            if not victims:
                if any(s.inflight for s in ahead):
                    self.cond.wait()                 # reads finish without compute
                    continue
                return None
            v = victims[-1]
            self._unclaim(v)
            v.t, v.error, v.pieces_done = {}, None, 0
            v.state = EMPTY
            self.cursor = min(self.cursor, v.rank)
            if self.loaded_gen == self.gen:
                self.loaded_gen = self.gen - 1       # wake the loader to read it again
            self.cond.notify_all()

    def _latest_release(self, slot):
        best = max(slot.overlaps, key=lambda q: q.release_seq)
        return best.release_event if best.release_seq >= 0 else None

    def _start_read(self, slot, pieces):
        """Submit the reads of newly claimed pieces (loader thread, lock not held)."""
        submitted = 0
        try:
            if self.cuda and self.staging == 'copy':
                entry = self._staging_take(slot.length)
                dest = self.staging_buf[entry[0]:entry[0] + slot.length]
                fut = self.reader.submit(slot.file_offset, slot.length, dest,
                                         verify=self._verifier(slot))
                submitted = 1
                fut.add_done_callback(functools.partial(self._read_done, slot, entry))
                return
            if self.cuda and slot.wait_event is not None:
                slot.wait_event.synchronize()     # zero-copy: the GPU is done with the range
            for i in pieces:
                a, n = slot.pieces[i]
                dest = self.arena_host[slot.offset + a:slot.offset + a + n]
                fut = self.reader.submit(slot.file_offset + a, n, dest)
                submitted += 1
                fut.add_done_callback(functools.partial(self._piece_done, slot))
        except BaseException as e:  # noqa: B902 - e.g. the reader shut down at exit
            with self.cond:
                slot.inflight -= len(pieces) - submitted   # no callback will come for these
                if slot.error is None:
                    slot.state, slot.error = FAILED, e
                self.cond.notify_all()
            raise

    def _piece_done(self, slot, fut):
        """Reader worker thread: one piece is in; the last one verifies the whole slot."""
        err = fut.exception()
        with self.cond:
            start = slot.t.get('read_start')
            slot.t['read_start'] = fut.t_start if start is None else min(start, fut.t_start)
            slot.pieces_done += 1
            last = slot.pieces_done == len(slot.pieces)
            if err is not None and slot.error is None:
                slot.error = err
                slot.state = FAILED
            if not last or slot.error is not None:
                slot.inflight -= 1
                self.cond.notify_all()
                return
        try:                                      # outside the lock: xxh3 releases the GIL
            self._verifier(slot)(direct_io.as_memoryview(
                self.arena_host[slot.offset:slot.offset + slot.length]))
        except BaseException as e:  # noqa: B902 - reported to the forward pass
            err = e
        with self.cond:
            slot.t['read_end'] = time.perf_counter()
            if err is not None:
                slot.state, slot.error = FAILED, err
            else:
                slot.buf = self.arena_dev[slot.offset:slot.offset + slot.length]
                slot.state = READY
            slot.inflight -= 1
            self.cond.notify_all()

    def _staging_take(self, nbytes):
        """Take a staging range, recycling the oldest ones once their copies finished."""
        while True:
            with self.cond:
                off = self.staging_alloc.alloc(nbytes)
                if off is not None:
                    entry = [off, None, False]        # offset, copy event, finished
                    self.staging_fifo.append(entry)
                    return entry
                oldest = self.staging_fifo[0]
                while not oldest[2] and not self.stop:
                    self.cond.wait()
                if self.stop:
                    raise ExecutorError('loader stopped while waiting for staging space')
            if oldest[1] is not None:
                oldest[1].synchronize()
            with self.cond:
                self.staging_fifo.pop(0)
                self.staging_alloc.free(oldest[0])

    def _read_done(self, slot, entry, fut):
        """Reader worker thread: the slot's bytes are in (and verified), or the read failed."""
        err = fut.exception()
        copy0 = copy1 = None
        if err is None and entry is not None:
            try:
                with torch.cuda.device(self.device), torch.cuda.stream(self.copy_stream):
                    if slot.wait_event is not None:
                        self.copy_stream.wait_event(slot.wait_event)
                    copy0 = torch.cuda.Event(enable_timing=self.timeline_on)
                    copy1 = torch.cuda.Event(enable_timing=self.timeline_on)
                    copy0.record(self.copy_stream)
                    src = self.staging_buf[entry[0]:entry[0] + slot.length]
                    self.arena_dev[slot.offset:slot.offset + slot.length].copy_(
                        src, non_blocking=True)
                    copy1.record(self.copy_stream)
            except BaseException as e:  # noqa: B902 - reported to the forward pass
                err = e
        with self.cond:
            slot.t['read_start'] = fut.t_start
            slot.t['read_end'] = fut.t_end
            if entry is not None:
                entry[1] = copy1
                entry[2] = True
            if err is not None:
                slot.state = FAILED
                slot.error = err
            else:
                slot.copy_event = copy1
                slot.t['copy_start'] = copy0
                slot.t['copy_end'] = copy1
                slot.buf = self.arena_dev[slot.offset:slot.offset + slot.length]
                slot.state = READY
            slot.inflight -= 1
            self.cond.notify_all()

    # ------------------------------------------------------------------ compute side

    def _note_peak(self):
        committed = self.touched if self.cuda else max(self.touched, self.alloc.high_water)
        self.peak = max(self.peak, committed + self.resident_bytes + self.transient_bytes)

    def _can_wait(self, slot):
        """Return True when the loader will place `slot` with no further compute (no deadlock)."""
        if slot.rank < self.cursor:
            return False
        ranges = []
        for q in self.order[self.cursor:slot.rank + 1]:
            if q.state not in (EMPTY, READING):
                continue
            for a, n in q.missing():
                if not self.alloc.is_free(q.offset + a, n):
                    return False
                ranges.append((q.offset + a, q.offset + a + n))
        ranges.sort()
        return all(ranges[i][1] <= ranges[i + 1][0] for i in range(len(ranges) - 1))

    def _acquire(self, slot, borrow=False):
        """
        Return (bytes, lease) for a slot about to be used.

        lease is None when the bytes sit at the slot's planned arena offset; otherwise the slot
        was read on demand (see _miss) and the lease must be returned with _return.
        """
        t0 = time.perf_counter()
        with self.cond:
            if self.in_pass and slot.rank is not None and slot.state != DONE:
                if slot.rank + 1 > self.started:
                    self.started = slot.rank + 1
                    self.cond.notify_all()
                if (slot.state == READY or (slot.state == READING and slot.whole)
                        or (slot.state in (EMPTY, READING) and self._can_wait(slot))):
                    while slot.state in (EMPTY, READING):
                        if self.loader_error is not None:
                            raise ExecutorError(f'the loader thread failed: '
                                                f'{self.loader_error!r}') from self.loader_error
                        if not self.cond.wait(WAIT_TIMEOUT_S):
                            raise ExecutorError(
                                f'waited {WAIT_TIMEOUT_S:.0f} s for unit {slot.name} '
                                f'(state {slot.state}, loader at {self.cursor}/'
                                f'{len(self.order)}, {self.alloc.used} arena bytes in use)')
                    if slot.state != FAILED:
                        self.last_stall += time.perf_counter() - t0
                        if self.cuda and slot.copy_event is not None:
                            torch.cuda.current_stream(self.device).wait_event(slot.copy_event)
                        return slot.buf, None
                    started = slot.t.get('read_start')
                    if started is None or started >= self.t0:
                        raise _named(slot.error, self.pack.path, slot.unit.name,
                                     slot.file_offset)
                    # The read failed ahead of this pass (read-ahead after the last frame):
                    # the storage may be healthy again, so read once more, on demand, rather
                    # than fail this frame on an old error.
        return self._miss(slot, t0, borrow)

    def _miss(self, slot, t0, borrow):
        """
        Read a slot synchronously, outside the schedule (a demand miss).

        borrow=True means the caller returns the lease before it acquires anything else, so on
        the CPU the bytes may go into free arena space (the budget holds); otherwise, or when
        the arena has no room, into a transient buffer outside it, counted in
        peak_weight_bytes.
        """
        off = None
        if borrow and not self.cuda and self.arena_host is not None:
            with self.cond:
                off = self._evict_for(slot.length) if self.in_pass else \
                    self.alloc.alloc(slot.length)
                if off is not None:
                    self.touched = max(self.touched, self.alloc.high_water)
                    self._note_peak()
        if off is not None:
            buf, lease = self.arena_host[off:off + slot.length], ('arena', off)
        else:
            buf, lease = direct_io.aligned_empty(slot.length, pin=self.cuda), ('heap', slot.length)
            with self.cond:
                self.transient_bytes += slot.length
                self._note_peak()
        try:
            self.sync_reader.submit(slot.file_offset, slot.length, buf,
                                    verify=self._verifier(slot)).result()
        except BaseException as e:
            self._return(lease)
            raise _named(e, self.pack.path, slot.unit.name, slot.file_offset) from e
        if self.cuda:
            buf = buf.to(self.device)
        with self.cond:
            self.total_misses += 1
            self.pass_misses += 1
        self.last_stall += time.perf_counter() - t0
        return buf, lease

    def _return(self, lease, locked=False):
        """Give back a demand miss's bytes."""
        if not locked:
            with self.cond:
                return self._return(lease, locked=True)
        if lease[0] == 'arena':
            self.alloc.free(lease[1])
            self.cond.notify_all()
        else:
            self.transient_bytes -= lease[1]

    def _release(self, slot):
        """Give a slot's arena range back after its last use in this pass."""
        with self.cond:
            while slot.inflight:
                self.cond.wait()
            if self.cuda and slot.state == READY:
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(self.device))
                self.release_seq += 1
                slot.release_event, slot.release_seq = ev, self.release_seq
            slot.state = DONE                       # unread ones are skipped by the loader
            self._unclaim(slot)

    def _set(self, slot, buf):
        for ref in slot.tensors:
            v = ref.view(buf)
            for tgt in ref.targets:
                tgt.put(v)

    def _unset(self, unit):
        if unit.resident:
            return
        slot = unit.main
        if slot is not None:
            for ref in slot.tensors:
                for tgt in ref.targets:
                    tgt.unset()
        if unit.lease is not None:
            self._return(unit.lease)
            unit.lease = None
        unit.loaded = False

    def _stamp(self, rec, key):
        if not self.timeline_on:
            return
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            rec[key] = ev
        else:
            rec[key] = time.perf_counter()

    def _pre(self, unit, module, args):
        t0 = time.perf_counter()
        if not unit.resident:
            if not unit.loaded:
                if unit.main is not None:
                    buf, unit.lease = self._acquire(unit.main,
                                                    borrow=unit.leaf and unit.split is None)
                    self._set(unit.main, buf)
                unit.loaded = True
            unit.active += 1
        if self.timeline_on:
            if 'compute_start' not in unit.t:
                self._stamp(unit.t, 'compute_start')
            self._log_call(unit, t0, None)

    def _log_call(self, unit, t0, chunk):
        """Log a call (or a split layer's chunk): unit, start once its data is in, wait."""
        if not (self.timeline_on and self.in_pass):
            return
        t1 = time.perf_counter()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self.device))
        else:
            start = t1
        self.call_log.append((unit.index, start, t1 - t0, chunk))

    def _post(self, unit, module, args, output):
        self._stamp(unit.t, 'compute_end')
        if unit.resident:
            return
        unit.active -= 1
        unit.done += 1
        if unit.active:
            return
        if unit.done >= unit.calls or unit.lease is not None:
            planned = unit.lease is None
            self._unset(unit)
            if unit.main is not None and (planned or unit.done >= unit.calls):
                self._release(unit.main)

    def _chunked_forward(self, unit, module, x):
        """Compute a split Conv2d/Linear chunk by chunk of output channels/features."""
        bias = module.bias
        outs = []
        for j, slot in enumerate(unit.chunks):
            t0 = time.perf_counter()
            buf, lease = self._acquire(slot, borrow=True)
            self._log_call(unit, t0, j)
            w = slot.tensors[0].view(buf)
            r0, r1 = slot.rows
            b = bias[r0:r1] if bias is not None else None
            self._stamp(slot.t, 'compute_start')
            if isinstance(module, nn.Conv2d):
                outs.append(module._conv_forward(x, w, b))
            else:
                outs.append(F.linear(x, w, b))
            self._stamp(slot.t, 'compute_end')
            del w
            if lease is not None:
                self._return(lease)
            self._release(slot)
            del buf
        return torch.cat(outs, dim=1 if isinstance(module, nn.Conv2d) else -1)

    # ------------------------------------------------------------------ passes

    def run(self, fn, args, kwargs):
        """Run one forward pass of `fn` with the pipeline."""
        if self.closed or not self.configured:
            raise ExecutorError('the demand-layered model is closed')
        with self.pass_lock:
            self._begin_pass()
            ok = False
            try:
                with torch.no_grad():
                    out = fn(*args, **kwargs)
                ok = True
            finally:
                self._end_pass(ok)
            return out

    def _begin_pass(self):
        self.last_stall = 0.0
        self.pass_misses = 0
        self.call_log = []
        self.t0 = time.perf_counter()
        with self.cond:
            self.in_pass = True

    def _end_pass(self, ok):
        if self.cuda and (self.sync or not ok):  # a failed pass left kernels on held slots
            torch.cuda.current_stream(self.device).synchronize()
        t1 = time.perf_counter()
        with self.cond:
            self.in_pass = False
            self.hold = True
            self.cond.notify_all()
            while self.busy:
                self.cond.wait()
        self._wait_reads()
        timeline = self._timeline() if self.timeline_on else []
        calls = [[u, self._when(start), wait, chunk] for u, start, wait, chunk in self.call_log]
        if self.cuda and self.timeline_on:
            self._ref_clock()                # before the next pass's copies are queued
        with self.cond:
            for s in self.slots:
                if s.claimed:
                    self._unclaim(s)
            for u in self.units:
                if u.loaded and not u.resident:
                    self._unset_locked(u)
                u.reset()
            for u in self.units:
                for s in ([u.main] if u.main is not None else []) + u.chunks:
                    keep = (s.release_event, s.release_seq)
                    s.reset()
                    s.release_event, s.release_seq = keep
            if self.alloc.used:
                raise ExecutorError(f'internal error: {self.alloc.used} arena bytes still '
                                    'held after the pass')
            self.started = 0
            self.cursor = 0
            self.gen += 1
            self.hold = False
            self.cond.notify_all()
        self.passes += 1
        self.last = {'latency_ms': (t1 - self.t0) * 1e3, 'stall_ms': self.last_stall * 1e3,
                     'demand_misses': self.pass_misses, 'timeline': timeline, 'calls': calls,
                     'ok': ok}

    def _unset_locked(self, unit):
        slot = unit.main
        if slot is not None:
            for ref in slot.tensors:
                for tgt in ref.targets:
                    tgt.unset()
        if unit.lease is not None:
            self._return(unit.lease, locked=True)
            unit.lease = None
        unit.loaded = False

    def _ref_clock(self):
        """CUDA: pin a GPU event to a host time, so events map onto the perf_counter axis."""
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.device))
        ev.synchronize()
        self.ref_event, self.ref_t = ev, time.perf_counter()

    def _when(self, value):
        """Turn a stamp (perf_counter float or CUDA event) into seconds from pass start."""
        if value is None:
            return None
        if isinstance(value, float):
            return value - self.t0
        try:
            value.synchronize()
            return self.ref_t + self.ref_event.elapsed_time(value) / 1e3 - self.t0
        except (RuntimeError, AttributeError):
            return None

    def _timeline(self):
        rows = []
        for u in sorted(self.units, key=lambda u: (u.info.first_call is None,
                                                   u.info.first_call or 0)):
            if u.resident or u.chunks == [] and u.main is None:
                if 'compute_start' in u.t:
                    rows.append({'unit': u.index, 'name': u.name, 'kind': 'resident',
                                 'bytes': u.info.length, 'read_start': None, 'read_end': None,
                                 'copy_start': None, 'copy_end': None,
                                 'compute_start': self._when(u.t.get('compute_start')),
                                 'compute_end': self._when(u.t.get('compute_end'))})
                continue
            for s in ([u.main] if u.main is not None else []) + u.chunks:
                if 'read_start' not in s.t and 'compute_start' not in u.t:
                    continue
                comp = s.t if s.kind == 'chunk' else u.t
                rows.append({'unit': u.index, 'name': s.name, 'kind': s.kind,
                             'bytes': s.length,
                             'read_start': self._when(s.t.get('read_start')),
                             'read_end': self._when(s.t.get('read_end')),
                             'copy_start': self._when(s.t.get('copy_start')),
                             'copy_end': self._when(s.t.get('copy_end')),
                             'compute_start': self._when(comp.get('compute_start')),
                             'compute_end': self._when(comp.get('compute_end'))})
        return rows


# ----------------------------------------------------------------------------- the model


class DemandLayeredModel(nn.Module):
    """
    A pack's model that streams its weights: called exactly like the original module.

    Build with `load(pack_dir, device, budget_mb=..., plan=...)`. `stats()` reports memory,
    I/O and the last pass's timeline; `reconfigure()` changes budget or plan between frames;
    `close()` stops the loader and frees the arena (also done when the model is collected).
    `detector` is a Detector (pre/post-processing of the pack's model family) whose `.model` is
    this object.
    """

    def __init__(self, pack, device='cpu', budget_mb=None, plan=None, staging='copy', **opts):
        """Open the pack, build the skeleton on 'meta' and configure the pipeline."""
        super().__init__()
        check_options(device=device, staging=staging, **{
            k: v for k, v in opts.items() if k in ('threads', 'split_bytes', 'prefetch_depth',
                                                   'staging_bytes')})
        budget_bytes = self._budget_bytes(budget_mb)
        plan = read_plan(plan)
        pack = pack if isinstance(pack, Pack) else Pack.open(pack)
        template = pack.build_detector(device=device, meta=True)
        self.module = template.model
        self.pack = pack
        self._template = template
        self._detector_ref = None
        self._engine = _Engine(pack, self.module, device, staging=staging, **opts)
        self._finalizer = weakref.finalize(self, self._engine.close)
        try:
            self._engine.configure(budget_bytes, plan)
        except BaseException:
            self._finalizer()
            raise

    @staticmethod
    def _budget_bytes(budget_mb):
        if budget_mb is None:
            return None
        if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) \
                or not 0 < budget_mb < float('inf'):
            raise ExecutorError(f'budget_mb must be a positive number, got {budget_mb!r}')
        return int(budget_mb * MB)

    def forward(self, *args, **kwargs):
        """Run the wrapped model with weights streamed from the pack."""
        return self._engine.run(self.module, args, kwargs)

    @property
    def detector(self):
        """Return a Detector whose model is this demand-layered model."""
        det = self._detector_ref() if self._detector_ref is not None else None
        if det is None:
            det = copy.copy(self._template)
            det.model = self
            det.device = self._engine.device
            self._detector_ref = weakref.ref(det)
        return det

    @property
    def device(self):
        """Return the device the weights are used on."""
        return self._engine.device

    def to(self, *args, **kwargs):
        """Accept only the device and dtype the model was loaded with (weights stay put)."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        same = device is None or (torch.device(device).type == self.device.type and (
            torch.device(device).index in (None, self.device.index)))
        if not same or dtype not in (None, torch.float32):
            raise ExecutorError('a DemandLayeredModel cannot be moved or cast; choose the device '
                                'with load(pack, device=...)')
        return self

    def _apply(self, fn, recurse=True):
        raise ExecutorError('a DemandLayeredModel cannot be moved or cast; choose the device '
                            'with load(pack, device=...)')

    def plan(self):
        """Return the plan in effect (the same keys a PLAN.yaml has)."""
        e = self._engine
        return {'resident_units': [u.name for u in e.units if u.resident],
                'arena_bytes': e.arena_bytes, 'split_bytes': e.split_bytes,
                'prefetch_depth': e.layout.prefetch_depth if e.layout else None,
                'staging': e.staging,
                'predicted_latency_ms': e.plan_in.get('predicted_latency_ms'),
                'predicted_peak_weight_mb': e.plan_in.get('predicted_peak_weight_mb')}

    def stats(self):
        """Return memory, I/O and timing figures; timeline and latency are the last pass's."""
        e = self._engine
        r, s = e.reader, e.sync_reader
        return {
            'peak_weight_bytes': e.peak,
            'budget_bytes': e.budget_bytes,
            'resident_bytes': e.resident_bytes,
            'arena_bytes': e.arena_bytes,
            'arena_committed_bytes': e.touched if e.cuda else max(e.touched, e.alloc.high_water),
            'staging_bytes': e.staging_buf.numel() if e.staging_buf is not None else 0,
            'model_bytes': sum(u.info.length for u in e.units),
            'io_bytes': r.bytes_read + s.bytes_read,
            'io_seconds': r.seconds + s.seconds,
            'io_mode': r.mode,
            'io_fallback_reason': r.fallback_reason,
            'stall_ms': e.last['stall_ms'],
            'demand_misses': e.total_misses,
            'demand_misses_last_pass': e.last['demand_misses'],
            'latency_ms': e.last['latency_ms'],
            'passes': e.passes,
            'device': str(e.device),
            'staging': e.staging if e.cuda else None,
            'resident_units': sum(1 for u in e.units if u.resident),
            'streamed_units': sum(1 for u in e.units if not u.resident),
            'split_units': [u.name for u in e.units if u.chunks],
            'split_bytes': e.split_bytes,
            'prefetch_depth': e.layout.prefetch_depth if e.layout else None,
            'timeline': e.last['timeline'],
            'calls': e.last.get('calls', []),
        }

    def reconfigure(self, budget_mb=None, plan=None):
        """
        Between frames: rebuild residents and arena for a new budget or plan.

        A budget or plan that cannot work is refused with the same errors as load(), and the
        model keeps running with its previous configuration.
        """
        budget_bytes = self._budget_bytes(budget_mb)
        plan = read_plan(plan)
        e = self._engine
        with e.pass_lock:
            if e.closed:
                raise ExecutorError('the demand-layered model is closed')
            old = (e.budget_bytes, e.plan_in, e.peak)
            e.teardown()
            try:
                e.peak = 0
                e.configure(budget_bytes, plan)
            except BaseException:
                e.teardown()
                e.configure(old[0], old[1])
                e.peak = old[2]
                raise

    def close(self):
        """Stop the loader, close the pack files and free all weight memory."""
        self._finalizer()

    def extra_repr(self):
        """Describe the configuration briefly."""
        e = self._engine
        return (f'pack={str(self.pack.path)!r}, device={e.device}, arena_bytes='
                f'{getattr(e, "arena_bytes", None)}, resident_bytes='
                f'{getattr(e, "resident_bytes", None)}')


def load(pack_dir, device='cpu', budget_mb=None, plan=None, staging='copy', **opts):
    """
    Open a pack as a DemandLayeredModel.

    budget_mb: weight memory (MiB) for resident units plus the arena; plan: a dict or a
    PLAN.yaml path (resident_units, arena_bytes, split_bytes, prefetch_depth, staging); neither:
    fully streamed, the smallest arena the recorded schedule allows. staging ('copy' or
    'zero_copy') matters on CUDA only. opts: threads, direct, split_bytes, prefetch_depth,
    timeline, sync, throttle_bytes_per_s, fault_injector, staging_bytes.
    """
    return DemandLayeredModel(pack_dir, device=device, budget_mb=budget_mb, plan=plan,
                              staging=staging, **opts)


def load_resident(pack_dir, device='cpu'):
    """Return the pack's plain model with every weight loaded (the oracle and the baseline)."""
    pack = pack_dir if isinstance(pack_dir, Pack) else Pack.open(pack_dir)
    det = pack.build_detector(device=device, meta=True)
    model = det.model
    state = pack.load_state_dict()
    state.update(pack.extra_buffers())
    model.load_state_dict(state, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    if torch.device(device).type != 'cpu':
        model.to(device)
    return model.eval()
