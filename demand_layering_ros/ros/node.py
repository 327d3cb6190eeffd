# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector as a ROS 2 lifecycle node: camera topics in, vision_msgs detections out.

The node is a thin adapter: the demand-layered executor owns the weights, `imaging` converts
frames, and this module only decides which frame runs when. A lifecycle node lets a manager (or
`autostart`) open the pack at `configure`, stream at `activate`, and give every byte of model
memory back at `cleanup`. Inference runs in its own thread: the latest frame of each camera
wins, cameras are served earliest-deadline-first, a frame that can no longer meet its deadline
is dropped and counted, and frames of several cameras share one forward pass when that meets
the deadlines better. Everything is reported on /diagnostics once a second.
"""

from collections import deque
from dataclasses import dataclass
import gc
import math
import re
import signal
import threading
import time
from typing import Any, Optional, Tuple

from demand_layering_ros.service import imaging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

NODE_NAME = 'demand_layering_detector'
REPLAN_PARAMS = ('memory_budget_mb', 'deadline_ms', 'frame_period_ms')
ERROR_HOLD_S = 10.0    # diagnostics stay at ERROR this long after a failed frame or configure

# ---------------------------------------------------------------------------------------------
# Parameters: one table drives declaration, validation, config/detector.yaml and the README.


@dataclass(frozen=True)
class Param:
    """One node parameter: name, default, description, limits and when a change applies."""

    name: str
    default: Any
    description: str
    limits: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[str, ...]] = None
    applies: str = 'configure'     # 'configure' (unconfigured only), 'runtime', 'startup'

    @property
    def type_name(self):
        """Return the parameter type as a word (bool, integer, double, string, ...)."""
        d = self.default
        if isinstance(d, bool):
            return 'bool'
        if isinstance(d, int):
            return 'integer'
        if isinstance(d, float):
            return 'double'
        if isinstance(d, str):
            return 'string'
        return 'string_array' if self.name == 'image_topics' else 'integer_array'


PARAMS = (
    Param('pack_path', '',
          'Weight pack directory written by `python -m demand_layering_ros pack`.'),
    Param('device', 'cpu', 'Torch device that runs the model: cpu, cuda or cuda:N.'),
    Param('memory_budget_mb', 0.0,
          'Weight memory budget in MiB (resident weights plus the streaming arena); 0 = no '
          'budget: stream every unit through the smallest arena. A change re-plans and swaps '
          'the arena between frames.', (0.0, 1048576.0), applies='runtime'),
    Param('deadline_ms', 0.0,
          'Deadline per frame, image stamp to published detections, in ms; 0 = none. Frames '
          'that cannot make it are dropped; a change re-plans.', (0.0, 600000.0),
          applies='runtime'),
    Param('frame_period_ms', 0.0,
          'Camera frame period in ms, so the planner can prefetch the first layers of the '
          'next frame between frames; 0 = unknown. A change re-plans.', (0.0, 60000.0),
          applies='runtime'),
    Param('plan_file', '',
          'PLAN.yaml from `python -m demand_layering_ros plan`; empty = plan at configure from '
          'the budget and deadline.'),
    Param('profile_file', '',
          'PROFILE.json from `python -m demand_layering_ros profile`, used to plan; empty = '
          'PACK/PROFILE.json; if there is none, a budget or deadline makes configure profile '
          'the pack once (within memory_budget_mb) and save it there.'),
    Param('score_threshold', 0.25, 'Minimum detection score.', (0.0, 1.0), applies='runtime'),
    Param('nms_iou', 0.45, 'IoU above which non-maximum suppression drops a box.', (0.0, 1.0),
          applies='runtime'),
    Param('max_detections', 100, 'Most detections published per image.', (1, 10000),
          applies='runtime'),
    Param('input_size', [0, 0],
          'Network input [height, width] in pixels; [0, 0] = the size stored in the pack.'),
    Param('class_id_mode', 'id',
          'What results[].hypothesis.class_id carries: the class index (id) or its name (name).',
          choices=('id', 'name'), applies='runtime'),
    Param('image_topics', ['/camera/image_raw'],
          'Image topics, one per camera; detections go to `<camera namespace>/detections`.'),
    Param('transport', 'raw',
          'raw subscribes sensor_msgs/Image; compressed subscribes `<topic>/compressed` '
          '(sensor_msgs/CompressedImage). Topics ending in /compressed are always compressed.',
          choices=('raw', 'compressed')),
    Param('qos_reliability', 'best_effort',
          'Image subscription reliability; best_effort connects to both kinds of camera.',
          choices=('best_effort', 'reliable')),
    Param('qos_depth', 1, 'Image subscription queue depth (1 = only the latest frame).',
          (1, 100)),
    Param('publish_debug_image', False,
          'Publish annotated images on `<camera>/debug_image` (only while someone subscribes).',
          applies='runtime'),
    Param('max_batch', 4,
          'Most frames (of different cameras) run in one forward pass; 1 = never batch.',
          (1, 64), applies='runtime'),
    Param('num_threads', 0, 'Torch CPU threads; 0 = torch default.', (0, 256)),
    Param('autostart', True,
          'Configure and activate on start-up; false leaves the node to a lifecycle manager.',
          applies='startup'),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}
_DEVICE_RE = re.compile(r'^(cpu|cuda(:\d+)?)$')


def _descriptor(p):
    types = {'bool': ParameterType.PARAMETER_BOOL, 'integer': ParameterType.PARAMETER_INTEGER,
             'double': ParameterType.PARAMETER_DOUBLE, 'string': ParameterType.PARAMETER_STRING,
             'string_array': ParameterType.PARAMETER_STRING_ARRAY,
             'integer_array': ParameterType.PARAMETER_INTEGER_ARRAY}
    d = ParameterDescriptor(name=p.name, type=types[p.type_name], description=p.description,
                            read_only=p.applies == 'startup')
    notes = []
    if p.choices:
        notes.append('one of: ' + ', '.join(p.choices))
    if p.applies == 'configure':
        notes.append('applies at configure (change while unconfigured)')
    elif p.applies == 'runtime':
        notes.append('may change at run time')
    d.additional_constraints = '; '.join(notes)
    if p.limits is not None:
        if p.type_name == 'double':
            d.floating_point_range = [FloatingPointRange(
                from_value=float(p.limits[0]), to_value=float(p.limits[1]), step=0.0)]
        else:
            d.integer_range = [IntegerRange(
                from_value=int(p.limits[0]), to_value=int(p.limits[1]), step=1)]
    return d


def validate(name, value):
    """Return why `value` is invalid for parameter `name`, or None when it is fine."""
    p = PARAM_BY_NAME.get(name)
    if p is None:
        return None
    if p.limits is not None and not (p.limits[0] <= value <= p.limits[1]):
        return f'{name}: {value} is outside [{p.limits[0]}, {p.limits[1]}]'
    if p.choices is not None and value not in p.choices:
        return f'{name}: {value!r} is not one of {", ".join(p.choices)}'
    if name == 'device' and not _DEVICE_RE.match(value):
        return f'device: {value!r} must be cpu, cuda or cuda:N'
    if name == 'input_size':
        value = list(value)
        if value != [0, 0] and (len(value) != 2 or not all(16 <= v <= 8192 for v in value)):
            return (f"input_size: {value} must be [0, 0] (the pack's) or [height, width] with "
                    'each between 16 and 8192')
    if name == 'image_topics':
        topics = list(value)
        if not topics or any(not t.strip() for t in topics):
            return 'image_topics: give at least one non-empty topic name'
        if len(set(topics)) != len(topics):
            return f'image_topics: duplicate topics in {topics}'
    return None


def parameter_table_markdown():
    """Return the README's parameter table (Markdown), generated from the descriptors."""
    rows = ['| Parameter | Type | Default | Range / values | Changes | Description |',
            '|---|---|---|---|---|---|']
    for p in PARAMS:
        if p.limits is not None:
            limits = f'{p.limits[0]} .. {p.limits[1]}'
        elif p.choices is not None:
            limits = ' \\| '.join(f'`{c}`' for c in p.choices)
        else:
            limits = ''
        changes = {'configure': 'at configure', 'runtime': 'at run time',
                   'startup': 'read-only'}[p.applies]
        default = f'`{p.default!r}`'.replace("'", '"') if p.default != '' else '`""`'
        if isinstance(p.default, bool):
            default = f'`{str(p.default).lower()}`'
        rows.append(f'| `{p.name}` | {p.type_name} | {default} | {limits} | {changes} | '
                    f'{p.description} |')
    return '\n'.join(rows) + '\n'


