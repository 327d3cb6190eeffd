# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The loader thread: the pipeline's first stage, placing and reading slots ahead of compute.

It walks the slots in load order (first use) and claims each slot's planned arena range piece
by piece as the pieces come free, at most `prefetch_depth` slots ahead of the last one compute
asked for, and hands the reads to the staging. When a pass ends it is held, then starts on the
next pass at once, so the head of the next frame is read between frames. Everything it shares
with the compute side is guarded by the pipeline's one Condition.
"""

import threading

from demand_layering_ros.runtime.slot_state import PENDING


class Loader:
    """
    Reads one configuration's slots, pass after pass (a generation per pass).

    cursor: the next position in load order; error: what stopped the thread (reported to the
    forward pass that waits). hold/resume/rewind/can_wait are called with the lock held.
    """

    def __init__(self, pipeline, prefetch_depth):
        """Prepare a loader over pipeline.order; start() runs it."""
        self.p = pipeline
        self.depth = prefetch_depth
        self.cursor = 0
        self.gen = 1                  # the pass to read for
        self.walked = 0               # the generation the cursor belongs to
        self.loaded_gen = 0           # the last pass whose slots were all claimed
        self.holding = False
        self.busy = False
        self.stopping = False
        self.error = None
        self.thread = None

    def start(self):
        """Start the thread (in a group, the group's one loader thread serves this loader)."""
        if self.p.shared is not None:
            self.p.shared.wake()
            return
        self.thread = threading.Thread(target=self._main, name='dlr-loader', daemon=True)
        self.thread.start()

    def shutdown(self):
        """Stop the thread and wait for it (reads it submitted may still be in flight)."""
        with self.p.cond:
            self.stopping = True
            self.p.staging.halt()
            self.p.cond.notify_all()
            while self.thread is None and self.busy:     # a group's thread is walking us
                self.p.cond.wait()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def hold(self):
        """Stop claiming (the pass ended) and wait until the thread is idle."""
        self.holding = True
        self.p.cond.notify_all()
        while self.busy:
            self.p.cond.wait()

    def resume(self):
        """Start reading the next pass from the first slot."""
        self.cursor = 0
        self.gen += 1
        self.holding = False
        self.p.cond.notify_all()

    def go_on(self):
        """Go on with the same pass where a hold stopped it (another model's pass ran)."""
        self.holding = False
        self.p.cond.notify_all()

    def rewind(self, rank):
        """Read again from load position `rank` (a slot there was evicted)."""
        self.cursor = min(self.cursor, rank)
        if self.loaded_gen == self.gen:
            self.loaded_gen = self.gen - 1       # wake the loader to read it again

    def can_wait(self, slot):
        """Return True when the loader will place `slot` with no further compute (no deadlock)."""
        p = self.p
        if slot.rank < self.cursor:
            return False
        ranges = []
        for q in p.order[self.cursor:slot.rank + 1]:
            if q.state not in PENDING:
                continue
            for a, n in q.missing():
                if not p.alloc.is_free(q.offset + a, n):
                    return False
                ranges.append((q.offset + a, q.offset + a + n))
        ranges.sort()
        return all(ranges[i][1] <= ranges[i + 1][0] for i in range(len(ranges) - 1))

    def has_work(self):
        """Return True when there is a pass to read and the loader may read it (lock held)."""
        return (not self.stopping and not self.holding and self.error is None
                and self.loaded_gen != self.gen)

    def begin(self):
        """Start a walk of the current pass (lock held); return its generation."""
        self.busy = True
        if self.walked != self.gen:
            self.walked, self.cursor = self.gen, 0
        return self.gen

    def serve(self, gen):
        """Walk the pass of generation `gen` as far as allowed (lock not held), then idle."""
        p = self.p
        try:
            if self._walk():
                with p.cond:
                    if not self.holding and self.cursor >= len(p.order):
                        self.loaded_gen = gen
        except BaseException as e:  # noqa: B902 - reported to the forward pass that waits
            with p.cond:
                self.error = e
        finally:
            with p.cond:
                self.busy = False
                p.cond.notify_all()

    def _main(self):
        """Place and read the slots of each pass in load order."""
        p = self.p
        p.staging.thread_init()
        while True:
            with p.cond:
                while not self.stopping and not self.has_work():
                    if self.error is not None:
                        return
                    p.cond.wait()
                if self.stopping:
                    return
                gen = self.begin()
            self.serve(gen)

    def _walk(self):
        """
        Claim and read slots from the cursor on; return False when told to hold or stop.

        A slot's range is claimed piece by piece as the pieces come free, and each piece is
        read at once, so most of a large unit is read while the unit before it still runs.
        """
        p = self.p
        while True:
            batch = None
            with p.cond:
                r = self.cursor
                if r >= len(p.order):
                    return True
                slot = p.order[r]
                while batch is None:
                    if self.stopping or self.holding:
                        return False
                    if self.cursor != r:             # an eviction moved the cursor back
                        break
                    if slot.state not in PENDING or slot.whole:
                        self.cursor = r + 1          # done by a miss, failed, or all claimed
                        break
                    if self.depth is None or r < p.started + self.depth:
                        batch = self._claim(slot, r)
                        if batch is not None:
                            break
                    p.cond.wait()
            if batch is not None:
                self._start_read(*batch)

    def _claim(self, slot, r):
        """Claim the slot's pieces that are free (lock held); return (slot, pieces) or None."""
        p = self.p
        new = [i for i, (a, n) in enumerate(slot.pieces)
               if i not in slot.got and p.alloc.claim(slot.offset + a, n)]
        if not new:
            return None
        slot.claim(new)
        p.touched = max(p.touched, p.alloc.high_water)
        p.note_peak()
        p.staging.claimed(slot)
        if slot.whole:
            self.cursor = r + 1
        return slot, new

    def _start_read(self, slot, pieces):
        """Submit the reads of newly claimed pieces (lock not held)."""
        p = self.p
        submitted = 0
        try:
            for offset, nbytes, dest, verify, done in p.staging.reads(slot, pieces):
                fut = p.reader.submit(offset, nbytes, dest, verify=verify)
                submitted += 1
                fut.add_done_callback(done)
        except BaseException as e:  # noqa: B902 - e.g. the reader shut down at exit
            with p.cond:
                slot.abort(len(pieces) - submitted, e)   # no callback will come for these
                p.cond.notify_all()
            raise
