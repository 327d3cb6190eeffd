# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several models under one memory budget: `load_shared` and the group it returns.

    models = load_shared({'front': PACK_A, 'rear': PACK_B}, device='cpu', budget_mb=24)
    models['front'](x); models['rear'](y)         # each an nn.Module with .detector
    models.prefetch('rear')                        # the scheduler's guess of the next model
    models.stats()['group_peak_weight_bytes']      # <= the budget; per-model figures beside it
    models.reconfigure(budget_mb=32)               # between frames, like one model's

Each model is a single-model DemandLayeredModel (engine, pipeline, hooks unchanged) whose
engine was given the group's SharedParts (`runtime.shared`): one arena, one set of reader
threads, one loader thread, one lock. Passes run one at a time across the group; the budget
holds every model's resident units plus the one arena: a group PLAN.yaml from
`plan --pack A --pack B`, or fitted by the `fit` its owner passes (`load_shared()` passes
`planning.fit.fit_group`; the runtime never imports planning). A robot's node serves
all its models from one inference thread, its cameras in turn, and tells the group which
model comes next (`prefetch`) so that model's first layers are read while nothing computes.
"""

import dataclasses
import threading
import weakref

from demand_layering_ros.layout.group_plan import GroupPlan
from demand_layering_ros.layout.member import GroupTooSmall, Member, smallest_group_bytes
from demand_layering_ros.layout.plan import PlanError
from demand_layering_ros.pack import Pack
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.runtime.model import check_budget, DemandLayeredModel
from demand_layering_ros.runtime.options import check_options, READER_THREADS
from demand_layering_ros.runtime.shared import SharedParts
from demand_layering_ros.sizes import align_up, MB
import torch


class MemberModel(DemandLayeredModel):
    """One model of a group: a DemandLayeredModel whose passes go through its group."""

    def __init__(self, group, name, pack, device, plan, staging, **opts):
        """Open the pack and configure it with its part of the group plan."""
        super().__init__(pack, device=device, plan=plan, staging=staging,
                         shared=group.parts, **opts)
        self.model_name = name
        self.group = group

    @property
    def engine(self):
        """Return this model's engine, which its group configures."""
        return self._engine

    def forward(self, *args, **kwargs):
        """Run the wrapped model in the group's turn, weights streamed from its pack."""
        return self.group.run(self.model_name, self.module, args, kwargs)

    def stats(self):
        """Return this model's figures (as load() gives), with its name in the group."""
        out = super().stats()
        out['model'] = self.model_name
        return out

    def reconfigure(self, budget_mb=None, plan=None):
        """Refuse: the models of a group share one budget; reconfigure the group."""
        raise ExecutorError(f'model {self.model_name!r} shares its budget with its group: '
                            'call reconfigure(budget_mb=..., plan=...) on what load_shared '
                            'returned')


