# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
YOLOv4 built in code: the published size, Darknet's mish and SPP, OpenCV's decoding, packs.

No registry carries yolov4.cfg, so the references are independent of our generator: the size
of the published yolov4.weights (257,717,640 bytes), a port of Darknet's mish and maxpool
loops, and OpenCV's own Darknet importer (which reads yolov4, mish and scale_x_y) on seeded
weights written as a .weights file.
"""

import math

import cv2
from demand_layering_ros import pack as P
from demand_layering_ros.loading import load, load_resident
from demand_layering_ros.models import darknet, registry
from demand_layering_ros.models.darknet import yolov4
from demand_layering_ros.models.darknet.layers import ACTIVATIONS, MaxPool
from demand_layering_ros.sizes import MB
import numpy as np
import pytest
import torch

PUBLISHED_BYTES, HEADER = 257717640, 20       # AlexeyAB's yolov4.weights


def test_yolov4_resolves_like_a_debian_cfg_name():
    path = darknet.resolve_cfg('yolov4')
    assert path.is_file() and path.read_text() == yolov4.yolov4_cfg()
    det = registry.build('darknet:yolov4', meta=True)
    model = det.model
    assert len(model.layers) == 162 and model.input_size == (608, 608)
    floats = sum(math.prod(s) for _, _, ts in model.darknet_tensors() for _, s in ts)
    assert floats * 4 + HEADER == PUBLISHED_BYTES
    heads = [model.layers[i] for i in model.heads]
    assert model.heads == [139, 150, 161]
    assert [h.scale_x_y for h in heads] == [1.2, 1.1, 1.05]
    assert [model.shapes[i][1] for i in model.heads] == [76, 38, 19]
    acts = [layer.act_name for layer in model.layers if hasattr(layer, 'conv')]
    assert acts[:72] == ['mish'] * 72 and 'mish' not in acts[72:]
    assert det.class_names[0] == 'person' and len(det.class_names) == 80
    with pytest.raises(FileNotFoundError, match='yolov4'):
        darknet.resolve_cfg('yolov5')


def _darknet_mish(x):
    """Darknet's activate_array_mish: x * tanh(softplus(x)), softplus threshold 20."""
    x = x.astype(np.float32)
    with np.errstate(over='ignore'):      # np.where evaluates both sides
        sp = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(x))))
    return (x * np.tanh(sp)).astype(np.float32)


def test_mish_is_darknets():
    x = np.concatenate([np.linspace(-120, 120, 20001), [-20, -19.99, 20, 20.01, 0]])
    x = x.astype(np.float32)
    ours = ACTIVATIONS['mish'](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _darknet_mish(x), rtol=2e-6, atol=1e-30)


def _darknet_maxpool(x, size, stride, pad):
    """Darknet's forward_maxpool_layer on one [c, h, w] map."""
    c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.full((c, oh, ow), -np.inf, np.float32)
    off = -pad // 2
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    r, q = off + i * stride + n, off + j * stride + m
                    if 0 <= r < h and 0 <= q < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, r, q])
    return out


