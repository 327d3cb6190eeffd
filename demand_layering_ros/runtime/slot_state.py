# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A streamed slot at run time: its place in the arena and its state in the current pass.

Per pass a slot goes EMPTY -> READING (pieces claimed, reads in flight) -> READY (all bytes in
and verified) or FAILED, and DONE once its last use released it. A demand miss may evict a
prefetched slot back to EMPTY. Every transition is a method here, called with the pipeline's
lock held, so the state changes in one place.
"""

import enum


class SlotState(enum.Enum):
    """Where a slot is in the current pass."""

    EMPTY = 'empty'            # not read (or evicted)
    READING = 'reading'        # some pieces claimed, reads in flight
    READY = 'ready'            # every byte in and verified; `buf` is what the model uses
    FAILED = 'failed'          # a read or its check failed; `error` says why
    DONE = 'done'              # used and released


PENDING = (SlotState.EMPTY, SlotState.READING)     # the loader may still claim it


class Slot:
    """
    A slots.SlotSpec bound to its unit and tensors, with layout and per-pass state.

    Layout: offset in the arena, pieces ((offset in slot, bytes) claimed as they come free),
    rank in load order, overlaps (slots whose arena ranges overlap, itself included), verify
    (checks the bytes of a read), checksum (of a rest/chunk slot, recorded at load). Pass:
    state, claimed, got (pieces claimed), inflight (claimed, not yet read and verified),
    error, buf, t (read/copy/compute stamps), CUDA events.
    """

    def __init__(self, unit, spec, tensors):
        """Bind `spec` to run-time Unit `unit` and its TensorRefs."""
        self.unit = unit
        self.spec = spec
        self.kind = spec.kind
        self.name = spec.name
        self.file_offset = spec.file_offset
        self.length = spec.length
        self.rows = spec.rows
        self.first_step, self.last_step = spec.first_step, spec.last_step
        self.tensors = tensors
        self.verify = None
        self.checksum = None
        self.offset = None
        self.pieces = [(0, self.length)]
        self.rank = None
        self.overlaps = []
        self.release_seq = -1             # CUDA: order of the last release event
        self.release_event = None
        self.reset()

    def reset(self):
        """Start a pass: nothing claimed or read."""
        self.state = SlotState.EMPTY
        self.claimed = False
        self.got = []
        self.inflight = 0
        self.pieces_done = 0
        self.error = None
        self.buf = None
        self.wait_event = None            # CUDA: copy stream waits for this before overwriting
        self.copy_event = None
        self.t = {}

    def forget(self):
        """
        Drop the arena view and the links that form cycles (verify, overlaps) at teardown.

        Slots refer to each other (overlaps include the slot itself) and to their checks, so
        a dropped configuration's slots are garbage only for the cyclic collector; the arena
        views they hold would keep the arena's pages charged until it runs. Dropped here, the
        arena goes back to the kernel when the engine lets go of it.
        """
        self.reset()
        self.verify = None
        self.overlaps = []
        self.release_event = None

    def next_pass(self):
        """Reset for the next pass, keeping the last release event (CUDA ordering)."""
        keep = (self.release_event, self.release_seq)
        self.reset()
        self.release_event, self.release_seq = keep

    @property
    def whole(self):
        """Return True once every piece of the range is claimed."""
        return len(self.got) == len(self.pieces)

    def missing(self):
        """Return the (offset in slot, bytes) pieces not claimed yet."""
        return [p for i, p in enumerate(self.pieces) if i not in self.got]

    # ------------------------------------------------------------------ transitions

    def claim(self, pieces):
        """Pieces were claimed and their reads are about to start."""
        self.got += pieces
        self.inflight += len(pieces)
        self.state, self.claimed = SlotState.READING, True

    def abort(self, unsent, err):
        """Mark the slot failed: submitting reads failed, `unsent` pieces never report back."""
        self.inflight -= unsent
        if self.error is None:
            self.state, self.error = SlotState.FAILED, err

    def piece_read(self, t_start, err):
        """
        Note one piece read (or failed); return True when the slot is ready to verify.

        When it is not (more pieces to come, or a failure), the piece is no longer in flight.
        """
        start = self.t.get('read_start')
        self.t['read_start'] = t_start if start is None else min(start, t_start)
        self.pieces_done += 1
        if err is not None and self.error is None:
            self.error = err
            self.state = SlotState.FAILED
        if self.pieces_done != len(self.pieces) or self.error is not None:
            self.inflight -= 1
            return False
        return True

    def finish(self, err, buf):
        """Take the last read: READY with `buf`, or FAILED with `err`."""
        if err is not None:
            self.state, self.error = SlotState.FAILED, err
        else:
            self.buf = buf
            self.state = SlotState.READY
        self.inflight -= 1

    def unclaimed(self):
        """Forget the arena pieces (they were given back)."""
        self.got, self.claimed, self.buf = [], False, None

    def evicted(self):
        """Make the slot EMPTY again: a demand miss took its range; it is read again later."""
        self.t, self.error, self.pieces_done = {}, None, 0
        self.state = SlotState.EMPTY

    def used(self):
        """Mark the slot DONE: the pass has used it."""
        self.state = SlotState.DONE

    # ------------------------------------------------------------------ the model's view

    def put(self, buf):
        """Put the slot's tensors, as views of `buf`, into the model."""
        for ref in self.tensors:
            ref.put(buf)

    def unset(self):
        """Put the meta placeholders back."""
        for ref in self.tensors:
            ref.unset()
