# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
torchvision family: every listed detector builds offline, runs a batch, and reloads its weights.

Random weights give random boxes, so the checks are about plumbing that a real checkpoint relies
on: the same seed gives the same weights, a saved state dict reloads bit-exactly, boxes come
back in original-image pixels, and a meta build has the same tensors without their memory.
"""

import json
import os

from demand_layering_ros.models import registry, tv_models
import numpy as np
import pytest
import torch


def _fast_kwargs(name):
    """Builder options that keep random-weight models fast and still detecting something."""
    if name.startswith(('fasterrcnn', 'maskrcnn')):
        return {'rpn_pre_nms_top_n_test': 100, 'rpn_post_nms_top_n_test': 50,
                'box_score_thresh': 0.0, 'box_detections_per_img': 10}
    return {'topk_candidates': 100, 'score_thresh': 0.0, 'detections_per_img': 10}


# one model per architecture in the default suite; DLR_TEST_ALL_MODELS=1 runs every model
# (about 2 minutes on a 2-core CPU, ssd300_vgg16 alone takes 10-20 s)
REPRESENTATIVE = ['fasterrcnn_mobilenet_v3_large_320_fpn', 'retinanet_resnet50_fpn',
                  'fcos_resnet50_fpn', 'ssdlite320_mobilenet_v3_large', 'maskrcnn_resnet50_fpn']
RUN = sorted(tv_models.MODELS) if os.environ.get('DLR_TEST_ALL_MODELS') else REPRESENTATIVE


def _size(name):
    return (300, 300) if name == 'ssd300_vgg16' else (128, 160)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8),
            rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)]


@pytest.mark.parametrize('name', sorted(tv_models.MODELS))
def test_every_model_builds_on_meta(name):
    det = registry.build(f'torchvision:{name}', meta=True, **_fast_kwargs(name))
    assert det.input_size == tv_models.MODELS[name][1]
    assert all(p.is_meta for p in det.model.parameters())
    assert sum(p.numel() for p in det.model.parameters()) > 1_000_000


@pytest.mark.parametrize('name', RUN)
def test_model_builds_and_detects_a_batch(name):
    det = registry.build(f'torchvision:{name}', seed=0, input_size=_size(name),
                         **_fast_kwargs(name))
    assert det.class_names[1] == 'person' and len(det.class_names) == 91
    images = _images()
    x, meta = det.preprocess(images)
    assert isinstance(x, list) and x[0].shape == (3, 120, 200) and x[0].max() <= 1
    results = det.postprocess(det.forward(x), meta, score_threshold=0.0, max_detections=7)
    assert len(results) == 2
    for img, res in zip(images, results):
        h, w = img.shape[:2]
        assert len(res) <= 7 and res.boxes.shape == (len(res), 4)
        if len(res):
            assert res.boxes[:, 0::2].max() <= w and res.boxes[:, 1::2].max() <= h
            assert res.boxes.min() >= 0
            assert (res.scores[:-1] >= res.scores[1:]).all()
            assert res.class_names == [det.class_names[i] for i in res.class_ids.tolist()]
    assert any(len(r) for r in results)


def test_boxes_are_in_original_pixels():
    """A 2x nearest-upscaled image resizes back to the same tensor: boxes must double."""
    det = tv_models.build('fasterrcnn_mobilenet_v3_large_320_fpn', seed=1,
                          input_size=(128, 160), box_score_thresh=0.0)
    small = np.random.default_rng(1).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)
    a, b = det.detect([small, big], score_threshold=0.0, nms_iou=1.0)
    assert len(a) > 0 and len(a) == len(b)
    assert torch.allclose(b.boxes, 2 * a.boxes, atol=1e-2)
    assert torch.equal(a.class_ids, b.class_ids)


def test_input_size_reaches_the_transform():
    rcnn = tv_models.build('retinanet_resnet50_fpn', meta=True, input_size=(480, 640))
    assert rcnn.model.transform.min_size == (480,) and rcnn.model.transform.max_size == 640
    ssd = tv_models.build('ssdlite320_mobilenet_v3_large', meta=True, input_size=(240, 320))
    assert ssd.model.transform.fixed_size == (320, 240)   # torchvision: (width, height)
    x = ssd.example_input()
    assert len(x) == 1 and x[0].shape == (3, 240, 320)


def test_seed_reproducible_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = tv_models.build('ssdlite320_mobilenet_v3_large', seed=5).model.state_dict()
    b = tv_models.build('ssdlite320_mobilenet_v3_large', seed=5).model.state_dict()
    c = tv_models.build('ssdlite320_mobilenet_v3_large', seed=6).model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert not any(k.endswith('num_batches_tracked') for k in a)  # frozen batch norms


def test_meta_build_matches_real_build():
    real = tv_models.build('fasterrcnn_mobilenet_v3_large_320_fpn', seed=0)
    args = json.loads(json.dumps(registry.constructor_args(real)))
    meta = registry.build(**args, meta=True)
    assert all(p.is_meta for p in meta.model.parameters())
    assert all(b.is_meta for b in meta.model.buffers())
    assert {k: (v.shape, v.dtype) for k, v in meta.model.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in real.model.state_dict().items()}
    assert meta.input_size == real.input_size == (320, 640)


@pytest.mark.parametrize('fmt', ['safetensors', 'pt'])
def test_weights_file_reloads_exactly(tmp_path, fmt):
    src = tv_models.build('ssdlite320_mobilenet_v3_large', seed=3, input_size=(128, 128))
    path = tmp_path / f'w.{fmt}'
    sd = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    if fmt == 'safetensors':
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    det = registry.build('torchvision:ssdlite320_mobilenet_v3_large', weights=str(path),
                         seed=99, input_size=(128, 128))
    x = src.example_input()
    a, b = src.forward(x)[0], det.forward(x)[0]
    assert all(torch.equal(a[k], b[k]) for k in ('boxes', 'scores', 'labels'))


def test_bad_weights_and_names(tmp_path):
    path = tmp_path / 'other.pt'
    torch.save({'backbone.nope': torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match=r'do not fit the model: \d+ missing'):
        tv_models.build('ssdlite320_mobilenet_v3_large', weights=str(path))
    pickled = tmp_path / 'pickled.pt'
    torch.save({'model': object.__new__(_NotAllowed)}, str(pickled))
    with pytest.raises(ValueError, match='weights_only=True'):
        tv_models.build('ssdlite320_mobilenet_v3_large', weights=str(pickled))
    with pytest.raises(KeyError, match='unknown torchvision detector'):
        registry.build('torchvision:yolo_v9000')
    with pytest.raises(ValueError, match='no downloads'):
        registry.build('torchvision:ssd300_vgg16', weights_backbone='DEFAULT')


class _NotAllowed:
    """An arbitrary class: loading it needs pickle, which weights_only=True refuses."""


@pytest.mark.skipif(not torch.cuda.is_available(), reason='fp16 inference needs CUDA')
def test_fp16_on_cuda():
    det = tv_models.build('ssdlite320_mobilenet_v3_large', seed=0, device='cuda').half()
    res = det.detect(_images(), score_threshold=0.0)
    assert len(res) == 2 and res[0].boxes.dtype == torch.float32
