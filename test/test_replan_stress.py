# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Live budget changes at random moments while two cameras stream, over real DDS: never a stall.

One model served to two cameras, and a group of two models (one camera each), both at 64x64:
passes of a few tens of milliseconds and a hand-over between the models at nearly every frame,
the case where a re-plan races the loader most often. The budget jumps at random moments
(between passes, right after a camera was answered while the next pass's read-ahead is in
flight, back to back) between the smallest plan the packs allow, fully resident, and anything
between. After each change: every camera answers a frame sent after it within STALL_S (the
median within a few frame periods), and the peak weight memory since the change is within the
new budget. Throughout: every answer equals the resident model's on the same image (exact
floats), and at the end every frame a camera sent was either answered or counted as dropped.
`--stress-changes` sets the number of changes per scene (a few dozen here; `make stress` runs
200 each).
"""

import math
import random
import statistics
import threading
import time

from demand_layering_ros import load, load_shared
from demand_layering_ros.sizes import MB
import pytest
from test_node_models import (assert_same, expected, Harness, images, MODELS,
                              resident_oracle, THRESHOLD, wait_for, write_packs)

PERIOD_S = 0.05          # each camera publishes at 20 fps, both in the same instant
# A camera not answered this long after a change has stalled (the pipeline itself reports a
# wait for weights after 300 s). Typical recovery is a few frame periods (asserted on the
# median below); single ones reach 3 s on a 2-core machine at load 5 while the pack is being
# profiled in the background (the first budget change without a profile starts that).
STALL_S = 10.0
TYPICAL_PERIODS = 10     # the median recovery, in frame periods
CAMS = {'cam0': '/cam0/image_raw', 'cam1': '/cam1/image_raw'}
CAM_OUT = {'cam0': '/cam0/detections', 'cam1': '/cam1/detections'}
GROUP_TOPICS = {'front': '/front_cam/image_raw', 'rear': '/rear_cam/image_raw'}
GROUP_OUT = {'front': '/front_cam/detections', 'rear': '/rear_cam/detections'}


def budgets(packs, scene):
    """Return (smallest, fully resident) budgets in MiB for a scene, each checked to load."""
    if scene == 'group':
        with_plan = load_shared({n: p.path for n, p in packs.items()})
        st = with_plan.stats()
        small = st['arena_bytes'] + st['staging_bytes'] + st['resident_bytes']
        whole = st['model_bytes']
        with_plan.close()
    else:
        model = load(packs['front'].path)
        st = model.stats()
        small = st['arena_bytes'] + st['resident_bytes']
        whole = st['model_bytes']
        model.close()
    small_mb = math.ceil(small / MB * 10) / 10
    return small_mb, math.ceil(whole / MB) + 1.0


def scene_params(packs, scene):
    """Return the node's parameters and {camera: (image topic, detections topic, model)}."""
    # One frame per pass: a batch of two computes with other kernels than the one-frame
    # oracle (the last bits of a score move), which is batching's business, not re-planning's.
    common = {'autostart': False, 'max_batch': 1, 'memory_budget_mb': 0.0}
    if scene == 'group':
        params = dict(common, models=list(MODELS))
        for name, pack in packs.items():
            params[f'{name}.pack_path'] = str(pack.path)
            params[f'{name}.image_topics'] = [GROUP_TOPICS[name]]
            params[f'{name}.score_threshold'] = THRESHOLD
        return params, GROUP_TOPICS, GROUP_OUT, dict(zip(MODELS, MODELS))
    params = dict(common, pack_path=str(packs['front'].path),
                  image_topics=list(CAMS.values()), score_threshold=THRESHOLD)
    return params, CAMS, CAM_OUT, dict.fromkeys(CAMS, 'front')


class Stream:
    """Both cameras publishing together at 1 / PERIOD_S; remembers which image each frame was."""

    def __init__(self, harness, cams):
        self.h, self.cams = harness, list(cams)
        self.frames = images(21, 3)
        self.sent = {}            # frame_id -> image index
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        k = 0
        while not self.stop.is_set():
            for cam in self.cams:
                header = self.h.publish(cam, self.frames[k % 3])
                self.sent[header.frame_id] = k % 3
            k += 1
            time.sleep(PERIOD_S)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def peak_and_budget(node, scene):
    """Return (peak weight bytes since the budget in force began, budget bytes)."""
    if scene == 'group':
        st = node.group.stats()
        return st['group_peak_weight_bytes'], st['budget_bytes']
    st = node.service.model_stats
    return st['peak_weight_bytes'], st['budget_bytes']


