# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector as a service: settings in, detections out, weights streamed under a budget.

`DetectorService` is what the node runs, without ROS: `configure` opens the pack, decides the
plan (`planning.decide.decide_plan`, after reading or measuring the profile a budget or deadline
needs), loads the demand-layered model and warms it up; `infer` runs RGB images through it;
`replan` applies a new budget, deadline or frame period between two frames; `stats` feeds
diagnostics; `close` gives every byte of model memory back.

A re-plan never measures the pack in the caller's thread. With no profile yet (none stored, none
measured), what can be applied at once is: a budget change runs the runtime's own fit, a deadline
change only changes the scheduling; meanwhile the pack is profiled in a background thread within
the budget, and when that is done the service re-plans between two frames and logs it.
"""

import gc
import logging
import sys
import threading
import time
from typing import Any, Dict, Mapping, Optional

from demand_layering_ros import loading
from demand_layering_ros import process_memory
from demand_layering_ros.layout.plan import RUN_KEYS
from demand_layering_ros.pack import Pack
from demand_layering_ros.planning import corrected_profile, decide_plan
from demand_layering_ros.runtime import malloc
from demand_layering_ros.service import profiles, settings
from demand_layering_ros.service.following import FollowsFreeMemory
from demand_layering_ros.service.imaging import image_to_rgb
from demand_layering_ros.service.scheduling import LatencyModel
from demand_layering_ros.service.slack import Slack
from demand_layering_ros.service.torch_threads import TorchThreads
from demand_layering_ros.sizes import MB
import numpy as np


def process_rss_bytes():
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    return process_memory.rss_bytes()


def _same_plan(a, b):
    """Return True when two decisions run the same configuration (residents, arena)."""
    if a is None or a.plan is None or b.plan is None:
        return False
    if a.source == b.source == 'fastest':    # the fastest plan does not depend on the deadline
        return True
    return all(getattr(a.plan, k) == getattr(b.plan, k) for k in RUN_KEYS)


def _deadline_note(decision, deadline, target, slack_ms, slack):
    """
    Return a decision's note, quoting the deadline as set, with the slack's share of it apart.

    The planner was asked for `target` (the deadline less `slack_ms`, what frames spend outside
    the network); a note never quotes only that. A deadline no plan meets ('fastest': the
    fastest plan within the budget runs) is served best-effort, and the note says so.
    """
    if decision.source == 'fastest':
        return (f'deadline {deadline:g} ms cannot be met: the fastest plan is predicted at '
                f'{decision.plan.predicted_latency_ms or float("nan"):.0f} ms for the network, '
                f'plus {slack_ms:.0f} ms outside it ({slack.describe()}); frames are served '
                'best-effort and late ones count as misses')
    if target is None or target == deadline or not decision.note:
        return decision.note
    return decision.note.replace(f'deadline {target:g} ms', (
        f'deadline {deadline:g} ms ({slack_ms:.0f} ms of it measured outside the network, '
        f'{target:g} ms left for it)'))


class DetectorService(FollowsFreeMemory):
    """
    One demand-layered detector: configure, infer, re-plan, report, close.

    Thread-safe where the node needs it: `infer` and the swap of a re-plan take `lock`, so a
    re-plan lands between two forward passes; `stats` reads only what the last pass left.
    `log` is anything with info/warning/error (a `logging.Logger`, a ROS node's logger).
    """

    def __init__(self, log: Any = None) -> None:
        self.log = log if log is not None else logging.getLogger(__name__)
        self.lock = threading.RLock()         # the model: forward passes vs re-planning
        self.plan_lock = threading.RLock()    # one re-plan at a time (callback or background)
        self.settings = {}
        self.pack = None
        self.model = None
        self.detector = None
        self.profile = None
        self.profiling = None                 # the BackgroundProfile started last, if any
        self.decision = None                  # the planning.decide.Decision in effect
        self.plan_note = ''
        self.drift_note = ''                  # why a drift from the plan was not re-planned
        self.latency = LatencyModel()
        self.slack = Slack()                  # time outside the forward pass, measured online
        self.planned_slack_ms = 0.0           # the slack the plan in effect was made for
        self.batching_ok = True
        self.model_stats = {}
        self.threads = TorchThreads()         # torch's process-wide count, taken and given back

    @property
    def configured(self) -> bool:
        """Return True while a model is loaded (between configure and close)."""
        return self.model is not None

    # -- configure ----------------------------------------------------------------------------

    def configure(self, values: Mapping[str, Any]) -> None:
        """
        Open the pack, plan, load the model and warm it up; ValueError names a bad setting.

        `values` are settings (service.settings; missing ones take their defaults). A budget or
        deadline without plan_file needs the pack's profile: profile_file, PACK/PROFILE.json,
        or measured here once within memory_budget_mb and saved there.
        """
        s = settings.defaults()
        s.update(values)
        settings.check(s)
        self.close()
        try:
            self._open(s)
        except BaseException:
            self.close()
            raise

    def _open(self, s):
        if not s['pack_path']:
            raise ValueError('pack_path is empty: write a pack with `python -m '
                             'demand_layering_ros pack --model ... --out DIR` and set pack_path')
        if s['device'].startswith('cuda'):
            import torch
            if not torch.cuda.is_available():
                raise ValueError(f'device {s["device"]}: CUDA is not available here')
        self.threads.take(s['device'], s['num_threads'])
        self.settings, self.follow_mb = s, None
        self.pack = Pack.open(s['pack_path'])
        self.profile = None
        if s['plan_file']:
            decision = decide_plan(self.pack, settings.given(s, 'memory_budget_mb'),
                                   plan=s['plan_file'], device=s['device'],
                                   threads=self.threads.use())
        else:
            if s['memory_budget_mb'] or s['deadline_ms']:
                self.profile = profiles.stored(s, self.log) or \
                    profiles.measure_and_save(s, self.log)
            decision = self._decide(s)
        self.decision, self.plan_note = decision, decision.note
        self.planned_slack_ms = self._slack_ms(s)
        if decision.note:
            self.log.warning(decision.note)
        self.model = loading.load(s['pack_path'], device=s['device'],
                                  budget_mb=self._budget_mb(s),
                                  plan=decision.plan)
        self._start(s)
        self.set_keep_free(s['keep_free_mb'])

    def _start(self, s):
        """Take the loaded model's detector, reset what is learnt per model, warm up."""
        self.detector = self.model.detector
        if list(s['input_size']) != [0, 0]:
            self.detector.input_size = tuple(s['input_size'])
        self.latency = LatencyModel()
        self.batching_ok = True
        self.drift_note = ''
        self._warm_up()
        # The warm-up ran on this (configure's) thread; frames run on the inference thread,
        # whose allocations land elsewhere. What the warm-up freed stays in this thread's malloc
        # arena unless given back: 15-17 MiB of yolov3-tiny's peak at 416x416 (a service warmed
        # up on one thread serving photos on another, measured in a memory cgroup).
        malloc.trim()

    def _slack_ms(self, s):
        return self.slack.total() * 1e3 if s['deadline_ms'] else 0.0

    def _decide(self, s):
        """
        Decide the plan for the settings; a deadline plan targets the deadline minus the slack.

        The slack (service.slack: age at arrival, decode, pre/post-processing, publish) is what
        a frame spends outside the forward pass the planner predicts. A deadline no plan can
        meet is taken, at configure and at run time alike (`_deadline_note`).
        """
        deadline = settings.given(s, 'deadline_ms')
        slack_ms = self._slack_ms(s)
        target = None if deadline is None else max(deadline - slack_ms, 1e-3)
        decision = decide_plan(self.pack, budget_mb=self._budget_mb(s), deadline_ms=target,
                               frame_period_ms=settings.given(s, 'frame_period_ms'),
                               profile=self.profile, device=s['device'], strict=False,
                               threads=self.threads.use())
        decision.note = _deadline_note(decision, deadline, target, slack_ms, self.slack)
        return decision

    def _warm_up(self):
        """Two passes on a grey frame: the first is excluded, the second a provisional guess."""
        h, w = self.detector.input_size or (416, 416)
        img = np.full((h, w, 3), 114, np.uint8)
        self.infer([img])
        t0 = time.perf_counter()
        image_to_rgb('bgr8', w, h, w * 3, img.tobytes())
        decode = time.perf_counter() - t0
        self.infer([img])
        total = time.perf_counter() - t0
        forward = self.last_forward_seconds()
        self.latency.update(1, total, warmup=True)
        self.slack.guess['decode'] = decode
        if forward is not None:
            self.slack.guess['prepost'] = max(0.0, total - decode - forward)

    def last_forward_seconds(self):
        """Return the duration of the last forward pass (seconds), or None when unknown."""
        ms = self.model_stats.get('latency_ms')
        return None if ms is None else float(ms) / 1e3

    # -- inference ----------------------------------------------------------------------------

    @property
    def class_names(self):
        """Return the model's class names ([] unless configured)."""
        detector = self.detector
        return list(detector.class_names) if detector is not None else []

    def infer(self, images: Any, score_threshold: Optional[float] = None,
              nms_iou: Optional[float] = None, max_detections: Optional[int] = None) -> Any:
        """
        Run RGB images (HxWx3 uint8: one array or a list) in one forward pass.

        Returns one detection result per image (a single result for a single array), or None
        when the service is not configured (a frame that raced with cleanup). Thresholds default
        to the settings. When a batched pass fails, batching is switched off for good and the
        images run one at a time; a failure of one image raises.
        """
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        with self.lock:
            if self.detector is None:
                return None
            self.threads.use()
            s = self.settings
            kwargs = {'score_threshold': s['score_threshold'] if score_threshold is None
                      else score_threshold,
                      'nms_iou': s['nms_iou'] if nms_iou is None else nms_iou,
                      'max_detections': s['max_detections'] if max_detections is None
                      else max_detections}
            try:
                results = self.detector.detect(batch, **kwargs)
            except Exception as e:
                if len(batch) > 1 and self.batching_ok:
                    self.batching_ok = False
                    self.log.warning(f'batched forward failed ({e}); one frame at a time from '
                                     'now on')
                    results = [self.detector.detect([img], **kwargs)[0] for img in batch]
                else:
                    raise
            self._update_model_stats()
        return results[0] if single else results

    def record_latency(self, batch, seconds):
        """Record the measured service time of a batch (decode + forward + publish)."""
        stall = self.model_stats.get('stall_ms')
        self.latency.update(batch, seconds, None if stall is None else float(stall) / 1e3)
        self.check_drift()

    def replan_for_slack(self, min_change_ms=2.0, min_frames=16):
        """
        Re-plan a deadline once the measured slack moved away from the one planned for.

        Returns True when a new plan was applied. Only a deadline planned with a profile is
        re-planned (a plan file, a budget fitted by memory alone or no deadline are left alone);
        a change smaller than `min_change_ms` or 5% of the deadline is not worth a swap.
        """
        s = self.settings
        if not self.configured or not s.get('deadline_ms') or s['plan_file'] or \
                self.profile is None or self.slack.measured() < min_frames:
            return False
        now_ms = self._slack_ms(s)
        if abs(now_ms - self.planned_slack_ms) <= max(min_change_ms, 0.05 * s['deadline_ms']):
            return False
        with self.plan_lock:
            old = self.decision
            decision = self._decide(s)
            self.planned_slack_ms = now_ms
            if decision.source not in ('planner', 'fastest') or _same_plan(old, decision):
                return False
            self._apply(s, decision, f're-planned for the measured slack of {now_ms:.0f} ms')
        if decision.note and (old is None or old.source != decision.source):
            self.log.warning(decision.note)
        return True

    def _update_model_stats(self):
        model = self.model
        if model is None or not hasattr(model, 'stats'):
            return
        try:
            self.model_stats = dict(model.stats())
        except Exception as e:
            self.model_stats = {'error': str(e)}

    # -- re-planning --------------------------------------------------------------------------

    def replan(self, values: Mapping[str, Any]) -> None:
        """
        Apply a new memory_budget_mb / deadline_ms / frame_period_ms between two frames.

        Raises (PlanInfeasible, the runtime's errors) to refuse a change that cannot run (a
        budget below the smallest plan): the model keeps its configuration. A deadline no plan
        meets is taken as at configure, its note logged once. Never measures here: without a
        profile, a budget runs the runtime's own fit and a deadline only the scheduling, while
        `profiling` measures in a thread.
        """
        if not self.configured:
            raise ValueError('re-planning needs a configured service: configure first')
        s = dict(self.settings)
        s.update({k: values[k] for k in settings.REPLAN_PARAMS if k in values})
        settings.check(s)
        with self.plan_lock:
            new_cap = self._cap_changes(s)
            need = bool(s['memory_budget_mb'] or s['deadline_ms']) and self.profile is None
            if need:
                self.profile = profiles.stored(s, self.log)
            decision = self._decide(s)
            if decision.source in ('planner', 'fastest') or \
                    s['memory_budget_mb'] != self.settings['memory_budget_mb']:
                self._apply(s, decision, 're-planned')
                if decision.note:
                    self.log.warning(decision.note)
            # else: a deadline change without a plan only changes the scheduling
            self.settings = s
            if new_cap:
                self._follow_cap(s)
            if need and self.profile is None and not (self.profiling and
                                                      self.profiling.running()):
                self.profiling = profiles.BackgroundProfile(s, self.log, self._profiled)

    def _apply(self, s, decision, what):
        plan = decision.plan            # the Plan itself: decided once, passed down as it is
        with self.lock:
            self.model.reconfigure(budget_mb=self._budget_mb(s), plan=plan)
            self.decision, self.plan_note = decision, decision.note
            self.drift_note = ''
            self.planned_slack_ms = self._slack_ms(s)
            self.latency = LatencyModel()
            if plan is not None and plan.predicted_latency_ms:   # a guess until frames come
                around = self.slack.total() - self.slack.part('age')   # decode, pre/post, publish
                self.latency.update(1, plan.predicted_latency_ms / 1e3 + around, warmup=True)
            self._update_model_stats()
        self.log.info(f'{what}: budget {self._budget_mb(s) or 0:.1f} MiB, deadline '
                      f'{s["deadline_ms"]} ms; arena '
                      f'{self.model_stats.get("arena_bytes", 0) / MB:.1f} MiB')

    def _profiled(self, profile):
        """Plan with the profile measured in the background, for the settings now in effect."""
        with self.plan_lock:
            if self.model is None:
                return
            self.profile = profile
            s = self.settings
            if not (s['memory_budget_mb'] or s['deadline_ms']):
                return      # nothing to plan for any more; the profile is kept for later
            try:
                decision = self._decide(s)
                self._apply(s, decision, 're-planned with the profile measured in the background')
            except Exception as e:   # the change was accepted already: keep serving as it is
                self.log.warning(f'profiled in the background, but cannot re-plan for budget '
                                 f'{s["memory_budget_mb"]} MiB, deadline {s["deadline_ms"]} ms: '
                                 f'{e}; the model keeps its configuration')
                return
            if decision.note:
                self.log.warning(decision.note)

    def check_drift(self):
        """
        Re-plan when the passes persistently take over 10% more or less than the plan expects.

        Called after every batch (`record_latency`); cheap unless the model reports a drift
        (`latency_drift` in its stats: the median of its recent one-frame passes). With a
        profile and a planned configuration, the profile is corrected by the measured ratio
        (`planning.timing.corrected_profile`) and the request planned again between two
        frames. Not re-planned, and logged once: a given plan or a budget fitted without a
        profile; passes faster than expected while frame_period_ms is unknown (idle time
        between frames lets the loader read ahead, which a plan for back-to-back frames does
        not count on: a plan for less memory would lose it). Returns the line logged, or None.
        """
        st = self.model_stats
        if not st.get('latency_drift') or self.model is None or self.drift_note:
            return None
        with self.plan_lock:
            decision, ratio = self.decision, st.get('latency_ratio')
            what = (f'measured {st.get("measured_latency_ms"):.1f} ms per pass against '
                    f'{st.get("expected_latency_ms"):.1f} ms expected (x{ratio:.2f})')
            if self.profile is None or decision is None or \
                    decision.source not in ('planner', 'fastest'):
                self.drift_note = f'{what}; the plan was not made here, so it is not re-planned'
            elif ratio < 1.0 and not self.settings['frame_period_ms']:
                self.drift_note = (f'{what}; not re-planned for less memory: set '
                                   'frame_period_ms if idle time between frames reads ahead')
            if self.drift_note:
                self.log.warning(self.drift_note)
                return self.drift_note
            self.profile = corrected_profile(self.profile, ratio, why=what)
            try:
                decision = self._decide(self.settings)
                self._apply(self.settings, decision, f'{what}: re-planned')
            except Exception as e:   # keep serving with the plan in effect
                self.drift_note = f'{what}; re-planning failed ({e}); the plan stays'
                self.log.warning(self.drift_note)
                return self.drift_note
            if decision.note:
                self.log.warning(decision.note)
            return f'{what}: re-planned'

    # -- report and close ---------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Return what diagnostics report: model figures, plan note, latency, memory."""
        latency = self.latency
        return {
            'configured': self.model is not None,
            'model': getattr(self.detector, 'spec', ''),
            'model_stats': dict(self.model_stats),
            'plan_note': self.plan_note,
            'drift_note': self.drift_note,
            'batching': self.batching_ok,
            'predicted_latency_ms': latency.predict(1) * 1e3,
            'latency_ms_by_batch': {b: v * 1e3 for b, v in sorted(latency.measured.items())},
            'latency_steady': latency.steady,
            'slack_ms': self.slack.total() * 1e3,
            'slack_parts_ms': self.slack.parts_ms(),
            'planned_slack_ms': self.planned_slack_ms,
            'profiling': bool(self.profiling is not None and self.profiling.running()),
            'process_rss_bytes': process_rss_bytes(),
        }

    def close(self) -> None:
        """Release the model and the pack; nothing of the model stays referenced (idempotent)."""
        job = self.profiling
        if job is not None and job.running():
            job.cancel()
            self.log.info('waiting for the profile measured in the background')
            job.join()
        with self.lock:
            model, self.model, self.detector, self.pack = self.model, None, None, None
            self.profile = None
            if model is not None:
                try:
                    model.close()
                except Exception as e:   # closing must not keep the caller from cleaning up
                    self.log.warning(f'closing the model: {e}')
            del model
        gc.collect()
        self.threads.give_back()
        torch = sys.modules.get('torch')
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
