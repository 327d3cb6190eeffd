# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The serving loop without ROS: take frames, pick the model, admit, decode, infer, publish, count.

It lived in the ROS node, where it could only be tested through rclpy. `FrameServer` owns the
policy around `scheduling` (which model's cameras go next, the prefetch hint to the model after
it, best-effort when a deadline is infeasible, admission, the counters, the slack measured
around a pass, a re-plan for slack every REPLAN_EVERY batches); what is ROS-specific comes in
as plain callables: `decode` (deserialise the frames taken), `publish` (build and send the
detections), the clock and a logger. The node calls `run` from its inference thread.

A frame's `camera.model` is the model it runs through (`ros.served.ServedModel`, or anything
with `name`, `label`, `settings`, `service`, `infeasible`, `infeasible_said` and `served`).
"""

from collections import deque
from dataclasses import dataclass, field
import math
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from demand_layering_ros.service.scheduling import (deadline_infeasible, Frame, FrameQueue,
                                                    HostPass, LatencyModel, most_urgent_model,
                                                    PassProfile, preempting_frame)

PROBE_AFTER_S = 2.0   # with every frame dropped for its deadline this long, one runs anyway
REPLAN_EVERY = 32     # served batches between two looks at the measured slack

Decoded = Tuple[Frame, Any, Any]   # (frame, its message or header, [H, W, 3] uint8 RGB)
Publish = Callable[[Frame, Any, Any, Any, dict, List[str]], Optional[bool]]


@dataclass
class Running:
    """The pass running now, as the preemption guard follows it (perf_counter seconds)."""

    batch: List[Frame]
    model: Any
    t0: float
    lent0: float                # the server's lent_s when it began
    slow: float                 # its model's slow-end pass before it ran
    marks: list = field(default_factory=list)   # [(unit index, seconds of its own so far)]
    guests: int = 0             # passes run inside it


class FrameServer:
    """
    The inference thread's work: serve the frames of a `FrameQueue`, model by model.

    `decode(batch)` returns [(frame, message, rgb)] for the frames it could decode (it counts
    the others); `publish(frame, message, rgb, detections, settings, class_names)` sends one
    answer and returns False when there was nowhere to send it (then nothing is counted);
    `after_publish` (same arguments) sends what must not count in the frame's latency (a debug
    image). `now()` is the clock frames are stamped with (seconds), `log` has info / warning /
    error, `record_error(text)` keeps the last error (by default it is logged), and `group`
    (a GroupService) takes the prefetch hint.
    """

    def __init__(self, queue: FrameQueue, decode: Callable[[List[Frame]], List[Decoded]],
                 publish: Publish, now: Callable[[], float], log: Any,
                 record_error: Optional[Callable[[str], None]] = None, group: Any = None,
                 after_publish: Optional[Publish] = None) -> None:
        """Serve `queue` through the given steps (see the class)."""
        self.queue = queue
        self.decode = decode
        self.publish = publish
        self.after_publish = after_publish
        self.now = now
        self.log = log
        self.record_error = record_error if record_error is not None else log.error
        self.group = group
        self.running = None     # the Running pass
        self.lent_s = 0.0       # seconds passes ran inside other passes (preemption), in all
        self.preemptions = 0
        self.guest_latency = {}   # model -> LatencyModel of its passes run inside another's
        self.profiles = {}        # model -> PassProfile of its passes (timed with preempt on)
        self.lent_by = {}         # model -> deque of (perf_counter, seconds its passes lent)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; an error is recorded and never ends the thread."""
        while not stop.is_set():
            pending = self.queue.take(stop)
            if not pending:
                continue
            try:
                self.serve(pending)
            except Exception as e:   # never let the thread die: report and keep serving
                self.record_error(f'inference thread: {type(e).__name__}: {e}')
        if self.preemptions:
            cost = ', '.join(f'{m.label} {p.penalty * 1e3:.0f} ms'
                             for m, p in self.profiles.items() if p.penalties)
            self.log.info(f"preempt: {self.preemptions} frames ran inside another model's pass"
                          + (f' (what one cost the pass it ran in afterwards, slow end: {cost})'
                             if cost else ''))

    def serve(self, pending: Sequence[Frame]) -> List[Frame]:
        """
        Serve the most urgent model's frames of `pending` (the others wait); return the batch.

        The batch is the frames admitted to run (empty when none was); the ones not taken this
        time are put back in line, those past their deadline counted as dropped.
        """
        now = self.now()
        mine = self.queue.of_most_urgent_model(list(pending))   # turns across models too
        m = mine[0].camera.model
        others = [f for f in pending if f.camera.model is not m]
        if others and self.group is not None and self.group.configured:
            self.group.prefetch(most_urgent_model(others).name)   # the next model reads ahead
        s, service = m.settings, m.service
        latency = service.latency
        self.note_feasibility(m, latency, service.slack.part('age'))
        max_batch = s['max_batch'] if service.batching_ok else 1
        batch = self.queue.next_batch(mine, now, latency, max_batch, m.infeasible,
                                      max(PROBE_AFTER_S, 10 * latency.upper(1)))
        if batch:
            if self.group is not None and self.group.configured:
                self.group.set_boundary(self.at_boundary if s.get('preempt') else None)
            run = Running(batch, m, time.perf_counter(), self.lent_s,
                          latency.upper(len(batch)))
            self.running = run
            try:
                seconds = self.run_batch(batch, m)
            finally:
                self.running = None
            if seconds is not None and s.get('preempt'):
                self.learn(run, seconds)
            m.served += 1
            if m.served % REPLAN_EVERY == 0:
                service.replan_for_slack()
        return batch

    def note_feasibility(self, m: Any, latency: Any, age: float) -> None:
        """Switch best-effort serving on and off; say so once, with the numbers."""
        deadline_ms = m.settings['deadline_ms']
        infeasible = deadline_infeasible(latency, deadline_ms, age)
        if infeasible and not m.infeasible and not m.infeasible_said:
            m.infeasible_said = True
            self.log.warning(
                f'{m.label + ": " if m.name else ""}deadline {deadline_ms:.0f} ms cannot be '
                f'met: frames take {latency.predict(1) * 1e3:.0f} ms plus {age * 1e3:.0f} ms '
                'age at arrival; serving the newest frame best-effort, late frames count as '
                'misses')
        m.infeasible = infeasible

    def run_batch(self, batch: List[Frame], m: Any, guest: bool = False) -> Optional[float]:
        """
        Decode, infer and publish one batch; return its seconds (None when it did not run).

        A failed pass drops its frames as 'error'. A `guest` pass (run inside another model's)
        does not teach its model's latency: it reads its layers without read-ahead, and its
        time inside another pass is the guard's (`guest_cost`).
        """
        s, service = m.settings, m.service
        t0, lent0 = time.perf_counter(), self.lent_s
        frames = self.decode(batch)
        if not frames:
            return None
        t1 = time.perf_counter()
        try:
            results = service.infer([rgb for _, _, rgb in frames], s['score_threshold'],
                                    s['nms_iou'], s['max_detections'])
        except Exception as e:
            for f, _, _ in frames:
                self.queue.drop(f.camera, 'error', str(e))
            self.record_error(f'{type(e).__name__}: {e}')
            return None
        if results is None:   # cleaned up meanwhile
            return None
        lent = self.lent_s - lent0            # other models' passes that ran inside this one
        forward = service.last_forward_seconds()
        if forward is not None:
            service.slack.add('prepost', time.perf_counter() - t1 - lent - forward)
        names = service.class_names
        for (f, msg, rgb), det in zip(frames, results):
            self.answer(f, msg, rgb, det, s, names)
        seconds = time.perf_counter() - t0 - lent
        if not guest:
            service.record_latency(len(frames), seconds)
        return seconds

    def learn(self, run: Running, seconds: float) -> None:
        """
        Time a pass for the preemption guard: its shape, or what its guests cost it after.

        An unpreempted pass gives the fraction of it elapsed at each unit boundary; a preempted
        one the seconds it took, its guests' lent out, beyond the slow end of its model's
        passes, per guest: the read-ahead it lost to them and read again.
        """
        profile = self.profiles.setdefault(run.model, PassProfile())
        if run.guests:
            profile.add_penalty((seconds - run.slow) / run.guests)
        else:
            profile.add_pass(run.marks, seconds)

    def at_boundary(self, name: str, done: int, units: int) -> None:
        """
        Between two layers of the running pass: run another model's frame first if it must.

        `preempting_frame` decides from measured times: the running pass's time still to run
        (its model's pass times the fraction left at this unit in recent passes), what each
        preemption costs it afterwards, and its model's frames waiting or due. The frame runs
        here, nested: the running pass resumes from the same layer once it is answered. A
        waiting model whose service is busy elsewhere (a re-plan) is not waited for.
        """
        run = self.running
        if run is None:
            return
        m = run.model
        run.marks.append((done, time.perf_counter() - run.t0 - (self.lent_s - run.lent0)))
        f = preempting_frame(self.queue.waiting(m), self.host_pass(run, done, units),
                             self.now(), self.guest_cost)
        if f is None:
            return
        other = f.camera.model
        if not other.service.lock.acquire(blocking=False):
            return
        t0 = time.perf_counter()
        try:
            if self.queue.take_one(f):
                self.preemptions += 1
                run.guests += 1
                self.run_batch([f], other, guest=True)
                other.served += 1
                self.guest_latency.setdefault(other, LatencyModel()).update(
                    1, time.perf_counter() - t0)
        except Exception as e:   # the preempted pass goes on whatever befell this frame
            self.record_error(f'preempting {other.label}: {type(e).__name__}: {e}')
        finally:
            other.service.lock.release()
            t1 = time.perf_counter()
            self.lent_s += t1 - t0
            self.lent_by.setdefault(m, deque(maxlen=64)).append(
                (t1, t1 - t0 + self.profiles[m].penalty))

    def host_pass(self, run: Running, done: int, units: int) -> HostPass:
        """Return the running pass as the guard sees it at the start of unit `done`."""
        m, n = run.model, len(run.batch)
        profile = self.profiles.setdefault(m, PassProfile())
        share = profile.left(done, units)
        latency = m.service.latency
        deadline_ms = m.settings['deadline_ms']
        deadline_s = deadline_ms / 1e3 if deadline_ms > 0 else math.inf
        cameras = [(f, due, period, deadline_s) for f, due, period in self.queue.cameras_of(m)]
        window = min((c[2] for c in cameras), default=math.inf)
        now = time.perf_counter()
        lent = sum(s for t, s in self.lent_by.get(m, ()) if now - t < window)
        return HostPass(run.batch, latency.predict(n) * share, latency.upper(n) * share,
                        profile.penalty, run.guests, latency.upper(1), cameras, lent)

    def guest_cost(self, m: Any) -> float:
        """Return the slow end of `m`'s passes inside another's (its own, before one ran)."""
        guest = self.guest_latency.get(m)
        return guest.upper(1) if guest is not None else m.service.latency.upper(1)

    def answer(self, frame: Frame, msg: Any, rgb: Any, det: Any, s: dict,
               names: List[str]) -> None:
        """Publish one frame's detections and count it, with its latency and publish time."""
        t0 = time.perf_counter()
        if self.publish(frame, msg, rgb, det, s, names) is False:
            return
        cam = frame.camera
        cam.model.service.slack.add('publish', time.perf_counter() - t0)
        self.queue.published(cam, self.now() - frame.base, s['deadline_ms'], frame.best_effort)
        if self.after_publish is not None:
            self.after_publish(frame, msg, rgb, det, s, names)
