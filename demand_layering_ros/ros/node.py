# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector as a ROS 2 lifecycle node: camera topics in, vision_msgs detections out.

The node only wires ROS to the service: parameters (declared from `service.settings`),
lifecycle transitions, image subscriptions, publishers and timers. `DetectorService` owns the
model (open at `configure`, every byte given back at `cleanup`), `scheduling` decides which
frame runs when (latest frame per camera, cameras in turn, batches, drops), and
`service.serving.FrameServer` is the inference thread's loop (take, admit, infer, count), given
the node's ROS steps as callables: decode the taken messages (`intake`), publish (`messages`
builds what is published), the clock. `diagnostics` builds what /diagnostics reports once a
second. A lifecycle node lets a manager (or `autostart`) open the pack at `configure` and stream
at `activate`; inference runs in its own thread. With `models`, several models share one memory
budget (`service.group.GroupService`); each camera belongs to one of them (`served`) and the one
inference thread serves their frames, their cameras in turn.
"""

import math
import signal
import threading
import time

from demand_layering_ros.ros import intake, messages, params, served
from demand_layering_ros.ros.diagnostics import group_status
from demand_layering_ros.runtime import malloc
from demand_layering_ros.service import settings
from demand_layering_ros.service.group import GroupService
from demand_layering_ros.service.scheduling import Camera, Frame, FrameQueue
from demand_layering_ros.service.service import DetectorService
from demand_layering_ros.service.serving import FrameServer
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo

SPIN_TIMEOUT_S = 0.1  # the main thread sees Ctrl-C within this (rclpy installs no handler)


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


class CameraState(Camera):
    """One camera: its topics and ROS endpoints, on top of its frame slot and counters."""

    def __init__(self, topic, sub_topic, kind, namespace, model=None):
        super().__init__(namespace, model)
        self.topic = topic
        self.sub_topic = sub_topic
        self.kind = kind
        self.out_topic = f'{namespace}/detections'
        self.debug_topic = f'{namespace}/debug_image'
        self.label_topic = f'{namespace}/label_info'
        self.msg_type = CompressedImage if kind == 'compressed' else Image
        self.subscription = None
        self.pub = None
        self.debug_pub = None
        self.label_pub = None


def guard_change_state(node, lock):
    """Refuse invalid transition requests instead of letting RCLError kill the executor."""
    service = getattr(node, '_service_change_state', None)
    if service is None:
        return
    inner = service.callback

    def guarded(req, resp):
        with lock:
            available = [t[:2] for t in node._state_machine.available_transitions]
            label = req.transition.label
            ok = any(lab == label for _, lab in available) if label else \
                any(tid == req.transition.id for tid, _ in available)
            if not ok:
                node.get_logger().warning(
                    f'refused transition {label or req.transition.id!r} in state '
                    f'{node.state}; available: {", ".join(lab for _, lab in available)}')
                resp.success = False
                return resp
            return inner(req, resp)
    service.callback = guarded


def make_cameras(node, models):
    """Return the cameras of the models served (ValueError names a topic that cannot be)."""
    cameras, owners = [], {}
    for m in models:
        key = f'{m.name}.image_topics' if m.name else 'image_topics'
        for topic in m.settings['image_topics']:
            try:
                resolved = node.resolve_topic_name(topic)
            except Exception as e:   # RCLError: "failed to resolve name: <why>, at <file>"
                why = str(e).split(': ', 1)[-1].rsplit(', at ', 1)[0]
                raise ValueError(f'{key}: {topic!r} is not a valid topic name: '
                                 f'{why}') from None
            sub, kind, ns = camera_topics(resolved, m.settings['transport'])
            served.claim_namespace(owners, ns, topic if not m.name else sub, m.name)
            cameras.append(CameraState(topic, sub, kind, ns, m))
    return cameras


def create_publishers(node, cameras):
    """Create each camera's detections, label and debug image publishers."""
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                          reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    for cam in cameras:
        cam.pub = node.create_lifecycle_publisher(Detection2DArray, cam.out_topic, reliable)
        cam.label_pub = node.create_lifecycle_publisher(LabelInfo, cam.label_topic, latched)
        cam.debug_pub = node.create_lifecycle_publisher(Image, cam.debug_topic, reliable)