def change_at_a_random_moment(h, rng, stream, budget):
    """Wait for a random kind of moment, then set the budget; return (kind, set_param result)."""
    kind = rng.choice(['random', 'after_answer', 'back_to_back'])
    if kind == 'random':
        time.sleep(rng.uniform(0, 2 * PERIOD_S))
    elif kind == 'after_answer':      # a pass just ended: the next one's read-ahead runs
        cam = rng.choice(stream.cams)
        n = len(h.got[cam])
        wait_for(lambda: len(h.got[cam]) > n, STALL_S, f'{cam} answered')
    return kind, h.set_param('memory_budget_mb', budget)


def answered_after(h, cam, first):
    """Return the answers of `cam` to frames sent after the harness had sent `first`."""
    return [m for m in list(h.got[cam]) if int(m.header.frame_id[len(cam):]) > first]


def check_answers(h, stream, want, model_of, cam):
    """Every answer of `cam` equals the resident model's on the image sent."""
    for m in list(h.got[cam]):
        img = stream.sent[m.header.frame_id]
        assert_same(m, want(model_of[cam], img, m.header))


@pytest.fixture(scope='module')
def packs(tmp_path_factory):
    return write_packs(tmp_path_factory.mktemp('replan_stress'))


@pytest.fixture(scope='module')
def truth(packs):
    """Return want(model, image index, header): the resident model's Detection2DArray."""
    frames = images(21, 3)
    oracle = resident_oracle(packs)
    cache = {}

    def want(model, img, header):
        key = (model, img)
        if key not in cache:
            cache[key] = expected(oracle, model, header, frames[img])
        msg = cache[key]
        msg.header = header
        return msg
    return want


@pytest.mark.parametrize('scene', ['single', 'group'])
def test_budget_changes_at_random_moments_never_stall(request, packs, truth, scene):
    changes = request.config.getoption('--stress-changes')
    small, whole = budgets(packs, scene)
    params, topics, outs, model_of = scene_params(packs, scene)
    h = Harness(params, topics=topics, outs=outs)
    rng = random.Random(f'{scene}-{changes}')
    recover, kinds = [], {}
    try:
        node = h.start().node
        with Stream(h, topics) as stream:
            wait_for(lambda: all(len(h.got[c]) > 3 for c in topics), 60, 'both cameras served')
            for i in range(changes):
                budget = rng.choice([small, whole, round(rng.uniform(small, whole), 1)])
                kind, res = change_at_a_random_moment(h, rng, stream, budget)
                assert res.successful, f'change {i} to {budget} MiB: {res.reason}'
                kinds[kind] = kinds.get(kind, 0) + 1
                t0, sent = time.monotonic(), h.count
                wait_for(lambda: all(answered_after(h, c, sent) for c in topics),
                         STALL_S, f'change {i} ({kind}) to {budget} MiB: every camera '
                         'answered again (answers since: '
                         f'{ {c: len(answered_after(h, c, sent)) for c in topics} })')
                recover.append(time.monotonic() - t0)
                peak, in_force = peak_and_budget(node, scene)
                assert in_force == int(budget * MB), (i, budget, in_force)
                assert 0 < peak <= in_force, f'change {i}: peak {peak} over {budget} MiB'
        quiet_then_accounted(h, node, topics)
        for cam in topics:
            check_answers(h, stream, truth, model_of, cam)
    finally:
        h.close()
    p50, worst = statistics.median(recover), max(recover)
    assert p50 <= TYPICAL_PERIODS * PERIOD_S, f'median recovery {p50 * 1e3:.0f} ms'
    print(f'\n[stress] {scene}: {changes} changes between {small} and {whole} MiB '
          f'({kinds}); every camera answered a frame sent after the change within '
          f'p50 {p50 * 1e3:.0f} ms ({p50 / PERIOD_S:.1f} frame periods), max '
          f'{worst * 1e3:.0f} ms ({worst / PERIOD_S:.1f})')


def quiet_then_accounted(h, node, topics):
    """
    After the cameras stop: every frame received is answered or counted as dropped.

    The last frames may still wait or run (a pass takes longer while the pack is profiled in
    the background): the counts are awaited, not read after a fixed quiet spell.
    """
    def counts(cam, topic):
        st = node.camera_stats()[topic.rsplit('/', 1)[0]]
        return st['received'], st['published'] + sum(st['drops'].values()), st['published']

    def accounted():
        return all(received == done and published == len(h.got[cam])
                   for cam, topic in topics.items()
                   for received, done, published in [counts(cam, topic)])
    wait_for(accounted, 30, 'every frame answered or counted as dropped (received, answered '
             f'or dropped, published): { {c: counts(c, t) for c, t in topics.items()} }')
