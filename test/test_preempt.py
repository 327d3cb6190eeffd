# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Preemption across the models of one node (`preempt: true`), over real DDS.

A small model (yolov3-tiny, with a deadline) and a large one (yolov3, none) share one node and
its one inference thread. The small model's frames that arrive while a large pass runs are run
inside it, between two of its layers; both models' answers must be exactly the resident
models'. Nothing here times anything: how much preemption buys is `bench/bench_preempt.py`'s.
"""

import math
import time

from demand_layering_ros import pack as P
from demand_layering_ros.sizes import MB
import pytest
from test_node_models import (assert_same, expected, group_params, Harness, images,
                              resident_oracle, weights)

SPECS = {'front': ('darknet:yolov3-tiny', '64x64'), 'rear': ('darknet:yolov3', '128x128')}


@pytest.fixture(scope='module')
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp('preempt')
    return {name: P.write_pack(spec, root / name, seed=i + 1, input_size=size,
                               progress=False, verify=False)
            for i, (name, (spec, size)) in enumerate(SPECS.items())}


def _deadline_inside_a_large_pass(h):
    """
    Set the small model's deadline below the large model's measured pass; True once set.

    A frame preempts only when waiting for the rest of a large pass would miss its deadline:
    with a fixed deadline that depends on how fast this machine runs the large pass right now
    (300 ms was met by waiting on a quiet 2-core machine, and nothing preempted). Half the
    large pass, and at least four slow small passes, makes every frame that arrives early in a
    large pass one that must preempt, on any machine.
    """
    members = h.node.group.members
    small, large = members['front'].latency, members['rear'].latency
    if not (small.steady and large.steady):
        return False
    deadline = max(0.5 * large.predict(1), 4.0 * small.upper(1)) * 1e3
    res = h.set_param('front.deadline_ms', float(math.ceil(deadline)))
    assert res.successful, res.reason
    return True


def test_small_model_answered_inside_large_passes_as_resident(packs):
    oracle = resident_oracle(packs)
    budget = float(math.floor(weights(packs['front']) / MB * 0.8))
    params = dict(group_params(packs, budget), preempt=True, max_batch=1,
                  **{'front.deadline_ms': 300.0})
    h = Harness(params).start()
    try:
        sent = {'front': [], 'rear': []}
        small, large = images(3, 4), images(4, 4)
        end = time.monotonic() + 20.0
        k, tight = 0, False
        while time.monotonic() < end and (k < 40 or len(h.got['rear']) < 3
                                          or h.node.group.stats()['preemptions'] < 3):
            if not tight and k >= 16:
                tight = _deadline_inside_a_large_pass(h)
            if k % 8 == 0:
                rgb = large[k // 8 % 4]
                sent['rear'].append((h.publish('rear', rgb), rgb))
            rgb = small[k % 4]
            sent['front'].append((h.publish('front', rgb), rgb))
            k += 1
            time.sleep(0.03)
        h.answer('rear', sent['rear'][-1][0])

        stats = h.node.group.models.stats()
        assert stats['preemptions'] > 0
        # both passes' activations are held at once: the group counts them summed
        own = [stats['models'][m]['activation_peak_bytes'] for m in ('front', 'rear')]
        assert max(own) < stats['preempted_activation_peak_bytes'] <= sum(own)
        for model, frames in sent.items():
            got = {m.header.frame_id: m for m in list(h.got[model])}
            answered = [(hd, rgb) for hd, rgb in frames if hd.frame_id in got]
            assert len(answered) > 2, model
            for hd, rgb in answered:
                assert_same(got[hd.frame_id], expected(oracle, model, hd, rgb))
    finally:
        h.close()
