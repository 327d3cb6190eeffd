# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Darknet models (YOLOv2/v3, ResNet, DenseNet, VGG, AlexNet) as plain PyTorch modules.

The Demand Layering paper ran Darknet networks, so we read Darknet's own files: a strict `.cfg`
parser (an unknown layer or option is an error naming file and line, never a silently different
model), a `.weights` reader that must consume the file exactly, and an `nn.Module` in which every
cfg layer is the submodule `layers.<i>` (Darknet's own layer index) and parameters live in
`layers.<i>.conv`, `.bn` or `.fc` children called through `__call__`, so the executor can stream
weights with module hooks. Pre- and post-processing follow Darknet's C code (pjreddie, 2018):
letterbox with its separable bilinear resize, region/yolo decoding, box correction and per-class
NMS, so that boxes agree with the `darknet` binary.
"""

from dataclasses import dataclass, field
import math
import os
from pathlib import Path

from demand_layering_ros.models import assets
from demand_layering_ros.models.detector import (as_image_list, Detections, Detector,
                                                 load_state_dict_file, load_weights_into)
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


MAX_WEIGHTS = 1 << 31    # elements of one layer's weight: more is a corrupt cfg, not a model


class DarknetError(ValueError):
    """A Darknet cfg or weights file that cannot be turned into the model it describes."""


# ------------------------------------------------------------------------------------------
# cfg parsing

# training-only options accepted (and ignored) on every layer
_LAYER_TRAINING = {'learning_rate', 'stopbackward', 'dontsave', 'smooth', 'burnin', 'train',
                   'onlyforward', 'clip'}
_NET = {'batch', 'subdivisions', 'width', 'height', 'channels', 'inputs', 'max_crop',
        'min_crop', 'max_ratio', 'min_ratio', 'center', 'clip', 'angle', 'aspect', 'saturation',
        'exposure', 'hue', 'learning_rate', 'momentum', 'decay', 'burn_in', 'power',
        'max_batches', 'policy', 'step', 'scale', 'steps', 'scales', 'gamma', 'adam', 'b1',
        'b2', 'eps', 'time_steps', 'notruth', 'random', 'flip', 'mosaic', 'letter_box',
        'mixup', 'cutmix', 'blur', 'gaussian_noise', 'track', 'augment_speed',
        'sequential_subdivisions', 'try_fix_nan', 'loss_scale', 'dynamic_minibatch',
        'optimized_memory', 'workspace_size_limit_mb', 'label_smooth_eps', 'max_chart_loss'}
_OPTIONS = {
    'convolutional': {'filters', 'size', 'stride', 'pad', 'padding', 'groups', 'activation',
                      'batch_normalize', 'binary', 'xnor', 'dilation', 'flipped', 'dot',
                      'dontload', 'dontloadscales', 'numload'},
    'maxpool': {'size', 'stride', 'padding'},
    'avgpool': set(),
    'route': {'layers', 'groups', 'group_id'},
    'shortcut': {'from', 'activation', 'alpha', 'beta', 'weights_type'},
    'upsample': {'stride', 'scale'},
    'reorg': {'stride', 'reverse', 'flatten', 'extra'},
    'connected': {'output', 'activation', 'batch_normalize', 'dontload', 'dontloadscales'},
    'softmax': {'groups', 'temperature', 'tree', 'spatial', 'noloss'},
    'dropout': {'probability', 'dropblock', 'dropblock_size_abs', 'dropblock_size_rel'},
    'crop': {'crop_height', 'crop_width', 'flip', 'angle', 'saturation', 'exposure',
             'noadjust', 'shift'},
    'yolo': {'mask', 'anchors', 'classes', 'num', 'jitter', 'ignore_thresh', 'truth_thresh',
             'random', 'scale_x_y', 'iou_thresh', 'cls_normalizer', 'iou_normalizer',
             'iou_loss', 'nms_kind', 'beta_nms', 'max_delta', 'counters_per_class',
             'label_smooth_eps', 'resize', 'focal_loss', 'max', 'new_coords',
             'objectness_smooth', 'obj_normalizer', 'delta_normalizer'},
    'region': {'anchors', 'classes', 'coords', 'num', 'softmax', 'jitter', 'rescore', 'thresh',
               'absolute', 'random', 'bias_match', 'object_scale', 'noobject_scale',
               'class_scale', 'coord_scale', 'log', 'sqrt', 'background', 'tree', 'map', 'max'},
}
_ALIASES = {'net': 'net', 'network': 'net', 'conv': 'convolutional',
            'convolutional': 'convolutional', 'max': 'maxpool', 'maxpool': 'maxpool',
            'avg': 'avgpool', 'avgpool': 'avgpool', 'conn': 'connected',
            'connected': 'connected', 'soft': 'softmax', 'softmax': 'softmax',
            'route': 'route', 'shortcut': 'shortcut', 'upsample': 'upsample', 'reorg': 'reorg',
            'dropout': 'dropout', 'crop': 'crop', 'yolo': 'yolo', 'region': 'region'}


@dataclass
class Section:
    """One `[type]` block of a cfg file, with the line of every option for error messages."""

    kind: str
    line: int
    path: str
    options: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)

    def where(self, key=None):
        """Return 'file:line' of the section header or of one option."""
        return f'{self.path}:{self.lines.get(key, self.line)}'

    def _raw(self, key, default):
        return self.options.get(key, default)

    def get_int(self, key, default=None):
        """Return an int option (default when absent)."""
        raw = self._raw(key, default)
        if raw is default:
            return default
        try:
            return int(raw)
        except ValueError:
            raise DarknetError(f'{self.where(key)}: option {key}={raw!r} is not an integer') \
                from None

    def get_float(self, key, default=None):
        """Return a float option (default when absent)."""
        raw = self._raw(key, default)
        if raw is default:
            return default
        try:
            return float(raw)
        except ValueError:
            raise DarknetError(f'{self.where(key)}: option {key}={raw!r} is not a number') \
                from None

    def get_str(self, key, default=None):
        """Return a string option (default when absent)."""
        return self._raw(key, default)

    def get_list(self, key, kind=float, default=None):
        """Return a comma-separated list option."""
        raw = self._raw(key, default)
        if raw is default:
            return default
        try:
            return [kind(v) for v in raw.split(',') if v != '']
        except ValueError:
            raise DarknetError(f'{self.where(key)}: option {key}={raw!r} is not a list of '
                               f'{kind.__name__}') from None


def parse_cfg(path_or_text, path=None):
    """Parse a Darknet cfg; returns a list of Sections, the first one being [net]."""
    if path is None and '\n' not in str(path_or_text) and os.path.exists(str(path_or_text)):
        path = str(path_or_text)
        with open(path, encoding='utf-8', errors='replace') as f:
            text = f.read()
    else:
        text = str(path_or_text)
        path = path or '<cfg text>'
    text = text.lstrip('\ufeff')
    sections = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = ''.join(raw.split())  # Darknet strips all whitespace, also inside a line
        if not line or line[0] in '#;':
            continue
        if line[0] == '[':
            if line[-1] != ']':
                raise DarknetError(f'{path}:{lineno}: malformed section header {raw.strip()!r}')
            name = line[1:-1].lower()
            if name not in _ALIASES:
                raise DarknetError(f'{path}:{lineno}: unknown layer type [{name}] (supported: '
                                   + ', '.join(sorted(set(_ALIASES.values()) - {'net'}))
                                   + ')')
            sections.append(Section(_ALIASES[name], lineno, path))
            continue
        if '=' not in line:
            raise DarknetError(f'{path}:{lineno}: expected key=value, got {raw.strip()!r}')
        if not sections:
            raise DarknetError(f'{path}:{lineno}: option before the first [section]')
        key, value = line.split('=', 1)
        key = key.lower()
        sec = sections[-1]
        known = _NET if sec.kind == 'net' else _OPTIONS[sec.kind] | _LAYER_TRAINING
        if key not in known:
            raise DarknetError(f'{path}:{lineno}: unknown option {key!r} in [{sec.kind}] '
                               f'(section at line {sec.line})')
        sec.options[key] = value
        sec.lines[key] = lineno
    if not sections or sections[0].kind != 'net':
        raise DarknetError(f'{path}: the first section must be [net]')
    if len(sections) < 2:
        raise DarknetError(f'{path}: no layers after [net]')
    for sec in sections[1:]:
        if sec.kind == 'net':
            raise DarknetError(f'{sec.where()}: [net] may only be the first section')
    return sections


# ------------------------------------------------------------------------------------------
# layers


def _leaky(x):
    return F.leaky_relu(x, 0.1)


def _relie(x):
    return F.leaky_relu(x, 0.01)


def _ramp(x):
    return x * (x > 0) + 0.1 * x


def _loggy(x):
    return 2 * torch.sigmoid(x) - 1


def _hardtan(x):
    return x.clamp(-1, 1)


def _swish(x):
    return x * torch.sigmoid(x)


ACTIVATIONS = {
    'linear': None, 'leaky': _leaky, 'relu': F.relu, 'logistic': torch.sigmoid,
    'mish': F.mish, 'swish': _swish, 'tanh': torch.tanh, 'elu': F.elu, 'selu': F.selu,
    'relie': _relie, 'ramp': _ramp, 'loggy': _loggy, 'hardtan': _hardtan,
}


def _activation(sec, default='logistic'):
    name = sec.get_str('activation', default).lower()
    if name not in ACTIVATIONS:
        raise DarknetError(f'{sec.where("activation")}: unsupported activation {name!r} '
                           f'(supported: {", ".join(sorted(ACTIVATIONS))})')
    return name


class DarknetLayer(nn.Module):
    """Base of all cfg layers: knows its cfg type, line and the layers it reads from."""

    sources = ()     # indices of earlier layers whose outputs this layer reads (route/shortcut)
    is_head = False  # yolo/region: its output is a model output

    def __init__(self, sec):
        super().__init__()
        self.cfg_type = sec.kind
        self.cfg_line = sec.line
        self.act_name = 'linear'

    def act(self, x):
        """Apply the layer's activation."""
        fn = ACTIVATIONS[self.act_name]
        return x if fn is None else fn(x)

    def extra_repr(self):
        return f'cfg line {self.cfg_line}'


class BatchNorm(nn.Module):
    """Darknet's inference batch norm: (x - mean) / (sqrt(var) + 1e-6) * scale + bias."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer('running_mean', torch.zeros(n))
        self.register_buffer('running_var', torch.ones(n))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = (x - self.running_mean.view(shape)) / (self.running_var.sqrt() + 1e-6).view(shape)
        return x * self.weight.view(shape) + self.bias.view(shape)


class Convolutional(DarknetLayer):
    """[convolutional]: conv (+ batch norm) + activation."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        filters = sec.get_int('filters', 1)
        size = sec.get_int('size', 1)
        stride = sec.get_int('stride', 1)
        padding = size // 2 if sec.get_int('pad', 0) else sec.get_int('padding', 0)
        groups = sec.get_int('groups', 1)
        dilation = sec.get_int('dilation', 1)
        bn = bool(sec.get_int('batch_normalize', 0))
        for key in ('binary', 'xnor', 'dontload', 'dontloadscales'):
            if sec.get_int(key, 0):
                raise DarknetError(f'{sec.where(key)}: {key}=1 is not supported')
        if min(filters, size, stride, groups, dilation) < 1 or c % groups or filters % groups:
            raise DarknetError(f'{sec.where()}: bad convolution (filters={filters}, '
                               f'size={size}, stride={stride}, groups={groups}, in={c})')
        eff = dilation * (size - 1) + 1
        self.out_shape = (filters, (h + 2 * padding - eff) // stride + 1,
                          (w + 2 * padding - eff) // stride + 1)
        if min(self.out_shape[1:]) < 1 or filters * (c // groups) * size * size > MAX_WEIGHTS:
            raise DarknetError(f'{sec.where()}: a {size}x{size} kernel (dilation {dilation}, '
                               f'{filters} filters) does not fit its {c}x{h}x{w} input')
        self.act_name = _activation(sec)
        self.conv = nn.Conv2d(c, filters, size, stride, padding, dilation=dilation,
                              groups=groups, bias=not bn)
        self.bn = BatchNorm(filters) if bn else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def darknet_tensors(self, prefix):
        """Return (state_dict key, shape) in the order Darknet stores them."""
        n = self.conv.out_channels
        if self.bn is not None:
            names = [('bn.bias', (n,)), ('bn.weight', (n,)), ('bn.running_mean', (n,)),
                     ('bn.running_var', (n,))]
        else:
            names = [('conv.bias', (n,))]
        names.append(('conv.weight', tuple(self.conv.weight.shape)))
        return [(prefix + k, s) for k, s in names]


class Connected(DarknetLayer):
    """[connected]: fully connected (+ batch norm) + activation on the flattened input."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        out = sec.get_int('output', 1)
        bn = bool(sec.get_int('batch_normalize', 0))
        for key in ('dontload', 'dontloadscales'):
            if sec.get_int(key, 0):
                raise DarknetError(f'{sec.where(key)}: {key}=1 is not supported')
        if out < 1 or out * c * h * w > MAX_WEIGHTS:
            raise DarknetError(f'{sec.where("output")}: output={out} over a {c}x{h}x{w} input '
                               'is not a layer this runtime can hold')
        self.act_name = _activation(sec)
        self.fc = nn.Linear(c * h * w, out, bias=not bn)
        self.bn = BatchNorm(out) if bn else None
        self.out_shape = (out, 1, 1)

    def forward(self, x):
        x = self.fc(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]

    def darknet_tensors(self, prefix):
        """Return (state_dict key, shape) in the order Darknet stores them."""
        n = self.fc.out_features
        if self.bn is None:
            names = [('fc.bias', (n,)), ('fc.weight', tuple(self.fc.weight.shape))]
        else:
            names = [('bn.bias', (n,)), ('fc.weight', tuple(self.fc.weight.shape)),
                     ('bn.weight', (n,)), ('bn.running_mean', (n,)), ('bn.running_var', (n,))]
        return [(prefix + k, s) for k, s in names]


class MaxPool(DarknetLayer):
    """[maxpool] with Darknet's padding rule (padding=size-1 by default, left gets half)."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        stride = sec.get_int('stride', 1)
        size = sec.get_int('size', stride)
        padding = sec.get_int('padding', size - 1)
        if size < 1 or stride < 1 or padding < 0:
            raise DarknetError(f'{sec.where()}: bad maxpool size={size} stride={stride}')
        self.size, self.stride = size, stride
        oh = (h + padding - size) // stride + 1
        ow = (w + padding - size) // stride + 1
        lo = padding // 2
        self.pad = (lo, max(0, (ow - 1) * stride + size - w - lo),
                    lo, max(0, (oh - 1) * stride + size - h - lo))
        self.out_shape = (c, oh, ow)

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, self.pad, value=float('-inf'))
        return F.max_pool2d(x, self.size, self.stride)


class AvgPool(DarknetLayer):
    """[avgpool]: global average pooling."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.out_shape = (c, 1, 1)

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class Softmax(DarknetLayer):
    """[softmax] over the flattened input, in `groups` equal groups."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.groups = sec.get_int('groups', 1)
        self.temperature = sec.get_float('temperature', 1.0)
        if sec.get_str('tree') or sec.get_int('spatial', 0):
            raise DarknetError(f'{sec.where()}: softmax tree/spatial is not supported')
        if self.groups < 1 or (c * h * w) % self.groups:
            raise DarknetError(f'{sec.where()}: {c * h * w} inputs do not split into '
                               f'{self.groups} groups')
        self.out_shape = (c, h, w)

    def forward(self, x):
        flat = x.reshape(x.shape[0], self.groups, -1) / self.temperature
        return flat.softmax(-1).reshape(x.shape)


class Dropout(DarknetLayer):
    """[dropout]: identity at inference."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.out_shape = (c, h, w)

    def forward(self, x):
        return x


class Crop(DarknetLayer):
    """[crop] at test time: centre crop, and x*2-1 unless noadjust=1 (as Darknet does)."""

    def __init__(self, sec, c, h, w, scale_hw=(1.0, 1.0)):
        super().__init__(sec)
        ch = int(round(sec.get_int('crop_height', 1) * scale_hw[0]))
        cw = int(round(sec.get_int('crop_width', 1) * scale_hw[1]))
        if not (0 < ch <= h and 0 < cw <= w):
            raise DarknetError(f'{sec.where()}: crop {ch}x{cw} does not fit input {h}x{w}')
        self.top, self.left = (h - ch) // 2, (w - cw) // 2
        self.adjust = not sec.get_int('noadjust', 0)
        self.out_shape = (c, ch, cw)

    def forward(self, x):
        _, ch, cw = self.out_shape
        x = x[:, :, self.top:self.top + ch, self.left:self.left + cw]
        return x * 2 - 1 if self.adjust else x


class Route(DarknetLayer):
    """[route]: concatenate earlier outputs along channels (optionally one channel group)."""

    def __init__(self, sec, index, shapes):
        super().__init__(sec)
        layers = sec.get_list('layers', int)
        if not layers:
            raise DarknetError(f'{sec.where()}: [route] needs layers=')
        self.sources = tuple(_resolve(sec, index, v, 'layers') for v in layers)
        self.groups = sec.get_int('groups', 1)
        self.group_id = sec.get_int('group_id', 0)
        hw = {shapes[i][1:] for i in self.sources}
        if len(hw) != 1:
            raise DarknetError(f'{sec.where("layers")}: route inputs have different sizes '
                               f'{[shapes[i] for i in self.sources]} (input size must be a '
                               'multiple of the network stride, usually 32)')
        c = sum(shapes[i][0] for i in self.sources)
        if self.groups < 1 or any(shapes[i][0] % self.groups for i in self.sources):
            raise DarknetError(f'{sec.where("groups")}: channels do not split into '
                               f'{self.groups} groups')
        self.out_shape = (c // self.groups,) + next(iter(hw))

    def forward(self, *inputs):
        if self.groups > 1:
            inputs = [t.chunk(self.groups, dim=1)[self.group_id] for t in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class Shortcut(DarknetLayer):
    """[shortcut]: alpha * previous + beta * layer[from], then activation (Darknet rules)."""

    def __init__(self, sec, index, shapes):
        super().__init__(sec)
        frm = sec.get_list('from', int)
        if not frm or len(frm) != 1:
            raise DarknetError(f'{sec.where()}: [shortcut] needs exactly one from= layer')
        if sec.get_str('weights_type', 'none') != 'none':
            raise DarknetError(f'{sec.where("weights_type")}: weighted shortcut is not '
                               'supported')
        self.sources = (_resolve(sec, index, frm[0], 'from'),)
        self.alpha = sec.get_float('alpha', 1.0)
        self.beta = sec.get_float('beta', 1.0)
        self.act_name = _activation(sec, 'linear')
        c1, h1, w1 = shapes[self.sources[0]]
        c2, h2, w2 = shapes[index - 1]
        self.stride = max(1, w1 // w2)
        self.sample = max(1, w2 // w1)
        if self.stride != max(1, h1 // h2) or self.sample != max(1, h2 // h1):
            raise DarknetError(f'{sec.where()}: shortcut shapes {shapes[self.sources[0]]} '
                               f'and {shapes[index - 1]} are not compatible')
        self.minc, self.minh, self.minw = min(c1, c2), min(h1, h2), min(w1, w2)
        self.same = (c1, h1, w1) == (c2, h2, w2)
        self.out_shape = (c2, h2, w2)

    def forward(self, x, add):
        if self.same:
            out = x + add if self.alpha == 1 and self.beta == 1 else \
                self.alpha * x + self.beta * add
        else:  # Darknet's shortcut_cpu for different sizes: sub/over-sample, min channels
            st, sa = self.stride, self.sample
            a = add[:, :self.minc, ::st, ::st][:, :, :self.minh, :self.minw]
            out = x.clone()
            view = out[:, :self.minc, ::sa, ::sa][:, :, :self.minh, :self.minw]
            view.copy_(self.alpha * view + self.beta * a)
        return self.act(out)


class Upsample(DarknetLayer):
    """[upsample]: nearest neighbour by an integer stride, times scale."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.stride = sec.get_int('stride', 2)
        self.scale = sec.get_float('scale', 1.0)
        if self.stride < 1:
            raise DarknetError(f'{sec.where("stride")}: only positive upsample strides are '
                               'supported')
        self.out_shape = (c, h * self.stride, w * self.stride)

    def forward(self, x):
        s = self.stride
        x = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        return x * self.scale if self.scale != 1 else x


class Reorg(DarknetLayer):
    """[reorg] exactly as Darknet's reorg_cpu(..., forward=0) (YOLOv2's passthrough)."""

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.stride = sec.get_int('stride', 1)
        for key in ('reverse', 'flatten', 'extra'):
            if sec.get_int(key, 0):
                raise DarknetError(f'{sec.where(key)}: reorg {key}=1 is not supported')
        s = self.stride
        if s < 1 or h % s or w % s or c % (s * s):
            raise DarknetError(f'{sec.where()}: reorg stride {s} does not divide input '
                               f'{c}x{h}x{w}')
        self.out_shape = (c * s * s, h // s, w // s)

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        # Darknet reads the input buffer as [c/s^2, h*s, w*s] and writes it out as [c, h, w].
        v = x.reshape(b, c // (s * s), h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return v.reshape(b, c * s * s, h // s, w // s)


class Yolo(DarknetLayer):
    """[yolo] (v3): logistic on x, y, objectness and classes; decoding is in postprocess."""

    is_head = True

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.classes = sec.get_int('classes', 20)
        total = sec.get_int('num', 1)
        anchors = sec.get_list('anchors', float, [])
        mask = sec.get_list('mask', int, list(range(total)))
        if len(anchors) < 2 * total:
            raise DarknetError(f'{sec.where("anchors")}: {len(anchors)} anchor values for '
                               f'num={total} (need {2 * total})')
        if any(m < 0 or m >= total for m in mask):
            raise DarknetError(f'{sec.where("mask")}: mask {mask} outside 0..{total - 1}')
        if sec.get_int('new_coords', 0):
            raise DarknetError(f'{sec.where("new_coords")}: new_coords=1 is not supported')
        self.anchors = [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]
        self.scale_x_y = sec.get_float('scale_x_y', 1.0)
        n = len(mask)
        if c != n * (self.classes + 5):
            raise DarknetError(f'{sec.where()}: [yolo] input has {c} channels, expected '
                               f'{n} anchors * ({self.classes} classes + 5) = '
                               f'{n * (self.classes + 5)}')
        self.out_shape = (c, h, w)

    def forward(self, x):
        b, c, h, w = x.shape
        n = len(self.anchors)
        v = x.reshape(b, n, self.classes + 5, h, w)
        v = torch.cat([torch.sigmoid(v[:, :, 0:2]), v[:, :, 2:4], torch.sigmoid(v[:, :, 4:])],
                      dim=2)
        return v.reshape(b, c, h, w)


class Region(DarknetLayer):
    """[region] (v2): logistic on x, y, objectness; softmax (or logistic) on classes."""

    is_head = True

    def __init__(self, sec, c, h, w):
        super().__init__(sec)
        self.classes = sec.get_int('classes', 20)
        self.coords = sec.get_int('coords', 4)
        n = sec.get_int('num', 1)
        self.softmax = bool(sec.get_int('softmax', 0))
        anchors = sec.get_list('anchors', float, [0.5] * (2 * n))
        for key in ('tree', 'map'):
            if sec.get_str(key):
                raise DarknetError(f'{sec.where(key)}: region {key}= is not supported')
        if sec.get_int('background', 0) or self.coords != 4:
            raise DarknetError(f'{sec.where()}: region background=1 / coords!=4 not supported')
        if len(anchors) < 2 * n:
            raise DarknetError(f'{sec.where("anchors")}: {len(anchors)} anchor values for '
                               f'num={n} (need {2 * n})')
        self.anchors = [(anchors[2 * i], anchors[2 * i + 1]) for i in range(n)]
        if c != n * (self.classes + 5):
            raise DarknetError(f'{sec.where()}: [region] input has {c} channels, expected '
                               f'{n} * ({self.classes} + 5) = {n * (self.classes + 5)}')
        self.out_shape = (c, h, w)

    def forward(self, x):
        b, c, h, w = x.shape
        n = len(self.anchors)
        v = x.reshape(b, n, self.classes + 5, h, w)
        cls = v[:, :, 5:].softmax(dim=2) if self.softmax else torch.sigmoid(v[:, :, 5:])
        v = torch.cat([torch.sigmoid(v[:, :, 0:2]), v[:, :, 2:4], torch.sigmoid(v[:, :, 4:5]),
                       cls], dim=2)
        return v.reshape(b, c, h, w)


def _resolve(sec, index, value, key):
    j = index + value if value < 0 else value
    if not 0 <= j < index:
        raise DarknetError(f'{sec.where(key)}: layer {index} refers to layer {value} '
                           f'(-> {j}), which is not an earlier layer')
    return j


_SIMPLE = {'convolutional': Convolutional, 'connected': Connected, 'maxpool': MaxPool,
           'avgpool': AvgPool, 'softmax': Softmax, 'dropout': Dropout, 'upsample': Upsample,
           'reorg': Reorg, 'yolo': Yolo, 'region': Region}


class DarknetModel(nn.Module):
    """
    The network of one cfg; forward(x [B,3,H,W]) returns a list of head outputs.

    For detectors the list holds the outputs of the yolo/region layers (activated as Darknet
    does, shape [B, anchors*(5+classes), h, w]); for classifiers it holds the last layer's
    output flattened to [B, outputs]. Intermediate outputs are dropped after their last use.
    """

    def __init__(self, sections, input_size=None, cfg_path='<cfg text>'):
        super().__init__()
        net = sections[0]
        cfg_h, cfg_w = net.get_int('height', 0), net.get_int('width', 0)
        c = net.get_int('channels', 3)
        if input_size is None:
            if cfg_h <= 0 or cfg_w <= 0:
                raise DarknetError(f'{net.where()}: [net] needs height= and width=')
            input_size = (cfg_h, cfg_w)
        h, w = input_size
        if c != 3:
            raise DarknetError(f'{net.where("channels")}: only 3-channel (RGB) networks are '
                               f'supported, cfg has channels={c}')
        scale_hw = (h / cfg_h if cfg_h else 1.0, w / cfg_w if cfg_w else 1.0)
        self.cfg_path = str(cfg_path)
        self.input_size = (h, w)
        layers, shapes = [], []
        shape = (c, h, w)
        for index, sec in enumerate(sections[1:]):
            try:
                if sec.kind in ('route', 'shortcut'):
                    layer = (Route if sec.kind == 'route' else Shortcut)(sec, index, shapes)
                elif sec.kind == 'crop':
                    layer = Crop(sec, *shape, scale_hw=scale_hw)
                else:
                    layer = _SIMPLE[sec.kind](sec, *shape)
            except (IndexError, ZeroDivisionError) as e:
                raise DarknetError(f'{sec.where()}: cannot build layer {index} '
                                   f'[{sec.kind}]: {e}') from e
            shape = layer.out_shape
            if min(shape) < 1:
                raise DarknetError(f'{sec.where()}: layer {index} [{sec.kind}] has empty '
                                   f'output {shape} for input size {h}x{w} (input too small?)')
            layers.append(layer)
            shapes.append(shape)
        self.layers = nn.ModuleList(layers)
        self.shapes = shapes
        self.heads = [i for i, layer in enumerate(layers) if layer.is_head]
        last_use = {}
        for i, layer in enumerate(layers):
            for j in layer.sources:
                last_use[j] = i
        self._keep = set(last_use)
        self._free_after = {}
        for j, i in last_use.items():
            self._free_after.setdefault(i, []).append(j)

    def forward(self, x):
        saved = {}
        heads = []
        for i, layer in enumerate(self.layers):
            if layer.sources:
                ins = [saved[j] if j != i - 1 else x for j in layer.sources]
                x = layer(x, *ins) if isinstance(layer, Shortcut) else layer(*ins)
            else:
                x = layer(x)
            if i in self._keep:
                saved[i] = x
            for j in self._free_after.get(i, ()):
                saved.pop(j, None)
            if layer.is_head:
                heads.append(x)
        return heads if heads else [x.flatten(1)]

    def darknet_tensors(self):
        """Yield (layer index, layer, [(state_dict key, shape)]) in .weights file order."""
        for i, layer in enumerate(self.layers):
            if hasattr(layer, 'darknet_tensors'):
                yield i, layer, layer.darknet_tensors(f'layers.{i}.')


# ------------------------------------------------------------------------------------------
# .weights files


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


# ------------------------------------------------------------------------------------------
# pre- and post-processing


def _resize_axis(x, out, dim):
    """Resize along one axis exactly like Darknet's resize_image (float32, corners aligned)."""
    n = x.shape[dim]
    if out == n:
        return x
    if out == 1 or n == 1:
        idx = torch.full((out,), n - 1, dtype=torch.long, device=x.device)
        return x.index_select(dim, idx)
    scale = torch.tensor(np.float32(n - 1) / np.float32(out - 1), dtype=torch.float32)
    s = torch.arange(out, dtype=torch.float32) * scale
    i0 = s.long()
    d = s - i0.float()
    i0[-1] = n - 1   # the last sample is the last pixel, without interpolation
    d[-1] = 0.0
    i1 = (i0 + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[dim] = out
    d = d.to(x.device, x.dtype).view(shape)
    a = x.index_select(dim, i0.to(x.device))
    b = x.index_select(dim, i1.to(x.device))
    return (1 - d) * a + d * b


def letterbox_geometry(img_h, img_w, net_h, net_w):
    """Return (new_h, new_w, top, left) of Darknet's letterbox_image."""
    if np.float32(net_w) / np.float32(img_w) < np.float32(net_h) / np.float32(img_h):
        new_w, new_h = net_w, (img_h * net_w) // img_w
    else:
        new_h, new_w = net_h, (img_w * net_h) // img_h
    return new_h, new_w, (net_h - new_h) // 2, (net_w - new_w) // 2


def letterbox(image, net_h, net_w, device='cpu'):
    """Letterbox an RGB uint8 HxWx3 tensor into a float32 [3, net_h, net_w] tensor in [0, 1]."""
    h, w = image.shape[:2]
    new_h, new_w, top, left = letterbox_geometry(h, w, net_h, net_w)
    x = image.to(device).permute(2, 0, 1).float() / 255.0
    x = _resize_axis(x, new_w, 2)
    x = _resize_axis(x, new_h, 1)
    out = torch.full((3, net_h, net_w), 0.5, dtype=torch.float32, device=device)
    out[:, top:top + new_h, left:left + new_w] = x
    return out


def correct_boxes(cx, cy, bw, bh, img_h, img_w, net_h, net_w):
    """Undo the letterbox (Darknet's correct_yolo_boxes) and return xyxy in image pixels."""
    new_h, new_w, _, _ = letterbox_geometry(img_h, img_w, net_h, net_w)
    cx = (cx - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    cy = (cy - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    bw = bw * (net_w / new_w)
    bh = bh * (net_h / new_h)
    x1 = ((cx - bw / 2) * img_w).clamp(0, img_w - 1)
    x2 = ((cx + bw / 2) * img_w).clamp(0, img_w - 1)
    y1 = ((cy - bh / 2) * img_h).clamp(0, img_h - 1)
    y2 = ((cy + bh / 2) * img_h).clamp(0, img_h - 1)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def decode_head(layer, out, net_h, net_w):
    """
    Decode one image's head output [A*(5+C), h, w] into (cx, cy, bw, bh, obj, cls_prob).

    Coordinates are relative to the network input (0..1), as Darknet's get_*_box.
    """
    n = len(layer.anchors)
    c5 = layer.classes + 5
    h, w = out.shape[-2:]
    v = out.float().reshape(n, c5, h, w)
    anchors = torch.tensor(layer.anchors, dtype=torch.float32, device=out.device)
    col = torch.arange(w, dtype=torch.float32, device=out.device).view(1, 1, w)
    row = torch.arange(h, dtype=torch.float32, device=out.device).view(1, h, 1)
    tx, ty = v[:, 0], v[:, 1]
    if isinstance(layer, Yolo):
        s = layer.scale_x_y
        if s != 1.0:
            tx, ty = tx * s - (s - 1) / 2, ty * s - (s - 1) / 2
        cx, cy = (col + tx) / w, (row + ty) / h
        bw = torch.exp(v[:, 2]) * anchors[:, 0].view(n, 1, 1) / net_w
        bh = torch.exp(v[:, 3]) * anchors[:, 1].view(n, 1, 1) / net_h
    else:  # region: anchors in grid cells
        cx, cy = (col + tx) / w, (row + ty) / h
        bw = torch.exp(v[:, 2]) * anchors[:, 0].view(n, 1, 1) / w
        bh = torch.exp(v[:, 3]) * anchors[:, 1].view(n, 1, 1) / h
    return (cx.reshape(-1), cy.reshape(-1), bw.reshape(-1), bh.reshape(-1),
            v[:, 4].reshape(-1), v[:, 5:].permute(0, 2, 3, 1).reshape(-1, layer.classes))


class DarknetDetector(Detector):
    """A Darknet cfg with letterbox preprocessing and YOLO decoding (or top-k for classifiers)."""

    # at most this many (box, class) candidates enter NMS; real weights stay far below it
    max_candidates = 5000

    def __init__(self, model, cfg_path, class_names, build_args, device='cpu'):
        kind = 'detector' if model.heads else 'classifier'
        super().__init__(name=Path(cfg_path).stem, spec=build_args['spec'], model=model,
                         class_names=class_names, input_size=model.input_size,
                         build_args=build_args, device=device)
        self.kind = kind
        self.cfg_path = str(cfg_path)
        # layer metadata (anchors, classes) for decoding; holds no weights the decoder reads
        self._layers = list(model.layers)
        self._heads = list(model.heads)

    def preprocess(self, images):
        """Letterbox every image to the network size and stack them into one batch."""
        images = as_image_list(images)
        net_h, net_w = self.input_size
        x = torch.stack([letterbox(img, net_h, net_w, self.device) for img in images])
        meta = {'sizes': [tuple(img.shape[:2]) for img in images], 'net': (net_h, net_w)}
        return x.to(self.dtype), meta

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100):
        """Decode heads, threshold like Darknet (obj > t, obj*p > t), per-class NMS."""
        if self.kind == 'classifier':
            return self._topk(outputs[0], max(1, min(5, max_detections)))
        import torchvision.ops
        net_h, net_w = meta['net']
        heads = [self.model_layers[i] for i in self.model_heads]
        results = []
        for b, (img_h, img_w) in enumerate(meta['sizes']):
            boxes, scores, ids = [], [], []
            for layer, out in zip(heads, outputs):
                cx, cy, bw, bh, obj, cls = decode_head(layer, out[b], net_h, net_w)
                keep = obj > score_threshold
                if not keep.any():
                    continue
                probs = obj[keep, None] * cls[keep]
                cand, cid = (probs > score_threshold).nonzero(as_tuple=True)
                if cand.numel() == 0:
                    continue
                xyxy = correct_boxes(cx[keep], cy[keep], bw[keep], bh[keep], img_h, img_w,
                                     net_h, net_w)
                boxes.append(xyxy[cand])
                scores.append(probs[cand, cid])
                ids.append(cid)
            if not boxes:
                results.append(Detections.empty(self.device))
                continue
            boxes, scores, ids = torch.cat(boxes), torch.cat(scores), torch.cat(ids)
            if scores.numel() > self.max_candidates:
                top = scores.topk(self.max_candidates).indices
                boxes, scores, ids = boxes[top], scores[top], ids[top]
            keep = torchvision.ops.batched_nms(boxes, scores, ids, nms_iou)[:max_detections]
            ids = ids[keep].long()
            results.append(Detections(boxes[keep].float(), scores[keep].float(), ids,
                                      [self._name(i) for i in ids.tolist()]))
        return results

    @property
    def model_layers(self):
        """Return the cfg layers (kept also when the executor wraps the model)."""
        return self._layers

    @property
    def model_heads(self):
        """Return the indices of the yolo/region layers."""
        return self._heads

    def _topk(self, probs, k):
        results = []
        probs = probs.float()
        for row in probs:
            k = min(k, row.numel())
            vals, idx = row.topk(k)
            topk = [(int(i), self._name(int(i)), float(v)) for v, i in zip(vals, idx)]
            det = Detections(torch.zeros((0, 4)), vals.cpu(), idx.cpu(),
                             [t[1] for t in topk], has_boxes=False, topk=topk)
            results.append(det)
        return results

    def _name(self, i):
        return self.class_names[i] if i < len(self.class_names) else f'class_{i}'


def _class_names(model, names=None):
    if names:
        return assets.read_names(names)
    if model.heads:
        n = model.layers[model.heads[-1]].classes
    else:
        n = model.shapes[-1][0] * model.shapes[-1][1] * model.shapes[-1][2]
    try:
        if n == 80:
            return assets.coco_names()
        if n == 1000:
            return assets.imagenet_names()
        if n == 20:
            return assets.read_names(assets.darknet_data('voc.names'))
    except FileNotFoundError:
        pass
    return [f'class_{i}' for i in range(n)]


def resolve_cfg(arg):
    """Turn 'yolov3' or a path into the path of an existing cfg file."""
    p = Path(arg).expanduser()
    if p.is_file():
        return p.resolve()
    if '/' not in arg:
        d = assets.darknet_dir() / 'cfg'
        name = arg[:-4] if arg.endswith('.cfg') else arg
        if not (d / f'{name}.cfg').is_file():
            known = ', '.join(sorted(p.stem for p in d.glob('*.cfg')))
            raise FileNotFoundError(f'no Darknet cfg named {arg!r} in {d} (known: {known})')
        return (d / f'{name}.cfg').resolve()
    raise FileNotFoundError(f'Darknet cfg file {arg} not found')


def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
          names=None, **kwargs):
    """Build a DarknetDetector from a cfg path or name (registry family 'darknet')."""
    if kwargs:
        raise TypeError(f'darknet models take no options {sorted(kwargs)}')
    cfg = resolve_cfg(arg)
    sections = parse_cfg(cfg)
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
    if meta:
        with torch.device('meta'):
            model = DarknetModel(sections, input_size, cfg_path=cfg)
    else:
        model = DarknetModel(sections, input_size, cfg_path=cfg)
        if weights is None:
            init_darknet_(model, 0 if seed is None else seed)
        elif str(weights).endswith('.weights'):
            _, state = read_darknet_weights(model, weights)
            model.load_state_dict(state, strict=True)
        else:
            load_weights_into(model, load_state_dict_file(weights), weights)
    model.eval()
    build_args = {'spec': f'darknet:{cfg}', 'input_size': list(model.input_size)}
    if names:
        build_args['names'] = str(names)
    det = DarknetDetector(model, cfg, _class_names(model, names), build_args, device=device)
    if not meta:
        model.to(device)
    return det