def config_yaml():
    """Return a documented YAML parameter file with every parameter at its default."""
    import json
    import textwrap
    lines = ['# Parameters of the demand_layering_detector node, every one at its default.',
             '# Generated by demand_layering_ros.ros.node.config_yaml(); test_node checks',
             '# that this file names every parameter. Use: ros2 launch demand_layering_ros',
             '# detector.launch.py params_file:=THIS_FILE (or --ros-args --params-file).',
             f'{NODE_NAME}:', '  ros__parameters:']
    for p in PARAMS:
        extra = []
        if p.limits is not None:
            extra.append(f'range {p.limits[0]} .. {p.limits[1]}')
        if p.choices is not None:
            extra.append('one of ' + ', '.join(p.choices))
        extra.append({'configure': 'applies at configure', 'runtime': 'changeable at run time',
                      'startup': 'read-only'}[p.applies])
        text = f'{p.description.replace("`", "")} ({p.type_name}; {"; ".join(extra)})'
        lines += ['    # ' + t for t in textwrap.wrap(text, 91)]
        lines.append(f'    {p.name}: {json.dumps(p.default)}')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# Topics


def camera_topics(resolved, transport):
    """
    Map a resolved image topic to (subscribe topic, 'raw' | 'compressed', camera namespace).

    '/cam0/image_raw' -> ('/cam0/image_raw', 'raw', '/cam0'); with transport compressed, or for
    '/cam0/image_raw/compressed', the subscription is the compressed topic and the camera is
    still '/cam0'. A topic at the root maps to the namespace ''.
    """
    topic = resolved.rstrip('/')
    if topic.endswith('/compressed'):
        kind, base, sub = 'compressed', topic[:-len('/compressed')], topic
    elif transport == 'compressed':
        kind, base, sub = 'compressed', topic, topic + '/compressed'
    else:
        kind, base, sub = 'raw', topic, topic
    namespace = base.rsplit('/', 1)[0]
    return sub, kind, namespace


