# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Binding: where each tensor of the pack goes in the model skeleton, and putting it there.

The skeleton lives on torch's 'meta' device. `Binding` maps every stored tensor (and its
aliases: tied weights) to the parameter or buffer slots it fills, checks that the pack covers
every meta tensor with the right shape (else PackError, naming tensor, unit and offset), and
keeps the non-persistent buffers (anchors and the like) that stay resident for the model's life.
A TensorRef turns bytes the reader filled into a zero-copy view and puts it in its targets; a
Target's unset() puts the meta placeholder back, so released weights hold no memory.

Stored dtype and compute dtype: a pack may store weights as float16/bfloat16 (`pack --dtype`).
On CUDA the skeleton is cast to the stored dtype (`compute_dtype`) and computes straight from
the arena. Where the skeleton's placeholder has another floating dtype (the float32 model on
the CPU), the TensorRef converts as the unit lands (`TensorRef.tensor`): this is the one place
a stored tensor changes dtype, and `landed_state` does the same for the resident oracle. The
copy is memory too: it lives from the unit's landing to its drop (hooks, pipeline) and is
counted in peak_weight_bytes, while the arena and the resident buffer hold the stored bytes,
the sizes the planner simulates.
"""

from demand_layering_ros.layout.slots import module_table
from demand_layering_ros.pack import dtype_of, PackError
import torch


def compute_dtype(pack, device, dtype=None):
    """
    Return the dtype the pack's model computes in on `device`; None: the model's own.

    dtype (a torch dtype or its name) is the caller's choice. Without one, CUDA computes in the
    stored dtype (a float16 pack runs in float16 straight from the arena, no conversion) and
    the CPU in the model's own (float32: each unit is converted as it lands). On a CPU with
    bfloat16 instructions dtype=torch.bfloat16 with a bfloat16 pack also needs no conversion.
    """
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f'dtype must be a floating point torch dtype, got {dtype!r}')
        return dtype
    stored = pack.stored_dtype
    if stored is None or torch.device(device).type != 'cuda':
        return None
    return dtype_of(stored)


def conversion_reserve(pack, device, dtype=None):
    """
    Return the bytes of conversion copies a pass on `device` holds at once (0: none).

    What `Binding.convert_reserve` says for the skeleton load() would build: a float16 pack on
    the CPU lands as float32 copies, weight memory outside the plan's residents and arena. The
    profiler records it so that the planner fits a budget less it, as the engine does.
    """
    if pack.stored_dtype is None:
        return 0
    det = pack.build_detector(device=device, meta=True)
    dtype = compute_dtype(pack, device, dtype)
    if dtype is not None:
        det.set_dtype(dtype)
    return Binding(pack, det.model).convert_reserve


def landing_dtype(stored, placeholder):
    """Return the dtype a stored tensor converts to as it lands, or None: used as stored."""
    if placeholder is None or stored == placeholder or not stored.is_floating_point \
            or not placeholder.is_floating_point:
        return None
    return placeholder


def landed_state(model, state):
    """Return `state` with every tensor converted as it would land in `model` (the oracle)."""
    slots = dict(model.named_parameters(remove_duplicate=False))
    slots.update(model.named_buffers(remove_duplicate=False))
    out = {}
    for name, t in state.items():
        ph = slots.get(name)
        dtype = landing_dtype(t.dtype, ph.dtype if ph is not None else None)
        out[name] = t if dtype is None else t.to(dtype)
    return out


class Target:
    """One place a tensor goes: module._parameters[attr] or module._buffers[attr]."""

    __slots__ = ('module', 'attr', 'kind', 'placeholder')

    def __init__(self, module, attr, kind):
        """Remember the slot and the meta tensor that fills it when nothing is loaded."""
        self.module = module
        self.attr = attr
        self.kind = kind
        table = module._parameters if kind == 'parameter' else module._buffers
        self.placeholder = table[attr]          # the meta tensor put back on release

    def put(self, tensor):
        """Make `tensor` the module's parameter or buffer."""
        if self.kind == 'parameter':
            self.module._parameters[self.attr] = tensor
        else:
            self.module._buffers[self.attr] = tensor

    def unset(self):
        """Put the meta placeholder back."""
        self.put(self.placeholder)