class ModelGroup:
    """
    The shared parts, the group plan and the turn-taking of a group's models.

    Holds the engines, never the models, so a model dropped by its user is finalised at once;
    the group itself is closed when the last of its models and its GroupModels are gone.
    """

    def __init__(self, packs, device='cpu', budget_mb=None, plan=None, staging='copy',
                 fit=None, **opts):
        """
        Take the group plan (or fit one), allocate the arena and configure every model.

        fit: `planning.fit.fit_group`'s signature; None: only a given plan is run.
        """
        if not isinstance(packs, dict) or not packs:
            raise ExecutorError('load_shared takes a non-empty dict {model name: pack}')
        for name in packs:
            if not isinstance(name, str) or not name:
                raise ExecutorError(f'model names must be non-empty strings, got {name!r}')
        dev = check_options(device=device, staging=staging, **{
            k: v for k, v in opts.items() if k in ('threads', 'split_bytes', 'prefetch_depth',
                                                   'staging_bytes')})
        if 'shared' in opts:
            raise ExecutorError('load_shared makes the shared parts itself')
        if dev.type == 'cuda' and dev.index is None:
            dev = torch.device('cuda', torch.cuda.current_device())
        self.budget_mb = check_budget(budget_mb)
        self.plan_in = _coerce(plan)
        self.device, self.staging = dev, staging
        self.opts = opts
        self.fit = fit
        self.packs = {n: p if isinstance(p, Pack) else Pack.open(p) for n, p in packs.items()}
        self.pass_lock = threading.Lock()
        self.held_together = 0     # see _run_guest
        self.parts = SharedParts(dev, staging, opts.get('threads', READER_THREADS),
                                 opts.get('timeline', True))
        self.engines = {}
        self.models = weakref.WeakValueDictionary()
        self._finalizer = weakref.finalize(self, _close, self.engines, self.parts)
        self.plan = None
        self._member_list = None

    def build(self):
        """Build and configure the models; return {name: MemberModel}."""
        members = {}
        try:
            self.plan = self._decide(self.budget_mb, self.plan_in)
            self._allocate(self.plan)
            plans = self.plan.for_models(self.packs)
            for name, pack in self.packs.items():
                m = MemberModel(self, name, pack, self.device, plans[name], self.staging,
                                **self.opts)
                members[name] = m
                self.models[name] = m
                self.engines[name] = m.engine
                self.parts.members[name] = m.engine
            self.parts.note_peak()
        except BaseException:
            for m in members.values():
                m.close()
            self._finalizer()
            raise
        return members

    # ------------------------------------------------------------------ planning

    def members(self):
        """Return the fit's view of each model (a 'meta' skeleton each, built once)."""
        if self._member_list is None:
            self._member_list = [Member.of(n, p) for n, p in self.packs.items()]
        return self._member_list

    def _ring(self):
        """Return whether the staging needs a copy ring (CUDA, staging 'copy')."""
        return self.device.type == 'cuda' and self.staging != 'zero_copy'

    def _decide(self, budget_mb, plan):
        """Return the GroupPlan for a budget or a given plan, checked against the budget."""
        members = self.members()
        budget = int(budget_mb * MB) if budget_mb is not None else None
        if plan is not None:
            try:
                plans = plan.for_models(self.packs)
            except PlanError as e:
                raise ExecutorError(str(e)) from e
            if self._ring() and plan.arena_bytes and not plan.staging_bytes:
                plan = dataclasses.replace(plan, staging_bytes=self._largest(members, plan))
            need = plan.arena_bytes + plan.staging_bytes + sum(
                m.bytes_of(m.forced | _indices(m, plans[m.name])) + m.extra_bytes
                for m in members)
            if budget is not None and need > budget:
                raise GroupTooSmall(f'budget {budget_mb:g} MB ({budget} bytes) is below the '
                                    f'group plan: resident units, extra buffers, the shared '
                                    f'arena and staging need {need} bytes', needed=need,
                                    capacity=budget)
            return plan
        split, depth = self.opts.get('split_bytes'), self.opts.get('prefetch_depth')
        reserve = self.opts.get('staging_bytes') or 0
        if self.fit is None:
            raise ExecutorError('a group without a plan needs a fit: open it with load_shared()')
        for _ in range(4):
            gplan = self.fit(members, budget, split, depth, reserve)
            if not self._ring() or not gplan.arena_bytes:
                return gplan
            ring = self.opts.get('staging_bytes') or self._largest(members, gplan)
            if ring <= reserve:
                return gplan
            reserve = ring
        return gplan

    def _largest(self, members, gplan):
        """Return the largest slot a group plan streams (the least a copy ring holds)."""
        plans = gplan.for_models(self.packs)
        return max((align_up(s.length) for m in members
                    for s in m.slots(m.forced | _indices(m, plans[m.name]),
                                     plans[m.name].split_bytes)), default=0)

    def _allocate(self, gplan):
        """Allocate the shared arena (and copy ring) of a group plan."""
        largest = self._largest(self.members(), gplan) if gplan.arena_bytes else 0
        self.parts.allocate(gplan.arena_bytes, largest, gplan.staging_bytes or None)

    # ------------------------------------------------------------------ passes

    def run(self, name, fn, args, kwargs):
        """Run one pass of model `name`, in its turn: the arena is its own meanwhile."""
        host = self.parts.guest(name)
        if host is not None:
            return self._run_guest(name, host, fn, args, kwargs)
        with self.pass_lock:
            engine = self.engines[name]
            if engine.closed or not engine.configured:
                raise ExecutorError(f'model {name!r} of the group is closed')
            self.parts.activate(name)
            self.parts.begin_pass(name)
            return engine.run(fn, args, kwargs)

    def _run_guest(self, name, host, fn, args, kwargs):
        """
        Run a pass of `name` inside another model's pass (preemption, pass lock already held).

        The arena stays the host's: its loader holds, and the guest's units are read on demand
        into the host's free arena space (the host's read-ahead dropped where the space is
        needed, read again after) or, where that cannot hold them, into transient buffers
        counted in the group's peak. Both passes' activations are held at once (the host's on
        its stack): `held_together` counts the two models' activation peaks summed, what a
        preemption between them can hold (each measured on its model's own passes; a CPU
        pass inside another reuses heap malloc already holds, so its own rise shows less).
        """
        engine = self.engines[name]
        if engine.closed or not engine.configured:
            raise ExecutorError(f'model {name!r} of the group is closed')
        p = engine.pipeline
        hosting = next(e for e in self.engines.values() if e.pipeline is host)
        self.held_together = max(self.held_together, engine.probe.peak + hosting.probe.peak)
        host.lend()
        p.guest_of = host
        try:
            self.parts.begin_pass(name)
            self.parts.guests += 1
            return engine.run(fn, args, kwargs)
        finally:
            p.guest_of = None
            host.take_back()

    def set_boundary(self, fn):
        """
        Let `fn(name, done, units)` run at every streamed unit's start of a pass (or None).

        `fn` runs on the pass's thread, between two layers of model `name` (`done` of `units`
        units started); it may call another model of the group, whose pass then runs at once,
        inside this one, with this pass's activations kept on the stack.
        """
        self.parts.boundary = fn

    def prefetch(self, name, after_pass=False):
        """
        Say which model runs next, so its first units are read ahead for it.

        Between passes the arena goes to that model at once (what another model had read ahead
        is dropped); during a pass, when the pass ends. after_pass=True only notes the guess
        for when the next pass ends (a scheduler about to run one model says which comes after
        it). Without a hint the model that waited longest reads ahead.
        """
        if name not in self.engines:
            raise ExecutorError(f'no model {name!r} in the group (models: '
                                f'{sorted(self.engines)})')
        with self.parts.cond:
            self.parts.hint = name
        if not after_pass and self.pass_lock.acquire(blocking=False):
            try:
                if self.engines[name].configured:
                    self.parts.activate(name)
            finally:
                self.pass_lock.release()

    # ------------------------------------------------------------------ configuration

    def reconfigure(self, budget_mb=None, plan=None):
        """
        Between frames: a new budget or group plan for every model at once.

        A budget or plan that cannot work is refused with the same errors as load_shared, and
        the group keeps running with its previous configuration. The peaks, the group's and
        each model's, start again with the new configuration: a peak is the peak since the
        budget in force began (a refused change keeps the old ones).
        """
        budget_mb = check_budget(budget_mb)
        plan = _coerce(plan)
        with self.pass_lock:
            if not self.engines or all(e.closed for e in self.engines.values()):
                raise ExecutorError('the group is closed')
            new = self._decide(budget_mb, plan)
            old = (self.budget_mb, self.plan_in, self.plan, self._peaks())
            self._teardown()
            try:
                self._set_peaks(None)
                self._install(new)
            except BaseException:
                self._teardown()
                self._install(old[2])
                self._set_peaks(old[3])
                raise
            self.budget_mb, self.plan_in, self.plan = budget_mb, plan, new

    def _peaks(self):
        """Return the peaks to restore: the group's and each model's pipeline's."""
        return self.parts.peak, {n: e.pipeline.peak for n, e in self.engines.items()}

    def _set_peaks(self, peaks):
        """Start the group's and every model's peak again (None), or restore `_peaks()`."""
        group, models = peaks if peaks is not None else (0, {})
        with self.parts.cond:
            self.parts.peak = group
            for name, e in self.engines.items():
                e.pipeline.peak = models.get(name, 0)

    def _teardown(self):
        with self.parts.cond:
            self.parts.active = None
        for e in self.engines.values():
            if not e.closed:
                e.teardown()

    def _install(self, gplan):
        self.held_together = 0          # counted from the new plan on, like the peaks
        self._allocate(gplan)
        plans = gplan.for_models(self.packs)
        for name, e in self.engines.items():
            if not e.closed:
                e.configure(None, plans[name])
        self.parts.note_peak()

    # ------------------------------------------------------------------ figures

    def stats(self):
        """Return the group's figures: peak weight memory, budget, arena; per model beside."""
        p = self.parts
        live = [e for e in self.engines.values() if e.configured]
        models = {}
        for name in self.engines:
            m = self.models.get(name)
            if m is not None and self.engines[name].configured:
                models[name] = m.stats()
        with p.cond:
            readers = [r for e in self.engines.values() for r in (e.reader, e.sync_reader)]
            return {
                'group_peak_weight_bytes': p.peak,
                'budget_bytes': int(self.budget_mb * MB) if self.budget_mb is not None
                else None,
                'arena_bytes': self.plan.arena_bytes if self.plan is not None else 0,
                'staging_bytes': p.staging_bytes(),
                'resident_bytes': sum(e.pipeline.resident_bytes for e in live),
                'model_bytes': sum(sum(u.info.length for u in e.units) for e in live),
                'passes': p.runs,
                'active_model': p.active,
                'switches': p.switches,
                'preemptions': p.guests,
                'preempted_activation_peak_bytes': self.held_together,
                'prefetch_dropped': p.dropped,
                'prefetch_dropped_bytes': p.dropped_bytes,
                'io_bytes': sum(r.bytes_read for r in readers),
                'io_seconds': sum(r.seconds for r in readers),
                'reader_threads': p.pool.threads,
                'loader_threads': 1,
                'models': models,
            }

    def plan_dict(self):
        """Return the group plan in effect (the mapping a group PLAN.yaml holds)."""
        return self.plan.to_dict() if self.plan is not None else None

    def close(self):
        """Close every model, then the loader and reader threads; free the arena."""
        self._finalizer()


