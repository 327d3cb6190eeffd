# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
DetectorService without ROS: configure on a real pack, infer on a photo, re-plan, close.

The real Darknet yolov3-tiny COCO weights are packed at a small input (224 x 224) so that a
profile takes seconds; the dog photo must still show the dog and the bicycle.
"""

import logging
import shutil
import sys
import time
import weakref

from demand_layering_ros import pack as pack_mod
from demand_layering_ros.models import assets
from demand_layering_ros.models.detector import read_image
from demand_layering_ros.planning import decide, fit, planner, profiler, timing
from demand_layering_ros.service import settings
from demand_layering_ros.service.service import DetectorService, process_rss_bytes
from demand_layering_ros.service.torch_threads import cpu_threads
import pytest

DOG, BICYCLE = 16, 1


class Lines(logging.Handler):
    """A logger's lines, in order."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def service_with_lines(name):
    log = logging.getLogger(f'test_service.{name}')
    log.setLevel(logging.INFO)
    lines = Lines()
    log.addHandler(lines)
    return DetectorService(log=log), lines.lines


@pytest.fixture(scope='module')
def bare_pack(tmp_path_factory):
    """Pack the real yolov3-tiny at 224 x 224; no PROFILE.json."""
    cfg, weights, _ = assets.yolov3_tiny()
    out = tmp_path_factory.mktemp('service') / 'yolov3-tiny'
    pack_mod.write_pack('darknet:' + str(cfg), out, weights=str(weights), progress=False,
                        input_size=(224, 224))
    return out


@pytest.fixture(scope='module')
def profiled_pack(bare_pack, tmp_path_factory):
    """Copy the pack and put a PROFILE.json next to it."""
    out = tmp_path_factory.mktemp('service_profiled') / 'yolov3-tiny'
    shutil.copytree(bare_pack, out)
    prof = profiler.profile(str(out), device='cpu', repeats=1, warmup=1, progress=False,
                            activation=False)
    timing.save_profile(prof, out / 'PROFILE.json')
    return out


@pytest.fixture(scope='module')
def dog():
    return read_image(assets.photo('dog'))


def test_configure_infer_stats_close(bare_pack, dog):
    import torch
    threads = torch.get_num_threads()
    svc = DetectorService()
    assert not svc.configured and svc.infer(dog) is None
    with pytest.raises(ValueError, match='configure first'):
        svc.replan({'memory_budget_mb': 10.0})
    svc.configure({'pack_path': str(bare_pack)})
    try:
        assert svc.configured and svc.latency.predict(1) > 0     # warmed up
        assert len(svc.class_names) == 80 and svc.class_names[DOG] == 'dog'
        det = svc.infer(dog)                                      # one photo: one result
        ids = set(det.class_ids.tolist())
        assert {DOG, BICYCLE} <= ids
        both = svc.infer([dog, dog[::2, ::2].copy()], score_threshold=0.99)
        assert len(both) == 2 and all(len(d.class_ids) == 0 for d in both)
        stats = svc.stats()
        assert stats['configured'] and stats['model'].startswith('darknet:')
        assert stats['model_stats']['peak_weight_bytes'] > 0 and stats['plan_note'] == ''
        assert stats['batching'] and not stats['profiling']
        assert stats['process_rss_bytes'] == pytest.approx(process_rss_bytes(), rel=0.5)
        assert stats['latency_ms_by_batch'][1] > 0
        assert torch.get_num_threads() == cpu_threads()   # one core left free
        model_ref = weakref.ref(svc.model)
    finally:
        svc.close()
    assert not svc.configured and svc.infer(dog) is None and model_ref() is None
    assert torch.get_num_threads() == threads     # torch's threads given back too
    svc.close()     # idempotent


@pytest.mark.parametrize('values, words', [
    ({'pack_path': ''}, 'pack_path is empty'),
    ({'pack_path': '/nowhere', 'device': 'gpu'}, 'must be cpu, cuda or cuda:N'),
    ({'pack_path': '/nowhere', 'max_batch': 0}, 'max_batch: 0 is outside'),
])
def test_configure_refuses_bad_settings_with_the_reason(values, words):
    svc = DetectorService()
    with pytest.raises(ValueError, match=words.replace('[', r'\[')):
        svc.configure(values)
    assert not svc.configured


def test_configure_with_a_missing_pack_names_it(tmp_path):
    svc = DetectorService()
    with pytest.raises(Exception, match='missing'):
        svc.configure({'pack_path': str(tmp_path / 'missing')})
    assert not svc.configured


