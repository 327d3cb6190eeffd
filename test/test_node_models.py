# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Several models in one node (`models`), under one memory budget, over real DDS.

Two seeded Darknet packs (written here, like test_shared) serve two cameras, one each. The
oracle for what a camera receives is the same model fully resident, run in this process on the
same image: the published boxes, scores and classes must be exactly its own. The shared budget
is below the smaller model's weights, the group's peak weight memory within it, also after a
live change of the budget while frames flow. Invalid configurations are refused in one line.
"""

import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
import weakref

from demand_layering_ros import load_resident
from demand_layering_ros import pack as P
from demand_layering_ros.ros import messages
from demand_layering_ros.ros import node as dnode
from demand_layering_ros.ros import params as ros_params
from demand_layering_ros.service import scheduling, settings
from demand_layering_ros.sizes import MB
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray, LabelInfo
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = 100 + (os.getpid() * 17 + 41) % 100
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
MODELS = {'front': 'darknet:yolov3-tiny', 'rear': 'darknet:yolov2-tiny'}
TOPICS = {'front': '/front_cam/image_raw', 'rear': '/rear_cam/image_raw'}
OUT = {'front': '/front_cam/detections', 'rear': '/rear_cam/detections'}
NODE = settings.NODE_NAME
THRESHOLD = 0.001    # seeded weights score low: this keeps boxes to compare


def weights(pack):
    return sum(u.length for u in pack.units)


def write_packs(root):
    """Write the two seeded 64x64 packs of MODELS under `root`; return {name: Pack}."""
    return {name: P.write_pack(spec, root / name, seed=i + 1, input_size='64x64',
                               progress=False, verify=False)
            for i, (name, spec) in enumerate(MODELS.items())}


def resident_oracle(packs):
    """Return {name: Detector whose model is the pack's, fully resident}."""
    out = {}
    for name, pack in packs.items():
        det = pack.build_detector(meta=True)
        det.model = load_resident(pack.path)
        out[name] = det
    return out


@pytest.fixture(scope='module')
def packs(tmp_path_factory):
    return write_packs(tmp_path_factory.mktemp('node_models'))


@pytest.fixture(scope='module')
def oracle(packs):
    return resident_oracle(packs)


@pytest.fixture(scope='module')
def budget_mb(packs):
    """Return a shared budget below the smaller model's weights (whole MiB)."""
    return float(math.floor(min(weights(p) for p in packs.values()) / MB * 0.8))


def images(seed, n=3):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(n)]


def group_params(packs, budget):
    out = {'models': list(MODELS), 'memory_budget_mb': budget, 'autostart': False,
           'max_batch': 2}
    for name, pack in packs.items():
        out[f'{name}.pack_path'] = str(pack.path)
        out[f'{name}.image_topics'] = [TOPICS[name]]
        out[f'{name}.score_threshold'] = THRESHOLD
    return out


