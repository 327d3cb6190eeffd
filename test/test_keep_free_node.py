# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
keep_free_mb on the node, over real DDS: set at run time, reported, and never in the way.

Asking the node to leave more memory free than the machine has pins its budget at the smallest
plan: it must say so (WARN on /diagnostics, with the numbers), keep answering exactly as the
resident model, and go back to memory_budget_mb when keep_free_mb is set to 0 again. The same
for a group of two models and their shared budget. The pressure itself (memory taken and given
back in a real cgroup) is test_keep_free.py and `make bench-pressure`.
"""

from diagnostic_msgs.msg import DiagnosticArray
import pytest
from test_node_models import (assert_same, expected, group_params, Harness, images, MODELS,
                              NODE, resident_oracle, THRESHOLD, wait_for, write_packs)

EVERYTHING = 1048576.0          # MiB: more than any machine here has free


@pytest.fixture(scope='module')
def packs(tmp_path_factory):
    return write_packs(tmp_path_factory.mktemp('keep_free_node'))


@pytest.fixture(scope='module')
def oracle(packs):
    return resident_oracle(packs)


def _status(harness, suffix):
    diags = []
    sub = harness.client.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    try:
        wait_for(lambda: any(st.name.endswith(suffix) and any(
            kv.key == 'keep_free_mb' for kv in st.values) for d in diags for st in d.status),
            10, f'/diagnostics {suffix} with keep_free_mb')
        return next(st for d in reversed(diags) for st in d.status if st.name.endswith(suffix)
                    and any(kv.key == 'keep_free_mb' for kv in st.values))
    finally:
        harness.client.destroy_subscription(sub)


def _answers_as_resident(harness, oracle, names, seed):
    for k, rgb in enumerate(images(seed, 2)):
        for name in names:
            h = harness.publish(name, rgb)
            assert_same(harness.answer(name, h), expected(oracle, name, h, rgb))


def test_one_model_pinned_at_the_smallest_plan_and_back(packs, oracle):
    front = packs['front']
    budget = 40.0           # more than the model: every unit resident
    h = Harness({'pack_path': str(front.path), 'image_topics': ['/kf/image_raw'],
                 'score_threshold': THRESHOLD, 'autostart': False, 'max_batch': 1,
                 'memory_budget_mb': budget},
                topics={'front': '/kf/image_raw'}, outs={'front': '/kf/detections'}).start()
    try:
        svc = h.node.service
        _answers_as_resident(h, oracle, ['front'], 1)
        held = svc.model.held_bytes()
        res = h.set_param('keep_free_mb', EVERYTHING)
        assert res.successful, res.reason
        wait_for(lambda: svc.model.stats()['budget_bytes'] == svc.model.stats()['floor_bytes'],
                 30, 'the re-plan to the smallest plan')
        st = svc.model.stats()
        assert st['pinned_at_floor'] and st['budget_bytes'] == st['floor_bytes'] < held
        assert st['memory_source'] and st['keep_free_bytes'] == EVERYTHING * (1 << 20)
        _answers_as_resident(h, oracle, ['front'], 2)       # still serving, still exact
        status = _status(h, ': model')
        assert status.level == b'\x01' and 'serving at the smallest plan' in status.message
        values = {kv.key: kv.value for kv in status.values}
        assert int(values['auto_shrinks']) >= 1 and float(values['free_mb']) > 0
        # 0 again: back to the configured budget
        res = h.set_param('keep_free_mb', 0.0)
        assert res.successful, res.reason
        assert svc.model.stats()['budget_bytes'] == budget * (1 << 20)
        _answers_as_resident(h, oracle, ['front'], 3)
    finally:
        h.close()


def test_a_group_follows_with_its_shared_budget(packs, oracle):
    params = dict(group_params(packs, 200.0), keep_free_mb=EVERYTHING)   # all resident
    h = Harness(params).start()
    try:
        models = h.node.group.models
        wait_for(lambda: models.stats()['budget_bytes'] == models.stats()['floor_bytes'], 30,
                 'the re-plan to the smallest plan')
        st = models.stats()
        assert st['pinned_at_floor'] and st['budget_bytes'] == st['floor_bytes']
        _answers_as_resident(h, oracle, list(MODELS), 4)
        status = _status(h, ': group')
        assert 'serving at the smallest plan' in status.message
        res = h.set_param('keep_free_mb', 0.0)
        assert res.successful, res.reason
        assert models.stats()['budget_bytes'] == 200 * (1 << 20)
        _answers_as_resident(h, oracle, list(MODELS), 5)
    finally:
        h.close()


def test_keep_free_mb_is_declared_and_documented():
    from demand_layering_ros.service import settings
    p = settings.PARAM_BY_NAME['keep_free_mb']
    assert p.applies == 'runtime' and p.default == 0.0
    with pytest.raises(ValueError, match='plan_file fixes the plan'):
        settings.check(dict(settings.defaults(), keep_free_mb=10.0, plan_file='p.yaml'))
    assert NODE == settings.NODE_NAME
