# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Serving the newest frame on time, by behaviour: the latency model, admission, the slack, intake.

No clock is read here: times are given, so each rule is checked exactly (the node's own tests
check the same rules end to end over DDS).
"""

import math

from demand_layering_ros.ros import intake, params
from demand_layering_ros.service import imaging, scheduling, settings
from demand_layering_ros.service.slack import Slack
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image


def frame(cam, base, deadline_s=0.0, arrival=None):
    cam = scheduling.Camera(cam) if isinstance(cam, str) else cam
    return scheduling.Frame(cam, None, base, base + deadline_s if deadline_s else math.inf,
                            base if arrival is None else arrival)


# -- the latency model: warm-up excluded, quick to follow a change of load ---------------------

def test_warm_up_is_a_guess_replaced_by_the_first_measurement():
    m = scheduling.LatencyModel()
    m.update(1, 1.6, warmup=True)             # the first pass after configure: slow
    assert m.predict(1) == pytest.approx(1.6) and not m.steady
    assert not scheduling.deadline_infeasible(m, 200.0)    # a guess never declares it
    m.update(1, 0.100)
    assert m.steady and m.predict(1) == pytest.approx(0.100)   # replaced, not averaged in
    assert m.upper(1) == pytest.approx(0.100)
    assert m.measured == {1: pytest.approx(0.100)}


def test_one_slow_pass_does_not_move_the_prediction_a_change_of_load_does():
    m = scheduling.LatencyModel(window=7)
    for _ in range(7):
        m.update(1, 0.100)
    m.update(1, 2.0)                          # one spike
    assert m.predict(1) == pytest.approx(0.100)
    assert m.upper(1) >= 0.100
    for _ in range(4):                        # the load changed: 4 of the last 7 are slow
        m.update(1, 0.300)
    assert m.predict(1) == pytest.approx(0.300)


def test_upper_is_the_slow_end_of_the_recent_passes():
    m = scheduling.LatencyModel(window=5, upper_q=90)
    for s in (0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.15, 0.15, 0.10):
        m.update(1, s)     # 2 slow of the last 10: the 90th percentile is slow, the median not
    assert m.predict(1) == pytest.approx(0.10) and m.upper(1) == pytest.approx(0.15)
    for _ in range(8):     # then 1 slow of the last 10: a spike, not the slow end
        m.update(1, 0.10)
    assert m.upper(1) == pytest.approx(0.10)


def test_infeasible_counts_the_age_at_arrival():
    m = scheduling.LatencyModel()
    m.update(1, 0.120)
    assert not scheduling.deadline_infeasible(m, 150.0)
    assert scheduling.deadline_infeasible(m, 150.0, outside_s=0.040)
    assert not scheduling.deadline_infeasible(m, 0.0, outside_s=1.0)    # no deadline


# -- admission ---------------------------------------------------------------------------------

def test_admission_holds_the_deadline_to_the_slow_end_of_the_service_time():
    m = scheduling.LatencyModel(window=5)
    for s in (0.10,) * 8 + (0.14,) * 2:      # median 100 ms, slow end 140 ms
        m.update(1, s)
    now = 10.0
    tight = frame('a', now - 0.03, 0.15)      # 30 ms old, deadline in 120 ms: 100 fits, 140 not
    roomy = frame('b', now - 0.00, 0.15)      # deadline in 150 ms: fits the slow end too
    batch, dropped, waiting = scheduling.plan_batch([tight, roomy], now, m, max_batch=1)
    assert dropped == [tight] and batch == [roomy] and not waiting


def test_best_effort_drops_nothing_for_the_deadline():
    m = scheduling.LatencyModel()
    m.update(1, 0.100)
    now = 10.0
    late = frame('a', now - 0.2, 0.15)
    batch, dropped, _ = scheduling.plan_batch([late], now, m, max_batch=1)
    assert dropped == [late] and not batch
    batch, dropped, _ = scheduling.plan_batch([late], now, m, max_batch=1, best_effort=True)
    assert batch == [late] and not dropped


def test_after_a_spell_of_deadline_drops_one_frame_runs_to_measure_again():
    cam = scheduling.Camera('/cam0')
    q = scheduling.FrameQueue([cam])
    m = scheduling.LatencyModel()
    m.update(1, 0.100)
    # an idle spell is no reason to run a frame that cannot make it: dropped
    assert q.next_batch([frame(cam, 9.0, 0.15)], 10.0, m, 1, probe_after=1.0) == []
    assert q.next_batch([frame(cam, 10.3, 0.15)], 10.5, m, 1, probe_after=1.0) == []
    assert cam.drops['deadline'] == 2
    # every frame dropped for more than probe_after: the next one runs, best-effort
    late = frame(cam, 10.9, 0.15)
    assert q.next_batch([late], 11.1, m, 1, probe_after=1.0) == [late] and late.best_effort
    # served: the spell is over, admission drops again
    assert q.next_batch([frame(cam, 11.0, 0.15)], 11.2, m, 1, probe_after=1.0) == []
    fresh = frame(cam, 11.2, 0.15)
    assert q.next_batch([fresh], 11.2, m, 1, probe_after=1.0) == [fresh]
    assert not fresh.best_effort


# -- the newest frame wins ---------------------------------------------------------------------

def test_the_newest_frame_wins_whatever_order_it_is_handed_over_in():
    cam = scheduling.Camera('/cam0')
    q = scheduling.FrameQueue([cam])
    newer, older = frame(cam, 10.050), frame(cam, 10.000)
    q.offer(cam, newer)
    q.offer(cam, older)                       # arrived late: superseded at once
    assert cam.latest is newer and cam.drops['superseded'] == 1 and cam.received == 2
    newest = frame(cam, 10.100)
    q.offer(cam, newest)                      # supersedes the waiting one
    assert cam.latest is newest and cam.drops['superseded'] == 2
    restart = frame(cam, 5.0)                 # far older: the camera (or its clock) restarted
    q.offer(cam, restart)
    assert cam.latest is restart and cam.drops['superseded'] == 3


def test_a_frame_put_back_loses_to_a_newer_one():
    cam_a, cam_b = scheduling.Camera('/a'), scheduling.Camera('/b')
    q = scheduling.FrameQueue([cam_a, cam_b])
    m = scheduling.LatencyModel()
    m.update(1, 0.1)
    q.offer(cam_a, frame(cam_a, 1.0))
    q.offer(cam_b, frame(cam_b, 1.0))
    pending = q.take(_Never())
    q.offer(cam_b, frame(cam_b, 1.05))        # arrives while the batch is being planned
    batch = q.next_batch(pending, 1.0, m, max_batch=1)
    assert len(batch) == 1 and cam_b.drops['superseded'] == (batch[0].camera is cam_a)


class _Never:

    def is_set(self):
        return False


# -- fair turns: no camera starves, with or without deadlines ----------------------------------

def serve(cameras, pass_s, seconds=20.0, deadline_s=0.0, max_batch=1):
    """
    Run the node's serving loop on a virtual clock; return {camera: frames served}.

    cameras: {name: (model, period s, phase s)}; every pass takes `pass_s` of its model's
    (one model's frames may share a pass: a batch of k costs k passes here, so batching
    never pays). Frames arrive as cameras publish them, the node takes the latest of each,
    picks the model (`of_most_urgent_model`), then the batch (`next_batch`), exactly as
    ros/node.py does.
    """
    cams = {n: scheduling.Camera(n, model) for n, (model, _, _) in cameras.items()}
    q = scheduling.FrameQueue(list(cams.values()))
    models = {m for m, _, _ in cameras.values()}
    lat = {m: scheduling.LatencyModel() for m in models}
    for m in models:
        lat[m].update(1, pass_s[m], stall_seconds=0.0)
    events = sorted((phase + k * period, n) for n, (_, period, phase) in cameras.items()
                    for k in range(int(seconds / period) + 1))
    served = dict.fromkeys(cams, 0)
    served['late'] = 0
    now, i = 0.0, 0
    while now < seconds:
        while i < len(events) and events[i][0] <= now:
            t, n = events[i]
            q.offer(cams[n], frame(cams[n], t, deadline_s))
            i += 1
        if not any(c.latest for c in cams.values()):
            now = events[i][0] if i < len(events) else seconds
            continue
        pending = q.take(_Never())
        mine = q.of_most_urgent_model(pending)
        m = mine[0].camera.model
        batch = q.next_batch(mine, now, lat[m], max_batch)
        now += len(batch) * pass_s[m] if batch else 0.001
        for f in batch:
            served[f.camera.namespace] += 1
            served['late'] += now > f.deadline
    return served


def fairness(served):
    per_camera = [n for c, n in served.items() if c != 'late']
    return min(per_camera) / max(per_camera)


@pytest.mark.parametrize('pass_s', [0.1, 0.3])           # a pass short or long against 0.45 s
@pytest.mark.parametrize('deadline_s', [0.0, 0.451])
@pytest.mark.parametrize('phase', [0.0005, 1 / 30])        # together, apart
@pytest.mark.parametrize('n', [2, 3, 4])
def test_cameras_of_one_model_take_turns(n, phase, deadline_s, pass_s):
    cams = {f'/cam{k}': ('m', 1 / 15, k * phase) for k in range(n)}
    served = serve(cams, {'m': pass_s}, deadline_s=deadline_s)
    answered = sum(served.values()) - served['late']
    assert answered >= 0.95 * 20 / pass_s               # the node never idles
    assert fairness(served) >= 0.8, served
    assert served['late'] == 0, served                  # and deadlines stay honest


@pytest.mark.parametrize('deadline_s', [0.0, 0.451])
def test_models_take_turns(deadline_s):
    cams = {'/front': ('front', 1 / 15, 0.0), '/rear': ('rear', 1 / 15, 0.0005)}
    served = serve(cams, {'front': 0.1, 'rear': 0.1}, deadline_s=deadline_s)
    assert fairness(served) >= 0.8, served


def test_the_turn_decides_and_deadlines_admit():
    cam_a, cam_b = scheduling.Camera('/a'), scheduling.Camera('/b')
    now = 10.0
    tight = frame(cam_a, now - 0.05, 0.2)         # deadline 10.15
    roomy = frame(cam_b, now - 0.05, 1.0)
    # never served: the earliest deadline first
    assert scheduling.serving_order([roomy, tight]) == [tight, roomy]
    cam_a.turn, cam_b.turn = 2, 1                 # a was served last: b's turn
    assert scheduling.serving_order([tight, roomy]) == [roomy, tight]
    m = scheduling.LatencyModel()
    m.update(1, 0.1)
    batch, dropped, waiting = scheduling.plan_batch([tight, roomy], now, m, max_batch=1)
    assert batch == [roomy] and waiting == [tight] and not dropped
    late = frame(cam_b, now - 0.95, 1.0)          # b's turn, but it cannot make its deadline
    batch, dropped, _ = scheduling.plan_batch([tight, late], now, m, max_batch=1)
    assert batch == [tight] and dropped == [late]


# -- the slack ---------------------------------------------------------------------------------

def test_slack_sums_the_parts_outside_the_forward_pass():
    s = Slack()
    assert s.total() == 0.0 and s.measured() == 0
    s.guess['prepost'] = 0.004                # from the warm-up, until measured
    assert s.total() == pytest.approx(0.004)
    for age in [0.010] * 9 + [0.030]:         # the age counts at its 90th percentile
        s.add('age', age)
    for _ in range(10):
        s.add('decode', 0.006)
        s.add('prepost', 0.003)
        s.add('publish', 0.001)
    assert s.part('age') == pytest.approx(0.012)
    assert s.total() == pytest.approx(0.012 + 0.006 + 0.003 + 0.001)
    assert s.measured() == 10
    assert 'decode 6 ms' in s.describe()


# -- intake: the stamp read from the serialized bytes, the frame decoded only when taken -------

@pytest.mark.parametrize('msg_type', [Image, CompressedImage])
def test_header_stamp_is_read_from_the_cdr_bytes(msg_type):
    msg = msg_type()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1795890000, 123456789
    msg.header.frame_id = 'cam0'
    data = serialize_message(msg)
    assert intake.header_stamp(data) == (1795890000, 123456789)
    big = b'\x00\x00\x00\x00' + (1795890000).to_bytes(4, 'big') + (7).to_bytes(4, 'big')
    assert intake.header_stamp(big) == (1795890000, 7)
    assert intake.header_stamp(b'\x00\x02\x00\x00' + bytes(8)) is None     # parameter list
    assert intake.header_stamp(b'\x00\x01') is None


def test_decode_converts_the_frame_and_refuses_garbage():
    fields = imaging.rgb_to_image_fields(_rgb(), 'bgr8')
    msg = Image(height=fields['height'], width=fields['width'], encoding='bgr8',
                step=fields['step'])
    msg.data = fields['data']
    msg.header.frame_id = 'x'
    got, rgb = intake.decode(serialize_message(msg), Image, '/cam0/image_raw')
    assert got.header.frame_id == 'x' and (rgb == _rgb()).all()
    with pytest.raises(imaging.ImageError, match='/cam0/image_raw'):
        intake.decode(b'\x00\x01\x00\x00\x01', Image, '/cam0/image_raw')


@pytest.mark.parametrize('encoding, step_pad, frame_id', [
    ('rgb8', 0, 'cam0'), ('bgr8', 3, ''), ('mono16', 1, 'caméra'), ('yuv422', 0, 'x' * 9)])
def test_frames_are_read_in_place_as_rclpy_deserialises_them(encoding, step_pad, frame_id):
    """The header, the fields and the pixels read from the CDR bytes are rclpy's own."""
    import numpy as np
    bpp = imaging.ENCODINGS[encoding][0]
    msg = Image(height=3, width=4, encoding=encoding, step=4 * bpp + step_pad, is_bigendian=1)
    msg.data = bytes(range(msg.step * 3))
    msg.header.stamp.sec, msg.header.stamp.nanosec = -5, 123
    msg.header.frame_id = frame_id
    data = serialize_message(msg)
    got, pixels = intake.read_in_place(data, Image)
    ref = deserialize_message(data, Image)
    assert got.header == ref.header and bytes(pixels) == bytes(ref.data)
    assert [getattr(got, k) for k in ('height', 'width', 'encoding', 'is_bigendian', 'step')] \
        == [getattr(ref, k) for k in ('height', 'width', 'encoding', 'is_bigendian', 'step')]
    assert np.array_equal(intake.decode(data, Image, 'w')[1], imaging.msg_to_rgb(ref))
    assert all(intake.read_in_place(data[:cut], Image) is None for cut in range(len(data)))
    compressed = CompressedImage(format='png', data=imaging.encode_compressed(_rgb(), 'png'))
    data = serialize_message(compressed)
    got, pixels = intake.read_in_place(data, CompressedImage)
    assert got.format == 'png' and bytes(pixels) == bytes(compressed.data)
    assert (intake.decode(data, CompressedImage, 'c')[1] == _rgb()).all()


