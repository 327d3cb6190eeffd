# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The order a model uses its weights, and the load units that order suggests.

`trace` runs one forward pass and records which weight-owning modules are called, in what
order, and which tensors are used while none of their owners runs; `group_units` turns that
into load units (tied tensors in one unit, tiny units merged into the unit called right before).
The writer lays the units out in this order, so the reader always fetches "the next unit".
"""

from dataclasses import dataclass
import time

from demand_layering_ros.pack.format import full_name, MERGE_BYTES


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


def trace(model, example_input):
    """
    Run `model(example_input)` once (eval, no_grad) and record the weight-owning module calls.

    Forward pre/post hooks go on every module that directly owns parameters or persistent buffers.
    A TorchFunctionMode also notes tensors used while none of their owning modules is running.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    names, order = _module_names(model)
    owner_modules = [m for m in order if any(True for _ in _owned(m))]
    owner_names = [names[id(m)][0] for m in owner_modules]
    tensor_owner = _tensor_owners(model)
    tensor_name = {}
    for m in owner_modules:
        for attr, t, _ in _owned(m):
            tensor_name.setdefault(id(t), full_name(names[id(m)][0], attr))
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


def non_persistent_buffers(model):
    """Return {name: CPU copy} of the buffers a pack must carry beside the weights file."""
    names, order = _module_names(model)
    out = {}
    for m in order:
        for attr, b in m._buffers.items():
            if b is not None and attr in m._non_persistent_buffers_set:
                out[full_name(names[id(m)][0], attr)] = b.detach().cpu().contiguous().clone()
    return out


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
            full = full_name(mname, attr)
            extra = [full_name(n, attr) for n in names[id(m)][1:]]
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
