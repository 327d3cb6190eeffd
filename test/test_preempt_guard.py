# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The preemption guard on its own (`scheduling.preempting_frame`), no ROS, no model.

A frame of another model runs inside a pass only when it must (waiting would miss its
deadline) and the running model keeps every deadline: the frames of the pass, its frames
waiting, and its cameras' next frames, with each preemption's cost to the pass counted.
"""

from collections import deque
import math
import threading
import time

from demand_layering_ros.service import scheduling
from demand_layering_ros.service.scheduling import Camera, Frame, HostPass, PassProfile
from demand_layering_ros.service.serving import FrameServer, Running


class _Model:
    """What the guard reads of a model: its measured latency and feasibility."""

    def __init__(self, seconds):
        self.infeasible = False
        self.service = type('Service', (), {})()
        self.service.latency = scheduling.LatencyModel()
        self.service.latency.update(1, seconds)


def _frame(model, base, deadline_s, cam='/c'):
    return Frame(Camera(cam, model), None, base, base + deadline_s)


SMALL, LARGE = _Model(0.05), _Model(0.45)
URGENT = _frame(SMALL, 10.08, 0.2)      # due 10.28


def cost(m):
    """Inside another pass a model is slower: twice its own slow end."""
    return 2 * m.service.latency.upper(1)


def _host(left, left_slow=None, deadline_s=math.inf, cameras=(), service=0.45, **kw):
    running = [_frame(LARGE, 10.0, deadline_s, '/r')]
    return HostPass(running, left, left if left_slow is None else left_slow,
                    service=service, cameras=list(cameras), **kw)


def pick(host, waiting=(URGENT,), now=10.1):
    return scheduling.preempting_frame(list(waiting), host, now, cost)


def test_preempts_only_when_it_saves_a_deadline():
    assert pick(_host(0.4)) is URGENT
    assert pick(_host(0.05)) is None                     # it can wait for the rest
    assert pick(_host(0.4), [_frame(SMALL, 10.0, 0.15)]) is None   # too late even now
    assert pick(_host(0.4), [_frame(SMALL, 10.08, math.inf)]) is None
    SMALL.infeasible = True
    try:
        assert pick(_host(0.4)) is None                  # best-effort frames never preempt
    finally:
        SMALL.infeasible = False


def test_the_running_frames_keep_their_deadline_at_the_slow_end():
    assert pick(_host(0.4, deadline_s=0.55)) is None     # 10.1 + 0.1 + 0.4 > 10.55
    assert pick(_host(0.3, deadline_s=0.55)) is URGENT
    assert pick(_host(0.3, 0.4, deadline_s=0.55)) is None


def test_every_preemption_of_a_pass_pays_its_penalty():
    # End of the pass: 10.1 + 0.1 guest + 0.3 left + penalty x (guests + 1); deadline 10.6.
    assert pick(_host(0.3, deadline_s=0.6, penalty=0.06)) is URGENT            # 10.56
    assert pick(_host(0.3, deadline_s=0.6, penalty=0.06, guests=1)) is None   # 10.62


def test_a_frame_of_the_running_model_waiting_keeps_its_deadline():
    # The pass ends at 10.5 (10.1 + 0.1 + 0.3), its frame with 0.5 s to spare: the one
    # waiting since 9.9 (deadline 10.9) would end at 10.95. The old guard took it.
    cams = [(_frame(LARGE, 9.9, 1.0, '/r'), 9.9 + 0.7, 0.7, 1.0)]
    assert pick(_host(0.3, deadline_s=1.0, cameras=cams)) is None
    cams = [(_frame(LARGE, 9.96, 1.0, '/r'), 9.96 + 0.7, 0.7, 1.0)]
    assert pick(_host(0.3, deadline_s=1.0, cameras=cams)) is URGENT   # 10.95 <= 10.96
    # ... and is taken before its camera's next frame supersedes it (due 10.46 < 10.5).
    cams = [(_frame(LARGE, 9.96, 2.0, '/r'), 9.96 + 0.5, 0.5, 2.0)]
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams, service=0.2)) is None
    cams = [(_frame(LARGE, 9.96, 2.0, '/r'), 9.96 + 0.6, 0.6, 2.0)]
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams, service=0.2)) is URGENT


def test_the_running_models_next_frame_keeps_its_deadline():
    # The pass ends at 11.05 (deadline 11.2): the frame due at 10.5 would run from 11.05, after
    # the one due at 11.0 superseded it. The old guard took it.
    cams = [(None, 10.5, 0.5, 1.2)]
    assert pick(_host(0.85, deadline_s=1.2, cameras=cams, service=0.2)) is None
    assert pick(_host(0.75, deadline_s=1.2, cameras=cams, service=0.2)) is URGENT  # 10.95
    # Due after the pass (10.8): a pass of another model may start first (0.05 slow end),
    # then it takes 0.2: 11.05 > 10.8 + 0.24; with 0.26 it is in time.
    cams = [(None, 10.8, 0.5, 0.24)]
    assert pick(_host(0.3, deadline_s=1.0, cameras=cams, service=0.2)) is None
    cams = [(None, 10.8, 0.5, 0.26)]
    assert pick(_host(0.3, deadline_s=1.0, cameras=cams, service=0.2)) is URGENT


def test_a_model_lends_no_more_in_a_period_than_its_passes_leave_free():
    # 0.45 s passes every 0.5 s with 0.05 s of another model between leave nothing free: each
    # delay would be passed on from frame to frame. The old guard lent it all the same.
    cams = [(None, 10.5, 0.5, 2.0)]
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams)) is None
    cams = [(None, 10.7, 0.7, 2.0)]                      # 0.2 s free a period
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams)) is URGENT        # lends 0.1
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams, lent=0.08)) is URGENT
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams, lent=0.12)) is None
    assert pick(_host(0.3, deadline_s=2.0, cameras=cams, lent=0.08, penalty=0.05)) is None


def test_an_unmeasured_camera_refuses_and_a_quiet_one_does_not_count():
    assert pick(_host(0.3, cameras=[(None, math.inf, math.inf, 1.0)])) is None
    assert pick(_host(0.3, cameras=[(None, 9.0, 0.5, 1.0)])) is URGENT    # overdue 1.1 s
    assert pick(_host(0.3, cameras=[(None, 9.0, math.inf, math.inf)])) is URGENT   # no deadline


def test_pass_profile_measures_where_the_time_goes():
    p = PassProfile()
    assert p.left(25, 100) == 0.75                        # nothing timed: the share of units
    for _ in range(3):
        p.add_pass([(25, 0.1), (50, 0.6)], 1.0)
    assert math.isclose(p.left(25, 100), 0.9) and math.isclose(p.left(50, 100), 0.4)
    assert p.penalty == 0.0
    for x in (-0.05, 0.01, 0.02, 0.03, 0.2):
        p.add_penalty(x)
    assert p.penalty == 0.2                               # the slow end
    q = PassProfile()
    q.add_penalty(-0.1)
    assert q.penalty == 0.0


def test_a_camera_period_is_measured_from_its_frames():
    queue = scheduling.FrameQueue()
    cam = Camera('/r', LARGE)
    queue.cameras.append(cam)
    assert cam.period == math.inf
    for base in (1.0, 1.5, 2.0, 2.6, 3.0):
        queue.offer(cam, _frame(LARGE, base, 1.0, '/r'))
    assert math.isclose(cam.period, 0.5)
    (frame, due, period), = queue.cameras_of(LARGE)
    assert frame.base == 3.0 and math.isclose(due, 3.5) and math.isclose(period, 0.5)
    assert queue.cameras_of(SMALL) == []


class _Served:
    """A served model as FrameServer reads it: settings, a service that answers at once."""

    def __init__(self, name, seconds, deadline_ms):
        self.name, self.label, self.infeasible, self.served = name, f'model {name}', False, 0
        self.settings = {'deadline_ms': deadline_ms, 'score_threshold': 0.5, 'nms_iou': 0.5,
                         'max_detections': 10, 'preempt': True}
        s = self.service = _Model(seconds).service
        s.lock, s.class_names = threading.Lock(), []
        s.slack = type('Slack', (), {'add': lambda *a: None})()
        s.last_forward_seconds = lambda: None
        s.infer = lambda images, *a: [None] * len(images)
        s.record_latency = lambda n, seconds: s.latency.update(n, seconds)


def _server(clock):
    queue = scheduling.FrameQueue()
    errors = []
    server = FrameServer(queue, lambda b: [(f, None, None) for f in b], lambda *a: True,
                         lambda: clock[0], log=None, record_error=errors.append)
    server.errors = errors
    return server


def test_every_guest_of_a_pass_is_charged_and_its_cost_measured():
    small, large = _Served('front', 0.05, 200.0), _Served('rear', 0.45, 0.0)
    clock = [10.1]
    server = _server(clock)
    cams = {m: Camera(f'/{m.name}', m) for m in (small, large)}
    server.queue.cameras.extend(cams.values())
    running = Frame(cams[large], None, 10.0, math.inf)
    server.running = run = Running([running], large, time.perf_counter(), 0.0, 0.45)
    for base in (10.08, 10.18):                 # each would miss 10.28 / 10.38 waiting
        server.queue.offer(cams[small], Frame(cams[small], None, base, base + 0.2))
        clock[0] = base + 0.02
        server.at_boundary('rear', 10, 100)
    assert server.errors == []
    assert run.guests == 2 and server.preemptions == 2 and small.served == 2
    assert cams[small].published == 2
    assert small.service.latency.samples[1] == deque([0.05])   # guests teach guest_cost only
    host = server.host_pass(run, 20, 100)
    assert host.guests == 2 and host.lent > 0         # both guests, in its last period
    server.learn(run, 0.55)                     # 0.1 beyond its slow end, for two guests
    assert math.isclose(server.profiles[large].penalty, 0.05)
    quiet = Running([running], large, 0.0, 0.0, 0.45, marks=[(10, 0.2)])
    server.learn(quiet, 0.5)
    assert math.isclose(server.host_pass(quiet, 10, 100).left, 0.45 * 0.6)