# ---------------------------------------------------------------------------------------------
# Scheduling (no ROS here: plain seconds, so it is testable on its own)


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


def percentile(values, q):
    """Return the value below which q percent (0..100) of `values` lie; nan when empty."""
    if not values:
        return float('nan')
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def process_rss_bytes():
    """Resident set size of this process in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open('/proc/self/statm') as f:
            pages = int(f.read().split()[1])
        import os
        return pages * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return 0


class CameraState:
    """Everything the node keeps per camera: topics, publishers, the latest frame, counters."""

    def __init__(self, topic, sub_topic, kind, namespace):
        self.topic = topic
        self.sub_topic = sub_topic
        self.kind = kind
        self.namespace = namespace
        self.out_topic = f'{namespace}/detections'
        self.debug_topic = f'{namespace}/debug_image'
        self.label_topic = f'{namespace}/label_info'
        self.latest: Optional[Frame] = None
        self.subscription = None
        self.pub = None
        self.debug_pub = None
        self.label_pub = None
        self.received = 0
        self.published = 0
        self.drops = {'malformed': 0, 'deadline': 0, 'superseded': 0, 'error': 0}
        self.deadline_misses = 0
        self.latencies = deque(maxlen=2000)
        self.last_error = ''
        self.last_count = (0, 0, time.monotonic())   # (received, published, time) at last report


# ---------------------------------------------------------------------------------------------
# The node


class DetectorNode(LifecycleNode):
    """Lifecycle node running a demand-layered detector on one or more camera streams."""

    def __init__(self, node_name=NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.Condition()        # cameras' latest frames, counters
        self._model_lock = threading.RLock()      # the model: forward passes vs re-planning
        self._transition_lock = threading.RLock()
        self._model = None
        self._detector = None
        self._pack = None
        self._profile = None
        self._plan_note = ''
        self._settings = {}
        self._cameras = []
        self._worker = None
        self._stop = threading.Event()
        self._latency = LatencyModel()
        self._batching_ok = True
        self._model_stats = {}
        self._last_error = ''
        self._last_error_time = -math.inf
        self._infeasible = False
        self._io_last = (0, time.monotonic())
        self._configured_at = None
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()

        self.add_on_set_parameters_callback(self._on_set_parameters)
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, _descriptor(p))
        self._settings = self._read_parameters()
        self._guard_change_state()

        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             callback_group=self._diag_group)
        self._autostart_timer = None
        if self._settings['autostart']:
            self._autostart_timer = self.create_timer(0.01, self._autostart)

    # -- parameters ---------------------------------------------------------------------------

    def _read_parameters(self):
        out = {}
        for p in PARAMS:
            value = self.get_parameter(p.name).value
            out[p.name] = list(value) if isinstance(value, (list, tuple)) or \
                type(value).__name__ == 'array' else value
        return out

    def _state_label(self):
        return self._state_machine.current_state[1]

    def _on_set_parameters(self, params):
        state = self._state_label() if hasattr(self, '_state_machine') else 'unconfigured'
        changes = {}
        for param in params:
            p = PARAM_BY_NAME.get(param.name)
            if p is None:
                continue
            value = param.value
            if isinstance(value, (list, tuple)) or type(value).__name__ == 'array':
                value = list(value)
            reason = validate(param.name, value)
            if reason is None and p.applies == 'configure' and state not in (
                    'unconfigured', 'finalized') and value != self._settings.get(param.name):
                reason = (f'{param.name} applies at configure; the node is {state}: '
                          'deactivate and clean up first')
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            changes[param.name] = value
        replan = {k: v for k, v in changes.items()
                  if k in REPLAN_PARAMS and v != self._settings.get(k)}
        if replan and self._model is not None:
            new = dict(self._settings, **changes)
            try:
                self._replan(new)
            except Exception as e:   # the model keeps its old plan
                return SetParametersResult(
                    successful=False, reason=f'cannot re-plan for {replan}: {e}')
        if self._settings:
            self._settings.update(changes)
            if 'score_threshold' in changes:
                self._publish_label_info()
        return SetParametersResult(successful=True)

    # -- lifecycle plumbing -------------------------------------------------------------------

    def _guard_change_state(self):
        """Refuse invalid transition requests instead of letting RCLError kill the executor."""
        service = getattr(self, '_service_change_state', None)
        if service is None:
            return
        inner = service.callback

        def guarded(req, resp):
            with self._transition_lock:
                available = [t[:2] for t in self._state_machine.available_transitions]
                label = req.transition.label
                ok = any(lab == label for _, lab in available) if label else \
                    any(tid == req.transition.id for tid, _ in available)
                if not ok:
                    self.get_logger().warning(
                        f'refused transition {label or req.transition.id!r} in state '
                        f'{self._state_label()}; available: '
                        f'{", ".join(lab for _, lab in available)}')
                    resp.success = False
                    return resp
                return inner(req, resp)
        service.callback = guarded

    def _autostart(self):
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        with self._transition_lock:
            if self._state_label() != 'unconfigured':
                return
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().error('autostart: configure failed; the node stays '
                                        'unconfigured (fix the parameters, then configure)')
                return
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().error('autostart: activate failed')

    def on_configure(self, state):
        """Validate parameters, open the pack, plan, allocate the arena and warm up."""
        s = self._read_parameters()
        try:
            for p in PARAMS:
                reason = validate(p.name, s[p.name])
                if reason:
                    raise ValueError(reason)
            self._settings = s
            self._cameras = self._make_cameras(s)
            self._load_model(s)
            self._create_publishers()
        except Exception as e:
            self._record_error(f'configure failed: {e}', throttle=False)
            self._release()
            self._cameras = []
            return TransitionCallbackReturn.FAILURE
        self._configured_at = time.monotonic()
        self._last_error = ''
        names = ', '.join(f'{c.sub_topic} -> {c.out_topic}' for c in self._cameras)
        self.get_logger().info(
            f'configured {self._detector.spec if self._detector else "?"} from '
            f'{s["pack_path"]} on {s["device"]}: {names}; warm-up '
            f'{self._latency.predict(1) * 1e3:.1f} ms/frame')
        return super().on_configure(state)

    def on_activate(self, state):
        """Start the inference thread and the image subscriptions."""
        ret = super().on_activate(state)   # enables the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self._publish_label_info(activating=True)
        self._stop.clear()
        self._worker = threading.Thread(target=self._run_worker, name='dlr-inference',
                                        daemon=True)
        self._worker.start()
        s = self._settings
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=s['qos_depth'],
            reliability=ReliabilityPolicy.RELIABLE if s['qos_reliability'] == 'reliable'
            else ReliabilityPolicy.BEST_EFFORT)
        for cam in self._cameras:
            msg_type = CompressedImage if cam.kind == 'compressed' else Image
            cam.subscription = self.create_subscription(
                msg_type, cam.sub_topic, lambda msg, c=cam: self._on_image(c, msg), qos,
                callback_group=self._input_group)
        self.get_logger().info('active: ' + ', '.join(c.sub_topic for c in self._cameras))
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        """Stop the subscriptions and the inference thread; the model stays loaded."""
        self._stop_streaming()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        """Release every byte of model memory and the publishers."""
        self._stop_streaming()
        self._release()
        self.get_logger().info('cleaned up: model memory released')
        return super().on_cleanup(state)

    def on_shutdown(self, state):
        """Stop everything, from whichever state."""
        self._stop_streaming()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state):
        """Release everything so the node can be configured again."""
        self._stop_streaming()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        """Stop the inference thread before the node goes away."""
        self._stop_streaming()
        self._release()
        return super().destroy_node()

    # -- configure helpers --------------------------------------------------------------------

    def _make_cameras(self, s):
        cameras, spaces = [], {}
        for topic in s['image_topics']:
            resolved = self.resolve_topic_name(topic)
            sub, kind, ns = camera_topics(resolved, s['transport'])
            if ns in spaces:
                raise ValueError(f'image_topics: {topic} and {spaces[ns]} are both in namespace '
                                 f'{ns or "/"}; their detections would share {ns}/detections')
            spaces[ns] = topic
            cameras.append(CameraState(topic, sub, kind, ns))
        return cameras

    def _planner(self):
        try:
            from demand_layering_ros.planning import planner
        except ImportError:
            return None
        return planner if hasattr(planner, 'plan_for') else None

    def _profile_for(self, s, planner):
        """
        Return the pack's profile: profile_file, PACK/PROFILE.json, or measured once here.

        Measured here, the model runs within memory_budget_mb (streamed when the weights do not
        fit it), so the budget holds from the first byte, also at start-up. The profile is saved
        as PACK/PROFILE.json where the pack is writable: measured once per pack, not per start.
        """
        if self._profile is None:
            from pathlib import Path
            path = s['profile_file'] or str(Path(s['pack_path']) / 'PROFILE.json')
            if s['profile_file'] or Path(path).is_file():
                self._profile = planner.load_profile(path)
                return self._profile
            budget = s['memory_budget_mb'] or None
            self.get_logger().info(f'no {path}: profiling the pack once now, within '
                                   'memory_budget_mb')
            self._profile = planner.profile(s['pack_path'], device=s['device'], repeats=2,
                                            warmup=1, progress=False, activation=False,
                                            budget_mb=budget)
            self.get_logger().info(
                'profiled ' + (f'streamed within memory_budget_mb {budget:g}'
                               if self._profile['mode'] == 'streamed' else 'fully resident'))
            try:
                planner.write_json(self._profile, path)
                self.get_logger().info(f'saved the profile as {path}')
            except OSError as e:
                self.get_logger().info(f'profile kept in memory only ({path}: {e.strerror})')
        return self._profile

    def _make_plan(self, s, strict):
        """
        Plan for the budget and deadline; return (plan dict or None, note for diagnostics).

        None means: pass the budget to the executor and let it fit the arena (no budget and
        no deadline, or no planner). When the deadline cannot be met and `strict` is false
        (configure), the fastest plan within the budget runs and the note says so; `strict`
        (a run-time change) raises instead, so the change is refused with the reason.
        """
        budget = s['memory_budget_mb'] or None
        deadline = s['deadline_ms'] or None
        if budget is None and deadline is None:
            return None, ''
        planner = self._planner()
        if planner is None:
            return None, 'no planner available: the executor fits the budget, deadline unplanned'
        prof = self._profile_for(s, planner)
        try:
            return planner.plan_for(s['pack_path'], budget_mb=budget, deadline_ms=deadline,
                                    profile=prof, device=s['device'],
                                    frame_period_ms=s['frame_period_ms'] or None), ''
        except planner.PlanInfeasible as e:
            if prof.get('mode') == 'streamed' and budget is not None and \
                    e.min_memory_mb is not None and budget < e.min_memory_mb:
                # A profile measured within the budget checks no split sizes, so the planner's
                # smallest plan holds each layer whole; the executor splits them itself.
                return None, (f'{e}; the executor fits memory_budget_mb itself, splitting large '
                              'layers' + ('; the deadline is not planned' if deadline else ''))
            if strict or deadline is None:
                raise
            note = f'deadline cannot be met: {e}'
            # the fastest plan the budget allows (no budget: everything resident)
            room = budget or 2.0 * self._pack.total_bytes / (1 << 20)
            plan = planner.plan_for(s['pack_path'], budget_mb=room, profile=prof,
                                    device=s['device'],
                                    frame_period_ms=s['frame_period_ms'] or None)
            return plan, note

    def _load_model(self, s):
        import demand_layering_ros as dlr
        from demand_layering_ros.pack import Pack
        if not s['pack_path']:
            raise ValueError('pack_path is empty: write a pack with `python -m '
                             'demand_layering_ros pack --model ... --out DIR` and set pack_path')
        if s['device'].startswith('cuda'):
            import torch
            if not torch.cuda.is_available():
                raise ValueError(f'device {s["device"]}: CUDA is not available here')
        if s['num_threads']:
            import torch
            torch.set_num_threads(s['num_threads'])
        self._pack = Pack.open(s['pack_path'])
        self._profile = None
        if s['plan_file']:
            plan, self._plan_note = s['plan_file'], ''
        else:
            plan, self._plan_note = self._make_plan(s, strict=False)
        if self._plan_note:
            self.get_logger().warning(self._plan_note)
        self._model = dlr.load(s['pack_path'], device=s['device'],
                               budget_mb=s['memory_budget_mb'] or None, plan=plan)
        self._detector = self._model.detector
        if s['input_size'] != [0, 0]:
            self._detector.input_size = tuple(s['input_size'])
        self._latency = LatencyModel()
        self._batching_ok = True
        self._warm_up()

    def _warm_up(self):
        import numpy as np
        h, w = self._detector.input_size or (416, 416)
        img = np.full((h, w, 3), 114, np.uint8)
        t0 = time.perf_counter()
        self._detector.detect([img], score_threshold=self._settings['score_threshold'],
                              nms_iou=self._settings['nms_iou'],
                              max_detections=self._settings['max_detections'])
        self._update_model_stats()
        self._latency.update(1, time.perf_counter() - t0, self._stall_seconds())

    def _stall_seconds(self):
        stall = self._model_stats.get('stall_ms')
        return None if stall is None else float(stall) / 1e3

    def _create_publishers(self):
        from vision_msgs.msg import Detection2DArray, LabelInfo
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                              reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for cam in self._cameras:
            cam.pub = self.create_lifecycle_publisher(Detection2DArray, cam.out_topic, reliable)
            cam.label_pub = self.create_lifecycle_publisher(LabelInfo, cam.label_topic, latched)
            cam.debug_pub = self.create_lifecycle_publisher(Image, cam.debug_topic, reliable)

    def _publish_label_info(self, activating=False):
        if self._detector is None or not (activating or self._state_label() == 'active'):
            return
        from vision_msgs.msg import LabelInfo, VisionClass
        msg = LabelInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.class_map = [VisionClass(class_id=i, class_name=n)
                         for i, n in enumerate(self._detector.class_names)]
        msg.threshold = float(self._settings['score_threshold'])
        for cam in self._cameras:
            if cam.label_pub is not None:
                cam.label_pub.publish(msg)

    def _replan(self, s):
        """Re-plan for a new budget/deadline and swap the arena between two frames."""
        plan, note = self._make_plan(s, strict=True)
        budget_changed = s['memory_budget_mb'] != self._settings.get('memory_budget_mb')
        if plan is None and not budget_changed:
            return   # a deadline change without a plan only changes the scheduling
        with self._model_lock:
            self._model.reconfigure(budget_mb=s['memory_budget_mb'] or None, plan=plan)
            self._plan_note = note
            self._latency = LatencyModel()
            if plan and plan.get('predicted_latency_ms'):
                self._latency.update(1, plan['predicted_latency_ms'] / 1e3,
                                     (plan.get('predicted_stall_ms') or 0.0) / 1e3)
            self._update_model_stats()
        self.get_logger().info(f're-planned: budget {s["memory_budget_mb"]} MiB, deadline '
                               f'{s["deadline_ms"]} ms; arena '
                               f'{self._model_stats.get("arena_bytes", 0) / (1 << 20):.1f} MiB')

    def _stop_streaming(self):
        for cam in self._cameras:
            if cam.subscription is not None:
                self.destroy_subscription(cam.subscription)
                cam.subscription = None
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._worker = None
        with self._lock:
            for cam in self._cameras:
                cam.latest = None

    def _release(self):
        """Drop the model and the publishers; nothing of the model stays referenced."""
        with self._model_lock:
            model, self._model, self._detector, self._pack = self._model, None, None, None
            self._profile = None
            if model is not None:
                try:
                    model.close()
                except Exception as e:   # closing must not keep the node from cleaning up
                    self.get_logger().warning(f'closing the model: {e}')
            del model
        for cam in self._cameras:
            for attr in ('pub', 'label_pub', 'debug_pub'):
                pub = getattr(cam, attr)
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
                    setattr(cam, attr, None)
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # -- input --------------------------------------------------------------------------------

    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, cam, msg):
        now = self._now()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        age = now - stamp
        base = stamp if stamp > 0 and -1.0 < age < 3600.0 else now
        deadline_ms = self._settings['deadline_ms']
        deadline = base + deadline_ms / 1e3 if deadline_ms > 0 else math.inf
        with self._lock:
            cam.received += 1
            if cam.latest is not None:
                cam.drops['superseded'] += 1
            cam.latest = Frame(cam, msg, base, deadline)
            self._lock.notify()

    # -- inference thread ---------------------------------------------------------------------

    def _run_worker(self):
        while not self._stop.is_set():
            with self._lock:
                while not self._stop.is_set() and not any(c.latest for c in self._cameras):
                    self._lock.wait(0.2)
                if self._stop.is_set():
                    return
                pending = [c.latest for c in self._cameras if c.latest is not None]
                for c in self._cameras:
                    c.latest = None
            try:
                self._serve(pending)
            except Exception as e:   # never let the thread die: report and keep serving
                self._record_error(f'inference thread: {type(e).__name__}: {e}')

    def _serve(self, pending):
        s = self._settings
        max_batch = s['max_batch'] if self._batching_ok else 1
        batch, dropped, waiting = plan_batch(pending, self._now(), self._latency, max_batch)
        one = self._latency.predict(1)
        self._infeasible = bool(pending) and s['deadline_ms'] > 0 and one * 1e3 > s['deadline_ms']
        if self._infeasible:
            self.get_logger().warning(
                f'deadline {s["deadline_ms"]:.0f} ms cannot be met: predicted latency '
                f'{one * 1e3:.0f} ms per frame; frames run late and count as misses',
                throttle_duration_sec=10.0)
        with self._lock:
            for f in dropped:
                f.camera.drops['deadline'] += 1
            for f in waiting:   # back in line unless a newer frame arrived meanwhile
                if f.camera.latest is None:
                    f.camera.latest = f
                else:
                    f.camera.drops['superseded'] += 1
        if batch:
            self._run_batch(batch, s)

    def _run_batch(self, batch, s):
        t0 = time.perf_counter()
        frames, images = [], []
        for f in batch:
            try:
                images.append(imaging.msg_to_rgb(f.msg, where=f'{f.camera.sub_topic}'))
                frames.append(f)
            except imaging.ImageError as e:
                with self._lock:
                    f.camera.drops['malformed'] += 1
                f.camera.last_error = str(e)
                self.get_logger().warning(f'dropped a malformed frame: {e}',
                                          throttle_duration_sec=5.0)
        if not frames:
            return
        with self._model_lock:
            if self._detector is None:
                return
            kwargs = {'score_threshold': s['score_threshold'], 'nms_iou': s['nms_iou'],
                      'max_detections': s['max_detections']}
            try:
                results = self._detector.detect(images, **kwargs)
            except Exception as e:
                if len(frames) > 1 and self._batching_ok:
                    self._batching_ok = False
                    self.get_logger().warning(f'batched forward failed ({e}); one frame at '
                                              'a time from now on')
                    results = [self._detector.detect([img], **kwargs)[0] for img in images]
                else:
                    for f in frames:
                        with self._lock:
                            f.camera.drops['error'] += 1
                        f.camera.last_error = str(e)
                    self._record_error(f'{type(e).__name__}: {e}')
                    return
            self._update_model_stats()
        for f, img, det in zip(frames, images, results):
            self._publish(f, img, det, s)
        self._latency.update(len(frames), time.perf_counter() - t0, self._stall_seconds())

    def _record_error(self, text, throttle=True):
        self._last_error = text
        self._last_error_time = time.monotonic()
        if throttle:
            self.get_logger().error(text, throttle_duration_sec=5.0)
        else:
            self.get_logger().error(text)

    def _update_model_stats(self):
        model = self._model
        if model is None or not hasattr(model, 'stats'):
            return
        try:
            self._model_stats = dict(model.stats())
        except Exception as e:
            self._model_stats = {'error': str(e)}

    def _publish(self, frame, rgb, det, s):
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
        cam = frame.camera
        out = Detection2DArray()
        out.header = frame.msg.header
        names = self._detector.class_names if self._detector is not None else []
        by_name = s['class_id_mode'] == 'name'
        h, w = rgb.shape[:2]
        if det.has_boxes:
            boxes = det.boxes.detach().float().cpu().tolist()
            scores = det.scores.detach().float().cpu().tolist()
            ids = det.class_ids.detach().cpu().tolist()
            items = [(b, [(c, sc)]) for b, c, sc in zip(boxes, ids, scores)]
        else:   # a classifier: one detection covering the image with the top-k classes
            items = [([0.0, 0.0, float(w), float(h)], [(c, sc) for c, _, sc in det.topk or []])]
        for box, hyps in items:
            d = Detection2D()
            d.header = frame.msg.header
            x1, y1, x2, y2 = box
            d.bbox.center.position.x = (x1 + x2) / 2.0
            d.bbox.center.position.y = (y1 + y2) / 2.0
            d.bbox.size_x = x2 - x1
            d.bbox.size_y = y2 - y1
            for cid, score in hyps:
                r = ObjectHypothesisWithPose()
                cid = int(cid)
                r.hypothesis.class_id = (names[cid] if by_name and 0 <= cid < len(names)
                                         else str(cid))
                r.hypothesis.score = float(score)
                d.results.append(r)
            out.detections.append(d)
        if cam.pub is None:
            return
        cam.pub.publish(out)
        latency = self._now() - frame.base
        with self._lock:
            cam.published += 1
            cam.latencies.append(latency)
            if s['deadline_ms'] > 0 and latency * 1e3 > s['deadline_ms']:
                cam.deadline_misses += 1
        if s['publish_debug_image'] and cam.debug_pub is not None and \
                cam.debug_pub.get_subscription_count() > 0:
            labels = [names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
                      for c in (det.class_ids.tolist() if det.has_boxes else [])]
            boxes = det.boxes.tolist() if det.has_boxes else []
            scores = det.scores.tolist() if det.has_boxes else None
            drawn = imaging.draw_detections(rgb, boxes, labels, scores)
            fields = imaging.rgb_to_image_fields(drawn, 'rgb8')
            img = Image(height=fields['height'], width=fields['width'], encoding='rgb8',
                        is_bigendian=0, step=fields['step'])
            img.data = fields['data']
            img.header = frame.msg.header
            cam.debug_pub.publish(img)

    # -- diagnostics --------------------------------------------------------------------------

    def _publish_diagnostics(self):
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self.diagnostics()
        self._diag_pub.publish(msg)

    def diagnostics(self):
        """Return the DiagnosticStatus list: one per camera and one for the model."""
        def kv(key, value):
            if isinstance(value, float):
                value = 'nan' if math.isnan(value) else f'{value:.3f}'
            return KeyValue(key=key, value=str(value))

        s = self._settings
        name = self.get_name()
        device = s.get('device', '')
        out = []
        now = time.monotonic()
        with self._lock:
            cams = [(c, list(c.latencies), dict(c.drops), c.received, c.published,
                     c.deadline_misses) for c in self._cameras]
        for cam, lat, drops, received, published, misses in cams:
            r0, p0, t0 = cam.last_count
            dt = max(now - t0, 1e-6)
            cam.last_count = (received, published, now)
            st = DiagnosticStatus(name=f'{name}: camera {cam.namespace or "/"}',
                                  hardware_id=device)
            problems = []
            if misses:
                problems.append(f'{misses} deadline misses')
            if drops['malformed']:
                problems.append(f'{drops["malformed"]} malformed frames')
            if drops['error']:
                problems.append(f'{drops["error"]} failed frames')
            st.level = DiagnosticStatus.WARN if problems else DiagnosticStatus.OK
            st.message = '; '.join(problems) or 'ok'
            st.values = [
                kv('topic', cam.sub_topic), kv('detections_topic', cam.out_topic),
                kv('frames_in', received), kv('frames_out', published),
                kv('in_rate_hz', (received - r0) / dt), kv('out_rate_hz', (published - p0) / dt),
                kv('latency_p50_ms', percentile(lat, 50) * 1e3),
                kv('latency_p99_ms', percentile(lat, 99) * 1e3),
                kv('deadline_ms', float(s.get('deadline_ms', 0.0))),
                kv('deadline_misses', misses),
                kv('dropped', sum(drops.values())),
            ] + [kv(f'dropped_{k}', v) for k, v in drops.items()] + [
                kv('last_error', cam.last_error)]
            out.append(st)
        out.append(self._model_status(name, device, now))
        return out

    def _model_status(self, name, device, now):
        s = self._settings
        stats = dict(self._model_stats)
        mib = 1024.0 * 1024.0
        st = DiagnosticStatus(name=f'{name}: model', hardware_id=device)
        io_bytes = int(stats.get('io_bytes', 0) or 0)
        b0, t0 = self._io_last
        self._io_last = (io_bytes, now)
        io_rate = max(io_bytes - b0, 0) / max(now - t0, 1e-6) / mib
        peak = float(stats.get('peak_weight_bytes', 0) or 0) / mib
        budget = float(s.get('memory_budget_mb', 0.0))
        problems = []
        level = DiagnosticStatus.OK
        if budget > 0 and peak > budget:
            problems.append(f'peak weight memory {peak:.1f} MiB over the {budget:.0f} MiB budget')
            level = DiagnosticStatus.WARN
        if self._plan_note:
            problems.append(self._plan_note)
            level = DiagnosticStatus.WARN
        if self._infeasible:
            problems.append(f'deadline {s.get("deadline_ms", 0):.0f} ms infeasible: predicted '
                            f'{self._latency.predict(1) * 1e3:.0f} ms')
            level = DiagnosticStatus.WARN
        if self._last_error and now - self._last_error_time < ERROR_HOLD_S:
            problems.append(self._last_error)
            level = DiagnosticStatus.ERROR
        st.level = level
        st.message = '; '.join(problems) or ('ok' if self._model is not None
                                             else self._state_label())
        predicted = {f'predicted_latency_ms_batch{b}': v * 1e3
                     for b, v in sorted(self._latency.measured.items())}
        values = {
            'state': self._state_label(), 'pack_path': s.get('pack_path', ''),
            'model': getattr(self._detector, 'spec', ''),
            'peak_weight_mb': peak, 'budget_mb': budget,
            'resident_weight_mb': float(stats.get('resident_bytes', 0) or 0) / mib,
            'arena_mb': float(stats.get('arena_bytes', 0) or 0) / mib,
            'process_rss_mb': process_rss_bytes() / mib,
            'io_mode': stats.get('io_mode', ''), 'io_rate_mb_s': io_rate,
            'io_total_mb': io_bytes / mib,
            'stall_ms': float(stats.get('stall_ms', 0.0) or 0.0),
            'demand_misses': stats.get('demand_misses', 0),
            'batching': 'on' if self._batching_ok and s.get('max_batch', 1) > 1 else 'off',
            'last_error': self._last_error,
        }
        values.update(predicted)
        st.values = [KeyValue(key=k, value=('nan' if isinstance(v, float) and math.isnan(v)
                                            else f'{v:.3f}' if isinstance(v, float) else str(v)))
                     for k, v in values.items()]
        return st

    # -- helpers for tests and tools ----------------------------------------------------------

    def camera_stats(self):
        """Return {camera namespace: counters} (a snapshot, for tests and tools)."""
        with self._lock:
            return {c.namespace: {'received': c.received, 'published': c.published,
                                  'drops': dict(c.drops), 'deadline_misses': c.deadline_misses,
                                  'latencies': list(c.latencies), 'last_error': c.last_error}
                    for c in self._cameras}

    @property
    def model(self):
        """Return the loaded DemandLayeredModel (None unless configured)."""
        return self._model

    @property
    def state(self):
        """Return the lifecycle state label: unconfigured, inactive, active, finalized."""
        return self._state_label()


def main(args=None):
    """Console script `detector_node`: run the node until Ctrl-C."""
    rclpy.init(args=args)
    node = None
    try:
        node = DetectorNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C under `ros2 launch` reaches the node twice (the terminal's process group and
        # launch's own SIGINT): the second must not abort the release of the model's memory.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