def test_replan_with_a_budget_plans_with_the_stored_profile(profiled_pack, dog):
    svc, lines = service_with_lines('stored')
    svc.configure({'pack_path': str(profiled_pack)})
    try:
        model = svc.model
        total_mb = model.stats()['model_bytes'] / (1 << 20)
        budget = float(round(total_mb * 0.7))
        svc.replan({'memory_budget_mb': budget})
        assert svc.model is model and svc.profile is not None and svc.profiling is None
        assert svc.decision.plan is not None and svc.settings['memory_budget_mb'] == budget
        assert model.plan()['resident_units'] == list(svc.decision.plan.resident_units)
        assert model.stats()['budget_bytes'] == budget * (1 << 20)
        assert {DOG, BICYCLE} <= set(svc.infer(dog).class_ids.tolist())
        assert model.stats()['peak_weight_bytes'] <= budget * (1 << 20)
        assert any(line.startswith('re-planned: budget') for line in lines)
        # a budget below the largest layer is refused; the model keeps its plan
        with pytest.raises(Exception):
            svc.replan({'memory_budget_mb': 1.0})
        with pytest.raises(ValueError, match='deadline_ms'):
            svc.replan({'deadline_ms': -1.0})
        assert svc.settings['memory_budget_mb'] == budget
        assert model.stats()['budget_bytes'] == budget * (1 << 20)
        # a deadline only: planned with the profile too
        svc.replan({'memory_budget_mb': 0.0, 'deadline_ms': 60000.0})
        assert svc.decision.plan is not None and svc.settings['deadline_ms'] == 60000.0
        assert model.plan()['resident_units'] == list(svc.decision.plan.resident_units)
    finally:
        svc.close()


