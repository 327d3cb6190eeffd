# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The pipeline: slots flow from the loader (reads ahead) to compute (acquire, use, release).

`acquire` returns a slot's bytes once the loader has them in, waiting only when the loader is
sure to place the slot without more compute (else the wait could deadlock); anything else is a
demand miss, read synchronously: into free arena space when the caller gives the bytes back
before it needs anything else (evicting prefetched slots not yet in use if need be), else into
a transient buffer counted in peak_weight_bytes. Either way the caller holds a Lease until it
returns it. `release` gives a slot's range back after its last use in the pass. Memory figures
(peak, committed arena pages) are noted here as ranges are handed out.
"""

from dataclasses import dataclass, field
import threading
import time
from typing import Any, Optional

from demand_layering_ros.layout.arena import Allocator, load_order
from demand_layering_ros.layout.slots import items
from demand_layering_ros.runtime.errors import ExecutorError, read_error
from demand_layering_ros.runtime.loader import Loader
from demand_layering_ros.runtime.options import WAIT_TIMEOUT_S
from demand_layering_ros.runtime.slot_state import PENDING, SlotState


@dataclass(frozen=True)
class Lease:
    """A demand miss's bytes: borrowed arena space at `offset`, or `nbytes` of transient memory."""

    offset: Optional[int] = None
    nbytes: int = 0
    owner: Any = field(default=None, compare=False)   # a host pass's pipeline (a guest's miss)

    @property
    def in_arena(self):
        """Return True when the bytes are borrowed arena space."""
        return self.offset is not None