def _rgb():
    import numpy as np
    return np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


# -- parameters: the same value written another way is accepted, a wrong one named ------------

@pytest.mark.parametrize('name, given, expected', [
    ('memory_budget_mb', 8, 8.0), ('score_threshold', 1, 1.0), ('max_batch', 2.0, 2),
    ('image_topics', '/one/image_raw', ['/one/image_raw']),
    ('input_size', [320.0, 320], [320, 320]),
])
def test_start_up_values_are_coerced(name, given, expected):
    value, reason = params.startup_value(settings.PARAM_BY_NAME[name], given)
    assert reason is None and value == expected and type(value) is type(expected)


@pytest.mark.parametrize('name, given, words', [
    ('device', 'tpu', "device: 'tpu' must be cpu, cuda or cuda:N"),
    ('score_threshold', 7.0, 'score_threshold: 7.0 is outside [0.0, 1.0]'),
    ('memory_budget_mb', 'lots', "memory_budget_mb: 'lots' is not a number"),
    ('max_batch', 2.5, 'max_batch: 2.5 is not an integer'),
    ('autostart', 'yes', "autostart: 'yes' is not true or false"),
])
def test_start_up_values_refused_with_one_line(name, given, words):
    value, reason = params.startup_value(settings.PARAM_BY_NAME[name], given)
    assert value is None and reason == words and '\n' not in reason
