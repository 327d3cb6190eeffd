# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Which frame runs when: latest frame per camera, earliest deadline first, batches, drops.

No ROS here: times are plain seconds, so the policy is testable on its own. A camera keeps only
its latest frame (an older one still waiting is superseded and counted), cameras are served
earliest-deadline-first, a frame that can no longer meet its deadline is dropped and counted,
and frames of several cameras share one forward pass when that meets the deadlines better.
`LatencyModel` predicts the cost of a batch from what was measured.
"""

from collections import deque
from dataclasses import dataclass
import math
import threading
import time
from typing import Any

DROP_KINDS = ('malformed', 'deadline', 'superseded', 'error')


@dataclass
class Frame:
    """One received image waiting for inference."""

    camera: Any
    msg: Any
    base: float        # seconds: the image stamp, or the receive time when the stamp is unusable
    deadline: float    # absolute seconds (inf: no deadline)


class LatencyModel:
    """
    Predicts the service time (decode + forward + publish) of a batch of B frames.

    Measured batch sizes use an exponential average of their own measurements. An unmeasured
    size is extrapolated from batch 1: the weight I/O of a pass is shared by the whole batch,
    the compute is not, so L(B) = L(1) + (B - 1) x compute(1), where compute(1) is L(1) minus
    the time the pass stalled on weights (reported by the executor).
    """

    def __init__(self, alpha=0.3):
        self.alpha = alpha
        self.measured = {}
        self.stall = 0.0

    def update(self, batch, seconds, stall_seconds=None):
        """Record one measured batch."""
        old = self.measured.get(batch)
        self.measured[batch] = seconds if old is None else old + self.alpha * (seconds - old)
        if batch == 1 and stall_seconds is not None:
            self.stall = stall_seconds if not self.stall else \
                self.stall + self.alpha * (stall_seconds - self.stall)

    def predict(self, batch):
        """Predicted seconds for a batch of `batch` frames (0 before any measurement)."""
        if batch in self.measured:
            return self.measured[batch]
        if 1 in self.measured:
            one = self.measured[1]
            compute = min(one, max(one - self.stall, 0.25 * one))
            return one + (batch - 1) * compute
        known = sorted(self.measured)
        if known:   # only larger batches measured: assume linear per frame
            b = known[0]
            return self.measured[b] * batch / b
        return 0.0


def plan_batch(frames, now, latency, max_batch):
    """
    Decide what runs next: returns (batch, dropped, waiting), each a list of frames.

    Frames are ordered earliest-deadline-first. A frame whose age plus the predicted latency
    passes its deadline is dropped, unless even a fresh frame could not make it (the deadline
    is infeasible): then frames still run, late, and the misses are counted. The batch size is
    the one that lets the most frames meet their deadlines (running the rest one at a time
    afterwards), ties broken by the smallest total completion time.
    """
    frames = sorted(frames, key=lambda f: f.deadline)
    one = latency.predict(1)
    dropped, live = [], []
    for f in frames:
        budget = f.deadline - f.base
        feasible = one <= budget
        if math.isfinite(f.deadline) and feasible and now + one > f.deadline:
            dropped.append(f)
        else:
            live.append(f)
    if not live:
        return [], dropped, []
    best, best_key = 1, None
    for k in range(1, min(max_batch, len(live)) + 1):
        t = now + latency.predict(k)
        finish = [t] * k
        for _ in live[k:]:
            t += one
            finish.append(t)
        met = sum(1 for f, end in zip(live, finish) if end <= f.deadline)
        key = (met, -sum(finish))
        if best_key is None or key > best_key:
            best, best_key = k, key
    return live[:best], dropped, live[best:]


def deadline_infeasible(latency, deadline_ms):
    """Return True when even one fresh frame is predicted to miss a deadline of `deadline_ms`."""
    return deadline_ms > 0 and latency.predict(1) * 1e3 > deadline_ms


class Camera:
    """One camera's slot for its latest frame and its counters (what became of each frame)."""

    def __init__(self, namespace):
        self.namespace = namespace
        self.latest = None
        self.received = 0
        self.published = 0
        self.drops = dict.fromkeys(DROP_KINDS, 0)
        self.deadline_misses = 0
        self.latencies = deque(maxlen=2000)
        self.last_error = ''
        self.last_count = (0, 0, time.monotonic())   # (received, published, time) at last report


class FrameQueue:
    """
    The latest frame of each camera, shared by the input callbacks and the inference thread.

    One condition guards the slots and the counters: `offer` (a new frame supersedes a waiting
    one), `take` (the inference thread waits for frames), `next_batch` (plan_batch, with its
    drops counted and the frames that wait put back unless a newer one arrived meanwhile).
    """

    def __init__(self, cameras=()):
        self.cameras = list(cameras)
        self.cond = threading.Condition()

    def offer(self, camera, frame):
        """Make `frame` the camera's latest; a frame still waiting is superseded."""
        with self.cond:
            camera.received += 1
            if camera.latest is not None:
                camera.drops['superseded'] += 1
            camera.latest = frame
            self.cond.notify()

    def take(self, stop, poll=0.2):
        """Wait for frames; return the latest of every camera ([] once `stop` is set)."""
        with self.cond:
            while not stop.is_set() and not any(c.latest for c in self.cameras):
                self.cond.wait(poll)
            if stop.is_set():
                return []
            pending = [c.latest for c in self.cameras if c.latest is not None]
            for c in self.cameras:
                c.latest = None
            return pending

    def next_batch(self, pending, now, latency, max_batch):
        """Return the frames to run now; count the dropped ones and put the waiting back."""
        batch, dropped, waiting = plan_batch(pending, now, latency, max_batch)
        with self.cond:
            for f in dropped:
                f.camera.drops['deadline'] += 1
            for f in waiting:   # back in line unless a newer frame arrived meanwhile
                if f.camera.latest is None:
                    f.camera.latest = f
                else:
                    f.camera.drops['superseded'] += 1
        return batch

    def drop(self, camera, kind, error=None):
        """Count one frame dropped for `kind` (one of DROP_KINDS), with its error text."""
        with self.cond:
            camera.drops[kind] += 1
        if error is not None:
            camera.last_error = error

    def published(self, camera, latency_s, deadline_ms):
        """Count one frame answered after `latency_s`; a miss when it passed `deadline_ms`."""
        with self.cond:
            camera.published += 1
            camera.latencies.append(latency_s)
            if deadline_ms > 0 and latency_s * 1e3 > deadline_ms:
                camera.deadline_misses += 1

    def wake(self):
        """Wake the inference thread (it then sees its stop event)."""
        with self.cond:
            self.cond.notify_all()

    def clear(self):
        """Forget the waiting frames."""
        with self.cond:
            for c in self.cameras:
                c.latest = None

    def counters(self):
        """Return [(camera, counters)], counters a consistent copy taken under the lock."""
        with self.cond:
            return [(c, {'received': c.received, 'published': c.published,
                         'drops': dict(c.drops), 'deadline_misses': c.deadline_misses,
                         'latencies': list(c.latencies), 'last_error': c.last_error})
                    for c in self.cameras]

    def snapshot(self):
        """Return {camera namespace: counters}: received, published, drops, misses, latencies."""
        return {c.namespace: counts for c, counts in self.counters()}
