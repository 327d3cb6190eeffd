# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Hooks: what runs around each module call of the skeleton, in the shape of accelerate's ModelHook.

A ModelHook has pre_forward (before the module runs) and post_forward (after); a hook that
computes the module itself also defines forward(module, x). The concerns are subclasses:
StreamHook puts a unit's weights in before its calls and takes them out after its last call;
TimingHook stamps compute and logs each call's wait for the timeline; ChunkedCompute runs a
split Conv2d/Linear chunk by chunk of output rows. `attach_hooks` is the one place hooks go on
(torch forward pre/post hooks, and the forward of split modules); `detach_hooks` takes them
all off again.
"""

import functools
import time

from torch import nn
import torch.nn.functional as F


class ModelHook:
    """Code run around a module's forward; subclasses override what they need."""

    forward = None                # a hook that computes the module: forward(module, x)

    def pre_forward(self, module, args):
        """Run before the module's forward."""

    def post_forward(self, module, args, output):
        """Run after the module's forward."""


class HookChain(ModelHook):
    """Hooks on one module, nested: pre_forward in order, post_forward in reverse order."""

    def __init__(self, hooks):
        """Chain `hooks` (at most one of them computes the module)."""
        self.hooks = list(hooks)
        computes = [h for h in self.hooks if h.forward is not None]
        self.forward = computes[0].forward if computes else None

    def pre_forward(self, module, args):
        """Run every hook's pre_forward, first to last."""
        for h in self.hooks:
            h.pre_forward(module, args)

    def post_forward(self, module, args, output):
        """Run every hook's post_forward, last to first."""
        for h in reversed(self.hooks):
            h.post_forward(module, args, output)


class StreamHook(ModelHook):
    """
    Streams a unit: acquire its main slot before the first call, release after the last.

    A resident unit stored in another dtype than the model computes in (a float16 pack on the
    CPU) gets one too: it lands, converted, before its first call and is dropped after its last.
    """

    def __init__(self, unit, pipeline):
        """Stream run-time Unit `unit` through `pipeline`."""
        self.unit = unit
        self.pipeline = pipeline

    def pre_forward(self, module, args):
        """Put the unit's weights in (once per pass, or again after a demand miss)."""
        unit = self.unit
        if not unit.loaded:
            self.pipeline.boundary(unit)     # before the wait: another model may run first
        t0 = time.perf_counter()
        if not unit.loaded:
            if unit.main is not None:
                buf, unit.lease = self.pipeline.acquire(
                    unit.main, borrow=unit.leaf and unit.split is None)
                unit.main.put(buf)
            elif unit.landing is not None:
                unit.land()                  # a resident unit converted as it lands
            self.pipeline.hold_converted(unit)
            unit.loaded = True
        unit.active += 1
        unit.wait_s = time.perf_counter() - t0

    def post_forward(self, module, args, output):
        """Take the weights out after the unit's last call (or a demand miss's call)."""
        unit = self.unit
        unit.active -= 1
        unit.done += 1
        if unit.active:
            return
        if unit.done >= unit.calls or unit.lease is not None:
            planned = unit.lease is None
            self.pipeline.drop(unit)
            if unit.main is not None and (planned or unit.done >= unit.calls):
                self.pipeline.release(unit.main)


class TimingHook(ModelHook):
    """Stamps a unit's compute and logs its calls (resident units too, when others stream)."""

    def __init__(self, unit, timeline):
        """Record run-time Unit `unit` in `timeline`."""
        self.unit = unit
        self.timeline = timeline

    def pre_forward(self, module, args):
        """Stamp the unit's first compute start; log the call and its wait for weights."""
        unit = self.unit
        if 'compute_start' not in unit.t:
            self.timeline.stamp(unit.t, 'compute_start')
        self.timeline.log_call(unit.index, unit.wait_s, None)

    def post_forward(self, module, args, output):
        """Stamp the unit's compute end."""
        self.timeline.stamp(self.unit.t, 'compute_end')


