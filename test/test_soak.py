# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Soak: many frames through the real node over DDS, with storage faults, and nothing grows.

A perception node runs for hours; a slow leak of memory, threads or file descriptors kills it
long after any short test passed. This test drives frames one after another (closed loop: the
next frame goes out when the previous one's detections came back) through the lifecycle node
running the demand-layered yolov3-tiny, damages the pack on disk every `FAULT_EVERY` frames (a
flipped byte, or the file truncated; that frame must fail and diagnostics must say so, with the
unit named for a checksum error; the next frames must work again), checks that
every answer is identical to the first, and compares the process's RSS, OS thread count and
open file descriptors after warm-up with the end: each may grow by less than 5%.

The default suite runs a short soak (`--soak-frames`, default 300); `make soak` runs 5,000.
"""

import collections
import importlib
import json
import os
import threading
import time

from demand_layering_ros.models import assets
from demand_layering_ros.models.detector import read_image
import pytest
from tools import cgroups

rclpy = pytest.importorskip('rclpy')
dnode = importlib.import_module('demand_layering_ros.ros.node')     # needs rclpy, checked above

DEFAULT_FRAMES = 300
FAULT_EVERY = 100
SIZE = 128
GROWTH = 0.05
DOMAIN = 100 + (os.getpid() * 7 + 11) % 100       # own DDS domain


@pytest.fixture(scope='module')
def soak_pack(tmp_path_factory):
    """Write a pack of the real COCO yolov3-tiny at a small input size."""
    from demand_layering_ros import pack
    _, weights, _ = assets.yolov3_tiny()
    out = tmp_path_factory.mktemp('soak') / 'yolov3-tiny'
    return pack.write_pack('darknet:yolov3-tiny', out, weights=weights,
                           input_size=(SIZE, SIZE), progress=False)


def _wait(predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _snapshot():
    return {'rss': cgroups.process_rss(), 'threads': cgroups.thread_count(),
            'fds': cgroups.open_fd_count()}


def _thread_names():
    names = collections.Counter()
    for tid in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{tid}/comm') as f:
                names[f.read().strip()] += 1
        except FileNotFoundError:
            pass
    return names


def _signature(msg):
    return [(round(d.bbox.center.position.x, 3), round(d.bbox.center.position.y, 3),
             round(d.bbox.size_x, 3), round(d.bbox.size_y, 3), d.results[0].hypothesis.class_id,
             round(d.results[0].hypothesis.score, 5)) for d in msg.detections]


def test_soak_node_frames_with_storage_faults(soak_pack, request):
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    frames = int(request.config.getoption('--soak-frames', default=DEFAULT_FRAMES))
    assert frames >= 50, '--soak-frames must be at least 50 (warm-up needs some)'
    warmup = max(30, frames // 10)
    rgb = read_image(assets.photo('dog'))[::4, ::4].copy()          # 192 x 144
    h, w = rgb.shape[:2]

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    node = dnode.DetectorNode(context=ctx, parameter_overrides=[
        Parameter('pack_path', value=str(soak_pack.path)),
        Parameter('image_topics', value=['/soak/image_raw']),
        Parameter('qos_reliability', value='reliable'),
        Parameter('qos_depth', value=1)])
    client = rclpy.create_node('soak_client', context=ctx)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got = {}
    cond = threading.Condition()

    def on_detections(msg):
        with cond:
            got[msg.header.frame_id] = msg
            cond.notify_all()
    client.create_subscription(Detection2DArray, '/soak/detections', on_detections, reliable)
    pub = client.create_publisher(Image, '/soak/image_raw', reliable)
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    executor.add_node(client)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    unit = max(soak_pack.units, key=lambda u: u.length)   # streamed, in mid-pass
    pos = unit.offset + unit.nbytes // 2
    counts = {'frames': 0, 'faults': 0, 'failed_frames': 0, 'republished': 0}
    samples, reference = [], None
    try:
        assert _wait(lambda: node.state == 'active', 120), f'node is {node.state}'
        assert _wait(lambda: pub.get_subscription_count() > 0, 20)

        def send(i):
            msg = Image(height=h, width=w, encoding='rgb8', step=w * 3)
            msg.data = rgb.tobytes()
            msg.header.frame_id = f'f{i}'
            msg.header.stamp = client.get_clock().now().to_msg()
            pub.publish(msg)
            return msg.header.frame_id

        for i in range(frames):
            # one fault of each kind during warm-up (the readers start worker threads lazily
            # on the first failed pass), then one every FAULT_EVERY frames
            fault = i in (10, 20) or (i > warmup and i % FAULT_EVERY == FAULT_EVERY // 2)
            if fault:
                kind = ('flip', 'truncate')[counts['faults'] % 2]
                errors = node.camera_stats()['/soak']['drops']['error']
                original = soak_pack.weights_path.read_bytes()
                if kind == 'flip':
                    with open(soak_pack.weights_path, 'r+b') as f:
                        f.seek(pos)
                        f.write(bytes([original[pos] ^ 0x20]))
                else:
                    os.truncate(soak_pack.weights_path, unit.offset + 8192)
                counts['faults'] += 1
                # the loader may have read the unit for the next frame before the damage: that
                # frame still succeeds (with exact results), the one after must fail
                for attempt in range(3):
                    fid = send(f'{i}-{kind}-{attempt}')
                    failed = _wait(lambda: fid in got or node.camera_stats()['/soak'][
                        'drops']['error'] > errors, 30) and fid not in got
                    if failed:
                        break
                    assert reference is None or _signature(got[fid]) == reference
                assert failed, (f'frame {i}: no frame failed on the damaged pack ({kind}): '
                                f'{node.camera_stats()}')
                counts['failed_frames'] += 1
                model = [st for st in node.diagnostics() if st.name.endswith(': model')][0]
                assert model.level == model.ERROR, model
                if kind == 'flip':      # the checksum error names unit and offset
                    assert unit.name in node.camera_stats()['/soak']['last_error']
                    assert unit.name in model.message
                with open(soak_pack.weights_path, 'r+b') as f:     # same inode, repaired
                    f.write(original)
            for attempt in range(3):        # a lost frame is sent again (counted)
                fid = send(i)
                with cond:
                    if cond.wait_for(lambda: fid in got, timeout=10 if attempt < 2 else 60):
                        break
                counts['republished'] += 1
            else:
                pytest.fail(f'frame {i} never came back')
            with cond:
                msg = got.pop(fid)
                got.clear()
            sig = _signature(msg)
            reference = reference if reference is not None else sig
            assert sig == reference, f'frame {i}: detections changed: {sig} vs {reference}'
            counts['frames'] += 1
            if i + 1 >= warmup:
                samples.append(_snapshot())
                if len(samples) == 1:
                    names0 = _thread_names()
        names1 = _thread_names()
    finally:
        executor.shutdown()
        node.destroy_node()
        client.destroy_node()
        ctx.try_shutdown()
        spin.join(10)

    assert reference, 'the dog photo gave no detections'
    start, end = samples[0], samples[-1]
    new_threads = dict(names1 - names0)
    gone_threads = dict(names0 - names1)
    peak = {k: max(s[k] for s in samples) for k in start}
    report = {'frames': counts['frames'], 'faults_injected': counts['faults'],
              'failed_frames': counts['failed_frames'], 'republished': counts['republished'],
              'warmup_frames': warmup, 'after_warmup': start, 'end': end, 'peak': peak,
              'threads_started_after_warmup': new_threads,
              'threads_ended_after_warmup': gone_threads,
              'rss_mib_every_tenth': [round(x['rss'] / (1 << 20), 1)
                                      for x in samples[::max(1, len(samples) // 10)]]}
    print('\nsoak:', json.dumps(report))
    if os.environ.get('DLR_SOAK_REPORT'):
        with open(os.environ['DLR_SOAK_REPORT'], 'w') as f:
            json.dump(report, f, indent=1)
    assert counts['republished'] <= max(2, frames // 100), report
    for key in ('rss', 'threads', 'fds'):
        assert end[key] <= start[key] * (1 + GROWTH), \
            f'{key} grew from {start[key]} to {end[key]} over {frames} frames: {report}'