def count_calls(monkeypatch, fn, calls=None):
    """Count the calls of `fn` wherever the package refers to it by name; return the list."""
    calls = [] if calls is None else calls

    def counted(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    for mod in list(sys.modules.values()):
        if getattr(mod, '__name__', '').startswith('demand_layering_ros'):
            for name, value in list(vars(mod).items()):
                if value is fn:
                    monkeypatch.setattr(mod, name, counted)
    return calls


def test_a_plan_is_decided_once_per_configuration(profiled_pack, monkeypatch):
    """Configure and each re-plan decide once (one fit or one search); the runtime never does."""
    decides = count_calls(monkeypatch, decide.decide_plan)
    works = count_calls(monkeypatch, planner.plan, count_calls(monkeypatch, fit.fit_budget))
    svc = DetectorService()
    try:
        svc.configure({'pack_path': str(profiled_pack), 'memory_budget_mb': 20.0})
        assert len(decides) == 1 and len(works) == 1, (decides, works)
        svc.replan({'memory_budget_mb': 12.0})
        assert len(decides) == 2 and len(works) == 2, (decides, works)
        assert svc.model.stats()['budget_bytes'] == 12 << 20
        svc.model.reconfigure(budget_mb=16.0)     # the Python API: one fit, in the model
        assert len(decides) == 2 and len(works) == 3, (decides, works)
    finally:
        svc.close()


def test_replan_without_a_profile_applies_at_once_and_profiles_in_the_background(
        bare_pack, tmp_path, dog):
    pack = tmp_path / 'pack'
    shutil.copytree(bare_pack, pack)
    svc, lines = service_with_lines('background')
    svc.configure({'pack_path': str(pack)})
    try:
        model = svc.model
        budget = float(round(model.stats()['model_bytes'] / (1 << 20) * 0.7))
        svc.replan({'memory_budget_mb': budget})
        returned_at = time.monotonic()
        job = svc.profiling
        # returned with the runtime's own fit in effect, while the profile was still running
        assert job is not None and job.started_at < returned_at
        assert svc.decision.source == 'fit' and model.stats()['budget_bytes'] == budget * (1 << 20)
        returned = len(lines)
        assert not any('re-planned with the profile' in line for line in lines[:returned])
        # a deadline change meanwhile only changes the scheduling (no plan yet)
        svc.replan({'deadline_ms': 60000.0})
        assert svc.profiling is job and svc.settings['deadline_ms'] == 60000.0
        job.join()
        assert returned_at < job.finished_at       # replan did not wait for the profile
        assert job.error is None and svc.profile is not None and svc.profile['mode'] == 'streamed'
        assert (pack / 'PROFILE.json').is_file()
        order = [i for i, line in enumerate(lines) if 'profiling the pack once in the '
                 'background' in line or 're-planned with the profile' in line]
        assert len(order) == 2 and order[0] < order[1], lines
        # the planned configuration runs, within the budget
        assert svc.decision.source == 'planner'
        assert model.plan()['resident_units'] == list(svc.decision.plan.resident_units)
        assert model.plan()['arena_bytes'] == svc.decision.plan.arena_bytes
        assert {DOG, BICYCLE} <= set(svc.infer(dog).class_ids.tolist())
        assert model.stats()['peak_weight_bytes'] <= budget * (1 << 20)
    finally:
        svc.close()


def test_settings_defaults_and_check():
    values = settings.defaults()
    assert set(values) == set(settings.PARAM_BY_NAME)
    values['input_size'].append(1)          # a copy: the table keeps its default
    assert settings.PARAM_BY_NAME['input_size'].default == [0, 0]
    with pytest.raises(ValueError, match='score_threshold'):
        settings.check({'score_threshold': 3.0})
    settings.check(settings.defaults())


def _slack(svc, ms, frames=16):
    """Let the service measure `ms` outside the forward pass (all of it as decode time)."""
    for _ in range(frames):
        for part in ('age', 'prepost', 'publish'):
            svc.slack.add(part, 0.0)
        svc.slack.add('decode', ms / 1e3)


def test_a_deadline_plan_leaves_the_slack_measured_outside_the_network(profiled_pack):
    """
    A deadline plan targets the deadline minus the slack.

    The planner predicts the forward pass only; decode, pre/post-processing, publish and the
    age at arrival take the rest (the slack).
    """
    from demand_layering_ros.planning.planner import PlanInfeasible
    svc, lines = service_with_lines('slack')
    svc.configure({'pack_path': str(profiled_pack)})
    try:
        svc.replan({'deadline_ms': 60000.0})
        slow = svc.decision.plan.predicted_latency_ms        # the smallest plan: streamed
        fast = _fastest(svc)
        deadline = slow + 0.05
        svc.replan({'deadline_ms': deadline})
        assert svc.decision.plan.predicted_latency_ms <= deadline - svc.planned_slack_ms
        slack = 0.9 * (slow - fast)
        if slack - svc.planned_slack_ms <= max(2.0, 0.05 * deadline):
            pytest.skip(f'resident ({fast:.1f} ms) and streamed ({slow:.1f} ms) plans are '
                        'too close on this machine to tell them apart')
        _slack(svc, slack)
        assert svc.replan_for_slack()                # measured slack moved: re-planned
        assert svc.planned_slack_ms == pytest.approx(slack)
        assert svc.decision.plan.predicted_latency_ms <= deadline - slack
        assert svc.stats()['planned_slack_ms'] == pytest.approx(slack)
        assert any('re-planned for the measured slack' in line for line in lines)
        assert not svc.replan_for_slack()            # nothing moved since
        _slack(svc, deadline + 10.0, frames=64)      # more than the whole deadline
        said = len(lines)
        svc.replan({'deadline_ms': deadline - 0.01})  # taken at run time as at configure
        assert svc.decision.source == 'fastest' and svc.settings['deadline_ms'] == deadline - 0.01
        assert svc.plan_note.startswith(f'deadline {deadline - 0.01:g} ms cannot be met')
        assert f'plus {deadline + 10.0:.0f} ms outside it' in svc.plan_note
        assert 'best-effort' in svc.plan_note
        assert [line for line in lines[said:] if 'cannot be met' in line] == [svc.plan_note]
        # within a budget too: the fastest plan the budget holds
        budget = float(round(svc.model.stats()['model_bytes'] / (1 << 20) * 0.7))
        svc.replan({'memory_budget_mb': budget, 'deadline_ms': deadline})
        assert svc.decision.source == 'fastest'
        assert svc.plan_note.startswith(f'deadline {deadline:g} ms cannot be met')
        assert svc.model.stats()['budget_bytes'] == budget * (1 << 20)
        with pytest.raises(PlanInfeasible, match='budget 1 MB'):   # a budget still is refused
            svc.replan({'memory_budget_mb': 1.0})
        assert svc.settings['memory_budget_mb'] == budget
    finally:
        svc.close()
    # at configure likewise: the fastest plan runs, and the note says why, with the numbers
    svc.configure({'pack_path': str(profiled_pack), 'deadline_ms': deadline})
    try:
        assert svc.decision.source == 'fastest'
        assert f'deadline {deadline:g} ms cannot be met' in svc.plan_note
        assert 'decode' in svc.plan_note and 'best-effort' in svc.plan_note
    finally:
        svc.close()


def _fastest(svc):
    from demand_layering_ros.planning.decide import decide_plan
    return decide_plan(svc.pack, deadline_ms=1e-3, profile=svc.profile,
                       strict=False).plan.predicted_latency_ms
