# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What the models of a group share: one lock, one arena, one set of reader threads, one loader.

Several models under one memory budget take turns: one forward pass at a time across the group
(a robot's node runs one inference thread), so each model's layout may use the whole shared
arena during its own pass. Between passes the arena belongs to one model, the *active* one: its
loader reads the head of its next pass while nothing computes. The group's one loader thread
walks the active model's Loader only. Handing the arena to another model *parks* the active one
(its loader held, its reads awaited, its prefetched slots given back and reset, exactly as the
end of a pass resets them), then lets the new one's loader go on: a wrong guess of the next
model costs the bytes read ahead, never correctness.

The engines, pipelines and loaders of the members are the single-model ones; they call back
here through a few hooks: `pools` (the readers' threads), `staging` (the shared arena),
`wake` (a loader was started), `note_peak` (weight memory in use changed) and `after_pass`
(a pass ended: which model reads ahead now).
"""

import threading
import time

from demand_layering_ros import direct_io
from demand_layering_ros.runtime.cuda_staging import DeviceArena, MappedHostArena
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.runtime.staging import HostArena


def make_staging(device, staging, cond, timing=True, staging_bytes=None):
    """Return the Staging a group's device and staging option call for (see engine)."""
    if device.type != 'cuda':
        return HostArena(device, cond, timing)
    if staging == 'zero_copy':
        return MappedHostArena(device, cond, timing)
    return DeviceArena(device, cond, timing, staging_bytes)


class SharedStaging:
    """
    The group's one arena, as each member's pipeline sees it.

    Everything is the real staging's, except that a member neither allocates nor frees it (the
    group does, once per configuration) and a member's loader stopping does not halt it.
    """

    def __init__(self, real):
        """Wrap the real staging (allocated by the group)."""
        self.real = real
        self.capacity = 0
        self.closing = False

    def __getattr__(self, name):
        """Delegate to the real staging."""
        return getattr(self.real, name)

    def allocate(self, capacity, slots):
        """Check that a member's layout fits the arena the group allocated."""
        if capacity > self.capacity:
            raise ExecutorError(f'internal error: a model of the group lays out {capacity} '
                                f'arena bytes, the group allocated {self.capacity}')

    def free(self):
        """Keep the arena (the group frees it)."""

    def halt(self):
        """Halt the real staging only when the whole group closes."""
        if self.closing:
            self.real.halt()


class SharedParts:
    """
    The shared pieces of a group and the hand-over of the arena between its models.

    members: {name: Engine}; active: the name of the model whose loader may read now. peak:
    the group's peak weight bytes (the arena's committed pages, every member's resident bytes
    and transient buffers, the staging ring). Everything here is guarded by `cond`, the lock
    every member's pipeline uses.
    """

    def __init__(self, device, staging='copy', threads=2, timing=True):
        """Create the lock, the reader threads and the loader thread."""
        self.device = device
        self.cond = threading.Condition()
        self.pool = direct_io.ReadPool(threads)      # one queue: read-ahead, misses, residents
        self.pools = (self.pool, self.pool)          # (the loader's reader, the sync reader)
        self.staging = SharedStaging(make_staging(device, staging, self.cond, timing))
        self.staging_option = staging
        self.timing = timing
        self.members = {}
        self.active = None
        self.hint = None
        self.last_run = {}
        self.runs = 0
        self.peak = 0
        self.switches = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.stopping = False
        self.boundary = None    # preemption: fn(name, done, units) at a streamed unit's start
        self.host = None        # (pipeline, thread id) of the pass a boundary was offered in
        self.guests = 0         # passes run inside another model's pass
        self.thread = threading.Thread(target=self._main, name='dlr-group-loader', daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the arena

    def allocate(self, capacity, largest_slot, staging_bytes=None):
        """Allocate the arena of a configuration (every member torn down before)."""
        with self.cond:
            self.staging.real.synchronize()
            self.staging.real.free()
            real = make_staging(self.device, self.staging_option, self.cond, self.timing,
                                staging_bytes)
            self.staging.real = real
            self.staging.capacity = capacity
            real.allocate(capacity, [_Length(largest_slot)] if largest_slot else [])

    def staging_bytes(self):
        """Return the bytes of the copy ring (0 without one)."""
        return self.staging.real.staging_bytes

    def note_peak(self):
        """Raise the group's peak to the weight memory in use now."""
        with self.cond:
            live = [e.pipeline for e in self.members.values()
                    if e.configured and e.pipeline.staging is not None]
            arena = max((p.committed() for p in live), default=0)
            now = arena + self.staging_bytes() + sum(
                p.resident_bytes + p.transient_bytes + p.converted_bytes for p in live)
            self.peak = max(self.peak, now)

    # ------------------------------------------------------------------ the loader thread

    def wake(self):
        """Let the loader thread look: a member's loader was started or has work."""
        with self.cond:
            self.cond.notify_all()

    def _loader(self):
        """Return the active member's loader when it has work (lock held), else None."""
        e = self.members.get(self.active)
        if e is None or not e.configured or e.pipeline.loader is None:
            return None
        loader = e.pipeline.loader
        return loader if loader.has_work() else None

    def _main(self):
        """Walk the active member's pass, whichever it is (the group's one loader thread)."""
        inited = False
        while True:
            with self.cond:
                loader = None
                while not self.stopping:
                    loader = self._loader()
                    if loader is not None:
                        break
                    self.cond.wait()
                if self.stopping:
                    return
                gen = loader.begin()
            if not inited:
                self.staging.real.thread_init()
                inited = True
            loader.serve(gen)

    # ------------------------------------------------------------------ hand-over

    def park(self, name):
        """
        Take the arena from member `name`: hold its loader, drop what it read ahead.

        Called between passes (the group's pass lock held). Counts a wrong guess when slots
        had been read ahead for nothing.
        """
        e = self.members.get(name)
        if e is None or not e.configured:
            return
        p = e.pipeline
        p.pause()
        with self.cond:
            ahead = [s for s in p.slots if s.claimed]
            if ahead:
                self.dropped += 1
                self.dropped_bytes += sum(s.length for s in ahead)
            p.next_pass(e.units, resume=False)

    def activate(self, name):
        """Give the arena to member `name` (the group's pass lock held); park the active one."""
        with self.cond:
            current = self.active
        if current == name and self._running(name):
            return
        if current is not None and current != name:
            self.park(current)
            self.staging.real.synchronize()      # its kernels are done with the arena
            self.switches += 1
        with self.cond:
            self.active = name
            e = self.members.get(name)
            if e is not None and e.configured and e.pipeline.loader is not None:
                e.pipeline.loader.resume()
            self.cond.notify_all()

    def _running(self, name):
        """Return True when member `name`'s loader is reading or may read (not parked)."""
        with self.cond:
            e = self.members.get(name)
            return e is not None and e.configured and e.pipeline.loader is not None \
                and not e.pipeline.loader.holding

    def begin_pass(self, name):
        """Note that member `name` runs now (the default guess reads for the longest waiting)."""
        with self.cond:
            self.runs += 1
            self.last_run[name] = self.runs
            if self.hint == name:
                self.hint = None

    def next_member(self, after):
        """Return the member expected next: the hint, else the one that waited longest."""
        names = [n for n, e in self.members.items() if e.configured]
        if self.hint in names:
            return self.hint
        others = [n for n in names if n != after] or names
        return min(others, key=lambda n: (self.last_run.get(n, 0), names.index(n)))

    def after_pass(self, pipeline):
        """
        Choose who reads ahead: a member's pass ended and its slots were reset (lock held).

        The member that ran stays parked unless it is expected next; the expected one's loader
        goes on at once, so the head of its pass is read while nothing else needs the arena.
        """
        name = next(n for n, e in self.members.items() if e.pipeline is pipeline)
        nxt = self.next_member(name)
        e = self.members[nxt]
        if nxt != name:
            self.staging.real.synchronize()
            self.switches += 1
        self.active = nxt
        if e.pipeline.loader is not None:
            e.pipeline.loader.resume()
        self.cond.notify_all()

    # ------------------------------------------------------------------ preemption

    def at_boundary(self, pipeline, unit):
        """
        Offer `boundary` the start of a streamed unit of the running pass (inference thread).

        What it runs meanwhile (another model's pass, nested: `guest`) is timed and lent:
        the running pass's latency leaves it out. A guest pass offers no boundary itself.
        """
        fn = self.boundary
        if fn is None or self.host is not None:
            return
        name = next(n for n, e in self.members.items() if e.pipeline is pipeline)
        t0 = time.perf_counter()
        self.host = (pipeline, threading.get_ident())
        try:
            fn(name, unit.index, len(self.members[name].units))
        finally:
            self.host = None
            pipeline.preempted_s += time.perf_counter() - t0

    def guest(self, name):
        """
        Return the pipeline a pass of `name` runs inside (preempting it), or None.

        Only the thread a boundary was offered to runs guests, one deep, of another model.
        """
        host = self.host
        if host is None or host[1] != threading.get_ident():
            return None
        if self.members[name].pipeline is host[0]:
            raise ExecutorError(f'model {name!r} cannot preempt its own pass')
        return host[0]

    # ------------------------------------------------------------------ closing

    def close(self):
        """Stop the loader thread and the reader threads (after the members closed)."""
        with self.cond:
            if self.stopping:
                return
            self.stopping = True
            self.staging.closing = True
            self.cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join()
        self.pool.close()
        with self.cond:
            self.staging.real.synchronize()
            self.staging.real.free()


class _Length:
    """What a staging's allocate() reads of a slot: its length (sizes the CUDA copy ring)."""

    def __init__(self, length):
        self.length = length