class ChunkedCompute(ModelHook):
    """A split Conv2d/Linear: each chunk of output rows is acquired, computed and released."""

    def __init__(self, unit, pipeline, timeline):
        """Compute run-time Unit `unit`'s split layer from its chunk slots."""
        self.unit = unit
        self.pipeline = pipeline
        self.timeline = timeline

    def forward(self, module, x):
        """
        Return the layer's output, assembled chunk by chunk of output channels/features.

        Each chunk's result is copied into its rows of one output tensor as soon as it is
        computed (the same bytes torch.cat would give), so the layer's output is held once,
        not once in pieces and once concatenated.
        """
        bias = module.bias
        dim = 1 if isinstance(module, nn.Conv2d) else -1
        out = None
        for j, slot in enumerate(self.unit.chunks):
            t0 = time.perf_counter()
            buf, lease = self.pipeline.acquire(slot, borrow=True)
            self.timeline.log_call(self.unit.index, time.perf_counter() - t0, j)
            w = slot.tensors[0].tensor(buf)           # converted when the pack's dtype differs
            held = slot.tensors[0].converted_bytes
            self.pipeline.converting(held)
            r0, r1 = slot.rows
            b = bias[r0:r1] if bias is not None else None
            self.timeline.stamp(slot.t, 'compute_start')
            if isinstance(module, nn.Conv2d):
                y = module._conv_forward(x, w, b)
            else:
                y = F.linear(x, w, b)
            if out is None:
                shape = list(y.shape)
                shape[dim] = module.weight.shape[0]
                out = y.new_empty(shape)
            out.narrow(dim, r0, r1 - r0).copy_(y)
            del y
            self.timeline.stamp(slot.t, 'compute_end')
            del w
            self.pipeline.converting(-held)
            if lease is not None:
                self.pipeline.return_lease(lease)
            self.pipeline.release(slot)
            del buf
        return out


class HookHandle:
    """What attach_hook put on a module, to take off again."""

    def __init__(self, module, handles, patched):
        """Remember torch hook handles and whether forward was replaced."""
        self.module, self.handles, self.patched = module, handles, patched

    def remove(self):
        """Remove the torch hooks and restore the module's own forward."""
        for h in self.handles:
            h.remove()
        if self.patched:
            self.module.__dict__.pop('forward', None)


def attach_hook(module, hook):
    """
    Attach a ModelHook to a module; return its HookHandle.

    Its pre_forward/post_forward become torch forward pre/post hooks (when overridden); its
    forward, if any, replaces the module's forward (an instance attribute, so torch's hooks
    still run around it).
    """
    handles = []
    if type(hook).pre_forward is not ModelHook.pre_forward:
        handles.append(module.register_forward_pre_hook(hook.pre_forward))
    if type(hook).post_forward is not ModelHook.post_forward:
        handles.append(module.register_forward_hook(hook.post_forward))
    if hook.forward is not None:
        module.forward = functools.partial(hook.forward, module)
    return HookHandle(module, handles, hook.forward is not None)


def attach_hooks(units, pipeline, timeline):
    """
    Attach hooks to every unit that needs them; return the handles for detach_hooks.

    Streamed units get a StreamHook (and ChunkedCompute on a split layer), and so do resident
    units converted as they land; with the timeline on, every unit gets a TimingHook too,
    resident ones only when something streams.
    """
    streamed = any(not u.resident for u in units)
    handles = []
    for u in units:
        timing = timeline.enabled and (streamed or not u.resident)
        stream = not u.resident or u.landing is not None
        if not stream and not timing:
            continue
        hooks = ([StreamHook(u, pipeline)] if stream else []) + \
            ([TimingHook(u, timeline)] if timing else [])
        for m in u.modules:
            handles.append(attach_hook(m, HookChain(hooks)))
        if u.split is not None:
            handles.append(attach_hook(u.split[0], ChunkedCompute(u, pipeline, timeline)))
    return handles


def detach_hooks(handles):
    """Take off every hook attach_hooks put on."""
    for h in handles:
        h.remove()
