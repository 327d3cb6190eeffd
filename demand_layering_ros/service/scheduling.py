# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Which frame runs when: latest frame per camera, cameras in turn, deadlines admit, batches.

No ROS here: times are plain seconds, so the policy is testable on its own. A camera keeps only
its latest frame (an older one still waiting is superseded and counted). Cameras take turns:
the camera served least recently goes first (`serving_order`), across the models of a node as
within one. A frame that can no longer meet its deadline is dropped and counted, and frames of
several cameras share one forward pass when that meets the deadlines better. `LatencyModel`
predicts the cost of a batch from what was measured in steady state.

Why turns and not "oldest frame first" or "earliest deadline first": a camera's waiting frame
is superseded by its next one, so under overload the camera whose frames are stamped a little
later (a stereo pair triggered together, the second camera of a rig, or a phase that happens
to fall behind the passes) lost every comparison and was never served. Letting an earlier
deadline go first where it "saves" one starved cameras too: the frame passed over is replaced
by a newer one that can again wait, turn after turn (in a simulation of 382 overloaded scenes,
2-4 cameras at 5-30 fps, that rule left 53 under 80% fairness, turns 32, all of them scenes
whose deadline is under two passes).
"""

from collections import deque
from dataclasses import dataclass
import math
import threading
import time
from typing import Any

from demand_layering_ros.quantiles import median, nearest_rank

DROP_KINDS = ('malformed', 'deadline', 'superseded', 'error')
JUMP_S = 1.0   # a frame this much older than the newest is a camera restart, not a late one


@dataclass
class Frame:
    """One received image waiting for inference (`msg`: a message, or its serialized bytes)."""

    camera: Any
    msg: Any
    base: float        # seconds: the image stamp, or the receive time when the stamp is unusable
    deadline: float    # absolute seconds (inf: no deadline)
    arrival: float = math.nan   # seconds, same clock as base: when the node received it
    best_effort: bool = False   # run although predicted to miss its deadline


class LatencyModel:
    """
    Predicts the service time (decode + forward + publish) of a batch of B frames.

    It learns from steady state: a warm-up pass (or a plan's prediction) is only a provisional
    guess, replaced by the first real measurement, never averaged in. A measured batch size
    predicts the median of its last `window` measurements: one slow pass does not move it, and
    a change of load shows after window / 2 frames. `upper` is the slow end of the same window
    (nearest-rank `upper_q` of the last `2 x window`), what admission holds a deadline against.
    An unmeasured size is extrapolated from batch 1: the weight I/O of a pass is shared by the
    whole batch, the compute is not, so L(B) = L(1) + (B - 1) x compute(1), where compute(1) is
    L(1) minus the time the pass stalled on weights (reported by the executor).
    """

    def __init__(self, window=7, upper_q=90):
        self.window = window
        self.upper_q = upper_q
        self.samples = {}       # batch -> recent measured seconds (steady state only)
        self.provisional = {}   # batch -> seconds guessed before any measurement
        self.stalls = deque(maxlen=window)

    def update(self, batch, seconds, stall_seconds=None, warmup=False):
        """Record one measured batch; a warm-up pass is kept only as a provisional guess."""
        if warmup:
            self.provisional[batch] = seconds
            return
        self.samples.setdefault(batch, deque(maxlen=2 * self.window)).append(seconds)
        if batch == 1 and stall_seconds is not None:
            self.stalls.append(stall_seconds)

    @property
    def measured(self):
        """Return {batch: predicted seconds} for every batch size measured or guessed."""
        return {b: self.predict(b) for b in sorted(set(self.samples) | set(self.provisional))}

    @property
    def steady(self):
        """Return True once a real (not warm-up) batch of one frame was measured."""
        return bool(self.samples.get(1))

    @property
    def stall(self):
        """Return the typical time a pass of one frame waited for weights (seconds)."""
        stalls = self.stalls.copy()     # a copy in C: the inference thread may append
        return median(stalls) if stalls else 0.0

    def _known(self, batch, upper=False):
        xs = self.samples.get(batch)
        xs = xs.copy() if xs is not None else None   # diagnostics read while frames run
        if xs:
            if upper:
                return nearest_rank(xs, self.upper_q)
            return median(list(xs)[-self.window:])
        return self.provisional.get(batch)

    def predict(self, batch, upper=False):
        """Predicted seconds for a batch of `batch` frames (0 before any measurement)."""
        known = self._known(batch, upper)
        if known is not None:
            return known
        one = self._known(1, upper)
        if one is not None:
            compute = min(one, max(one - self.stall, 0.25 * one))
            return one + (batch - 1) * compute
        sizes = sorted(set(self.samples) | set(self.provisional))
        if sizes:   # only larger batches measured: assume linear per frame
            b = sizes[0]
            return self._known(b, upper) * batch / b
        return 0.0

    def upper(self, batch):
        """Return the slow end of the recent measurements (admission holds deadlines to it)."""
        return self.predict(batch, upper=True)


def serving_order(frames):
    """
    Return frames in the order to serve them: the camera served least recently first.

    Deadlines do not reorder turns: the frames a camera has waiting are always its newest, so
    equal deadlines differ only by when each camera's last frame came, and ordering by them
    starved the camera stamped later. Deadlines decide admission instead (`plan_batch` drops a
    frame that can no longer make its deadline). Among cameras never served, the earliest
    deadline, then the oldest frame, goes first.
    """
    return sorted(frames, key=lambda f: (f.camera.turn, f.deadline, f.base))


def plan_batch(frames, now, latency, max_batch, best_effort=False):
    """
    Decide what runs next: returns (batch, dropped, waiting), each a list of frames.

    Frames are ordered by `serving_order` (the camera served least recently first). A frame is
    dropped when it would finish after its deadline even if it started now
    (its age plus the slow end of the recent service times, `latency.upper`), unless even a
    fresh frame could not make it, or `best_effort` says the deadline is infeasible: then
    frames still run, late, and the misses are counted. The batch size is the one that lets
    the most frames meet their deadlines (running the rest one at a time afterwards), ties
    broken by the smallest total completion time.
    """
    one = latency.predict(1)
    admit = latency.upper(1)
    dropped, live = [], []
    for f in frames:
        feasible = admit <= f.deadline - f.base and not best_effort
        if math.isfinite(f.deadline) and feasible and now + admit > f.deadline:
            dropped.append(f)
        else:
            live.append(f)
    if not live:
        return [], dropped, []
    live = serving_order(live)
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


def deadline_infeasible(latency, deadline_ms, outside_s=0.0):
    """
    Return True when a frame taken on arrival is predicted to miss a deadline of `deadline_ms`.

    `outside_s` is what a frame has spent before it can be taken (its typical age at arrival).
    Only steady-state measurements count: before the first real frame nothing is infeasible.
    """
    return deadline_ms > 0 and latency.steady and \
        (latency.predict(1) + outside_s) * 1e3 > deadline_ms


def most_urgent_model(frames):
    """
    Return the model whose frame is served first (`serving_order` over every model's frames).

    Frames of several models never share a pass; across models, as within one, cameras take
    turns.
    """
    return serving_order(frames)[0].camera.model


@dataclass
class HostPass:
    """
    The running pass as the preemption guard sees it (seconds; times on the frames' clock).

    `left` / `left_slow`: its measured time still to run, typical and slow end (`PassProfile`);
    `penalty`: the slow end of what one preemption adds to it afterwards (read-ahead dropped
    for the guest's layers and read again); `guests`: preemptions already taken in it, each
    still owing that penalty; `service`: the slow end of its model's pass, what each of its
    frames after this one takes; `cameras`: [(waiting frame or None, next frame's base,
    period, deadline after base)] of its model's cameras, what it must leave their deadlines;
    `lent`: seconds its passes lent to guests (penalties included) in the last frame period.
    """

    frames: list
    left: float
    left_slow: float
    penalty: float = 0.0
    guests: int = 0
    service: float = 0.0
    cameras: list = ()
    lent: float = 0.0


def preempting_frame(waiting, host, now, cost):
    """
    Return the waiting frame of another model to run inside the running pass, or None.

    `host`: the running pass (`HostPass`); `cost(model)`: the slow end of that model's
    measured passes run inside another (read on demand, without read-ahead). A frame preempts
    only when waiting for the rest of the pass would make it miss its deadline, running it now
    would not, and the running model keeps every deadline (`host_keeps`). Frames without a
    deadline, of a model not yet measured or served best-effort, never do.
    """
    for f in serving_order(waiting):
        m = f.camera.model
        if not math.isfinite(f.deadline) or m.infeasible or not m.service.latency.steady:
            continue
        c = cost(m)
        if now + host.left + m.service.latency.upper(1) <= f.deadline or now + c > f.deadline:
            continue
        lend = c + host.penalty * (host.guests + 1)
        if host_keeps(host, now, now + lend + host.left_slow, m.service.latency.upper(1), lend):
            return f
    return None


def host_keeps(host, now, end, between, lend=0.0):
    """
    Return True when the running model keeps its deadlines with its pass ending at `end`.

    A guest's delay is paid by every frame of the running model, not only the ones in the
    pass: each frame waiting runs after it (in turn, `host.service` each) and must start before
    its camera's next frame supersedes it and end by its deadline; a camera with none waiting
    has its next frame due at base + period: it runs at the pass's end, or, arriving after it,
    once the pass of another model that may start meanwhile (`between`) is done, and must
    meet its deadline before the frame after it arrives. Those checks reach one frame ahead;
    the frames after it keep theirs because a delay lent is made up before the next: what
    the model lends in a frame period (`host.lent` and this `lend`) stays within the time its
    passes, another model's between two of its own, leave free in a period. Where they leave
    none, nothing is lent. Slow-end times throughout; a camera whose period is not measured
    yet refuses every preemption, one overdue by more than a period is taken to be quiet.
    """
    if any(end > r.deadline for r in host.frames):
        return False
    cams = [c for c in host.cameras if math.isfinite(c[3]) and not (
        c[0] is None and now > c[1] + c[2])]
    if any(not math.isfinite(period) for _, _, period, _ in cams):
        return False
    if cams:
        busy = sum((host.service + between) / period for _, _, period, _ in cams)
        if host.lent + lend > (1.0 - busy) * min(period for _, _, period, _ in cams):
            return False
    t = end
    for frame, due, period, deadline_s in cams:
        if frame is not None:
            if t > due or t + host.service > frame.deadline:
                return False
            t += host.service
            continue
        start = end if due <= end else due + between
        if start > due + period or start + host.service > due + deadline_s:
            return False
    return True


class PassProfile:
    """
    How a model's pass spends its time, for the preemption guard: measured, not assumed.

    `add_pass` keeps, for each unit boundary of an unpreempted pass, the fraction of the pass
    elapsed there (passes are not uniform over their units: yolov3's first half of its units
    takes 0.44 of the pass, the units from 0.6 to 0.8 of the way 0.26); `left(unit)` is the
    fraction still to run, the median of the last `window` passes (the share of units not
    started before any pass was timed). `add_penalty` keeps what a preempted pass took beyond
    the slow end of its model's passes, per guest; `penalty` is its slow end (0 before one ran).
    """

    def __init__(self, window=7, upper_q=90):
        self.window = window
        self.upper_q = upper_q
        self.elapsed = {}       # unit index -> recent fractions of the pass elapsed at its start
        self.penalties = deque(maxlen=2 * window)

    def add_pass(self, marks, seconds):
        """Record an unpreempted pass: [(unit index, seconds elapsed at its start)], its total."""
        if seconds <= 0:
            return
        for unit, t in marks:
            self.elapsed.setdefault(unit, deque(maxlen=self.window)).append(
                min(max(t / seconds, 0.0), 1.0))

    def left(self, unit, units):
        """Return the fraction of the pass still to run at the start of unit `unit`."""
        xs = self.elapsed.get(unit)
        xs = xs.copy() if xs is not None else None   # diagnostics may read while frames run
        if not xs:
            return 1.0 - unit / max(units, 1)
        return 1.0 - median(xs)

    def add_penalty(self, seconds):
        """Record what one preemption added to the pass it preempted (seconds, may be < 0)."""
        self.penalties.append(seconds)

    @property
    def penalty(self):
        """Return the slow end of the measured penalty of one preemption (>= 0 seconds)."""
        xs = self.penalties.copy()
        return max(0.0, nearest_rank(xs, self.upper_q)) if xs else 0.0


class Camera:
    """One camera's slot for its latest frame and its counters (what became of each frame)."""

    def __init__(self, namespace, model=None):
        self.namespace = namespace
        self.model = model       # the model its frames run through (one per camera)
        self.latest = None
        self.received = 0
        self.published = 0
        self.drops = dict.fromkeys(DROP_KINDS, 0)
        self.deadline_misses = 0
        self.best_effort = 0     # frames run although their deadline could not be met
        self.newest = -math.inf  # base time of the newest frame offered
        self.intervals = deque(maxlen=8)   # seconds between the bases of its newest frames
        self.latencies = deque(maxlen=2000)
        self.last_error = ''
        self.last_count = (0, 0, time.monotonic())   # (received, published, time) at last report
        self.turn = 0            # when it was last served (FrameQueue.turns then); 0: never

    @property
    def period(self):
        """Return the seconds between its frames: the median of the last few (inf: none yet)."""
        xs = self.intervals.copy()
        return median(xs) if xs else math.inf


class FrameQueue:
    """
    The latest frame of each camera, shared by the input callbacks and the inference thread.

    One condition guards the slots and the counters: `offer` (the newest frame wins: a new frame
    supersedes a waiting one, and a frame older than one already offered is superseded at
    once, for frames can arrive out of order, from several publishers on one topic or over a
    lossy network; one older by more than JUMP_S is a camera or clock restart and is taken),
    `take` (the inference thread waits for frames), `next_batch` (plan_batch, with its drops
    counted and the frames that wait put back unless a newer one arrived meanwhile).
    """

    def __init__(self, cameras=()):
        self.cameras = list(cameras)
        self.cond = threading.Condition()
        self.starving = {}    # model -> time since which its every frame was dropped
        self.turns = 0        # batches taken so far: each camera's `turn` is one of these

    def offer(self, camera, frame):
        """Make `frame` the camera's latest unless a newer one was offered; count the loser."""
        with self.cond:
            camera.received += 1
            if camera.newest - JUMP_S < frame.base < camera.newest:
                camera.drops['superseded'] += 1
                return
            if math.isfinite(camera.newest) and frame.base > camera.newest:
                camera.intervals.append(frame.base - camera.newest)
            camera.newest = frame.base
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

    def next_batch(self, pending, now, latency, max_batch, best_effort=False,
                   probe_after=math.inf):
        """
        Return the frames to run now; count the dropped ones and put the waiting back.

        A frame dropped for its deadline teaches the latency model nothing: once every frame
        has been dropped for `probe_after` seconds, the next runs anyway, best-effort (a probe).
        A frame run although predicted to miss its deadline is marked `best_effort`.
        """
        model = pending[0].camera.model if pending else None
        since = self.starving.get(model)
        starving = since is not None and now - since > probe_after
        best_effort = best_effort or starving
        batch, dropped, waiting = plan_batch(pending, now, latency, max_batch, best_effort)
        for f in batch:
            f.best_effort = best_effort and now + latency.upper(len(batch)) > f.deadline
        if batch:
            self.starving.pop(model, None)
        elif dropped and since is None:
            self.starving[model] = now
        with self.cond:
            for f in dropped:
                f.camera.drops['deadline'] += 1
            if batch:
                self.turns += 1
                for f in batch:
                    f.camera.turn = self.turns
        self.put_back(waiting)
        return batch

    def waiting(self, but_model):
        """Return the frames waiting now of every model but `but_model` (left in line)."""
        with self.cond:
            return [c.latest for c in self.cameras
                    if c.latest is not None and c.model is not but_model]

    def cameras_of(self, model):
        """
        Return [(waiting frame or None, next frame's base, period)] of `model`'s cameras.

        In serving order of their waiting frames (the cameras served least recently first);
        the next frame's base is the newest one's plus the camera's measured period.
        """
        with self.cond:
            cams = sorted((c for c in self.cameras if c.model is model), key=lambda c: c.turn)
            return [(c.latest, c.newest + c.period, c.period) for c in cams]

    def take_one(self, frame):
        """Take `frame` out of line to run it now; False when a newer one replaced it."""
        with self.cond:
            if frame.camera.latest is not frame:
                return False
            frame.camera.latest = None
            self.turns += 1
            frame.camera.turn = self.turns
            return True

    def of_most_urgent_model(self, pending):
        """Return the frames of the model served next; put the others back to wait."""
        model = most_urgent_model(pending)
        self.put_back([f for f in pending if f.camera.model is not model])
        return [f for f in pending if f.camera.model is model]

    def put_back(self, frames):
        """Put frames back in line, each unless a newer one of its camera arrived meanwhile."""
        with self.cond:
            for f in frames:
                if f.camera.latest is None:
                    f.camera.latest = f
                else:
                    f.camera.drops['superseded'] += 1

    def drop(self, camera, kind, error=None):
        """Count one frame dropped for `kind` (one of DROP_KINDS), with its error text."""
        with self.cond:
            camera.drops[kind] += 1
        if error is not None:
            camera.last_error = error

    def published(self, camera, latency_s, deadline_ms, best_effort=False):
        """Count one frame answered after `latency_s`; a miss when it passed `deadline_ms`."""
        with self.cond:
            camera.published += 1
            camera.best_effort += bool(best_effort)
            camera.latencies.append(latency_s)
            if deadline_ms > 0 and latency_s * 1e3 > deadline_ms:
                camera.deadline_misses += 1

    def wake(self):
        """Wake the inference thread (it then sees its stop event)."""
        with self.cond:
            self.cond.notify_all()

    def clear(self):
        """Forget the waiting frames (and the newest stamp: a camera may start again)."""
        with self.cond:
            for c in self.cameras:
                c.latest = None
                c.newest = -math.inf
            self.starving = {}

    def counters(self):
        """Return [(camera, counters)], counters a consistent copy taken under the lock."""
        with self.cond:
            return [(c, {'received': c.received, 'published': c.published,
                         'drops': dict(c.drops), 'deadline_misses': c.deadline_misses,
                         'best_effort': c.best_effort,
                         'latencies': list(c.latencies), 'last_error': c.last_error})
                    for c in self.cameras]

    def snapshot(self):
        """Return {camera namespace: counters}: received, published, drops, misses, latencies."""
        return {c.namespace: counts for c, counts in self.counters()}
