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
"""

from demand_layering_ros.pack import dtype_of, PackError
from demand_layering_ros.runtime.slots import module_table
import torch


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

    __slots__ = ('name', 'dtype', 'shape', 'rel', 'nbytes', 'targets')

    def __init__(self, name, dtype, shape, rel, nbytes, targets):
        """Describe bytes [rel, rel + nbytes) of a buffer as a tensor of dtype and shape."""
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.rel = rel
        self.nbytes = nbytes
        self.targets = targets

    @classmethod
    def of(cls, spec, targets):
        """Return the ref of a slots.TensorSpec bound to `targets`."""
        return cls(spec.name, dtype_of(spec.dtype), spec.shape, spec.rel, spec.nbytes, targets)

    def view(self, buf):
        """Return the tensor as a zero-copy view of `buf` (a uint8 tensor)."""
        t = buf[self.rel:self.rel + self.nbytes]
        if self.dtype != torch.uint8:
            t = t.view(self.dtype)
        return t.view(self.shape)

    def put(self, buf):
        """Put the view of `buf` into every target."""
        v = self.view(buf)
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
    the split layer). Pass state (reset per pass): done / active calls, loaded, lease (a demand
    miss's bytes), wait_s (the last call's wait for its weights), t (compute stamps).
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
        self.main, self.chunks, self.split = None, [], None

    def unset_all(self):
        """Put every tensor's meta placeholder back."""
        for lst in self.targets.values():
            for tgt in lst:
                tgt.unset()


class Binding:
    """
    The pack's units bound to a model skeleton (see the module docstring).

    Attributes: modules ({name: module}), units (list[Unit], pack order), extra ({buffer name:
    (Target, tensor)}), extra_bytes. Raises PackError when pack and model disagree.
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

    def refs(self, unit, spec):
        """Return the TensorRefs of a slot of `unit` (a chunk's weight goes to no target)."""
        return [TensorRef.of(t, unit.targets[t.name] if spec.kind != 'chunk' else [])
                for t in spec.tensors]

    def put_extra(self, device):
        """Put the extra buffers on `device` into the model."""
        for tgt, tensor in self.extra.values():
            tgt.put(tensor.to(device))

    def unset_extra(self):
        """Put the extra buffers' meta placeholders back."""
        for tgt, _ in self.extra.values():
            tgt.unset()
