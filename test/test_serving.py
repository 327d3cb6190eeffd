# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The serving loop without ROS: a real seeded pack, a real service, the real queue.

Frames carry numpy RGB images and decode passes them through, so what is tested is the loop's
policy, seen through what it publishes and counts: cameras answered in turn under overload,
the answers the resident model's, a late frame dropped, a failing pass dropped and survived.
"""

import itertools
import logging
import threading

from demand_layering_ros import load_resident
from demand_layering_ros import pack as P
from demand_layering_ros.service import settings
from demand_layering_ros.service.scheduling import Camera, Frame, FrameQueue
from demand_layering_ros.service.service import DetectorService
from demand_layering_ros.service.serving import FrameServer
import numpy as np
import pytest

THRESHOLD = 0.001    # seeded weights score low: this keeps boxes to compare


@pytest.fixture(scope='module')
def pack(tmp_path_factory):
    return P.write_pack('darknet:yolov3-tiny', tmp_path_factory.mktemp('serving') / 'p',
                        seed=1, input_size='64x64', progress=False, verify=False)


@pytest.fixture(scope='module')
def service(pack):
    svc = DetectorService(log=logging.getLogger('test_serving'))
    svc.configure({'pack_path': str(pack.path)})
    yield svc
    svc.close()


@pytest.fixture(scope='module')
def oracle(pack):
    det = pack.build_detector(meta=True)
    det.model = load_resident(pack.path)
    return det


def flat(det):
    return (det.boxes.tolist(), det.scores.tolist(), det.class_ids.tolist())


class Log:
    """A logger's lines (rclpy's keyword arguments accepted)."""

    def __init__(self):
        self.lines = []

    def _line(self, level):
        return lambda text, **_: self.lines.append((level, text))

    def __getattr__(self, level):
        return self._line(level)


class Model:
    """What the server reads and keeps of a served model (the node's is ros.served's)."""

    name, label = '', 'model'

    def __init__(self, s, service):
        self.settings, self.service = s, service
        self.infeasible = self.infeasible_said = False
        self.served = 0


class Harness:
    """A FrameServer over two cameras of one model, with a clock the test moves."""

    def __init__(self, service, **values):
        s = {k: v for k, v in settings.defaults().items() if '.' not in k}
        s.update(score_threshold=THRESHOLD, max_batch=1, **values)
        self.model = Model(s, service)
        self.cams = {n: Camera(n, self.model) for n in ('/a', '/b')}
        self.queue = FrameQueue(self.cams.values())
        self.clock = 1000.0
        self.published, self.errors, self.log = [], [], Log()
        self.decode = lambda batch: [(f, ('header', f.camera.namespace, f.base), f.msg)
                                     for f in batch]
        self.server = FrameServer(self.queue, lambda batch: self.decode(batch), self.publish,
                                  lambda: self.clock, self.log, self.errors.append)
        self.rng = np.random.default_rng(7)
        self.stamps = itertools.count(1)

    def publish(self, frame, header, rgb, det, s, names):
        self.published.append((frame.camera.namespace, header, rgb, det))

    def offer(self, name, rgb=None, age=0.0):
        """Offer a new frame of camera `name`, `age` seconds old; return its image."""
        if rgb is None:
            rgb = self.rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        self.clock += 0.001 * next(self.stamps)
        base = self.clock - age
        deadline_ms = self.model.settings['deadline_ms']
        deadline = base + deadline_ms / 1e3 if deadline_ms > 0 else float('inf')
        self.queue.offer(self.cams[name], Frame(self.cams[name], rgb, base, deadline,
                                                self.clock))
        return rgb

    def serve(self):
        return self.server.serve(self.queue.take(threading.Event()))


def test_cameras_answered_in_turn_under_overload(service, oracle):
    h = Harness(service)
    sent = {}
    for _ in range(6):
        for name in ('/a', '/b'):
            for _ in range(3):      # three frames per camera between two passes
                sent[h.offer(name).tobytes()] = name
        assert len(h.serve()) == 1
    assert [n for n, *_ in h.published] == ['/a', '/b'] * 3
    for name, header, rgb, det in h.published:
        assert sent[rgb.tobytes()] == name and header[1] == name
        want = oracle.detect([rgb], score_threshold=THRESHOLD, nms_iou=0.45,
                             max_detections=100)[0]
        assert flat(det) == flat(want)
    assert any(len(det) for *_, det in h.published)
    stats = h.queue.snapshot()
    for name in ('/a', '/b'):
        assert stats[name]['received'] == 18 and stats[name]['published'] == 3
        waiting = h.cams[name].latest is not None     # every frame accounted for
        assert stats[name]['drops']['superseded'] + 3 + waiting == 18
        assert len(stats[name]['latencies']) == 3
    assert h.model.served == 6
    assert len(service.slack.samples['publish']) >= 6


def test_frame_past_its_deadline_is_dropped(service):
    h = Harness(service, deadline_ms=1000.0)
    h.offer('/a', age=5.0)
    assert h.serve() == []
    assert h.published == []
    assert h.queue.snapshot()['/a']['drops']['deadline'] == 1
    h.offer('/a')
    assert len(h.serve()) == 1
    assert [n for n, *_ in h.published] == ['/a']
    assert h.queue.snapshot()['/a']['published'] == 1


def test_failing_pass_drops_as_error_and_next_is_served(service, oracle):
    h = Harness(service)
    h.offer('/a', rgb=np.zeros((5,), np.uint8))     # not an image: the pass raises
    assert len(h.serve()) == 1
    stats = h.queue.snapshot()['/a']
    assert stats['drops']['error'] == 1 and stats['published'] == 0
    assert stats['last_error'] and len(h.errors) == 1
    rgb = h.offer('/a')
    h.serve()
    assert [n for n, *_ in h.published] == ['/a']
    want = oracle.detect([rgb], score_threshold=THRESHOLD, nms_iou=0.45, max_detections=100)
    assert flat(h.published[0][3]) == flat(want[0])


def test_thread_survives_a_failing_decode(service):
    h = Harness(service)
    calls = []

    def decode(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError('cannot decode')
        return [(f, None, f.msg) for f in batch]
    h.decode = decode
    stop = threading.Event()
    worker = threading.Thread(target=h.server.run, args=(stop,), daemon=True)
    worker.start()
    try:
        h.offer('/a')
        for _ in range(500):
            if h.errors:
                break
            stop.wait(0.01)
        h.offer('/b')
        for _ in range(500):
            if h.published:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        h.queue.wake()
        worker.join(10)
    assert not worker.is_alive()
    assert h.errors == ['inference thread: RuntimeError: cannot decode']
    assert [n for n, *_ in h.published] == ['/b']


def test_infeasible_deadline_said_once_with_the_numbers(service):
    h = Harness(service, deadline_ms=0.001)
    for _ in range(3):
        h.offer('/a')
        h.serve()
    warnings = [t for level, t in h.log.lines if level == 'warning']
    assert len(warnings) == 1 and 'deadline 0 ms cannot be met' in warnings[0], warnings
    assert h.model.infeasible and h.model.infeasible_said
    assert h.queue.snapshot()['/a']['published'] >= 1