class DetectorNode(LifecycleNode):
    """Lifecycle node running a demand-layered detector on one or more camera streams."""

    def __init__(self, node_name=settings.NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.service = DetectorService(log=self.get_logger())    # the one model of today
        self.group = GroupService(log=self.get_logger())         # or several: `models`
        self._models = [served.ServedModel('', self.service)]
        self._transition_lock = threading.RLock()
        self._settings = {}
        self._cameras = []
        self._queue = FrameQueue()
        self._worker = None
        self._stop = threading.Event()
        self._last_error = ''
        self._last_error_time = -math.inf
        self._intake = None       # the image subscriptions' own executor (ros.intake)
        self._diag_group = MutuallyExclusiveCallbackGroup()

        # rclpy refuses an integer for a double, or any value out of range, with a traceback
        # from declare_parameter: coerce the start-up values first, and keep the reason a value
        # cannot be used, so that configure fails with it and the node stays up, unconfigured.
        self._startup_errors = params.take_startup_overrides(
            getattr(self, '_parameter_overrides', {}))
        if hasattr(self, 'add_pre_set_parameters_callback'):   # Jazzy: `ros2 param set` too
            self.add_pre_set_parameters_callback(params.coerce_request)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for p in settings.PARAMS:
            self.declare_parameter(p.name, p.default, params.descriptor(p))
        self._settings = self._read_parameters()
        self._models = self._make_models(self._settings)
        guard_change_state(self, self._transition_lock)

        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             callback_group=self._diag_group)
        self._autostart_timer = None
        if self._settings['autostart']:
            self._autostart_timer = self.create_timer(0.01, self._autostart)
        elif self._startup_errors:
            self._record_error(self._startup_error_text() + '; configure fails until it is '
                               'fixed', throttle=False)

    def _startup_error_text(self):
        return 'invalid parameter ' + '; '.join(self._startup_errors.values())

    # -- parameters ---------------------------------------------------------------------------

    def _read_parameters(self):
        served.declare_models(self, params.plain(self.get_parameter('models').value) or [])
        return {n: params.plain(self.get_parameter(n).value) for n in served.parameter_names(self)}

    def _make_models(self, s):
        if not s['models']:
            models = [served.ServedModel('', self.service)]
        else:
            models = [served.ServedModel(n, self.group.members.get(n, self.service))
                      for n in s['models']]
        for m in models:
            m.update(s)
        return models

    def _state_label(self):
        return self._state_machine.current_state[1]

    def _on_set_parameters(self, requested):
        state = self._state_label() if hasattr(self, '_state_machine') else 'unconfigured'
        changes = {}
        for param in requested:
            if settings.param_for(param.name) is None:
                continue
            value = params.plain(param.value)
            declaring = param.name not in self._settings   # a model named since start-up
            reason = params.refusal(param.name, value, 'unconfigured' if declaring else state,
                                    self._settings.get(param.name))
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            changes[param.name] = value
        if self._settings:      # not declaring: a start-up value refused before is now set
            for name in changes:
                self._startup_errors.pop(name, None)
        replan = {k: v for k, v in changes.items()
                  if k in settings.REPLAN_PARAMS and v != self._settings.get(k)}
        served_by = self.service if self.service.configured else \
            self.group if self.group.configured else None
        try:   # never measures here: without a profile, one is measured in the background
            if self._settings:
                settings.check(dict(self._settings, **changes))     # e.g. keep_free + plan_file
            if replan and self.service.configured:
                self.service.replan(dict(self._settings, **changes))
            elif 'memory_budget_mb' in replan and self.group.configured:
                self.group.replan(replan['memory_budget_mb'])     # between two passes
            if 'keep_free_mb' in changes and served_by is not None and \
                    changes['keep_free_mb'] != self._settings.get('keep_free_mb'):
                served_by.set_keep_free(changes['keep_free_mb'])
        except Exception as e:   # the model keeps its old plan
            return SetParametersResult(
                successful=False, reason=f'cannot re-plan for {replan or changes}: {e}')
        if self._settings:
            self._settings.update(changes)
            for m in self._models:
                m.update(self._settings)
            if any(k.rsplit('.', 1)[-1] == 'score_threshold' for k in changes):
                self._publish_label_info()
        return SetParametersResult(successful=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def _autostart(self):
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        with self._transition_lock:
            if self._state_label() != 'unconfigured':
                return
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return      # on_configure said why, in one line
            if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().error('autostart: activate failed')

    def on_configure(self, state):
        """Validate parameters, open the pack, plan, allocate the arena and warm up."""
        s = self._read_parameters()
        try:
            if self._startup_errors:
                raise ValueError(self._startup_error_text())
            settings.check(s)
            self._settings = s
            self._models = self._make_models(s)
            self._cameras = make_cameras(self, self._models)
            self._queue = FrameQueue(self._cameras)
            if s['models']:
                self.group.configure(s)
                for m in self._models:
                    m.service = self.group.members[m.name]
            else:
                self.service.configure(s)
            create_publishers(self, self._cameras)
        except Exception as e:
            self._record_error(f'configure failed: {e}; the node stays unconfigured (fix it, '
                               'then configure)', throttle=False)
            self._release()
            self._cameras = []
            self._queue = FrameQueue()
            return TransitionCallbackReturn.FAILURE
        self._last_error = ''
        for m in self._models:
            names = ', '.join(f'{c.sub_topic} -> {c.out_topic}' for c in self._cameras
                              if c.model is m)
            self.get_logger().info(
                f'configured {m.label + " " if m.name else ""}{m.service.detector.spec} from '
                f'{m.settings["pack_path"]} on {s["device"]}: {names}; warm-up '
                f'{m.service.latency.predict(1) * 1e3:.1f} ms/frame')
        return super().on_configure(state)

    def on_activate(self, state):
        """Start the inference thread and the image subscriptions."""
        ret = super().on_activate(state)   # enables the lifecycle publishers
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self._publish_label_info(activating=True)
        self._stop.clear()
        server = FrameServer(self._queue, self._decode, self._publish, self._now,
                             self.get_logger(), self._record_error, self.group,
                             self._publish_debug)
        self._worker = threading.Thread(target=server.run, args=(self._stop,),
                                        name='dlr-inference', daemon=True)
        self._worker.start()
        s = self._settings
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=s['qos_depth'],
            reliability=ReliabilityPolicy.RELIABLE if s['qos_reliability'] == 'reliable'
            else ReliabilityPolicy.BEST_EFFORT)
        for m in self._models:
            m.infeasible_said = False
        self._intake = intake.Intake(self.get_name(), self.get_namespace(), self.context)
        for cam in self._cameras:
            cam.subscription = self._intake.subscribe(
                cam.msg_type, cam.sub_topic, qos, lambda data, c=cam: self._on_image(c, data))
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

    def _publish_label_info(self, activating=False):
        if not (activating or self._state_label() == 'active'):
            return
        for cam in self._cameras:
            m = cam.model
            if cam.label_pub is not None and m.service.configured:
                cam.label_pub.publish(messages.label_info(
                    m.service.class_names, m.settings['score_threshold'],
                    self.get_clock().now().to_msg()))

    def _stop_streaming(self):
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        for cam in self._cameras:
            cam.subscription = None
        self._stop.set()
        self._queue.wake()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._worker = None
        self._queue.clear()

    def _release(self):
        """Drop the models and the publishers; nothing of a model stays referenced."""
        self.service.close()
        self.group.close()
        for cam in self._cameras:
            for attr in ('pub', 'label_pub', 'debug_pub'):
                pub = getattr(cam, attr)
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
                    setattr(cam, attr, None)

    # -- input and the inference thread -------------------------------------------------------

    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, cam, data):
        """Admit a frame: its serialized bytes, its stamp read in place, no decoding here."""
        now = self._now()
        stamp = intake.header_stamp(data)
        stamp = stamp[0] + stamp[1] * 1e-9 if stamp is not None else 0.0
        age = now - stamp
        base = stamp if stamp > 0 and -1.0 < age < 3600.0 else now
        deadline_ms = cam.model.settings['deadline_ms']
        deadline = base + deadline_ms / 1e3 if deadline_ms > 0 else math.inf
        self._queue.offer(cam, Frame(cam, data, base, deadline, now))

    def _decode(self, batch):
        """Deserialise the frames taken (`intake.decode_taken`), their model's slack measured."""
        return intake.decode_taken(batch, self._queue, batch[0].camera.model.service.slack,
                                   self.get_logger())

    def _publish(self, frame, msg, rgb, det, s, names):
        """Publish one frame's detections; False when its publisher is gone (not counted)."""
        cam = frame.camera
        if cam.pub is None:
            return False
        cam.pub.publish(messages.detections(msg.header, rgb, det, names,
                                            by_name=s['class_id_mode'] == 'name'))
        return True

    def _publish_debug(self, frame, msg, rgb, det, s, names):
        """Publish the debug image, once the frame is counted, when someone subscribes."""
        cam = frame.camera
        if s['publish_debug_image'] and cam.debug_pub is not None and \
                cam.debug_pub.get_subscription_count() > 0:
            cam.debug_pub.publish(messages.debug_image(msg.header, rgb, det, names))

    def _record_error(self, text, throttle=True):
        self._last_error = text
        self._last_error_time = time.monotonic()
        if throttle:
            self.get_logger().error(text, throttle_duration_sec=5.0)
        else:
            self.get_logger().error(text)

    # -- diagnostics, and what tests and tools read -------------------------------------------

    def _publish_diagnostics(self):
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = self.diagnostics()
        self._diag_pub.publish(msg)

    def diagnostics(self):
        """Return the DiagnosticStatus list: per model its cameras' and its own; the group's."""
        counters, state = self._queue.counters(), self._state_label()
        out = []
        for m in self._models:
            out += m.diagnostics.statuses(
                self.get_name(), m.settings, [(c, n) for c, n in counters if c.model is m],
                m.service.stats(), state, (self._last_error, self._last_error_time),
                m.infeasible, m.label)
        if self._settings.get('models'):
            out.append(group_status(self.get_name(), self._settings, self.group.stats(), state))
        return out

    def camera_stats(self):
        """Return {camera namespace: counters} (a snapshot, for tests and tools)."""
        return self._queue.snapshot()

    @property
    def model(self):
        """Return the loaded DemandLayeredModel (None unless configured, or with `models`)."""
        return self.service.model

    @property
    def models(self):
        """Return {model name: its service} of the models served ({'': service} for one)."""
        return {m.name: m.service for m in self._models}

    @property
    def state(self):
        """Return the lifecycle state label: unconfigured, inactive, active, finalized."""
        return self._state_label()

    @property
    def last_error(self):
        """Return the last error reported (a failed configure or frame); '' after a configure."""
        return self._last_error


def _interrupt(signum, frame):
    """SIGINT or SIGTERM: the main thread stops everything in order (`main`)."""
    raise KeyboardInterrupt


def main(args=None):
    """
    Run the node until Ctrl-C (or SIGTERM); the console script `detector_node` calls it.

    rclpy's own signal handler shuts the context down from a thread of its own, while the image
    intake's thread may be waiting in it: a segfault at exit about one run in thirty. So rclpy
    installs none; the signals raise KeyboardInterrupt in this thread, which spins with a
    timeout to see it, then stops the intake, the inference thread and the executor, destroys
    the node and only then shuts rclpy down. A signal during rclpy's start ends it the same
    way, with no traceback; one during the imports before this runs is `ros.entry`'s.
    """
    node = executor = None
    try:
        malloc.limit_arenas()    # before DDS and executor threads take their own malloc arenas
        # installed, not inherited: a node started from a script's background job inherits
        # SIGINT ignored, and would then not stop on `ros2 launch`'s or the user's Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = DetectorNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C under `ros2 launch` reaches the node twice (the terminal's process group and
        # launch's own SIGINT): the second must not abort the release of the model's memory.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if executor is not None:       # no callback may still run on a node being destroyed
            executor.shutdown(timeout_sec=10.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
