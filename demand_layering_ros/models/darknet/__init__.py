# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Darknet models (YOLOv2/v3/v4, ResNet, DenseNet, VGG, AlexNet) as plain PyTorch modules.

The Demand Layering paper ran Darknet networks, so we read Darknet's own files. `build` (the
registry's 'darknet' family) puts the parts together:
  cfg       the strict `.cfg` parser (Section, parse_cfg, DarknetError);
  layers    the cfg layers as modules (Convolutional, Route, Yolo, ...);
  model     DarknetModel: every cfg layer is the submodule `layers.<i>`;
  weights   `.weights` reader and writer, seeded init;
  detector  letterbox, yolo/region decoding, NMS: DarknetDetector;
  yolov4    YOLOv4's cfg written from its published description (no registry carries it).
"""

from pathlib import Path

from demand_layering_ros.models import assets
from demand_layering_ros.models.darknet import yolov4
from demand_layering_ros.models.darknet.cfg import DarknetError, parse_cfg, Section
from demand_layering_ros.models.darknet.detector import (class_names_for, correct_boxes,
                                                         DarknetDetector, decode_head,
                                                         letterbox, letterbox_geometry)
from demand_layering_ros.models.darknet.layers import (ACTIVATIONS, AvgPool, BatchNorm,
                                                       Connected, Convolutional, Crop,
                                                       DarknetLayer, Dropout, LAYER_TYPES,
                                                       MAX_WEIGHTS, MaxPool, Region, Reorg,
                                                       Route, Shortcut, Softmax, Upsample,
                                                       Yolo)
from demand_layering_ros.models.darknet.model import DarknetModel
from demand_layering_ros.models.darknet.weights import (init_darknet_, read_darknet_weights,
                                                        read_weights_header,
                                                        write_darknet_weights)
from demand_layering_ros.models.detector import load_state_dict_file, load_weights_into
import torch

__all__ = [
    'ACTIVATIONS', 'AvgPool', 'BatchNorm', 'build', 'class_names_for', 'Connected',
    'Convolutional', 'correct_boxes', 'Crop', 'DarknetDetector', 'DarknetError', 'DarknetLayer',
    'DarknetModel', 'decode_head', 'Dropout', 'init_darknet_', 'LAYER_TYPES', 'letterbox',
    'letterbox_geometry', 'MAX_WEIGHTS', 'MaxPool', 'parse_cfg', 'read_darknet_weights',
    'read_weights_header', 'Region', 'Reorg', 'resolve_cfg', 'Route', 'Section', 'Shortcut',
    'Softmax', 'Upsample', 'write_darknet_weights', 'Yolo',
]


def resolve_cfg(arg):
    """
    Turn 'yolov3' or a path into the path of an existing cfg file.

    A name is looked up in Debian's cfg directory, then among the cfgs built in code
    (`yolov4.BUILTIN`: YOLOv4, which no package registry carries).
    """
    p = Path(arg).expanduser()
    if p.is_file():
        return p.resolve()
    if '/' not in arg:
        name = arg[:-4] if arg.endswith('.cfg') else arg
        try:
            d = assets.darknet_dir() / 'cfg'
        except FileNotFoundError:
            if name in yolov4.BUILTIN:
                return yolov4.builtin_cfg(name)
            raise
        if (d / f'{name}.cfg').is_file():
            return (d / f'{name}.cfg').resolve()
        if name in yolov4.BUILTIN:
            return yolov4.builtin_cfg(name)
        known = ', '.join(sorted({p.stem for p in d.glob('*.cfg')} | set(yolov4.BUILTIN)))
        raise FileNotFoundError(f'no Darknet cfg named {arg!r} in {d} (known: {known})')
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
    det = DarknetDetector(model, cfg, class_names_for(model, names), build_args, device=device)
    if not meta:
        model.to(device)
    return det
