# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Staging: the memory streamed slots land in, and how a read gets from the reader to the model.

One interface, `Staging`, three implementations:

  HostArena (here, the CPU): one page-aligned arena; the reader writes each slot's pieces in
      place and the model's tensors are zero-copy views of the same bytes.
  DeviceArena (cuda_staging): a device arena fed from a pinned copy ring by a copy stream.
  MappedHostArena (cuda_staging): page-locked host memory mapped into the GPU's address space
      (cudaHostRegister), read in place like the host arena and used by kernels directly.

The pipeline owns slot states and the arena's allocator; a staging owns the bytes, and it is
dtype-agnostic: bytes in, bytes out. Reads are issued by the loader from `reads(slot, pieces)`;
their completion callbacks verify the bytes and mark the slot READY (or FAILED) under the
pipeline's lock. The ordering hooks (`thread_init`, `halt`, `claimed`, `wait_ready`,
`released`, `end_pass`, `synchronize`) carry CUDA's events and streams; on the CPU only the
release bookkeeping runs (every release gets a sequence number, and a claim notes the last
release of a range it overlaps), with nothing to wait for: the CPU's kernels have returned.
"""

import functools
import time

from demand_layering_ros import direct_io
from demand_layering_ros.runtime.options import PIECE_BYTES
from demand_layering_ros.runtime.timeline import HostClock
from demand_layering_ros.sizes import align_up


class Staging:
    """
    Where a configuration's streamed bytes live (see the module docstring).

    name: what stats() reports as 'staging' (None on the CPU). piece_bytes: a slot's range is
    claimed and read in pieces of this size (None: whole slots). touched: arena bytes committed
    from the start (device memory is committed when allocated). clock: stamps for the timeline.
    """

    name = None
    piece_bytes = PIECE_BYTES
    touched = 0

    def __init__(self, device, cond, timing=True):
        """Use `device`; read callbacks take `cond` (the pipeline's lock)."""
        self.device = device
        self.cond = cond
        self.timing = timing
        self.clock = HostClock()
        self.release_seq = 0

    # ------------------------------------------------------------------ memory

    def allocate(self, capacity, slots):
        """Allocate an arena of `capacity` bytes for `slots` (capacity 0: nothing streams)."""
        raise NotImplementedError

    def free(self):
        """Give the arena back (after synchronize)."""
        raise NotImplementedError

    def view(self, offset, nbytes):
        """Return arena bytes [offset, offset + nbytes) as the model sees them."""
        raise NotImplementedError

    def scratch(self):
        """Return host memory holding at least the largest slot (load-time hashing)."""
        raise NotImplementedError

    @property
    def can_borrow(self):
        """Return True when a demand miss may read into free arena space."""
        return False

    def host(self, offset, nbytes):
        """Return host arena bytes the reader may write (can_borrow only)."""
        raise NotImplementedError

    @property
    def staging_bytes(self):
        """Return the bytes of the copy ring (0 without one)."""
        return 0

    def committed(self, touched, high_water):
        """Return the arena bytes that hold memory, given the pages touched and handed out."""
        return max(touched, high_water)

    def host_buffer(self, nbytes):
        """Return aligned host memory for a read outside the arena (residents, misses)."""
        return direct_io.aligned_empty(nbytes)

    def host_held(self, nbytes):
        """Return the memory a host_buffer(nbytes) really holds (whole pages)."""
        return align_up(nbytes)

    def release_host(self):
        """Hand host memory of buffers already dropped back to the system (CUDA: pinned)."""

    @property
    def pinned_bytes(self):
        """Return the pinned host memory the staging holds besides the arena (0 on the CPU)."""
        return 0

    def to_device(self, buf):
        """Return host bytes where the model can use them."""
        return buf

    # ------------------------------------------------------------------ reads

    def reads(self, slot, pieces):
        """Yield (file offset, bytes, destination, verify, done callback) to submit."""
        raise NotImplementedError

    # ------------------------------------------------------------------ ordering

    def thread_init(self):
        """Prepare the loader thread."""

    def halt(self):
        """Give up any wait for staging space: the loader stops (lock held)."""

    def claimed(self, slot):
        """Note a claim (lock held): writes into the range wait for its last release's mark."""
        last = max(slot.overlaps, key=lambda q: q.release_seq, default=None)
        slot.wait_event = last.release_event if last is not None and last.release_seq >= 0 \
            else None

    def wait_ready(self, slot):
        """Make the model's next kernels wait for the slot's bytes."""

    def released(self, slot):
        """Note the model is done with the slot's range (lock held): number it, mark it."""
        self.release_seq += 1
        slot.release_event, slot.release_seq = self.release_mark(), self.release_seq

    def release_mark(self):
        """Return what a later write into a released range waits for (nothing on the CPU)."""
        return None

    def end_pass(self, ok, sync):
        """Wait for the pass's kernels when asked to (or after a failed pass)."""

    def device_wait_seconds(self):
        """Return (and forget) the time the device waited for slots in the pass just ended."""
        return 0.0

    def synchronize(self):
        """Wait for everything queued on the device."""


class HostArena(Staging):
    """The CPU: the reader writes the arena in place; tensors are zero-copy views of it."""

    def __init__(self, device, cond, timing=True):
        """Start without an arena."""
        super().__init__(device, cond, timing)
        self.arena = None

    def allocate(self, capacity, slots):
        """Map an aligned arena (its pages are committed as reads touch them)."""
        self.arena = direct_io.aligned_empty(capacity) if capacity else None

    def free(self):
        """Drop the arena (its memory goes when the last view does)."""
        self.arena = None

    def view(self, offset, nbytes):
        """Return the arena bytes the model uses (on the CPU, those the reader wrote)."""
        return self.arena[offset:offset + nbytes]

    def host(self, offset, nbytes):
        """Return the arena bytes the reader writes."""
        return self.arena[offset:offset + nbytes]

    def scratch(self):
        """Return the arena (load-time hashing runs before any slot is read)."""
        return self.arena

    @property
    def can_borrow(self):
        """Return True when there is an arena to borrow from."""
        return self.arena is not None

    def reads(self, slot, pieces):
        """Yield the reads of newly claimed pieces, each into its place in the arena."""
        for i in pieces:
            a, n = slot.pieces[i]
            dest = self.host(slot.offset + a, n)
            yield slot.file_offset + a, n, dest, None, functools.partial(self._piece_done, slot)

    def _piece_done(self, slot, fut):
        """Reader worker thread: one piece is in; the last one verifies the whole slot."""
        err = fut.exception()
        with self.cond:
            last = slot.piece_read(fut.t_start, err)
            if not last:
                self.cond.notify_all()
                return
        try:                                      # outside the lock: xxh3 releases the GIL
            slot.verify(direct_io.as_memoryview(self.host(slot.offset, slot.length)))
        except BaseException as e:  # noqa: B902 - reported to the forward pass
            err = e
        with self.cond:
            slot.t['read_end'] = time.perf_counter()
            slot.finish(err, self.view(slot.offset, slot.length))
            self.cond.notify_all()