@pytest.mark.parametrize('size', [5, 9, 13])
def test_spp_maxpool_is_darknets(size):
    sec = darknet.parse_cfg(f'[net]\nwidth=8\nheight=8\n[maxpool]\nstride=1\nsize={size}\n')[1]
    x = np.random.default_rng(size).standard_normal((2, 7, 6)).astype(np.float32)
    layer = MaxPool(sec, 2, 7, 6)
    assert layer.out_shape == (2, 7, 6)
    got = layer(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_array_equal(got, _darknet_maxpool(x, size, 1, size - 1))


@pytest.fixture(scope='module')
def small_yolov4(tmp_path_factory):
    """YOLOv4 at 96x96 with seeded weights, heads scaled into a trained network's range."""
    d = tmp_path_factory.mktemp('yolov4')
    cfg = d / 'yolov4-96.cfg'
    cfg.write_text(yolov4.yolov4_cfg(96, 96))
    det = darknet.build(str(cfg), seed=5)
    img = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    x, meta = det.preprocess([img])
    # Seeded deep networks drift far from their calibration: YOLOv4's raw head outputs reach
    # the hundreds, which saturates every sigmoid and overflows exp. Scale each head conv so
    # its outputs have unit spread, as a trained detector's have.
    heads = [det.model.layers[i - 1].conv for i in det.model.heads]
    seen = {}
    hooks = [c.register_forward_hook(lambda m, a, o: seen.__setitem__(m, o)) for c in heads]
    det.forward(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for conv in heads:
            conv.weight.div_(seen[conv].std())
            conv.bias.zero_()
    weights = d / 'yolov4-96.weights'
    darknet.write_darknet_weights(det.model, weights)
    return det, cfg, weights, img, x, meta


def test_yolov4_decoding_agrees_with_opencv(small_yolov4):
    det, cfg, weights, _, x, _ = small_yolov4
    ours = det.forward(x)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x.numpy())
    theirs = net.forward(net.getUnconnectedOutLayersNames())
    assert len(theirs) == len(ours) == 3
    net_h, net_w = det.input_size
    for layer_index, o_cv, o in zip(det.model.heads, theirs, ours):
        layer = det.model.layers[layer_index]
        cx, cy, bw, bh, obj, cls = darknet.decode_head(layer, o[0], net_h, net_w)
        n, (h, w) = len(layer.anchors), o.shape[-2:]
        order = torch.arange(n * h * w).view(n, h, w).permute(1, 2, 0).reshape(-1)  # OpenCV
        mine = torch.stack([cx, cy, bw, bh, obj], 1)[order].numpy()
        assert np.isfinite(mine).all() and 0.05 < obj.mean() < 0.95
        np.testing.assert_allclose(o_cv[:, :5], mine, rtol=1e-3, atol=1e-4)
        probs = (obj[:, None] * cls)[order].numpy()
        shown = o_cv[:, 5:] > 0   # OpenCV zeroes class scores under its own threshold
        np.testing.assert_allclose(o_cv[:, 5:][shown], probs[shown], rtol=1e-3, atol=1e-4)


def test_yolov4_detections_agree_with_opencv(small_yolov4):
    """Same classes, boxes within a pixel: OpenCV decoded and NMS'd on the same input."""
    det, cfg, weights, img, x, meta = small_yolov4
    out = det.forward(x)
    # a threshold between the 40th and 41st best scores: a few boxes, none on the edge
    scores = []
    for i, o in zip(det.model.heads, out):
        *_, obj, cls = darknet.decode_head(det.model.layers[i], o[0], *det.input_size)
        scores.append((obj[:, None] * cls).reshape(-1))
    scores = torch.cat(scores).sort(descending=True).values
    thresh, nms = float(scores[39] + scores[40]) / 2, 0.45
    ours = det.postprocess(out, meta, score_threshold=thresh, nms_iou=nms)[0]
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x.numpy())
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    (img_h, img_w), (net_h, net_w) = img.shape[:2], det.input_size
    found = []
    for c in range(rows.shape[1] - 5):
        sel = rows[(rows[:, 4] > thresh) & (rows[:, 5 + c] > thresh)]
        if not len(sel):
            continue
        xyxy = darknet.correct_boxes(*(torch.from_numpy(sel[:, k]) for k in range(4)),
                                     img_h, img_w, net_h, net_w).numpy()
        keep = cv2.dnn.NMSBoxes([[a, b, cc - a, d - b] for a, b, cc, d in xyxy.tolist()],
                                sel[:, 5 + c].tolist(), thresh, nms)
        found += [(c, xyxy[i]) for i in np.array(keep).reshape(-1)]
    assert len(ours) > 0 and len(found) == len(ours)
    assert sorted(c for c, _ in found) == sorted(ours.class_ids.tolist())
    for cid, box in zip(ours.class_ids.tolist(), ours.boxes.numpy()):
        err = min(np.abs(b - box).max() for c, b in found if c == cid)
        assert err < 1.0, (cid, box)


def test_yolov4_packs_and_streams_identical_to_resident(tmp_path):
    pack = P.write_pack('darknet:yolov4', tmp_path / 'yolov4', seed=1, input_size='64x64',
                        progress=False)
    assert pack.file_size > PUBLISHED_BYTES - HEADER
    assert (pack.path / P.CFG_FILE).read_text() == yolov4.yolov4_cfg()
    det = pack.build_detector(meta=True)
    img = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    x = det.preprocess([img])[0]
    want = load_resident(pack.path)(x)
    largest = max(u.length for u in pack.units)
    for budget in (None, 3 * largest / MB):
        m = load(pack.path, budget_mb=budget)
        got = m(x)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), budget
        st = m.stats()
        assert st['streamed_units'] > 0
        assert budget is None or st['peak_weight_bytes'] <= st['budget_bytes']
        m.close()