class GroupModels(dict):
    """
    What load_shared returns: {name: model}, plus the group's controls.

    stats(), prefetch(name), reconfigure(budget_mb=..., plan=...), plan() and close() act on
    the whole group; the models are used one by one as `models[name](x)`.
    """

    def __init__(self, group, models):
        """Hold the models and their group."""
        super().__init__(models)
        self.group = group
        self.following = None   # load_shared(keep_free_mb=...): a MemoryFollowing

    def stats(self):
        """Return the group's figures (group_peak_weight_bytes, ...; 'models': per model)."""
        out = self.group.stats()
        if self.following is not None:
            out.update({k: v for k, v in self.following.stats().items() if k != 'budget_bytes'})
        return out

    def held_bytes(self):
        """Return the weight bytes the group's configuration holds: residents, arena, staging."""
        st = self.group.stats()
        return st['resident_bytes'] + st['arena_bytes'] + st['staging_bytes']

    def whole_bytes(self):
        """Return the weight bytes of every model fully resident (units and extra buffers)."""
        return sum(m.total_bytes for m in self.group.members())

    def smallest_plan_bytes(self, splits=(None,)):
        """Return the weight bytes of the group's smallest plan at these split sizes (a floor)."""
        return smallest_group_bytes(self.group.members(), splits)

    def set_boundary(self, fn):
        """Run `fn` between two layers of every pass (see ModelGroup.set_boundary)."""
        self.group.set_boundary(fn)

    def prefetch(self, name, after_pass=False):
        """Tell the group which model runs next (see ModelGroup.prefetch)."""
        self.group.prefetch(name, after_pass=after_pass)

    def reconfigure(self, budget_mb=None, plan=None):
        """Between frames: a new shared budget or group plan (see ModelGroup.reconfigure)."""
        self.group.reconfigure(budget_mb=budget_mb, plan=plan)

    def plan(self):
        """Return the group plan in effect."""
        return self.group.plan_dict()

    def close(self):
        """Stop the memory following, close every model of the group and the group."""
        if self.following is not None:
            self.following.close()
        for m in list(self.values()):
            m.close()
        self.group.close()