class TensorRef:
    """A tensor of a slot: where it is in the slot's bytes and where it goes in the model."""

    __slots__ = ('name', 'dtype', 'shape', 'rel', 'nbytes', 'targets', 'compute')

    def __init__(self, name, dtype, shape, rel, nbytes, targets, compute=None):
        """
        Describe bytes [rel, rel + nbytes) of a buffer as a tensor of dtype and shape.

        compute: the dtype the model uses it in, when that is not the stored `dtype`.
        """
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.rel = rel
        self.nbytes = nbytes
        self.targets = targets
        self.compute = compute

    @classmethod
    def of(cls, spec, targets, compute=None):
        """Return the ref of a slots.TensorSpec bound to `targets`."""
        return cls(spec.name, dtype_of(spec.dtype), spec.shape, spec.rel, spec.nbytes, targets,
                   compute)

    @property
    def converted_bytes(self):
        """Return the bytes of the conversion copy (0 when the model uses the stored bytes)."""
        if self.compute is None:
            return 0
        return self.nbytes // self.dtype.itemsize * self.compute.itemsize

    def view(self, buf):
        """Return the tensor as a zero-copy view of `buf` (a uint8 tensor)."""
        t = buf[self.rel:self.rel + self.nbytes]
        if self.dtype != torch.uint8:
            t = t.view(self.dtype)
        return t.view(self.shape)

    def tensor(self, buf):
        """Return what the model uses: the view of `buf`, converted to the compute dtype."""
        v = self.view(buf)
        return v if self.compute is None else v.to(self.compute)

    def put(self, buf):
        """Put the tensor of `buf` (a view, or its conversion) into every target."""
        v = self.tensor(buf)
        for tgt in self.targets:
            tgt.put(v)

    def unset(self):
        """Put the meta placeholders back in every target."""
        for tgt in self.targets:
            tgt.unset()


class Unit:
    """
    A load unit bound to the model, with its run-time state.

    Binding: info (pack Unit), targets ({tensor name: [Target]}), modules, leaf (no other
    unit's module runs inside ours). Layout (set per configuration): resident, main (the Slot
    of the whole unit or its rest), chunks (Slots of a split weight), split ((module, name) of
    the split layer), landing ((refs, buffer) of a resident unit converted each time it lands,
    else None). Pass state (reset per pass): done / active calls, loaded, lease (a demand miss's
    bytes), converted (bytes of conversion copies held), wait_s (the last call's wait for its
    weights), t (compute stamps).
    """

    def __init__(self, info, targets_by_tensor, modules):
        """Bind pack unit `info`; configure() fills in the layout."""
        self.info = info
        self.index = info.index
        self.name = info.name
        self.calls = info.calls
        self.targets = targets_by_tensor
        self.modules = modules
        self.leaf = True
        self.resident = False
        self.main = None
        self.chunks = []
        self.split = None
        self.landing = None
        self.converted = 0
        self.reset()

    def reset(self):
        """Forget the last pass."""
        self.done = 0
        self.active = 0
        self.loaded = False
        self.lease = None
        self.wait_s = 0.0
        self.t = {}

    def clear_layout(self):
        """Forget the configuration's slots (teardown)."""
        self.main, self.chunks, self.split, self.landing = None, [], None, None

    @property
    def convert_bytes(self):
        """Return the bytes its landing converts (main slot or resident refs; 0: none)."""
        refs = self.main.tensors if self.main is not None else \
            (self.landing[0] if self.landing is not None else [])
        return sum(r.converted_bytes for r in refs)

    def land(self):
        """Put a converting resident unit's tensors in (converted from the resident buffer)."""
        refs, buf = self.landing
        for r in refs:
            r.put(buf)

    def unset_all(self):
        """Put every tensor's meta placeholder back."""
        for lst in self.targets.values():
            for tgt in lst:
                tgt.unset()


