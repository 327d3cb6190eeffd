# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""A torchvision model's own score threshold never hides detections above score_threshold."""

from demand_layering_ros.models import tv_models
import numpy as np
import torch


def test_fcos_keeps_candidates_below_its_own_threshold():
    """
    FCOS filters at 0.2 inside its forward pass; its untrained head scores about 0.07.

    With score_threshold 0.05 those candidates must come out (before the fix: none did), and
    the threshold still applies (0.5 gives none).
    """
    det = tv_models.build('fcos_resnet50_fpn', seed=0, input_size=(128, 128))
    img = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    with torch.random.fork_rng(devices=[]):
        low = det.detect([img], score_threshold=0.05)[0]
        high = det([img], score_threshold=0.5)[0]
    assert len(low) > 0 and float(low.scores.max()) < 0.2
    assert float(low.scores.min()) > 0.05
    assert len(high) == 0
    holder = det.model
    assert holder.score_thresh == 0.5      # the model filters at what was asked, no higher
