# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The network of one cfg: every cfg layer is the submodule `layers.<i>` (Darknet's own index).

Route and shortcut inputs are kept only until their last use, so the activations held at once
stay as small as Darknet's own.
"""

from demand_layering_ros.models.darknet.cfg import DarknetError
from demand_layering_ros.models.darknet.layers import Crop, LAYER_TYPES, Route, Shortcut
from torch import nn


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
                    layer = LAYER_TYPES[sec.kind](sec, *shape)
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
                if not isinstance(layer, Shortcut):
                    x = None                  # the previous output, unless a route reads it
                x = layer(x, *ins) if isinstance(layer, Shortcut) else layer(*ins)
                del ins                       # else the inputs live on to the next route
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