def load_shared(packs, device='cpu', budget_mb=None, plan=None, staging='copy', fit=None,
                **opts):
    """
    Open several packs as models that share one arena, one reader and one loader.

    fit: fits a budget no plan fixes (the package's `load_shared` passes `fit_group`).

    packs: {model name: pack directory (or Pack)}; budget_mb: weight memory of the whole group
    (every model's resident units plus the shared arena); plan: a group PLAN.yaml (path,
    mapping or GroupPlan) from `plan --pack A --pack B`; neither: every model streamed through
    the smallest arena that holds each one's pass. opts as load(): threads (the group's reader
    threads), direct, split_bytes, prefetch_depth, timeline, sync, throttle_bytes_per_s,
    fault_injector, staging_bytes. Returns GroupModels ({name: model} with stats(),
    prefetch(), reconfigure(), plan(), close()).
    """
    group = ModelGroup(packs, device=device, budget_mb=budget_mb, plan=plan, staging=staging,
                       fit=fit, **opts)
    return GroupModels(group, group.build())


def _coerce(plan):
    try:
        return GroupPlan.coerce(plan)
    except PlanError as e:
        raise ExecutorError(str(e)) from e


def _indices(member, plan):
    """Return the unit indices a model's plan keeps resident; ExecutorError for unknown ones."""
    index = {u.name: u.index for u in member.pack.units}
    unknown = [n for n in plan.resident_units or () if n not in index]
    if unknown:
        raise ExecutorError(f'group plan: model {member.name!r} names units its pack '
                            f'{member.pack.path} does not have: {unknown[:5]}')
    return {index[n] for n in plan.resident_units or ()}


def _close(engines, parts):
    """Close every engine of a group, then its shared parts (the group's finalizer)."""
    for e in engines.values():
        e.close()
    parts.close()