class Harness:
    """The node and a client node on a MultiThreadedExecutor in a thread (own DDS domain)."""

    def __init__(self, params, name=NODE, topics=None, outs=None):
        self.topics = dict(TOPICS if topics is None else topics)    # {name: image topic}
        self.outs = dict(OUT if outs is None else outs)             # {name: detections topic}
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=DOMAIN)
        self.node = dnode.DetectorNode(name, context=self.ctx, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        self.client = rclpy.create_node('models_test_client', context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.pubs = {t: self.client.create_publisher(Image, t, RELIABLE)
                     for t in self.topics.values()}
        self.got = {n: [] for n in self.outs}
        for n, topic in self.outs.items():
            self.client.create_subscription(Detection2DArray, topic, self.got[n].append,
                                            RELIABLE)
        self.count = 0

    def start(self):
        """Configure and activate the node; wait until every image topic is subscribed."""
        assert self.node.trigger_configure() == dnode.TransitionCallbackReturn.SUCCESS, \
            self.node.last_error
        assert self.node.trigger_activate() == dnode.TransitionCallbackReturn.SUCCESS
        for topic, pub in self.pubs.items():
            wait_for(lambda: pub.get_subscription_count() > 0, 10, f'subscribed to {topic}')
        return self

    def publish(self, model, rgb, topic=None):
        h, w = rgb.shape[:2]
        msg = Image(height=h, width=w, encoding='rgb8', step=w * 3)
        msg.data = rgb.tobytes()
        self.count += 1
        msg.header.frame_id = f'{model}{self.count}'
        msg.header.stamp = self.client.get_clock().now().to_msg()
        self.pubs[topic or self.topics[model]].publish(msg)
        return msg.header

    def answer(self, model, header, timeout=60.0, got=None):
        got = self.got[model] if got is None else got

        def match():
            return next((m for m in list(got) if m.header.frame_id == header.frame_id), None)
        wait_for(lambda: match() is not None, timeout, f'detections of {header.frame_id}')
        return match()

    def set_param(self, name, value):
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        cli = self.client.create_client(SetParameters, f'/{NODE}/set_parameters')
        assert cli.wait_for_service(timeout_sec=10.0)
        fut = cli.call_async(req)
        wait_for(fut.done, 60, 'set_parameters answered')
        self.client.destroy_client(cli)
        return fut.result().results[0]

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.client.destroy_node()
        self.ctx.try_shutdown()
        self.thread.join(10)


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f'timed out after {timeout} s: {what}')


def expected(oracle, model, header, rgb, threshold=THRESHOLD):
    """Return the Detection2DArray the resident model gives for `rgb`."""
    det = oracle[model].detect([rgb], score_threshold=threshold, nms_iou=0.45,
                               max_detections=100)[0]
    return messages.detections(header, rgb, det, oracle[model].class_names)


def assert_same(got, want):
    """Exact equality of every box, class and score (the same floats, the same order)."""
    def flat(msg):
        return [(d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x,
                 d.bbox.size_y, [(r.hypothesis.class_id, r.hypothesis.score) for r in d.results])
                for d in msg.detections]
    assert got.header == want.header
    assert flat(got) == flat(want)


@pytest.fixture(scope='module')
def harness(packs, budget_mb):
    h = Harness(group_params(packs, budget_mb)).start()
    yield h
    h.close()


# ---------------------------------------------------------------------------------------------
# pure parts


def test_per_model_parameters_come_from_the_table():
    rows = {p.name: p for p in settings.model_params('front')}
    assert set(rows) == {f'front.{k}' for k in settings.MODEL_KEYS}
    assert rows['front.image_topics'].default == ['/front/image_raw']
    assert rows['front.image_topics'].type_name == 'string_array'
    assert rows['front.deadline_ms'].applies == 'runtime'
    assert settings.param_for('front.pack_path').name == 'front.pack_path'
    assert settings.param_for('front.device') is None      # node-wide only
    assert settings.validate('front.score_threshold', 2.0) == \
        'front.score_threshold: 2.0 is outside [0.0, 1.0]'
    assert 'not a model name' in settings.validate('models', ['a b'])
    assert 'duplicate' in settings.validate('models', ['a', 'a'])
    values = dict(settings.defaults(), **{'models': ['a'], 'a.deadline_ms': 50.0})
    assert settings.model_values(values, 'a')['deadline_ms'] == 50.0
    assert settings.model_values(values, 'a')['memory_budget_mb'] == 0.0
    with pytest.raises(ValueError, match='a.deadline_ms'):
        settings.check(dict(values, **{'a.deadline_ms': -1.0}))


def test_start_up_names_outside_models_are_refused():
    overrides = {k: Parameter(k, value=v) for k, v in {
        'models': ['front'], 'front.pack_path': '/p', 'side.pack_path': '/q',
        'front.score_threshold': 3.0, 'qos_overrides./x.subscription.depth': 3}.items()}
    errors = ros_params.take_startup_overrides(overrides)
    assert errors == {'side.pack_path': "side.pack_path: 'side' is not in models [front]",
                      'front.score_threshold':
                          'front.score_threshold: 3.0 is outside [0.0, 1.0]'}
    assert set(overrides) == {'models', 'front.pack_path',
                              'qos_overrides./x.subscription.depth'}


def test_two_models_example_file_is_valid():
    """config/two_models.yaml: nested sections are `<name>.<key>`, every value valid."""
    data = yaml.safe_load((ROOT / 'config' / 'two_models.yaml').read_text())
    flat = {}
    for key, value in data[NODE]['ros__parameters'].items():
        if isinstance(value, dict):
            flat.update({f'{key}.{k}': v for k, v in value.items()})
        else:
            flat[key] = value
    names = flat['models']
    assert len(names) == 2 and all(f'{n}.pack_path' in flat for n in names)
    assert all(settings.param_for(k) is not None for k in flat), flat
    settings.check(dict(settings.defaults(), **flat))
    topics = [t for n in names for t in flat[f'{n}.image_topics']]
    assert len(set(topics)) == len(topics)


def test_models_take_turns():
    a, b = object(), object()
    cam_a, cam_b = scheduling.Camera('/a', a), scheduling.Camera('/b', b)
    q = scheduling.FrameQueue([cam_a, cam_b])
    fa = scheduling.Frame(cam_a, None, 10.0, 10.5)
    fb = scheduling.Frame(cam_b, None, 10.2, 10.3)          # later stamp, earlier deadline
    assert q.of_most_urgent_model([fa, fb]) == [fb]         # neither served yet: deadline
    assert cam_a.latest is fa and cam_b.latest is None     # a's frame waits, not lost
    # then turns (the model served less recently first), whatever the stamps and deadlines
    cam_a.latest = None
    cam_a.turn, cam_b.turn = 1, 2
    ga = scheduling.Frame(cam_a, None, 11.0, math.inf)
    gb = scheduling.Frame(cam_b, None, 10.9, 11.2)
    assert scheduling.most_urgent_model([ga, gb]) is a
    cam_a.turn = 3
    assert scheduling.most_urgent_model([ga, gb]) is b


# ---------------------------------------------------------------------------------------------
# the node over real DDS


def test_each_model_answers_its_camera_as_the_model_resident(harness, oracle, budget_mb):
    node = harness.node
    assert set(node.models) == set(MODELS) and node.model is None
    for k, (fa, ra) in enumerate(zip(images(1), images(2))):
        hf = harness.publish('front', fa)
        hr = harness.publish('rear', ra)
        assert_same(harness.answer('front', hf), expected(oracle, 'front', hf, fa))
        assert_same(harness.answer('rear', hr), expected(oracle, 'rear', hr, ra))
    # the exact oracle would also accept two empty answers: the images must give boxes
    assert any(m.detections for m in harness.got['front'])
    assert any(m.detections for m in harness.got['rear'])
    st = node.group.stats()
    assert st['budget_bytes'] == budget_mb * MB
    assert 0 < st['group_peak_weight_bytes'] <= budget_mb * MB
    assert budget_mb * MB < min(weights(m.model.pack) for m in node.models.values())
    assert all(node.models[n].model.stats()['passes'] > 2 for n in MODELS)


def test_label_info_carries_each_models_class_names(harness, oracle):
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = {n: [] for n in MODELS}
    for n in MODELS:
        harness.client.create_subscription(LabelInfo, OUT[n].replace('detections',
                                                                     'label_info'),
                                           got[n].append, latched)
    wait_for(lambda: all(got.values()), 10, 'latched LabelInfo of both cameras')
    for n in MODELS:
        names = [c.class_name for c in got[n][0].class_map]
        assert names == list(oracle[n].class_names)
        assert got[n][0].threshold == pytest.approx(THRESHOLD)


def test_diagnostics_per_model_and_for_the_group(harness, budget_mb):
    diags = []
    harness.client.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    wait_for(lambda: diags, 5, '/diagnostics')
    names = [st.name for st in diags[-1].status]
    assert f'{NODE}: model front' in names and f'{NODE}: model rear' in names
    assert f'{NODE}: camera /front_cam' in names and f'{NODE}: camera /rear_cam' in names
    assert names[-1] == f'{NODE}: group'
    values = {kv.key: kv.value for kv in diags[-1].status[-1].values}
    assert float(values['budget_mb']) == budget_mb
    assert 0 < int(values['group_peak_weight_bytes']) <= budget_mb * MB
    assert values['models'] == 'front, rear'


def test_live_budget_change_while_frames_flow(harness, oracle, packs, budget_mb):
    node = harness.node
    # weak: a failure here must not keep the models alive for the cleanup test after it
    before = {n: weakref.ref(s.model) for n, s in node.models.items()}
    stop = threading.Event()
    frames = images(7, 2)

    def flow():
        k = 0
        while not stop.is_set():
            for n in MODELS:
                harness.publish(n, frames[k % 2])
            k += 1
            time.sleep(0.05)
    t = threading.Thread(target=flow, daemon=True)
    t.start()
    try:
        wait_for(lambda: all(len(harness.got[n]) > 8 for n in MODELS), 60, 'frames flowing')
        new = float(math.floor(budget_mb * 0.75))
        res = harness.set_param('memory_budget_mb', new)
        assert res.successful, res.reason
        st = node.group.stats()
        assert st['budget_bytes'] == new * MB
        n_after = {n: len(harness.got[n]) for n in MODELS}
        wait_for(lambda: all(len(harness.got[n]) > n_after[n] + 3 for n in MODELS), 60,
                 'both cameras answered after the change')
        bad = harness.set_param('memory_budget_mb', -1.0)
        assert not bad.successful and 'memory_budget_mb' in bad.reason
        assert '\n' not in bad.reason
    finally:
        stop.set()
        t.join(5)
    assert all(before[n]() is s.model for n, s in node.models.items())    # swapped in place
    st = node.group.stats()
    assert st['budget_bytes'] == new * MB
    assert 0 < st['group_peak_weight_bytes'] <= new * MB
    assert node.get_parameter('memory_budget_mb').value == new
    for name, rgb in zip(MODELS, images(9, 2)):     # still the resident model's answers
        h = harness.publish(name, rgb)
        assert_same(harness.answer(name, h), expected(oracle, name, h, rgb))
    assert harness.set_param('memory_budget_mb', budget_mb).successful


def test_peaks_start_again_with_each_live_budget(harness, oracle, packs, budget_mb):
    """
    Every model resident under a large budget, then back to the small one: no WARN for good.

    A peak is the peak since the budget in force began, the group's and each model's, so after
    the change back both hold the small budget and every status says ok again.
    """
    node = harness.node
    large = float(math.ceil(sum(weights(p) for p in packs.values()) / MB) + 8)

    def statuses():
        return {st.name.rsplit(': ', 1)[-1]: st for st in node.diagnostics()}

    def peak_mb(st):
        return float({kv.key: kv.value for kv in st.values}[
            'group_peak_weight_mb' if st.name.endswith(': group') else 'peak_weight_mb'])

    res = harness.set_param('memory_budget_mb', large)
    assert res.successful, res.reason
    try:
        for n, rgb in zip(MODELS, images(21, 2)):
            h = harness.publish(n, rgb)
            assert_same(harness.answer(n, h), expected(oracle, n, h, rgb))
        st = statuses()
        for n in MODELS:       # whole models resident: each over the small budget, by far
            assert peak_mb(st[f'model {n}']) >= weights(packs[n]) / MB > budget_mb
    finally:
        res = harness.set_param('memory_budget_mb', budget_mb)
        assert res.successful, res.reason
    for n, rgb in zip(MODELS, images(23, 2)):
        h = harness.publish(n, rgb)
        assert_same(harness.answer(n, h), expected(oracle, n, h, rgb))
    st = statuses()
    for what in [f'model {n}' for n in MODELS] + ['group']:
        assert st[what].level == st[what].OK, (what, st[what].message)
        assert 'over the' not in st[what].message, (what, st[what].message)
        assert 0 < peak_mb(st[what]) <= budget_mb, what
    for n, member in node.models.items():
        assert 0 < member.model.stats()['peak_weight_bytes'] <= budget_mb * MB, n
    assert 0 < node.group.stats()['group_peak_weight_bytes'] <= budget_mb * MB


def test_per_model_threshold_changes_at_run_time(harness, oracle):
    bad = harness.set_param('front.score_threshold', 2.0)
    assert not bad.successful and 'front.score_threshold' in bad.reason
    assert '\n' not in bad.reason
    bad = harness.set_param('front.pack_path', '/elsewhere')
    assert not bad.successful and 'applies at configure' in bad.reason
    assert harness.set_param('rear.score_threshold', 0.002).successful
    try:
        rgb = images(11, 1)[0]
        h = harness.publish('rear', rgb)
        got = harness.answer('rear', h)
        assert_same(got, expected(oracle, 'rear', h, rgb, 0.002))
        assert 0 < len(got.detections) < 100
        hf = harness.publish('front', rgb)       # front kept its own threshold
        assert_same(harness.answer('front', hf), expected(oracle, 'front', hf, rgb))
    finally:
        assert harness.set_param('rear.score_threshold', THRESHOLD).successful


def test_invalid_models_configurations_are_refused_in_one_line(harness, packs, budget_mb):
    cases = [
        ({'rear.image_topics': [TOPICS['front']]},
         f'rear.image_topics: {TOPICS["front"]} is also a topic of model front'),
        ({'side.pack_path': '/nowhere'}, "side.pack_path: 'side' is not in models"),
        ({'rear.score_threshold': 1.5}, 'rear.score_threshold: 1.5 is outside'),
        ({'models': ['front', 'rear', 'front']}, 'models: duplicate names'),
        ({'rear.pack_path': ''}, 'rear.pack_path is empty'),
    ]
    for k, (change, words) in enumerate(cases):
        params = dict(group_params(packs, budget_mb), **change)
        node = dnode.DetectorNode(f'bad_models{k}', context=harness.ctx, parameter_overrides=[
            Parameter(n, value=v) for n, v in params.items()])
        try:
            assert node.trigger_configure() == dnode.TransitionCallbackReturn.FAILURE, change
            assert node.state == 'unconfigured' and not node.group.configured
            assert words in node.last_error, (change, node.last_error)
            assert '\n' not in node.last_error and 'Traceback' not in node.last_error
        finally:
            node.destroy_node()


def run_executable(harness, tmp_path, name, params, until, timeout=120.0):
    """Run the node executable on a nested parameter file until `until(output)`; its output."""
    path, log = tmp_path / f'{name}.yaml', tmp_path / f'{name}.log'
    path.write_text(yaml.safe_dump({name: {'ros__parameters': params}}))
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'demand_layering_ros.ros.node', '--ros-args', '-r',
             f'__node:={name}', '--params-file', str(path)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end and proc.poll() is None and not until(log.read_text()):
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text()


def test_the_executable_takes_nested_model_sections(
        harness, packs, oracle, budget_mb, tmp_path):
    """
    `front: {pack_path: ...}` in a parameter file, as ros2 launch passes it: the node serves.

    And a section whose name is not in `models`: one ERROR line, the node stays up.
    """
    topics = {n: f'/pf_{n}/image_raw' for n in MODELS}
    got = {n: [] for n in MODELS}
    for n in MODELS:
        harness.client.create_subscription(Detection2DArray, f'/pf_{n}/detections',
                                           got[n].append, RELIABLE)
        harness.pubs[topics[n]] = harness.client.create_publisher(Image, topics[n], RELIABLE)
    params = {'models': list(MODELS), 'memory_budget_mb': budget_mb}
    params.update({n: {'pack_path': str(packs[n].path), 'image_topics': [topics[n]],
                       'score_threshold': THRESHOLD} for n in MODELS})
    rgb = {n: images(13 + k, 1)[0] for k, n in enumerate(MODELS)}
    last = [0.0]

    def served(_):
        if time.monotonic() - last[0] > 0.5:      # a frame on each camera until answered
            last[0] = time.monotonic()
            for n in MODELS:
                harness.publish(n, rgb[n], topics[n])
        return all(got.values())
    rc, out = run_executable(harness, tmp_path, 'pf_detector', params, served)
    assert all(got.values()), out[-3000:]
    for n in MODELS:
        msg = got[n][0]
        assert_same(msg, expected(oracle, n, msg.header, rgb[n]))
    assert rc == 0 and '[ERROR]' not in out and 'Traceback' not in out, out[-3000:]

    params['side'] = {'pack_path': str(packs['rear'].path)}
    rc, out = run_executable(harness, tmp_path, 'pf_bad', params,
                             lambda text: '[ERROR]' in text, timeout=60)
    errors = [line for line in out.splitlines() if '[ERROR]' in line]
    assert len(errors) == 1, out
    assert "side.pack_path: 'side' is not in models [front, rear]" in errors[0]
    assert 'unconfigured' in errors[0] and 'Traceback' not in out and rc == 0, out


def test_cleanup_releases_the_group_and_configure_works_again(harness, oracle):
    node = harness.node
    refs = [weakref.ref(s.model) for s in node.models.values()]
    assert node.trigger_deactivate() == dnode.TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == dnode.TransitionCallbackReturn.SUCCESS
    wait_for(lambda: all(r() is None for r in refs), 5, 'the models released at cleanup')
    assert not node.group.configured
    assert node.group.stats() == {'configured': False, 'budget_mb': 0.0}
    assert node.trigger_configure() == dnode.TransitionCallbackReturn.SUCCESS, node.last_error
    assert node.trigger_activate() == dnode.TransitionCallbackReturn.SUCCESS
    for n in MODELS:
        wait_for(lambda: harness.pubs[TOPICS[n]].get_subscription_count() > 0, 10, 'subscribed')
        rgb = images(17, 1)[0]
        h = harness.publish(n, rgb)
        assert_same(harness.answer(n, h), expected(oracle, n, h, rgb))


def test_one_model_with_todays_parameters_is_unchanged(harness, packs, oracle):
    """No `models`: today's node (pack_path, image_topics), one status named 'model'."""
    node = dnode.DetectorNode('single_detector', context=harness.ctx, parameter_overrides=[
        Parameter('pack_path', value=str(packs['front'].path)),
        Parameter('autostart', value=False), Parameter('score_threshold', value=THRESHOLD),
        Parameter('image_topics', value=['/single/image_raw'])])
    try:
        assert node.trigger_configure() == dnode.TransitionCallbackReturn.SUCCESS
        assert node.model is not None and not node.group.configured
        assert [st.name.split(': ')[1] for st in node.diagnostics()] == \
            ['camera /single', 'model']
    finally:
        node.destroy_node()


def test_the_real_yolov3_tiny_beside_a_seeded_model(harness, packs, tmp_path):
    """The real COCO yolov3-tiny finds dog.jpg's dog as it does resident, under a shared budget."""
    from demand_layering_ros.models import assets
    from demand_layering_ros.models.detector import read_image
    cfg, weights_file, _ = assets.yolov3_tiny()
    real = P.write_pack('darknet:' + str(cfg), tmp_path / 'tiny', weights=str(weights_file),
                        progress=False)
    budget = float(math.floor(weights(real) / MB * 0.6))
    topic = '/coco_cam/image_raw'
    node = dnode.DetectorNode('real_models', context=harness.ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in {
            'models': ['coco', 'seeded'], 'memory_budget_mb': budget, 'autostart': False,
            'coco.pack_path': str(real.path), 'coco.image_topics': [topic],
            'seeded.pack_path': str(packs['rear'].path),
            'seeded.image_topics': ['/seeded_cam/image_raw']}.items()])
    harness.executor.add_node(node)
    got = []
    harness.client.create_subscription(Detection2DArray, '/coco_cam/detections', got.append,
                                       RELIABLE)
    harness.pubs[topic] = harness.client.create_publisher(Image, topic, RELIABLE)
    try:
        assert node.trigger_configure() == dnode.TransitionCallbackReturn.SUCCESS, \
            node.last_error
        assert node.trigger_activate() == dnode.TransitionCallbackReturn.SUCCESS
        wait_for(lambda: harness.pubs[topic].get_subscription_count() > 0, 10, 'subscribed')
        dog = read_image(assets.photo('dog'))
        h = harness.publish('coco', dog, topic)
        msg = harness.answer('coco', h, got=got)
        det = real.build_detector(meta=True)
        det.model = load_resident(real.path)
        want = det.detect([dog], score_threshold=0.25, nms_iou=0.45, max_detections=100)[0]
        assert_same(msg, messages.detections(h, dog, want, det.class_names))
        assert '16' in {d.results[0].hypothesis.class_id for d in msg.detections}   # the dog
        st = node.group.stats()
        assert 0 < st['group_peak_weight_bytes'] <= budget * MB < weights(real)
    finally:
        harness.executor.remove_node(node)
        node.destroy_node()
