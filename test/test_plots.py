# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The plan pictures: real PNG files with the marks a reader looks for.

The pictures are checked by their pixels: the chosen plan's star, the paper's operating points
and the timeline's read / compute bars must be there in their colours (and absent when there is
nothing to draw), so a plot that silently drops a series fails.
"""

from demand_layering_ros import loading
from demand_layering_ros import pack as P
from demand_layering_ros import plots
from demand_layering_ros.planning import planner
from matplotlib import colors
import matplotlib.image
import numpy as np
import pytest
from test_planner import synthetic
import torch


def pixels_of(path, colour, tol=0.04):
    """Return how many pixels of a PNG are within `tol` of a colour."""
    img = matplotlib.image.imread(str(path))[..., :3]
    want = np.array(colors.to_rgb(colour))
    return int((np.abs(img - want).max(axis=-1) < tol).sum())


def test_tradeoff_marks_chosen_resident_and_paper_points(tmp_path):
    manifest, prof = synthetic(14, seed=2, read_mb_s=300)
    plan = planner.plan(manifest, prof, deadline_ms=1.2 * planner.plan(
        manifest, prof, budget_mb=1e6).predicted_latency_ms)
    path = plots.tradeoff(plan, tmp_path / 'curve.png')
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    img = matplotlib.image.imread(str(path))
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert pixels_of(path, plots.COMPUTE_COLOUR) > 50            # the chosen star
    assert pixels_of(path, plots.READ_COLOUR) > 30               # the resident square
    assert pixels_of(path, '#e45756') > 10 and pixels_of(path, '#b279a2') > 10   # paper points
    assert len(plan.details['alternatives']) > 3


def test_timeline_of_a_real_pass_shows_reads_and_compute(tmp_path):
    pack = P.write_pack('darknet:yolov2-tiny', tmp_path / 'pack', seed=1, input_size='64x64',
                        progress=False, verify=False)
    m = loading.load(pack.path)
    try:
        with torch.no_grad():
            m(m.detector.example_input(1))
        rows = m.stats()['timeline']
    finally:
        m.close()
    assert rows and any(r['read_start'] is not None for r in rows)
    path = plots.timeline(rows, tmp_path / 'timeline.png', title='yolov2-tiny streamed')
    assert pixels_of(path, plots.READ_COLOUR) > 20
    assert pixels_of(path, plots.COMPUTE_COLOUR) > 20
    # every unit resident: compute bars only
    resident = [dict(r, read_start=None, read_end=None) for r in rows]
    path = plots.timeline(resident, tmp_path / 'resident.png')
    assert pixels_of(path, plots.READ_COLOUR) == 0
    assert pixels_of(path, plots.COMPUTE_COLOUR) > 20


def test_timeline_from_the_simulation_draws_copy_stage(tmp_path):
    manifest, prof = synthetic(10, seed=3, read_mb_s=500)
    prof = dict(prof, device_kind='cuda',
                h2d={'points': [{'request_bytes': 1 << 20, 'seconds': 1e-4}]})
    plan = planner.plan(manifest, prof)
    sim = planner.predict(manifest, prof, plan, timeline=True)
    assert any(r['copy_start'] is not None for r in sim.timeline)
    path = plots.timeline(sim.timeline, tmp_path / 'sim.png')
    assert pixels_of(path, plots.COPY_COLOUR) > 20


def test_empty_timeline_still_gives_a_picture(tmp_path):
    path = plots.timeline([], tmp_path / 'empty.png')
    assert path.exists() and pixels_of(path, plots.COMPUTE_COLOUR) == 0


@pytest.mark.parametrize('bad', [{}, {'fully_resident': {}}])
def test_tradeoff_of_a_malformed_plan_names_the_missing_key(tmp_path, bad):
    with pytest.raises(KeyError):
        plots.tradeoff(bad, tmp_path / 'x.png')
