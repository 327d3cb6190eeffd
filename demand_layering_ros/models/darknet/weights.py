# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Darknet `.weights` files: read (the file must be consumed exactly), write, and a seeded init.

A short file is an error naming the layer it ends in, a long one an error giving the number of
surplus floats. Without a weights file, `init_darknet_` gives seeded weights whose outputs stay
in a trained network's range, so random-weight benchmarks mean something.
"""

import math
import os

from demand_layering_ros.models.darknet.cfg import DarknetError
from demand_layering_ros.models.darknet.layers import BatchNorm, Connected, Convolutional, Crop
import numpy as np
import torch


def read_weights_header(f):
    """Read the header (major, minor, revision, seen); returns (dict, header size in bytes)."""
    head = f.read(12)
    if len(head) != 12:
        raise DarknetError(f'{f.name}: too short for a Darknet .weights header')
    major, minor, revision = np.frombuffer(head, dtype='<i4').tolist()
    wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    seen_raw = f.read(8 if wide else 4)
    if len(seen_raw) != (8 if wide else 4):
        raise DarknetError(f'{f.name}: too short for a Darknet .weights header')
    seen = int(np.frombuffer(seen_raw, dtype='<i8' if wide else '<i4')[0])
    transpose = major > 1000 or minor > 1000
    return ({'major': major, 'minor': minor, 'revision': revision, 'seen': seen,
             'transpose': transpose}, 12 + len(seen_raw))


def read_darknet_weights(model, path):
    """
    Read a .weights file for `model`; returns (header, state_dict of float32 tensors).

    The file must hold exactly the floats the cfg needs: a short file is an error naming the
    layer it ends in, a long one an error giving the number of surplus floats.
    """
    path = str(path)
    with open(path, 'rb') as f:
        header, offset = read_weights_header(f)
    size = os.path.getsize(path)
    payload = size - offset
    if payload % 4:
        raise DarknetError(f'{path}: payload of {payload} bytes is not a whole number of '
                           'float32 values')
    data = torch.from_numpy(np.fromfile(path, dtype='<f4', offset=offset))
    layout = list(model.darknet_tensors())
    needed = sum(math.prod(s) for _, _, ts in layout for _, s in ts)
    pos = 0
    state = {}
    for i, layer, tensors in layout:
        for key, shape in tensors:
            n = math.prod(shape)
            if pos + n > data.numel():
                raise DarknetError(
                    f'{path}: weights file too short: it ends inside layer {i} '
                    f'[{layer.cfg_type}] ({model.cfg_path}:{layer.cfg_line}) while reading '
                    f'{key} {list(shape)}; the cfg needs {needed} floats, the file has '
                    f'{data.numel()} after its {offset}-byte header')
            t = data[pos:pos + n]
            if header['transpose'] and key.endswith('fc.weight'):
                t = t.reshape(shape[1], shape[0]).t()
            state[key] = t.reshape(shape).clone()
            pos += n
    if pos != data.numel():
        last = layout[-1] if layout else None
        where = (f' after the last weighted layer {last[0]} [{last[1].cfg_type}] '
                 f'({model.cfg_path}:{last[1].cfg_line})' if last else '')
        raise DarknetError(f'{path}: weights file too long: {data.numel() - pos} surplus '
                           f'floats{where}; the cfg needs {needed} floats, the file has '
                           f'{data.numel()} (weights for a different cfg?)')
    return header, state


def write_darknet_weights(model, path, header=(0, 2, 0, 0)):
    """Write the model's weights as a Darknet .weights file (major, minor, revision, seen)."""
    major, minor, revision, seen = header
    sd = model.state_dict()
    wide = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    with open(path, 'wb') as f:
        f.write(np.array([major, minor, revision], dtype='<i4').tobytes())
        f.write(np.array([seen], dtype='<i8' if wide else '<i4').tobytes())
        for _, _, tensors in model.darknet_tensors():
            for key, _ in tensors:
                f.write(sd[key].detach().float().cpu().contiguous().numpy().astype('<f4')
                        .tobytes())


def init_darknet_(model, seed=0):
    """
    Seeded random weights like Darknet's own init (He normal conv, uniform fc).

    Random deep networks with residual sums explode (yolov3's raw outputs reach 1e4), which
    makes random-weight benchmarks meaningless. So the batch-norm statistics are then
    calibrated with one forward pass over a seeded random image: each batch norm gets the mean
    and variance of its input, as a trained network roughly has. Heads start with a low
    objectness bias, since a trained detector mostly sees background.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, Convolutional):
                wt = layer.conv.weight
                fan_in = wt.shape[1] * wt.shape[2] * wt.shape[3]
                wt.copy_(torch.randn(wt.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if layer.conv.bias is not None:
                    layer.conv.bias.zero_()
            elif isinstance(layer, Connected):
                wt = layer.fc.weight
                scale = math.sqrt(6.0 / wt.shape[1])
                wt.copy_((torch.rand(wt.shape, generator=g) * 2 - 1) * scale)
                if layer.fc.bias is not None:
                    layer.fc.bias.zero_()
            bn = getattr(layer, 'bn', None)
            if bn is not None:
                bn.weight.fill_(1.0)
                bn.bias.zero_()
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
        _calibrate_batchnorm(model, g)
        # output layers: small weights so that softmax/sigmoid outputs do not saturate
        for end in model.heads or [len(model.layers)]:
            prev = next((model.layers[j] for j in range(end - 1, -1, -1)
                         if isinstance(model.layers[j], (Convolutional, Connected))), None)
            if prev is None:
                continue
            mod = prev.conv if isinstance(prev, Convolutional) else prev.fc
            mod.weight.mul_(0.25)
            if end < len(model.layers) and mod.bias is not None:
                mod.bias.view(len(model.layers[end].anchors), -1)[:, 4] = -4.0


def _calibrate_batchnorm(model, generator):
    bns = [m for m in model.modules() if isinstance(m, BatchNorm)]
    if not bns:
        return
    h, w = model.input_size
    if not any(isinstance(m, (Connected, Crop)) for m in model.layers):
        h, w = min(h, max(32, 160 // 32 * 32)), min(w, max(32, 160 // 32 * 32))

    def set_stats(module, args):
        x = args[0]
        dims = [0] + list(range(2, x.ndim))
        module.running_mean.copy_(x.mean(dim=dims))
        module.running_var.copy_(x.var(dim=dims, unbiased=False).clamp(min=1e-4))

    hooks = [m.register_forward_pre_hook(set_stats) for m in bns]
    try:
        model(torch.rand((2, 3, h, w), generator=generator))
    finally:
        for hook in hooks:
            hook.remove()
