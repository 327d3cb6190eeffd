# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Run a model while only a budgeted part of its weights is in memory: Demand Layering.

The model is built as a skeleton on torch's 'meta' device (no weight memory). Hooks give each
load unit's modules real tensors just before they run and take them away after the unit's last
call in the pass (`hooks`). The tensors are zero-copy views into an arena (`staging`: CPU, the
memory the reader wrote with O_DIRECT; CUDA, a device arena fed from a pinned ring by a copy
stream, or, for unified memory, page-locked device-mapped host memory used in place). A loader
thread reads units in first-use order into the offsets that `arena.plan_layout` chose by
replaying the pass, as early as space and `prefetch_depth` allow, so reading overlaps compute;
when a pass ends it starts on the next pass at once (`loader`, `pipeline`). Units called out of
the recorded order are read on demand (`demand_misses`): slower, never wrong. Units above
`split_bytes` (a Conv2d or Linear) are computed in chunks of output channels so the largest
layer no longer sets the memory floor (`slots`). Chunked results are not guaranteed
bit-identical: a BLAS, oneDNN or cuDNN may pick another kernel for a chunk. Most CPU tests were
exact (Darknet Conv2d, torchvision's 51 MB box-head Linear), but yolov3-tiny at 64x64 with 2
threads differed by up to 1.2e-7 (float32, 1.2 MB chunks of layers 10/12/14/21); the planner
only uses split sizes it measured exact, and the CUDA test prints the largest difference it
sees. Without a split (a budget above the largest unit), outputs are always bit-identical.
"""

import copy
from dataclasses import dataclass, fields
import os
import weakref

from demand_layering_ros.layout import threads
from demand_layering_ros.layout.member import Member
from demand_layering_ros.layout.plan import Plan, PlanError
from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime.binding import compute_dtype
from demand_layering_ros.runtime.engine import Engine
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.runtime.feedback import LatencyFeedback
from demand_layering_ros.runtime.options import check_options
import torch
from torch import nn

NO_MOVING = ('a DemandLayeredModel cannot be moved or cast; choose the device with '
             'load(pack, device=...)')


@dataclass
class Stats:
    """
    What stats() reports: memory, I/O and timing; timeline and latency are the last pass's.

    peak_weight_bytes counts resident units, the arena pages in use, demand-miss buffers and
    pinned staging (CUDA: torch's pinned allocator rounds each block to a power of two), since
    the configuration in force began (load, or the last reconfigure: its own or its group's).
    activation_peak_bytes, pinned_bytes, process_rss_bytes, page_cache_growth_bytes and
    weights_cached_bytes: what the configuration costs besides (see runtime.footprint).
    """

    peak_weight_bytes: int
    budget_bytes: object
    resident_bytes: int
    arena_bytes: int
    arena_committed_bytes: int
    staging_bytes: int
    model_bytes: int
    io_bytes: int
    io_seconds: float
    io_mode: str
    io_fallback_reason: object
    stall_ms: float
    demand_misses: int
    demand_misses_last_pass: int
    latency_ms: object
    passes: int
    device: str
    staging: object
    resident_units: int
    streamed_units: int
    split_units: list
    split_bytes: object
    prefetch_depth: object
    timeline: list
    calls: list
    activation_peak_bytes: int
    pinned_bytes: int
    process_rss_bytes: int
    page_cache_growth_bytes: object
    weights_cached_bytes: object
    predicted_latency_ms: object = None     # the plan's prediction (None: no plan predicts)
    expected_latency_ms: object = None      # what it expects on a typical run (the ratio's base)
    measured_latency_ms: object = None      # median of the recent passes of one frame
    latency_ratio: object = None            # measured / expected
    latency_drift: bool = False             # beyond 10% over enough passes: re-plan or warn

    def as_dict(self):
        """Return the figures as a dict, keys in field order (the stats() contract)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def coerce_plan(plan):
    """
    Return a Plan (or None) from a Plan, mapping or PLAN.yaml path; ExecutorError if bad.

    A plan made for another torch thread count raises threads.ThreadMismatch (a ValueError
    naming both counts): its predicted latency would not hold in this process.
    """
    try:
        out = Plan.coerce(plan)
    except PlanError as e:
        raise ExecutorError(str(e)) from e
    if out is not None:
        threads.check_plan(out, where=f'plan {plan}' if isinstance(plan, (str, os.PathLike))
                           else 'the plan')
    return out


def one_frame(args):
    """Return True when a forward call's input is one frame (a 1-batch tensor or one image)."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor):
        return x.dim() < 4 or x.shape[0] == 1
    return isinstance(x, (list, tuple)) and len(x) == 1


def check_budget(budget_mb):
    """Return budget_mb if it is None or a positive number; else raise ExecutorError."""
    if budget_mb is None:
        return None
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) \
            or not 0 < budget_mb < float('inf'):
        raise ExecutorError(f'budget_mb must be a positive number, got {budget_mb!r}')
    return budget_mb


class DemandLayeredModel(nn.Module):
    """
    A pack's model that streams its weights: called exactly like the original module.

    Build with `load(pack_dir, device, budget_mb=..., plan=...)`. `stats()` reports memory,
    I/O and the last pass's timeline; `reconfigure()` changes budget or plan between frames;
    `close()` stops the loader and frees the arena (also done when the model is collected).
    `detector` is a Detector (pre/post-processing of the pack's model family) whose `.model` is
    this object.
    """

    def __init__(self, pack, device='cpu', budget_mb=None, plan=None, staging=None,
                 dtype=None, fit=None, **opts):
        """
        Open the pack, build the skeleton on 'meta' (in the compute dtype), configure.

        fit: fits a budget no plan fixes (`load()` passes `planning.fit.fit_budget`).
        """
        super().__init__()
        check_options(device=device, staging=staging, **{
            k: v for k, v in opts.items() if k in ('threads', 'split_bytes', 'prefetch_depth',
                                                   'staging_bytes')})
        budget_mb = check_budget(budget_mb)
        plan = coerce_plan(plan)
        pack = pack if isinstance(pack, Pack) else Pack.open(pack)
        template = pack.build_detector(device=device, meta=True)
        try:
            dtype = compute_dtype(pack, device, dtype)
        except ValueError as e:
            raise ExecutorError(str(e)) from None
        if dtype is not None:
            template.set_dtype(dtype)          # e.g. CUDA: the pack's stored float16
        self.module = template.model
        self.pack = pack
        self._template = template
        self._detector_ref = None
        self._engine = Engine(pack, self.module, device, staging=staging, fit=fit, **opts)
        self._finalizer = weakref.finalize(self, self._engine.close)
        try:
            self._engine.configure(budget_mb, plan)
        except BaseException:
            self._finalizer()
            raise
        self.feedback = LatencyFeedback.for_plan(plan)
        self.following = None       # load(keep_free_mb=...): a memory_following.MemoryFollowing

    def forward(self, *args, **kwargs):
        """Run the wrapped model with weights streamed from the pack."""
        out = self._engine.run(self.module, args, kwargs)
        if one_frame(args):        # plans predict one frame; a batch takes longer
            self.feedback.add(self._engine.last['latency_ms'])
        return out

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
        """Accept only the device and dtype the model computes in (weights stay put)."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        same = device is None or (torch.device(device).type == self.device.type and (
            torch.device(device).index in (None, self.device.index)))
        if not same or dtype not in (None, self._template.dtype):
            raise ExecutorError(NO_MOVING)
        return self

    def _apply(self, fn, recurse=True):
        raise ExecutorError(NO_MOVING)

    def plan(self):
        """Return the plan in effect (the same keys a PLAN.yaml has)."""
        e = self._engine
        given = e.plan_in if e.plan_in is not None else Plan()
        return {'resident_units': [u.name for u in e.units if u.resident],
                'arena_bytes': e.arena_bytes, 'split_bytes': e.split_bytes,
                'prefetch_depth': e.layout.prefetch_depth if e.layout else None,
                'staging': e.staging,
                'predicted_latency_ms': given.predicted_latency_ms,
                'predicted_peak_weight_mb': given.predicted_peak_weight_mb}

    def stats(self):
        """Return memory, I/O and timing figures; timeline and latency are the last pass's."""
        e = self._engine
        p = e.pipeline
        r, s = e.reader, e.sync_reader
        return Stats(
            peak_weight_bytes=p.peak, budget_bytes=e.budget_bytes,
            resident_bytes=p.resident_bytes, arena_bytes=e.arena_bytes,
            arena_committed_bytes=p.committed(), staging_bytes=p.staging.staging_bytes,
            model_bytes=sum(u.info.length for u in e.units),
            io_bytes=r.bytes_read + s.bytes_read, io_seconds=r.seconds + s.seconds,
            io_mode=r.mode, io_fallback_reason=r.fallback_reason,
            stall_ms=e.last['stall_ms'], demand_misses=p.total_misses,
            demand_misses_last_pass=e.last['demand_misses'], latency_ms=e.last['latency_ms'],
            passes=e.passes, device=str(e.device), staging=p.staging.name,
            resident_units=sum(1 for u in e.units if u.resident),
            streamed_units=sum(1 for u in e.units if not u.resident),
            split_units=[u.name for u in e.units if u.chunks], split_bytes=e.split_bytes,
            prefetch_depth=e.layout.prefetch_depth if e.layout else None,
            timeline=e.last['timeline'], calls=e.last.get('calls', []),
            activation_peak_bytes=e.probe.peak, pinned_bytes=p.staging.pinned_bytes,
            **e.process.get(), **self.feedback.as_dict()).as_dict() | self._following_stats()

    def _following_stats(self):
        """Return the figures of the memory following (`load(keep_free_mb=...)`), if any."""
        if self.following is None:
            return {}
        out = self.following.stats()
        out.pop('budget_bytes', None)      # the engine's is the budget in force
        return out

    def held_bytes(self):
        """Return the weight bytes the configuration in force holds: residents, arena, staging."""
        e = self._engine
        p = e.pipeline
        return p.resident_bytes + (e.arena_bytes or 0) + p.staging.staging_bytes

    def whole_bytes(self):
        """Return the weight bytes of the model fully resident (every unit, extra buffers)."""
        b = self._engine.binding
        return sum(u.info.length for u in self._engine.units) + b.extra_bytes + \
            b.convert_reserve

    def smallest_plan_bytes(self, splits=(None,)):
        """Return the weight bytes of the smallest plan at these split sizes (a floor)."""
        b = self._engine.binding
        return Member('model', self.pack, b.modules, b.extra_bytes).smallest_bytes(splits) + \
            b.convert_reserve

    def reconfigure(self, budget_mb=None, plan=None):
        """
        Between frames: rebuild residents and arena for a new budget or plan.

        A budget or plan that cannot work is refused with the same errors as load(), and the
        model keeps running with its previous configuration.
        """
        budget_mb = check_budget(budget_mb)
        plan = coerce_plan(plan)
        e = self._engine
        with e.pass_lock:
            if e.closed:
                raise ExecutorError('the demand-layered model is closed')
            old = (e.budget_mb, e.plan_in, e.pipeline.peak)
            e.teardown()
            try:
                e.pipeline.peak = 0
                e.configure(budget_mb, plan)
            except BaseException:
                e.teardown()
                e.configure(old[0], old[1])
                e.pipeline.peak = old[2]
                raise
            self.feedback = LatencyFeedback.for_plan(plan)

    def close(self):
        """Stop the memory following and the loader, close the pack files, free the weights."""
        if self.following is not None:
            self.following.close()
        self._finalizer()

    def extra_repr(self):
        """Describe the configuration briefly."""
        e = self._engine
        return (f'pack={str(self.pack.path)!r}, device={e.device}, arena_bytes='
                f'{getattr(e, "arena_bytes", None)}, resident_bytes='
                f'{e.pipeline.resident_bytes}')
