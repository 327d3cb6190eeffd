# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
CUDA staging: a device arena fed through a pinned copy ring, or mapped (zero-copy) host memory.

DeviceArena ('copy'): each slot is read whole into a pinned ring buffer, then copied on a copy
stream into the device arena at its planned offset; the compute stream waits for the copy's
event before the slot's first kernel, and a copy into a range waits for the release event of
the last slot that used it. Ring ranges are recycled oldest first once their copies finished.
MappedHostArena ('zero_copy'): page-locked host memory registered with cudaHostRegister and
mapped into the GPU's address space (unified memory, e.g. Jetson; `cuda_mapping`): the reader
writes it in place, piece by piece, once the GPU is done with the range, and kernels read it
directly. CudaClock maps events onto the host's perf_counter axis for the timeline.
A pass's stall counts the host's waits for slots and, with timing on, the compute stream's waits
for copies (an event where the stream arrived, against the copy's end event).
"""

import functools
import time

from demand_layering_ros import direct_io
from demand_layering_ros.layout.arena import Allocator
from demand_layering_ros.runtime.cuda_mapping import mapped_host_arena
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.runtime.staging import HostArena, Staging
from demand_layering_ros.runtime.timeline import HostClock
from demand_layering_ros.sizes import align_up, MB, pinned_size
import torch


class CudaClock(HostClock):
    """Stamps are CUDA events on the compute stream, pinned to host time by a reference."""

    def __init__(self, device):
        """Take the first reference stamp."""
        self.device = device
        self.ref()

    def stamp(self, now=None):
        """Record an event on the current stream."""
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def ref(self):
        """Pin a GPU event to a host time, so events map onto the perf_counter axis."""
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.device))
        ev.synchronize()
        self.ref_event, self.ref_t = ev, time.perf_counter()

    def event_time(self, value, t0):
        """Return an event's time in seconds from t0 (None when it cannot be timed)."""
        try:
            value.synchronize()
            return self.ref_t + self.ref_event.elapsed_time(value) / 1e3 - t0
        except (RuntimeError, AttributeError):
            return None


class CudaStaging(Staging):
    """What both CUDA stagings share: pinned host memory, events, the device's streams."""

    def __init__(self, device, cond, timing=True):
        """Create the copy stream and the clock."""
        super().__init__(device, cond, timing)
        self.copy_stream = torch.cuda.Stream(device)
        self.clock = CudaClock(device)
        self.waits = []               # (event where the stream waited, the copy's end event)

    @property
    def can_borrow(self):
        """Return False: a demand miss reads into pinned memory and copies it over."""
        return False

    def committed(self, touched, high_water):
        """Return the pages touched (device memory is committed at allocation)."""
        return touched

    def host_buffer(self, nbytes):
        """Return pinned host memory (the source of asynchronous copies)."""
        return direct_io.aligned_empty(nbytes, pin=True)

    def host_held(self, nbytes):
        """Return the pinned bytes a host_buffer(nbytes) holds (a power of two: torch's cache)."""
        return pinned_size(nbytes)

    def release_host(self):
        """Free the pinned blocks torch's caching host allocator keeps after they were dropped."""
        torch.cuda.synchronize(self.device)
        empty = getattr(torch._C, '_host_emptyCache', None)
        if empty is not None:
            empty()

    def to_device(self, buf):
        """Copy host bytes to the device, on the current stream (asynchronous when pinned)."""
        return buf.to(self.device, non_blocking=buf.is_pinned())

    def thread_init(self):
        """Make the loader thread use the model's device."""
        torch.cuda.set_device(self.device)

    def wait_ready(self, slot):
        """Make the compute stream wait for the slot's copy (timed when timing is on)."""
        if slot.copy_event is not None:
            stream = torch.cuda.current_stream(self.device)
            if self.timing:
                arrived = torch.cuda.Event(enable_timing=True)
                arrived.record(stream)
                self.waits.append((arrived, slot.copy_event))
            stream.wait_event(slot.copy_event)

    def release_mark(self):
        """Record an event on the compute stream: a copy into the range waits for it."""
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def end_pass(self, ok, sync):
        """Wait for the pass's kernels (always after a failed pass: they use held slots)."""
        if sync or not ok:
            torch.cuda.current_stream(self.device).synchronize()

    def device_wait_seconds(self):
        """Return the compute stream's waits for copies in the pass (waits for its events)."""
        waits, self.waits = self.waits, []
        total_ms = 0.0
        for arrived, copied in waits:
            copied.synchronize()
            arrived.synchronize()
            total_ms += max(0.0, arrived.elapsed_time(copied))
        return total_ms / 1e3

    def synchronize(self):
        """Wait for everything queued on the device."""
        torch.cuda.synchronize(self.device)


class _RingEntry:
    """A range of the copy ring: offset, the copy's event, whether the copy was queued."""

    __slots__ = ('offset', 'event', 'finished')

    def __init__(self, offset):
        self.offset, self.event, self.finished = offset, None, False


class DeviceArena(CudaStaging):
    """Staging 'copy': a device arena fed from a pinned ring by a copy stream."""

    name = 'copy'
    piece_bytes = None            # a slot is read whole into the ring, then copied

    def __init__(self, device, cond, timing=True, staging_bytes=None):
        """Start without memory; staging_bytes: the ring's size (None: chosen from the slots)."""
        super().__init__(device, cond, timing)
        self.ring_bytes = staging_bytes
        self.arena = self.ring = None
        self.halted = False

    def allocate(self, capacity, slots):
        """Allocate the device arena and a pinned ring of at least the largest slot."""
        if not capacity:
            return
        self.arena = torch.empty(capacity, dtype=torch.uint8, device=self.device)
        self.touched = capacity
        largest = max(s.length for s in slots)
        st = self.ring_bytes or min(capacity, max(2 * largest, 64 * MB))
        st = max(align_up(st), largest)
        self.ring = direct_io.aligned_empty(st, pin=True)
        self.ring_alloc = Allocator(st)
        self.fifo = []

    def free(self):
        """Drop the arena and the ring."""
        self.arena = self.ring = None

    def view(self, offset, nbytes):
        """Return device arena bytes."""
        return self.arena[offset:offset + nbytes]

    def scratch(self):
        """Return the ring (host memory of at least the largest slot)."""
        return self.ring

    @property
    def staging_bytes(self):
        """Return the ring's size."""
        return self.ring.numel() if self.ring is not None else 0

    @property
    def pinned_bytes(self):
        """Return the pinned memory the ring holds (its size rounded up to a power of two)."""
        return pinned_size(self.staging_bytes)

    def halt(self):
        """Give up waiting for ring space: the loader stops (lock held)."""
        self.halted = True

    def reads(self, slot, pieces):
        """Yield one read of the whole slot into a ring range; its callback queues the copy."""
        entry = self._take(slot.length)
        dest = self.ring[entry.offset:entry.offset + slot.length]
        yield (slot.file_offset, slot.length, dest, slot.verify,
               functools.partial(self._read_done, slot, entry))

    def _take(self, nbytes):
        """Take a ring range, recycling the oldest ones once their copies finished."""
        while True:
            with self.cond:
                off = self.ring_alloc.alloc(nbytes)
                if off is not None:
                    entry = _RingEntry(off)
                    self.fifo.append(entry)
                    return entry
                oldest = self.fifo[0]
                while not oldest.finished and not self.halted:
                    self.cond.wait()
                if self.halted:
                    raise ExecutorError('loader stopped while waiting for staging space')
            if oldest.event is not None:
                oldest.event.synchronize()
            with self.cond:
                self.fifo.pop(0)
                self.ring_alloc.free(oldest.offset)

    def _copy(self, slot, entry):
        """Queue the ring-to-arena copy of a slot; return its start and end events."""
        with torch.cuda.device(self.device), torch.cuda.stream(self.copy_stream):
            if slot.wait_event is not None:
                self.copy_stream.wait_event(slot.wait_event)
            copy0 = torch.cuda.Event(enable_timing=self.timing)
            copy1 = torch.cuda.Event(enable_timing=self.timing)
            copy0.record(self.copy_stream)
            src = self.ring[entry.offset:entry.offset + slot.length]
            self.arena[slot.offset:slot.offset + slot.length].copy_(src, non_blocking=True)
            copy1.record(self.copy_stream)
        return copy0, copy1

    def _read_done(self, slot, entry, fut):
        """Reader worker thread: the slot's bytes are in (and verified), or the read failed."""
        err = fut.exception()
        copy0 = copy1 = None
        if err is None:
            try:
                copy0, copy1 = self._copy(slot, entry)
            except BaseException as e:  # noqa: B902 - reported to the forward pass
                err = e
        with self.cond:
            slot.t['read_start'] = fut.t_start
            slot.t['read_end'] = fut.t_end
            entry.event = copy1
            entry.finished = True
            if err is None:
                slot.copy_event = copy1
                slot.t['copy_start'] = copy0
                slot.t['copy_end'] = copy1
            slot.finish(err, self.view(slot.offset, slot.length))
            self.cond.notify_all()


class MappedHostArena(CudaStaging, HostArena):
    """Staging 'zero_copy': the reader writes mapped host memory that kernels read in place."""

    name = 'zero_copy'

    def __init__(self, device, cond, timing=True):
        """Start without memory."""
        super().__init__(device, cond, timing)
        self.device_arena = None
        self.unregister = None

    def allocate(self, capacity, slots):
        """Register and map a host arena of `capacity` bytes."""
        if not capacity:
            return
        self.arena, self.device_arena, self.unregister = mapped_host_arena(capacity,
                                                                           self.device)
        self.touched = capacity

    def free(self):
        """Unregister the arena (after the device is done with it) and drop it."""
        unregister, self.unregister = self.unregister, None
        try:
            if unregister is not None:
                unregister()            # while the host tensor still holds the mapping
        finally:
            self.arena = self.device_arena = None

    def view(self, offset, nbytes):
        """Return the arena bytes as the GPU sees them."""
        return self.device_arena[offset:offset + nbytes]

    def reads(self, slot, pieces):
        """Wait until the GPU is done with the range, then read the pieces in place."""
        if slot.wait_event is not None:
            slot.wait_event.synchronize()
        yield from HostArena.reads(self, slot, pieces)
