# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
YOLOv4 (Bochkovskiy et al. 2020) as cfg text, built from its published description.

The Demand Layering paper evaluated YOLOv4 beside YOLOv2/v3, but no package registry carries
AlexeyAB's yolov4.cfg (Debian's darknet is pjreddie's and stops at YOLOv3), so the network is
written out here, section by section, in the layout of that cfg: a CSPDarknet53 backbone (mish),
an SPP block (max pools 5/9/13 at stride 1), a PAN neck (leaky) and three [yolo] heads with
scale_x_y. The existing parser reads the text like any cfg file. Checked: 162 layers and
64,429,405 floats, i.e. the 257,717,640-byte yolov4.weights less its 20-byte header.

`BUILTIN` maps the cfg names built here to their text generators; `builtin_cfg(name)` writes the
text (once) to a cache directory and returns its path, so `darknet:yolov4` resolves like the
Debian cfg names and a pack copies the file as it copies any cfg.
"""

import os
from pathlib import Path
import tempfile

from demand_layering_ros import atomic

ANCHORS = '12, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401'


def _conv(filters, size=1, stride=1, act='mish', bn=True):
    out = ['[convolutional]'] + (['batch_normalize=1'] if bn else [])
    return out + [f'filters={filters}', f'size={size}', f'stride={stride}', 'pad=1',
                  f'activation={act}']


def _csp_stage(filters, blocks, first=False):
    """Return a CSPDarknet53 stage: downsample, split, residual blocks, transition, concat."""
    half = filters if first else filters // 2
    out = [_conv(filters, 3, 2), _conv(half, 1), ['[route]', 'layers=-2'], _conv(half, 1)]
    for _ in range(blocks):
        out += [_conv(filters // 2 if first else half, 1), _conv(half, 3),
                ['[shortcut]', 'from=-3', 'activation=linear']]
    out += [_conv(half, 1), ['[route]', f'layers=-1,-{3 * blocks + 4}'], _conv(filters, 1)]
    return out


def _yolo(mask, scale):
    return ['[yolo]', f'mask={mask}', f'anchors={ANCHORS}', 'classes=80', 'num=9',
            'jitter=.3', 'ignore_thresh=.7', 'truth_thresh=1', f'scale_x_y={scale}',
            'iou_thresh=0.213', 'cls_normalizer=1.0', 'iou_normalizer=0.07', 'iou_loss=ciou',
            'nms_kind=greedynms', 'beta_nms=0.6', 'max_delta=5']


def _leaky_block(n, f):
    """Return n alternating 1x1 (f) and 3x3 (2f) leaky convolutions, starting with 1x1."""
    return [_conv(f, 1, act='leaky') if i % 2 == 0 else _conv(2 * f, 3, act='leaky')
            for i in range(n)]


def _up(filters, lateral):
    """Return the PAN's top-down step: 1x1, upsample, route the backbone layer, 1x1, concat."""
    return [_conv(filters, 1, act='leaky'), ['[upsample]', 'stride=2'],
            ['[route]', f'layers={lateral}'], _conv(filters, 1, act='leaky'),
            ['[route]', 'layers=-1,-3']]


def _down(filters, lateral):
    """Return the PAN's bottom-up step: route the head input, 3x3 stride 2, concat."""
    return [['[route]', 'layers=-4'], _conv(filters, 3, 2, act='leaky'),
            ['[route]', f'layers=-1,-{lateral}']]


def yolov4_sections(width=608, height=608):
    """Return YOLOv4's cfg as a list of sections, each a list of lines (Darknet indices)."""
    net = ['[net]', 'batch=1', 'subdivisions=1', f'width={width}', f'height={height}',
           'channels=3', 'momentum=0.949', 'decay=0.0005', 'angle=0', 'saturation=1.5',
           'exposure=1.5', 'hue=.1', 'learning_rate=0.0013', 'burn_in=1000',
           'max_batches=500500', 'policy=steps', 'steps=400000,450000', 'scales=.1,.1',
           'mosaic=1']
    s = [net, _conv(32, 3)]                                       # 0
    s += _csp_stage(64, 1, first=True)                            # 1..10
    s += _csp_stage(128, 2)                                       # 11..23
    s += _csp_stage(256, 8)                                       # 24..54
    s += _csp_stage(512, 8)                                       # 55..85
    s += _csp_stage(1024, 4)                                      # 86..104
    s += _leaky_block(3, 512)                                     # 105..107
    s += [['[maxpool]', 'stride=1', 'size=5'], ['[route]', 'layers=-2'],       # SPP 108..113
          ['[maxpool]', 'stride=1', 'size=9'], ['[route]', 'layers=-4'],
          ['[maxpool]', 'stride=1', 'size=13'], ['[route]', 'layers=-1,-3,-5,-6']]
    s += _leaky_block(3, 512)                                     # 114..116
    s += _up(256, 85) + _leaky_block(5, 256)                      # 117..126
    s += _up(128, 54) + _leaky_block(5, 128)                      # 127..136
    s += [_conv(256, 3, act='leaky'), _conv(255, 1, act='linear', bn=False),
          _yolo('0,1,2', 1.2)]                                    # 137..139 (stride 8)
    s += _down(256, 16) + _leaky_block(6, 256)                    # 140..148
    s += [_conv(255, 1, act='linear', bn=False), _yolo('3,4,5', 1.1)]          # 149..150
    s += _down(512, 37) + _leaky_block(6, 512)                    # 151..159
    s += [_conv(255, 1, act='linear', bn=False), _yolo('6,7,8', 1.05)]         # 160..161
    return s


def yolov4_cfg(width=608, height=608):
    """Return YOLOv4's cfg text."""
    return '\n\n'.join('\n'.join(sec) for sec in yolov4_sections(width, height)) + '\n'


BUILTIN = {'yolov4': yolov4_cfg}


def cache_dirs():
    """Return where built-in cfgs are written: $XDG_CACHE_HOME (~/.cache), else the temp dir."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return [Path(base) / 'demand_layering_ros' / 'cfg',
            Path(tempfile.gettempdir()) / f'demand_layering_ros-{os.getuid()}' / 'cfg']


def builtin_cfg(name):
    """Return the path of built-in cfg `name` (written on first use), or None if none."""
    make = BUILTIN.get(name)
    if make is None:
        return None
    text = make().encode()
    err = None
    for d in cache_dirs():
        path = d / f'{name}.cfg'
        try:
            if not path.is_file() or path.read_bytes() != text:
                atomic.write_bytes(path, lambda f: f.write(text), 'wb')
            return path.resolve()
        except OSError as e:          # a read-only home: try the next place
            err = e
    raise OSError(f'cannot write the built-in cfg {name}.cfg: {err}')
