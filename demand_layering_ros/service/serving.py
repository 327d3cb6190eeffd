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

import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from demand_layering_ros.service.scheduling import (deadline_infeasible, Frame, FrameQueue,
                                                    LatencyModel, most_urgent_model,
                                                    preempting_frame)

PROBE_AFTER_S = 2.0   # with every frame dropped for its deadline this long, one runs anyway
REPLAN_EVERY = 32     # served batches between two looks at the measured slack

Decoded = Tuple[Frame, Any, Any]   # (frame, its message or header, [H, W, 3] uint8 RGB)
Publish = Callable[[Frame, Any, Any, Any, dict, List[str]], Optional[bool]]


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
        self.running = None     # (frames, model) of the pass running now
        self.lent_s = 0.0       # seconds passes ran inside other passes (preemption), in all
        self.preemptions = 0
        self.guest_latency = {}   # model -> LatencyModel of its passes run inside another's

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
            self.log.info(f"preempt: {self.preemptions} frames ran inside another model's pass")

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
            self.running = (batch, m)
            try:
                self.run_batch(batch, m)
            finally:
                self.running = None
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

    def run_batch(self, batch: List[Frame], m: Any) -> None:
        """Decode, infer and publish one batch; a failed pass drops its frames as 'error'."""
        s, service = m.settings, m.service
        t0, lent0 = time.perf_counter(), self.lent_s
        frames = self.decode(batch)
        if not frames:
            return
        t1 = time.perf_counter()
        try:
            results = service.infer([rgb for _, _, rgb in frames], s['score_threshold'],
                                    s['nms_iou'], s['max_detections'])
        except Exception as e:
            for f, _, _ in frames:
                self.queue.drop(f.camera, 'error', str(e))
            self.record_error(f'{type(e).__name__}: {e}')
            return
        if results is None:   # cleaned up meanwhile
            return
        lent = self.lent_s - lent0            # other models' passes that ran inside this one
        forward = service.last_forward_seconds()
        if forward is not None:
            service.slack.add('prepost', time.perf_counter() - t1 - lent - forward)
        names = service.class_names
        for (f, msg, rgb), det in zip(frames, results):
            self.answer(f, msg, rgb, det, s, names)
        service.record_latency(len(frames), time.perf_counter() - t0 - lent)

    def at_boundary(self, name: str, done: int, units: int) -> None:
        """
        Between two layers of the running pass: run another model's frame first if it must.

        `preempting_frame` decides from the running model's measured latency (the share of its
        layers still to run) and the waiting model's. The frame runs here, nested: the running
        pass resumes from the same layer once it is answered. A waiting model whose service is
        busy elsewhere (a re-plan) is not waited for.
        """
        if self.running is None:
            return
        batch, m = self.running
        share = 1.0 - done / max(units, 1)
        latency = m.service.latency
        f = preempting_frame(self.queue.waiting(m), batch, self.now(),
                             latency.predict(len(batch)) * share, self.guest_cost,
                             latency.upper(len(batch)) * share)
        if f is None:
            return
        other = f.camera.model
        if not other.service.lock.acquire(blocking=False):
            return
        t0 = time.perf_counter()
        try:
            if self.queue.take_one(f):
                self.preemptions += 1
                self.run_batch([f], other)
                other.served += 1
                self.guest_latency.setdefault(other, LatencyModel()).update(
                    1, time.perf_counter() - t0)
        except Exception as e:   # the preempted pass goes on whatever befell this frame
            self.record_error(f'preempting {other.label}: {type(e).__name__}: {e}')
        finally:
            other.service.lock.release()
            self.lent_s += time.perf_counter() - t0

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
