# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The cfg layers as PyTorch modules, with Darknet's activations and inference batch norm.

Each layer is built from its cfg Section and the shape of its input, checks that it fits, and
owns its weights in `conv`, `bn` or `fc` children called through `__call__`, so the executor
can stream weights with module hooks.
"""

from demand_layering_ros.models.darknet.cfg import DarknetError
import torch
from torch import nn
import torch.nn.functional as F


MAX_WEIGHTS = 1 << 31    # elements of one layer's weight: more is a corrupt cfg, not a model


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

# The same functions overwriting their input, for inference: a layer's fresh output is
# activated where it lies instead of next to a copy (same kernels, bit-identical results).
ACTIVATIONS_INPLACE = {
    'leaky': lambda x: F.leaky_relu(x, 0.1, inplace=True),
    'relu': lambda x: F.relu(x, inplace=True), 'logistic': torch.sigmoid_,
    'mish': lambda x: F.mish(x, inplace=True), 'swish': lambda x: x.mul_(torch.sigmoid(x)),
    'tanh': torch.tanh_, 'elu': lambda x: F.elu(x, inplace=True),
    'selu': lambda x: F.selu(x, inplace=True),
    'relie': lambda x: F.leaky_relu(x, 0.01, inplace=True),
    'loggy': lambda x: x.sigmoid_().mul_(2).sub_(1), 'hardtan': lambda x: x.clamp_(-1, 1),
}


def may_overwrite():
    """Return True when a layer may overwrite its own fresh output: nothing records autograd."""
    return not torch.is_grad_enabled()


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
        """Apply the activation (at inference in place on `x`, the layer's own fresh output)."""
        fn = ACTIVATIONS[self.act_name]
        if fn is None:
            return x
        if may_overwrite() and self.act_name in ACTIVATIONS_INPLACE:
            return ACTIVATIONS_INPLACE[self.act_name](x)
        return fn(x)

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
        """Normalise; at inference in place over `x` (a conv or fc output nothing else holds)."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = self.running_mean.view(shape), (self.running_var.sqrt() + 1e-6).view(shape)
        if may_overwrite():
            return x.sub_(mean).div_(std).mul_(self.weight.view(shape)).add_(self.bias.view(shape))
        x = (x - mean) / std
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
        return max_pool(x, self.size, self.stride)


def _strided(x, dim, start, count, stride):
    """Return `count` slices of `x` along `dim` from `start`, `stride` apart (a view)."""
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, start + (count - 1) * stride + 1, stride)
    return x[tuple(index)]


def _max_along(x, dim, size, stride):
    """Max over windows of `size` along `dim` (no padding): one output, maxima in place."""
    count = (x.shape[dim] - size) // stride + 1
    out = _strided(x, dim, 0, count, stride).clone()
    for i in range(1, size):
        torch.maximum(out, _strided(x, dim, i, count, stride), out=out)
    return out


def max_pool(x, size, stride):
    """
    F.max_pool2d(x, size, stride) without its argmax indices: the same maxima (max is exact).

    On the CPU max_pool2d computes int64 indices beside the output and drops them (5.3 MiB at
    yolov3-tiny's first pool at 416x416) in a scalar loop: elementwise maxima of strided views
    run 6-7x faster here. Small windows are taken whole (size^2 maxima into the output), larger
    ones row then column (2 x size maxima; an SPP pool's stride 1 keeps that intermediate at
    the output's size). Other devices keep max_pool2d (not measured there), and so does a pass
    that records gradients (maxima written in place into `out` have none).
    """
    if x.device.type != 'cpu' or (x.requires_grad and torch.is_grad_enabled()):
        return F.max_pool2d(x, size, stride)
    if size <= 3:
        rows, cols = ((x.shape[d] - size) // stride + 1 for d in (2, 3))
        out = _strided(_strided(x, 2, 0, rows, stride), 3, 0, cols, stride).clone()
        for i in range(size):
            for j in range(size):
                if i or j:
                    torch.maximum(out, _strided(_strided(x, 2, i, rows, stride), 3, j, cols,
                                                stride), out=out)
        return out
    return _max_along(_max_along(x, 3, size, stride), 2, size, stride)


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


# cfg type -> layer class, for the layers built from their input shape alone
LAYER_TYPES = {'convolutional': Convolutional, 'connected': Connected, 'maxpool': MaxPool,
               'avgpool': AvgPool, 'softmax': Softmax, 'dropout': Dropout, 'upsample': Upsample,
               'reorg': Reorg, 'yolo': Yolo, 'region': Region}