class Pipeline:
    """
    Streams one configuration's slots through the arena, pass after pass.

    install() lays the slots out and allocates the staging; start() starts the loader; stop()
    ends it. Counters: touched (arena pages committed), peak (weight bytes), transient_bytes,
    total_misses, and per pass pass_misses and last_stall (seconds waited).
    """

    def __init__(self, pack_path, reader, sync_reader, shared=None):
        """
        Use `reader` for the loader's reads and `sync_reader` for demand misses.

        shared: the parts a group of models shares (`runtime.shared.SharedParts`): its lock,
        its loader thread, its memory figure and its choice of the model that reads ahead.
        """
        self.pack_path = pack_path
        self.reader = reader
        self.sync_reader = sync_reader
        self.shared = shared
        self.cond = shared.cond if shared is not None else threading.Condition()
        self.staging = None
        self.slots, self.order = [], []
        self.alloc = Allocator(0)
        self.loader = None
        self.touched = 0
        self.peak = 0
        self.resident_bytes = 0
        self.transient_bytes = 0
        self.converted_bytes = 0          # conversion copies held (a pack in another dtype)
        self.total_misses = 0
        self.pass_misses = 0
        self.last_stall = 0.0
        self.started = 0
        self.in_pass = False
        self.t0 = 0.0
        self.guest_of = None              # the preempted pass's pipeline while this one is a guest
        self.preempted_s = 0.0            # seconds of this pass lent to guest passes

    # ------------------------------------------------------------------ configuration

    def install(self, slots, layout, staging):
        """Place slots at their layout offsets in load order and allocate the staging."""
        self.slots, self.staging = slots, staging
        capacity = layout.capacity if layout is not None else 0
        if slots:
            for s, off in zip(slots, layout.offsets):
                s.offset = off
                step = staging.piece_bytes or s.length   # whole slots: the copy ring
                s.pieces = [(a, min(step, s.length - a)) for a in range(0, s.length, step)]
            self.order = [slots[i] for i in load_order(items(slots))]
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
        staging.allocate(capacity, slots)
        self.touched = staging.touched
        self.loader = Loader(self, layout.prefetch_depth if layout is not None else None)

    def start(self):
        """Start the loader (after residents are loaded); note the memory in use."""
        self.started = 0
        self.in_pass = False
        self.note_peak()
        if self.order:
            self.loader.start()

    def stop(self):
        """Stop the loader and wait for the reads it started."""
        if self.loader is not None:
            self.loader.shutdown()
        self.wait_reads()

    def clear(self):
        """Forget the configuration's slots and free the staging (after the device is done)."""
        self.staging.synchronize()
        self.slots, self.order = [], []
        self.loader = None
        self.staging.free()

    def committed(self):
        """Return the arena bytes holding memory now."""
        return self.staging.committed(self.touched, self.alloc.high_water)

    def note_peak(self):
        """Raise peak to the weight memory in use now, pinned staging included (lock held)."""
        self.peak = max(self.peak, self.committed() + self.resident_bytes
                        + self.transient_bytes + self.converted_bytes
                        + self.staging.pinned_bytes)
        if self.shared is not None:
            self.shared.note_peak()

    def wait_reads(self):
        """Wait until no read is in flight."""
        with self.cond:
            while any(s.inflight for s in self.slots):
                self.cond.wait(1.0)

    def unclaim(self, slot):
        """Give back every piece a slot holds (lock held, no read in flight)."""
        for i in slot.got:
            self.alloc.free(slot.offset + slot.pieces[i][0])
        slot.unclaimed()
        self.cond.notify_all()

    # ------------------------------------------------------------------ passes

    def begin_pass(self, t0):
        """Start a pass at perf_counter time t0."""
        self.last_stall = 0.0
        self.pass_misses = 0
        self.preempted_s = 0.0
        self.t0 = t0
        with self.cond:
            self.in_pass = True

    def pause(self):
        """End the pass: hold the loader and wait for its reads."""
        with self.cond:
            self.in_pass = False
            self.loader.hold()
        self.wait_reads()

    def lend(self):
        """
        Hold the loader mid-pass and wait for its reads: a guest pass may now take arena space.

        What the loader read ahead stays unless the guest needs its space (then it is dropped
        and read again once `take_back` lets the loader go on).
        """
        with self.cond:
            self.loader.hold()
        self.wait_reads()

    def take_back(self):
        """Let the loader go on with this pass after a guest pass (see lend)."""
        with self.cond:
            self.loader.go_on()

    def next_pass(self, units, resume=True):
        """
        Give back all ranges, unbind streamed units, reset slots; let the loader go on.

        A slot still held here belongs to a unit called fewer times than recorded (or to one
        prefetched and not called): its release is noted now, so the next pass's write into
        the range waits for the kernels that may still read it (CUDA with sync=False).
        resume=False leaves the loader held (a group parks a model that does not read ahead);
        in a group the group chooses which model's loader goes on.
        """
        with self.cond:
            for s in self.slots:
                if s.claimed:
                    if s.state == SlotState.READY:
                        self.staging.released(s)
                    self.unclaim(s)
            for u in units:
                if u.loaded and (not u.resident or u.landing is not None):
                    self.drop(u, locked=True)
                u.reset()
            for u in units:
                for s in ([u.main] if u.main is not None else []) + u.chunks:
                    s.next_pass()
            if self.alloc.used:
                raise ExecutorError(f'internal error: {self.alloc.used} arena bytes still '
                                    'held after the pass')
            self.started = 0
            if not resume or self.guest_of is not None:   # a guest leaves the host active
                return
            if self.shared is not None:
                self.shared.after_pass(self)
            else:
                self.loader.resume()

    # ------------------------------------------------------------------ compute side

    def boundary(self, unit):
        """Offer the group a unit boundary of this pass: a more urgent model may run here."""
        if self.shared is not None and self.in_pass and self.guest_of is None:
            self.shared.at_boundary(self, unit)

    def acquire(self, slot, borrow=False):
        """
        Return (bytes, lease) for a slot about to be used.

        lease is None when the bytes sit at the slot's planned arena offset; otherwise the slot
        was read on demand (see miss) and the lease must be given back with return_lease.
        """
        t0 = time.perf_counter()
        with self.cond:
            if self.in_pass and self.guest_of is None and slot.rank is not None \
                    and slot.state != SlotState.DONE:
                if slot.rank + 1 > self.started:
                    self.started = slot.rank + 1
                    self.cond.notify_all()
                if (slot.state == SlotState.READY
                        or (slot.state == SlotState.READING and slot.whole)
                        or (slot.state in PENDING and self.loader.can_wait(slot))):
                    self._wait_placed(slot)
                    if slot.state != SlotState.FAILED:
                        self.last_stall += time.perf_counter() - t0
                        self.staging.wait_ready(slot)
                        return slot.buf, None
                    started = slot.t.get('read_start')
                    if started is None or started >= self.t0:
                        raise read_error(slot.error, self.pack_path, slot.unit.name,
                                         slot.file_offset)
                    # The read failed ahead of this pass (read-ahead after the last frame):
                    # the storage may be healthy again, so read once more, on demand, rather
                    # than fail this frame on an old error.
        return self.miss(slot, t0, borrow)

    def _wait_placed(self, slot):
        """Wait while the loader reads the slot (lock held); report a stuck loader."""
        while slot.state in PENDING:
            if self.loader.error is not None:
                raise ExecutorError(f'the loader thread failed: '
                                    f'{self.loader.error!r}') from self.loader.error
            if not self.cond.wait(WAIT_TIMEOUT_S):
                raise ExecutorError(
                    f'waited {WAIT_TIMEOUT_S:.0f} s for unit {slot.name} '
                    f'(state {slot.state.value}, loader at {self.loader.cursor}/'
                    f'{len(self.order)}, {self.alloc.used} arena bytes in use)')

    def miss(self, slot, t0, borrow):
        """
        Read a slot synchronously, outside the schedule (a demand miss).

        borrow=True means the caller returns the lease before it acquires anything else, so
        the bytes may go into free arena space where the staging allows it (the budget holds);
        otherwise, or when the arena has no room, into a transient buffer outside it, counted
        in peak_weight_bytes. A guest pass (one preempting another model's pass) borrows the
        host pass's free arena space, dropping the host's read-ahead not yet in use (its loader
        reads it again), since the arena is the host's.
        """
        off = None
        owner = self.guest_of or self
        if borrow and self.staging.can_borrow:
            with self.cond:
                off = owner._evict_for(slot.length) if owner.in_pass else \
                    owner.alloc.alloc(slot.length)
                if off is not None:
                    owner.touched = max(owner.touched, owner.alloc.high_water)
                    owner.note_peak()
        if off is not None:
            buf = self.staging.host(off, slot.length)
            lease = Lease(offset=off, owner=owner if owner is not self else None)
        else:
            held = self.staging.host_held(slot.length)
            buf, lease = self.staging.host_buffer(slot.length), Lease(nbytes=held)
            with self.cond:
                self.transient_bytes += held
                self.note_peak()
        try:
            self.sync_reader.submit(slot.file_offset, slot.length, buf,
                                    verify=slot.verify).result()
        except BaseException as e:
            self.return_lease(lease)
            raise read_error(e, self.pack_path, slot.unit.name, slot.file_offset) from e
        buf = self.staging.to_device(buf)
        with self.cond:
            self.total_misses += 1
            self.pass_misses += 1
        self.last_stall += time.perf_counter() - t0
        return buf, lease

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
            self.unclaim(v)
            v.evicted()
            self.loader.rewind(v.rank)
            self.cond.notify_all()

    def return_lease(self, lease, locked=False):
        """Give back a demand miss's bytes."""
        if not locked:
            with self.cond:
                return self.return_lease(lease, locked=True)
        if lease.in_arena:
            (lease.owner or self).alloc.free(lease.offset)
            self.cond.notify_all()
        else:
            self.transient_bytes -= lease.nbytes

    def release(self, slot):
        """Give a slot's arena range back after its last use in this pass."""
        with self.cond:
            while slot.inflight:
                self.cond.wait()
            if slot.state == SlotState.READY:
                self.staging.released(slot)
            slot.used()                             # unread ones are skipped by the loader
            self.unclaim(slot)

    def converting(self, nbytes, locked=False):
        """Note conversion copies made (nbytes > 0) or freed (< 0): weight memory too."""
        if not nbytes:
            return None
        if not locked:
            with self.cond:
                return self.converting(nbytes, locked=True)
        self.converted_bytes += nbytes
        if nbytes > 0:
            self.note_peak()

    def hold_converted(self, unit):
        """Note the conversion copies a unit made as it landed (held until its drop)."""
        n = unit.convert_bytes
        if n:
            unit.converted = n
            self.converting(n)

    def drop(self, unit, locked=False):
        """Unbind a streamed unit's weights and give back a demand miss's bytes."""
        if unit.resident and unit.landing is None:
            return
        if unit.main is not None:
            unit.main.unset()
        elif unit.landing is not None:
            unit.unset_all()                     # the conversion copies go
        if unit.converted:
            self.converting(-unit.converted, locked)
            unit.converted = 0
        if unit.lease is not None:
            self.return_lease(unit.lease, locked)
            unit.lease = None
        unit.loaded = False