class Binding:
    """
    The pack's units bound to a model skeleton (see the module docstring).

    Attributes: modules ({name: module}), units (list[Unit], pack order), extra ({buffer name:
    (Target, tensor)}), extra_bytes, convert_reserve (bytes of the conversion copies a pass
    holds at once). Raises PackError when pack and model disagree.
    """

    def __init__(self, pack, model):
        """Match every pack tensor to the model; refuse a meta tensor the pack lacks."""
        self.pack = pack
        self.modules = module_table(model)
        self.managed = set()
        self.units = [Unit(info, self._targets(info),
                           [self.modules[m] for m in info.modules if m in self.modules])
                      for info in pack.units]
        owners = [(u, m) for u in self.units for m in u.info.modules]
        for u in self.units:
            u.leaf = not any(v is not u and (m == '' or n.startswith(m + '.'))
                             for m in u.info.modules for v, n in owners)
        self.extra = self._extra()
        self._check_covered()
        self.extra_bytes = sum(t.numel() * t.element_size() for _, t in self.extra.values())
        self.convert_reserve = self._convert_reserve()

    def _targets(self, info):
        targets = {}
        for t in info.tensors:
            lst, seen = [], set()
            for full in [t.name] + list(t.aliases):
                tgt = self._target(info, t, full)
                if (id(tgt.module), tgt.attr) in seen:
                    continue
                seen.add((id(tgt.module), tgt.attr))
                self.managed.add((id(tgt.module), tgt.attr))
                have = None if tgt.placeholder is None else list(tgt.placeholder.shape)
                if have != list(t.shape):
                    raise PackError(f'tensor {full}: pack shape {t.shape} does not match '
                                    f'the model ({have})', self.pack.path, info.name, t.offset)
                lst.append(tgt)
            targets[t.name] = lst
        return targets

    def _target(self, info, t, full):
        mname, _, attr = full.rpartition('.')
        mod = self.modules.get(mname)
        if mod is None:
            raise PackError(f'tensor {full}: the model has no module {mname!r}',
                            self.pack.path, info.name, t.offset)
        if attr in mod._parameters:
            return Target(mod, attr, 'parameter')
        if attr in mod._buffers:
            return Target(mod, attr, 'buffer')
        raise PackError(f'tensor {full}: module {mname!r} has no parameter or buffer {attr!r}',
                        self.pack.path, info.name, t.offset)

    def _extra(self):
        """Non-persistent buffers (anchors and the like) stay resident for the model's life."""
        extra = {}
        for name, tensor in self.pack.extra_buffers().items():
            mname, _, attr = name.rpartition('.')
            mod = self.modules.get(mname)
            if mod is None or attr not in mod._buffers:
                raise PackError(f'extra buffer {name}: no such buffer in the model',
                                self.pack.path)
            self.managed.add((id(mod), attr))
            extra[name] = (Target(mod, attr, 'buffer'), tensor)
        return extra

    def _check_covered(self):
        for mname, mod in self.modules.items():
            for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
                if t is not None and t.is_meta and (id(mod), attr) not in self.managed:
                    raise PackError(f'{mname}.{attr} of the model is not stored in the pack '
                                    '(it would stay on the meta device)', self.pack.path)

    def _convert_reserve(self):
        """
        Return the bytes of the conversion copies alive at once in a pass (0: no conversion).

        A unit converts as it lands and drops the copy after its last call, so this is the
        most converted bytes of units whose calls span one position of the recorded pass, plus
        the copies of units used outside forward (converted once, held for good).
        """
        sizes, held = [], 0
        for u in self.units:
            n = 0
            for t in u.info.tensors:
                dtype = self.compute_of(u, t.name, t.dtype)
                if dtype is not None:
                    n += t.nbytes // dtype_of(t.dtype).itemsize * dtype.itemsize
            if n and u.info.used_outside_forward:
                held += n
            elif n and u.calls:
                sizes.append((u.info.first_call, u.info.last_call, n))
        return held + max((sum(n for a, b, n in sizes if a <= p <= b) for _, p, _ in sizes),
                          default=0)

    def compute_of(self, unit, name, stored):
        """Return the dtype tensor `name` of `unit` (stored as dtype name `stored`) lands as."""
        targets = unit.targets.get(name) or [None]
        ph = targets[0].placeholder if targets[0] is not None else None
        return landing_dtype(dtype_of(stored), ph.dtype if ph is not None else None)

    def refs(self, unit, spec):
        """Return the TensorRefs of a slot of `unit` (a chunk's weight goes to no target)."""
        return [TensorRef.of(t, unit.targets[t.name] if spec.kind != 'chunk' else [],
                             self.compute_of(unit, t.name, t.dtype))
                for t in spec.tensors]

    def resident_refs(self, unit, pos):
        """Return the TensorRefs of a resident unit read to `pos` of the resident buffer."""
        info = unit.info
        return [TensorRef(t.name, dtype_of(t.dtype), t.shape, pos + t.offset - info.offset,
                          t.nbytes, unit.targets[t.name], self.compute_of(unit, t.name, t.dtype))
                for t in info.tensors]

    def put_extra(self, device):
        """Put the extra buffers on `device` into the model (in the placeholder's dtype)."""
        for tgt, tensor in self.extra.values():
            ph = tgt.placeholder
            dtype = landing_dtype(tensor.dtype, ph.dtype if ph is not None else None)
            tgt.put(tensor.to(device) if dtype is None else tensor.to(device, dtype))

    def unset_extra(self):
        """Put the extra buffers' meta placeholders back."""
        for tgt, _ in self.extra.values():
            tgt.unset()
