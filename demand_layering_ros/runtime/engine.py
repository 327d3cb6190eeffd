# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The engine: one configuration of a demand-layered model, from plan to hooked, running pipeline.

configure(budget_mb, plan) runs the Plan it is given; a budget the plan leaves open is fitted by
the `fit` function its owner passed in (`load()` passes `planning.fit.fit_budget`: the runtime
never imports planning). It lays the streamed slots out (`layout.slots.slot_layout`,
`arena_layout`), refuses a plan the budget cannot hold, then
installs it: staging allocated, resident units read (checked against the manifest; on CUDA
streamed to the device through pinned pieces), split units hashed once, hooks attached, the
heap configure freed handed back (`malloc.trim`), loader started. teardown() undoes all of
it, also what a configure that failed half-way had installed (registered host memory, the
arena); run() runs one pass (under torch.inference_mode), its first passes measuring the
activation peak (`footprint`). A pinned copy ring (CUDA 'copy') counts against a budget like
the arena.
"""

import dataclasses
import threading
import time

from demand_layering_ros import direct_io
from demand_layering_ros.layout.arena import ArenaTooSmall, describe_budget
from demand_layering_ros.layout.plan import Plan
from demand_layering_ros.layout.slots import arena_layout, slot_layout
from demand_layering_ros.pack import PackError
from demand_layering_ros.runtime import malloc
from demand_layering_ros.runtime.binding import Binding
from demand_layering_ros.runtime.cuda_staging import DeviceArena, MappedHostArena
from demand_layering_ros.runtime.errors import ExecutorError, read_error
from demand_layering_ros.runtime.footprint import ActivationProbe, ProcessFigures
from demand_layering_ros.runtime.hooks import attach_hooks, detach_hooks
from demand_layering_ros.runtime.options import (check_options, default_staging, PIECE_BYTES,
                                                 READER_THREADS)
from demand_layering_ros.runtime.pipeline import Pipeline
from demand_layering_ros.runtime.slot_state import Slot
from demand_layering_ros.runtime.staging import HostArena
from demand_layering_ros.runtime.timeline import Timeline
from demand_layering_ros.sizes import align_up, MB, PAGE, pinned_size
import torch
import xxhash


class Engine:
    """
    Everything that runs a demand-layered pass; owned by a DemandLayeredModel.

    It never references the DemandLayeredModel, so dropping the model finalises the engine
    (threads stopped, arena freed) without waiting for the cyclic garbage collector.
    """

    def __init__(self, pack, model, device, staging=None, threads=READER_THREADS, direct=True,
                 timeline=True, sync=True, throttle_bytes_per_s=None, fault_injector=None,
                 split_bytes=None, prefetch_depth=None, staging_bytes=None, shared=None,
                 fit=None):
        """
        Bind the pack to skeleton `model` and open two readers; configure() does the rest.

        shared: a group's SharedParts (`runtime.shared`): the readers then use the group's
        threads, and the lock, staging and loader thread are the group's. fit: the function
        that fits a budget no plan fixes (`planning.fit.fit_budget`'s signature); None: such a
        budget is refused (a group fits its budget itself).
        """
        malloc.limit_arenas()             # before the reader and loader threads start
        self.pack = pack
        self.model = model
        self.device = check_options(device=device, staging=staging, threads=threads,
                                    split_bytes=split_bytes, prefetch_depth=prefetch_depth,
                                    staging_bytes=staging_bytes)
        if self.device.type == 'cuda' and self.device.index is None:
            self.device = torch.device('cuda', torch.cuda.current_device())
        self.opts = {'staging': staging, 'split_bytes': split_bytes,
                     'prefetch_depth': prefetch_depth, 'staging_bytes': staging_bytes}
        self.fit = fit
        self.timeline_on = timeline
        self.sync = sync
        self.pass_lock = threading.Lock()
        self.closed = False
        self.configured = False       # ready to run a pass
        self.installed = False        # something of a configuration is in place (teardown)
        self.handles = []
        self.passes = 0
        self.last = {'latency_ms': None, 'stall_ms': 0.0, 'demand_misses': 0, 'timeline': []}
        self.binding = Binding(pack, model)
        self.units = self.binding.units
        reader_kw = {'threads': threads, 'direct': direct, 'fault_injector': fault_injector,
                     'throttle_bytes_per_s': throttle_bytes_per_s}
        self.shared = shared
        pools = shared.pools if shared is not None else (None, None)
        self.reader = pack.reader(pool=pools[0], **reader_kw)
        try:   # misses, residents, load-time checks
            self.sync_reader = pack.reader(pool=pools[1], **reader_kw)
        except BaseException:
            self.reader.close()
            raise
        self.pipeline = Pipeline(pack.path, self.reader, self.sync_reader, shared)
        self.probe = ActivationProbe(self.device)
        self.process = ProcessFigures(pack.weights_path)

    # ------------------------------------------------------------------ configuration

    def configure(self, budget_mb=None, plan=None):
        """Decide the plan for (budget_mb, plan: a Plan or None), lay it out and install it."""
        budget_bytes = int(budget_mb * MB) if budget_mb is not None else None
        room, reserve = self._room(budget_bytes)
        run = self._decide(room, plan)
        split_bytes = self._option(run, 'split_bytes')
        depth = self._option(run, 'prefetch_depth')
        forced = {u.index for u in self.units if u.info.used_outside_forward}
        fixed = run is not None and run.fixes_layout
        residents = (forced | self._named(run.resident_units or [])) if fixed else set(forced)
        text = describe_budget(budget_bytes) if budget_bytes is not None else None
        slots = slot_layout(self.pack, self.binding.modules, residents, split_bytes)
        layout = arena_layout(slots.slots, run.arena_bytes if fixed else None, depth, text)
        staging = (run.staging if run is not None else None) or self.opts['staging'] \
            or default_staging(self.device)
        ring = self._ring_bytes(staging, slots.slots, layout, budget_bytes)
        need = sum(self.units[i].info.length for i in residents) + self.binding.extra_bytes + \
            (layout.capacity if layout else 0) + reserve + pinned_size(ring)
        if fixed and budget_bytes is not None and need > budget_bytes:
            what = 'extra buffers, the arena and conversion copies' if reserve else \
                'extra buffers and the arena'
            raise ArenaTooSmall(f'{text} is below the plan: resident units, {what} need '
                                f'{need} bytes'
                                + (f' (with a {pinned_size(ring)}-byte pinned staging ring)'
                                   if ring else ''), needed=need, capacity=budget_bytes)
        self.budget_mb, self.budget_bytes = budget_mb, budget_bytes
        self.staging, self.ring_bytes = staging, ring
        self.split_bytes = split_bytes
        self.plan_in = plan
        self._install(residents, slots, layout)

    def _room(self, budget_bytes):
        """
        Return (bytes the plan may hold, conversion reserve) for a budget (None: no budget).

        A pack stored in another dtype than the model computes in (float16 on the CPU) is
        converted as each unit lands; the copies alive at once (`Binding.convert_reserve`) are
        weight memory outside the plan, so the plan gets the budget less that reserve.
        """
        reserve = self.binding.convert_reserve
        if budget_bytes is None or not reserve:
            return budget_bytes, reserve
        if budget_bytes <= reserve:
            raise ArenaTooSmall(f'{describe_budget(budget_bytes)} cannot hold the {reserve} '
                                f'bytes of the weights converted from the pack of '
                                f'{self.pack.stored_dtype} as they land', needed=reserve + 1,
                                capacity=budget_bytes)
        return budget_bytes - reserve, reserve

    def _decide(self, budget_bytes, plan):
        """Return the Plan to run: the one given, fitted to the budget when it leaves it open."""
        run = plan
        if run is None and (self.opts['split_bytes'] is not None
                            or self.opts['prefetch_depth'] is not None):
            run = Plan(split_bytes=self.opts['split_bytes'],
                       prefetch_depth=self.opts['prefetch_depth'])
        if budget_bytes is None or (run is not None and run.fixes_layout):
            return run
        if self.fit is None:
            raise ExecutorError(f'a budget of {budget_bytes} bytes with no plan that fixes the '
                                'layout needs a fit: open the model with load()')
        staging = (run.staging if run is not None else None) or self.opts['staging'] \
            or default_staging(self.device)
        reserve = 0
        for _ in range(4):     # a pinned staging ring (CUDA 'copy') comes out of the budget too
            fitted = self.fit(self.pack, self.binding.modules, budget_bytes - reserve,
                              split_bytes=self._option(run, 'split_bytes'),
                              prefetch_depth=self._option(run, 'prefetch_depth'),
                              extra_bytes=self.binding.extra_bytes)
            if self.device.type != 'cuda' or staging != 'copy':
                break
            ring = pinned_size(self._ring_bytes(staging, slot_layout(
                self.pack, self.binding.modules, self._named(fitted.resident_units),
                fitted.split_bytes).slots, None, budget_bytes))
            if ring <= reserve:
                break
            reserve = ring
        return dataclasses.replace(fitted, staging=run.staging if run is not None else None)

    def _ring_bytes(self, staging, slots, layout, budget_bytes):
        """
        Return the pinned copy ring a configuration needs (0 but on CUDA with staging 'copy').

        Within a budget it is the smallest ring the slots allow, a power of two (what the
        pinned allocator hands out anyway); without one, the staging's own choice
        (load()'s staging_bytes, else twice the largest slot and at least 64 MiB, at most the
        arena).
        """
        if self.device.type != 'cuda' or staging != 'copy' or not slots:
            return 0
        largest = max(s.length for s in slots)
        if self.opts['staging_bytes']:
            return max(self.opts['staging_bytes'], largest)
        if budget_bytes is not None:
            return pinned_size(largest)
        capacity = layout.capacity if layout is not None else largest
        return max(min(capacity, max(2 * largest, 64 * MB)), largest)

    def _option(self, run, key):
        """Return a plan's split_bytes/prefetch_depth, or load()'s option when it has none."""
        value = getattr(run, key) if run is not None else None
        return value if value is not None else self.opts[key]

    def _named(self, names):
        """Return the unit indices of a plan's resident_units."""
        index = {u.name: u.index for u in self.units}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ExecutorError(f'plan names units the pack {self.pack.path} does not '
                                f'have: {unknown[:5]}')
        return {index[n] for n in names}

    def _staging(self):
        if self.shared is not None:
            return self.shared.staging
        if self.device.type != 'cuda':
            return HostArena(self.device, self.pipeline.cond, self.timeline_on)
        if self.staging == 'zero_copy':
            return MappedHostArena(self.device, self.pipeline.cond, self.timeline_on)
        return DeviceArena(self.device, self.pipeline.cond, self.timeline_on,
                           self.ring_bytes or None)

    def _install(self, residents, slots, layout):
        """Allocate memory, load residents, hash split slots, hook modules, start the loader."""
        for u in self.units:
            us = slots.units.get(u.index)
            u.resident = u.index in residents
            u.main = self._slot(u, us.main) if us is not None and us.main else None
            u.chunks = [self._slot(u, c) for c in us.chunks] if us is not None else []
            u.split = (self.binding.modules[us.split.module], us.split.module) \
                if us is not None and us.split is not None else None
        by_name = {s.name: s for u in self.units
                   for s in ([u.main] if u.main is not None else []) + u.chunks}
        self.layout = layout
        self.arena_bytes = layout.capacity if layout is not None else 0
        staging = self._staging()
        self.installed = True
        try:
            self.pipeline.install([by_name[s.name] for s in slots.slots], layout, staging)
            self.timeline = Timeline(staging.clock, self.timeline_on)
            self.resident_buf = self._load_residents(residents)
            self._hash_split_slots()
            self.handles = attach_hooks(self.units, self.pipeline, self.timeline)
            malloc.trim()                 # what planning and load-time checks left free
            self.probe.reset()
            self.process.mark()
            self.pipeline.start()
        except BaseException:
            self.teardown()             # frees what was allocated: arena, registered memory
            raise
        self.configured = True

    def _slot(self, unit, spec):
        slot = Slot(unit, spec, self.binding.refs(unit, spec))
        slot.verify = self._verifier(slot)
        return slot

    # ------------------------------------------------------------------ load-time reads

    def _load_residents(self, residents):
        """Read resident units into one buffer on the device and bind them; return it."""
        units = sorted((self.units[i] for i in residents), key=lambda u: u.info.offset)
        total = sum(u.info.length for u in units)
        self.pipeline.resident_bytes = total + self.binding.extra_bytes
        buf = None
        if total and self.device.type == 'cpu':
            buf = self.pipeline.staging.host_buffer(total)     # the reads land where they stay
            futures, pos = [], 0
            for u in units:
                futures.append(self.pack.read_unit(self.sync_reader, u.info,
                                                   buf[pos:pos + u.info.length]))
                pos += u.info.length
            for u, f in zip(units, futures):
                try:
                    f.result()
                except OSError as e:
                    raise read_error(e, self.pack.path, u.name, u.info.offset) from e
        elif total:
            buf = self._copy_residents(units, total)
            self.pipeline.staging.synchronize()   # a pass may run on another stream
        if buf is not None:
            pos = 0
            for u in units:
                refs = self.binding.resident_refs(u, pos)
                if any(r.compute is not None for r in refs) and not u.info.used_outside_forward:
                    u.landing = (refs, buf)        # converted each pass as it lands (hooks)
                else:
                    for r in refs:
                        r.put(buf)
                    self.pipeline.resident_bytes += sum(r.converted_bytes for r in refs)
                pos += u.info.length
        self.binding.put_extra(self.device)
        return buf

    def _copy_residents(self, units, total):
        """
        Stream resident units to a device buffer piece by piece through pinned host memory.

        The pieces go through the staging's own pinned memory (the copy ring, the mapped
        arena) when it has some; else through one bounce buffer of at most 2 * PIECE_BYTES,
        counted in peak_weight_bytes while it lives and handed back to the driver afterwards
        (torch's caching host allocator would otherwise keep it for the process's life).
        """
        p = self.pipeline
        dev = torch.empty(total, dtype=torch.uint8, device=self.device)
        scratch, held = p.staging.scratch(), 0
        if scratch is None:
            n = min(align_up(total), 2 * PIECE_BYTES)
            scratch, held = p.staging.host_buffer(n), p.staging.host_held(n)
            with p.cond:
                p.transient_bytes += held
                p.note_peak()
        try:
            pos = 0
            for u in units:
                stream_unit(self.pack, self.sync_reader, u.info, scratch,
                            lambda a, view, base=pos: dev[base + a:base + a + view.numel()]
                            .copy_(view))
                pos += u.info.length
        finally:
            if held:
                del scratch
                with p.cond:
                    p.transient_bytes -= held
                p.staging.release_host()
        return dev

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
        p = self.pipeline
        scratch = p.staging.scratch()
        p.touched = max(p.touched, _piece(scratch))
        for u in split:
            stream_unit(self.pack, self.sync_reader, u.info, scratch, lambda a, view: None)
            for s in ([u.main] if u.main is not None else []) + u.chunks:
                self.sync_reader.read_into(s.file_offset, s.length, scratch[:s.length])
                p.touched = max(p.touched, s.length)
                s.checksum = direct_io.checksum(scratch[:s.length])

    def _verifier(self, slot):
        """Return the check of a slot's bytes: the manifest's digest, or the one from load."""
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

    # ------------------------------------------------------------------ teardown

    def teardown(self):
        """Stop the loader, wait for reads, put meta tensors back, free the arena."""
        if not self.installed:
            return
        self.configured = False
        self.pipeline.stop()
        detach_hooks(self.handles)
        self.handles = []
        for u in self.units:
            self.pipeline.drop(u)
            u.unset_all()
            u.reset()
            for slot in ([u.main] if u.main is not None else []) + u.chunks:
                slot.forget()          # no cycle keeps the old arena's pages charged
            u.clear_layout()
        self.binding.unset_extra()
        self.pipeline.clear()
        self.resident_buf = None
        self.installed = False

    def close(self):
        """Tear down and close the files (idempotent)."""
        if self.closed:
            return
        self.teardown()
        self.reader.close()
        self.sync_reader.close()
        self.closed = True

    # ------------------------------------------------------------------ passes

    def run(self, fn, args, kwargs):
        """Run one forward pass of `fn` with the pipeline (after a re-plan in progress)."""
        with self.pass_lock:       # checked inside: a reconfigure tears down under this lock
            if self.closed or not self.configured:
                raise ExecutorError('the demand-layered model is closed')
            t0 = time.perf_counter()
            self.pipeline.begin_pass(t0)
            self.timeline.begin(t0)
            self.probe.begin()
            ok = False
            try:
                with torch.inference_mode():
                    out = fn(*args, **kwargs)
                ok = True
            finally:
                self._end_pass(t0, ok)
            return out

    def _end_pass(self, t0, ok):
        staging = self.pipeline.staging
        staging.end_pass(ok, self.sync)
        t1 = time.perf_counter()
        device_wait = staging.device_wait_seconds()       # CUDA: the stream's waits for copies
        self.probe.end()
        self.timeline.end()
        self.pipeline.pause()
        timeline = self.timeline.rows(self.units) if self.timeline_on else []
        calls = self.timeline.calls()
        if self.timeline_on:
            self.timeline.clock.ref()        # before the next pass's copies are queued
        self.pipeline.next_pass(self.units)
        self.passes += 1
        lent = self.pipeline.preempted_s          # guest passes ran inside this one
        self.last = {'latency_ms': (t1 - t0 - lent) * 1e3, 'preempted_ms': lent * 1e3,
                     'stall_ms': (self.pipeline.last_stall + device_wait) * 1e3,
                     'demand_misses': self.pipeline.pass_misses, 'timeline': timeline,
                     'calls': calls, 'ok': ok}


def stream_unit(pack, reader, info, scratch, sink):
    """
    Read a unit piece by piece into `scratch`, verify the manifest digest over all pieces.

    sink(offset in the unit, piece) sees each piece before the next read overwrites it.
    """
    piece = _piece(scratch)
    h = xxhash.xxh3_64()
    for off in range(info.offset, info.end, piece):
        n = min(piece, info.end - off)
        try:
            reader.read_into(off, n, scratch[:n])
        except OSError as e:
            raise read_error(e, pack.path, info.name, off) from e
        h.update(direct_io.as_memoryview(scratch[:n]))
        sink(off - info.offset, scratch[:n])
    if h.hexdigest() != info.checksum:
        raise PackError(f'checksum mismatch over [{info.offset}, {info.end}) '
                        f'(xxh3_64 {h.hexdigest()}, manifest says {info.checksum}): '
                        'the weights file is damaged', pack.path, info.name,
                        info.offset)


def _piece(scratch):
    """Return the bytes read at a time through `scratch` at load time (whole pages, <= 8 MiB)."""
    return min(scratch.numel(), 8 * MB) // PAGE * PAGE
