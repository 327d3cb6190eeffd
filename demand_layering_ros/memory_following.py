# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The thread that keeps a weight budget following free memory (`keep_free_mb`).

It wakes on the kernel's pressure notifications or every 100 ms (`free_memory`), asks the pure
policy (`budget_follower.BudgetFollower`) whether the budget must shrink or may grow, and
applies the answer through the callback its owner gives: `load()` re-plans the model,
the node's service re-plans with its stored profile. Both re-plan between two frames, never
mid-pass, and never profile. It times each shrink from the reading that asked for it to the
re-plan being done (the arena and residents freed), and says once, with the numbers, when
even the smallest plan leaves less than `keep_free` free.
"""

import logging
import threading
import time

from demand_layering_ros.budget_follower import BudgetFollower, MIB
from demand_layering_ros.free_memory import FreeMemoryWatcher
from demand_layering_ros.quantiles import median

KEPT_REACTIONS = 256        # the shrink times kept for p50 and max


class MemoryFollowing:
    """
    Follow free memory from a thread: shrink at once, grow after a hold (see BudgetFollower).

    held(): the weight bytes the configuration in force holds; apply(budget_bytes): re-plan to
    that budget between two frames (blocking until done; an exception refuses it and the old
    budget stays). floor_bytes: the smallest plan's weight bytes; cap_bytes: the configured
    budget (None: none); budget_bytes: the budget in force now (None: unlimited).
    """

    def __init__(self, keep_free_bytes, floor_bytes, held, apply, budget_bytes=None,
                 cap_bytes=None, log=None, hold_s=2.0, watcher_factory=FreeMemoryWatcher):
        """Start following at once when keep_free_bytes > 0."""
        self.policy = BudgetFollower(keep_free_bytes, floor_bytes, budget_bytes, cap_bytes,
                                     hold_s=hold_s)
        self.held, self.apply = held, apply
        self.log = log if log is not None else logging.getLogger(__name__)
        self.watcher_factory = watcher_factory
        self.lock = threading.Lock()        # the policy: the thread vs set_* and stats()
        self.reactions = []                 # seconds: a shrink's reading to its memory freed
        self.below_s = 0.0                  # time with less than keep_free free
        self.refused = 0                    # re-plans the owner refused
        self._last = None
        self._said_pinned = False
        self._stop = threading.Event()
        self._thread = None
        if self.policy.active:
            self._start()

    def _start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='dlr-memory-following',
                                        daemon=True)
        self._thread.start()

    def set_keep_free(self, keep_free_bytes):
        """Change keep_free at run time: 0 stops following (the budget stays where it is)."""
        with self.lock:
            self.policy.set_keep_free(keep_free_bytes)
            active = self.policy.active
        running = self._thread is not None and self._thread.is_alive()
        if active and not running:
            self._start()
        elif not active and running:
            self.close()

    def set_limits(self, floor_bytes=None, cap_bytes=None, budget_bytes=None):
        """Take a new floor, cap or budget in force (a configured budget changed at run time)."""
        with self.lock:
            p = self.policy
            p.set_limits(p.floor_bytes if floor_bytes is None else floor_bytes, cap_bytes)
            p.budget_bytes = budget_bytes

    def _run(self):
        watcher = self.watcher_factory()
        try:
            while not self._stop.is_set():
                watcher.wait()
                if self._stop.is_set():
                    break
                free, source = watcher.read()
                try:
                    self.step(time.monotonic(), free, source)
                except Exception as e:     # never let the thread die: say it, keep watching
                    self.log.warning(f'memory following: {type(e).__name__}: {e}')
        finally:
            watcher.close()

    def step(self, now, free_bytes, source):
        """Take one reading at `now`; re-plan when the policy asks; return the budget or None."""
        with self.lock:
            p = self.policy
            if self._last is not None and free_bytes is not None and \
                    free_bytes < p.keep_free_bytes:
                self.below_s += now - self._last
            self._last = now
            before, counts = p.budget_bytes, (p.auto_shrinks, p.auto_grows)
            target = p.update(now, free_bytes, self.held(), source)
            self._note_pinned(free_bytes)
        if target is None:
            return None
        try:
            self.apply(target)
        except Exception as e:
            with self.lock:
                p.budget_bytes = before
                p.auto_shrinks, p.auto_grows = counts
                self.refused += 1
            self.log.warning(f'memory following: cannot re-plan to {target / MIB:.1f} MiB '
                             f'({type(e).__name__}: {e}); the budget stays as it was')
            return None
        if p.last_change == 'shrink':
            with self.lock:
                self.reactions = (self.reactions + [time.monotonic() - now])[-KEPT_REACTIONS:]
        return target

    def _note_pinned(self, free_bytes):
        """Say once (per episode) that even the smallest plan leaves less than keep_free."""
        p = self.policy
        if p.pinned and not self._said_pinned:
            self._said_pinned = True
            self.log.warning(
                f'keep_free_mb {p.keep_free_bytes / MIB:.0f}: only {free_bytes / MIB:.0f} MiB '
                f'free, and the smallest plan needs {p.floor_bytes / MIB:.1f} MiB; serving at '
                'the smallest plan until memory comes free')
        elif not p.pinned:
            self._said_pinned = False

    def stats(self):
        """Return the following's figures for the model's report (bytes, s, ms)."""
        with self.lock:
            out = self.policy.stats()
            r = list(self.reactions)
            out.update({
                'shrink_reaction_p50_ms': median(r) * 1e3 if r else None,
                'shrink_reaction_max_ms': max(r) * 1e3 if r else None,
                'below_keep_free_s': self.below_s, 'following_refused': self.refused,
                'floor_bytes': self.policy.floor_bytes})
        return out

    def close(self):
        """Stop the thread (idempotent); the budget stays where it is."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
        self._thread = None
