# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Darknet's `.cfg` files, parsed strictly: errors name the file and the line.

An unknown layer or option is an error, never a silently different model. Every later step
(layers, model, .weights reader) reports errors as DarknetError with the file:line of the option
at fault, which `Section.where` gives.
"""

from dataclasses import dataclass, field
import os


class DarknetError(ValueError):
    """A Darknet cfg or weights file that cannot be turned into the model it describes."""


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

    def _get(self, key, default, convert, what):
        """Return convert(option), default when absent; a DarknetError when it does not fit."""
        raw = self.options.get(key, default)
        if raw is default:
            return default
        try:
            return convert(raw)
        except ValueError:
            raise DarknetError(f'{self.where(key)}: option {key}={raw!r} is not {what}') \
                from None

    def get_int(self, key, default=None):
        """Return an int option (default when absent)."""
        return self._get(key, default, int, 'an integer')

    def get_float(self, key, default=None):
        """Return a float option (default when absent)."""
        return self._get(key, default, float, 'a number')

    def get_str(self, key, default=None):
        """Return a string option (default when absent)."""
        return self.options.get(key, default)

    def get_list(self, key, kind=float, default=None):
        """Return a comma-separated list option."""
        return self._get(key, default, lambda raw: [kind(v) for v in raw.split(',') if v != ''],
                         f'a list of {kind.__name__}')


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
