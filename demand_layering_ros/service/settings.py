# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector's settings: one table drives declaration, validation, the YAML file and the README.

Every setting of the detector (a ROS parameter of the node, a key of `DetectorService.configure`)
is one `Param` row here: name, default, description, limits or choices, and when a change
applies. The node declares its parameters from this table, `validate` gives the reason a value
is refused, and config/detector.yaml and the README's table are generated from it, so the four
cannot drift apart. No ROS here.
"""

from dataclasses import dataclass
import json
import re
import textwrap
from typing import Any, Optional, Tuple

NODE_NAME = 'demand_layering_detector'
REPLAN_PARAMS = ('memory_budget_mb', 'deadline_ms', 'frame_period_ms')
# What each of several models (`models`) sets for itself, as `<name>.<key>`; the rest of the
# table (memory_budget_mb, device, threads, ...) stays node-wide.
MODEL_KEYS = ('pack_path', 'image_topics', 'deadline_ms', 'score_threshold', 'nms_iou',
              'max_detections', 'input_size')
STRING_ARRAYS = ('image_topics', 'models')
MODEL_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


@dataclass(frozen=True)
class Param:
    """One node parameter: name, default, description, limits and when a change applies."""

    name: str
    default: Any
    description: str
    limits: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[str, ...]] = None
    applies: str = 'configure'     # 'configure' (unconfigured only), 'runtime', 'startup'

    @property
    def type_name(self):
        """Return the parameter type as a word (bool, integer, double, string, ...)."""
        d = self.default
        if isinstance(d, bool):
            return 'bool'
        if isinstance(d, int):
            return 'integer'
        if isinstance(d, float):
            return 'double'
        if isinstance(d, str):
            return 'string'
        return 'string_array' if self.name.rsplit('.', 1)[-1] in STRING_ARRAYS \
            else 'integer_array'


PARAMS = (
    Param('pack_path', '',
          'Weight pack directory written by `python -m demand_layering_ros pack`.'),
    Param('device', 'cpu', 'Torch device that runs the model: cpu, cuda or cuda:N.'),
    Param('memory_budget_mb', 0.0,
          'Weight memory budget in MiB (resident weights plus the streaming arena); 0 = no '
          'budget: stream every unit through the smallest arena. A change re-plans and swaps '
          'the arena between frames.', (0.0, 1048576.0), applies='runtime'),
    Param('keep_free_mb', 0.0,
          'Memory in MiB the node leaves free for the rest of the robot; 0 = off. When set, the '
          'weight budget follows free memory (MemAvailable, and the memory cgroup limit '
          'minus its usage): it shrinks at once when free memory falls below this, and grows '
          'back after free memory has stayed above it for 2 s, capped by memory_budget_mb when '
          'that is set, never below the smallest plan. Each change re-plans between two frames '
          'with the stored profile.', (0.0, 1048576.0), applies='runtime'),
    Param('deadline_ms', 0.0,
          'Deadline per frame, image stamp to published detections, in ms; 0 = none. Frames '
          'that cannot make it are dropped; a change re-plans.', (0.0, 600000.0),
          applies='runtime'),
    Param('frame_period_ms', 0.0,
          'Camera frame period in ms, so the planner can prefetch the first layers of the '
          'next frame between frames; 0 = unknown. A change re-plans.', (0.0, 60000.0),
          applies='runtime'),
    Param('plan_file', '',
          'PLAN.yaml from `python -m demand_layering_ros plan`; empty = plan at configure from '
          'the budget and deadline.'),
    Param('profile_file', '',
          'PROFILE.json from `python -m demand_layering_ros profile`, used to plan; empty = '
          'PACK/PROFILE.json; if there is none, a budget or deadline makes configure profile '
          'the pack once (within memory_budget_mb) and save it there.'),
    Param('score_threshold', 0.25, 'Minimum detection score.', (0.0, 1.0), applies='runtime'),
    Param('nms_iou', 0.45, 'IoU above which non-maximum suppression drops a box.', (0.0, 1.0),
          applies='runtime'),
    Param('max_detections', 100, 'Most detections published per image.', (1, 10000),
          applies='runtime'),
    Param('input_size', [0, 0],
          'Network input [height, width] in pixels; [0, 0] = the size stored in the pack.'),
    Param('class_id_mode', 'id',
          'What results[].hypothesis.class_id carries: the class index (id) or its name (name).',
          choices=('id', 'name'), applies='runtime'),
    Param('image_topics', ['/camera/image_raw'],
          'Image topics, one per camera; detections go to `<camera namespace>/detections`.'),
    Param('transport', 'raw',
          'raw subscribes sensor_msgs/Image; compressed subscribes `<topic>/compressed` '
          '(sensor_msgs/CompressedImage). Topics ending in /compressed are always compressed.',
          choices=('raw', 'compressed')),
    Param('qos_reliability', 'best_effort',
          'Image subscription reliability; best_effort connects to both kinds of camera.',
          choices=('best_effort', 'reliable')),
    Param('qos_depth', 1, 'Image subscription queue depth (1 = only the latest frame).',
          (1, 100)),
    Param('publish_debug_image', False,
          'Publish annotated images on `<camera>/debug_image` (only while someone subscribes).',
          applies='runtime'),
    Param('max_batch', 4,
          'Most frames (of different cameras) run in one forward pass; 1 = never batch. A '
          'batch computes with other kernels than one frame: scores may differ in the last bits.',
          (1, 64), applies='runtime'),
    Param('num_threads', 0,
          'Torch CPU threads; 0 = every core but one (left for receiving images, DDS and the '
          'camera), at least one.', (0, 256)),
    Param('models', [],
          'Names of several models served under the one memory_budget_mb, each set by '
          '`<name>.pack_path`, `<name>.image_topics`, ... (README: Several models); empty = one '
          'model from pack_path and image_topics.'),
    Param('preempt', False,
          'Several models: between two layers of a pass, run a waiting frame of another model '
          'first when waiting would make it miss its deadline_ms and the running model keeps '
          'every deadline, its next frames included (decided from measured pass times; '
          'README: Several models).'),
    Param('autostart', True,
          'Configure and activate on start-up; false leaves the node to a lifecycle manager.',
          applies='startup'),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}
DEVICE_RE = re.compile(r'^(cpu|cuda(:\d+)?)$')


def split_name(name):
    """Return (model, key) for a per-model parameter `<model>.<key>`, else None."""
    model, dot, key = name.rpartition('.')
    return (model, key) if dot and model and key in MODEL_KEYS else None


def model_params(model):
    """Return the per-model rows of model `model`: `<model>.<key>` for every MODEL_KEYS."""
    rows = []
    for key in MODEL_KEYS:
        p = PARAM_BY_NAME[key]
        default = [f'/{model}/image_raw'] if key == 'image_topics' else p.default
        rows.append(Param(f'{model}.{key}', default, f'Model {model}: {p.description}',
                          p.limits, p.choices, p.applies))
    return tuple(rows)


def param_for(name):
    """Return the row of parameter `name` (node-wide, or `<model>.<key>`), or None."""
    if name in PARAM_BY_NAME:
        return PARAM_BY_NAME[name]
    parts = split_name(name)
    if parts is None:
        return None
    return next(p for p in model_params(parts[0]) if p.name == name)


def model_values(values, model):
    """Return the settings model `model` runs with: the node's, its own `<model>.*` over them."""
    out = {k: v for k, v in values.items() if '.' not in k}
    out.update({key: values[f'{model}.{key}'] for key in MODEL_KEYS
                if f'{model}.{key}' in values})
    return out


def _validate_models(value):
    names = list(value)
    bad = [n for n in names if not isinstance(n, str) or not MODEL_NAME_RE.match(n)]
    if bad:
        return (f'models: {bad[0]!r} is not a model name (a letter, then letters, digits or '
                '_)')
    if len(set(names)) != len(names):
        return f'models: duplicate names in {names}'
    clash = [n for n in names if n in PARAM_BY_NAME]
    if clash:
        return f'models: {clash[0]!r} is the name of a node parameter'
    return None


def validate(name, value):
    """Return why `value` is invalid for parameter `name`, or None when it is fine."""
    parts = split_name(name) if name not in PARAM_BY_NAME else None
    if parts is not None:
        reason = validate(parts[1], value)
        return None if reason is None else f'{parts[0]}.{reason}'
    p = PARAM_BY_NAME.get(name)
    if p is None:
        return None
    if name == 'models':
        return _validate_models(value)
    if p.limits is not None and not (p.limits[0] <= value <= p.limits[1]):
        return f'{name}: {value} is outside [{p.limits[0]}, {p.limits[1]}]'
    if p.choices is not None and value not in p.choices:
        return f'{name}: {value!r} is not one of {", ".join(p.choices)}'
    if name == 'device' and not DEVICE_RE.match(value):
        return f'device: {value!r} must be cpu, cuda or cuda:N'
    if name == 'input_size':
        value = list(value)
        if value != [0, 0] and (len(value) != 2 or not all(16 <= v <= 8192 for v in value)):
            return (f"input_size: {value} must be [0, 0] (the pack's) or [height, width] with "
                    'each between 16 and 8192')
    if name == 'image_topics':
        topics = list(value)
        if not topics or any(not t.strip() for t in topics):
            return 'image_topics: give at least one non-empty topic name'
        if len(set(topics)) != len(topics):
            return f'image_topics: duplicate topics in {topics}'
    return None


def given(values, name):
    """
    Return setting `name` of `values`, or None where its value means none.

    The one place the table's "0 = none" / "empty = none" is read: memory_budget_mb,
    deadline_ms, frame_period_ms, keep_free_mb 0, plan_file and profile_file empty.
    """
    value = values[name]
    return value if value else None


def defaults():
    """Return {name: default} for every setting (lists copied, so callers may change them)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else p.default
            for p in PARAMS}


def check(values):
    """Raise ValueError with the first reason a setting in `values` is invalid (table order)."""
    for p in PARAMS:
        if p.name in values:
            reason = validate(p.name, values[p.name])
            if reason:
                raise ValueError(reason)
    if values.get('keep_free_mb') and values.get('plan_file'):
        raise ValueError('keep_free_mb: a plan_file fixes the plan, so the budget cannot follow '
                         'free memory; set one of them')
    for name in values.get('models') or ():
        for p in model_params(name):
            reason = validate(p.name, values.get(p.name, p.default))
            if reason:
                raise ValueError(reason)


def parameter_table_markdown():
    """Return the README's parameter table (Markdown), generated from the table above."""
    rows = ['| Parameter | Type | Default | Range / values | Changes | Description |',
            '|---|---|---|---|---|---|']
    for p in PARAMS:
        if p.limits is not None:
            limits = f'{p.limits[0]} .. {p.limits[1]}'
        elif p.choices is not None:
            limits = ' \\| '.join(f'`{c}`' for c in p.choices)
        else:
            limits = ''
        changes = {'configure': 'at configure', 'runtime': 'at run time',
                   'startup': 'read-only'}[p.applies]
        default = f'`{p.default!r}`'.replace("'", '"') if p.default != '' else '`""`'
        if isinstance(p.default, bool):
            default = f'`{str(p.default).lower()}`'
        rows.append(f'| `{p.name}` | {p.type_name} | {default} | {limits} | {changes} | '
                    f'{p.description} |')
    return '\n'.join(rows) + '\n'


def config_yaml():
    """Return a documented YAML parameter file with every parameter at its default."""
    lines = ['# Parameters of the demand_layering_detector node, every one at its default.',
             '# Generated by demand_layering_ros.service.settings.config_yaml(); test_node',
             '# checks that this file names every parameter. Use: ros2 launch',
             '# demand_layering_ros detector.launch.py params_file:=THIS_FILE (or --ros-args',
             '# --params-file).',
             f'{NODE_NAME}:', '  ros__parameters:']
    for p in PARAMS:
        extra = []
        if p.limits is not None:
            extra.append(f'range {p.limits[0]} .. {p.limits[1]}')
        if p.choices is not None:
            extra.append('one of ' + ', '.join(p.choices))
        extra.append({'configure': 'applies at configure', 'runtime': 'changeable at run time',
                      'startup': 'read-only'}[p.applies])
        text = f'{p.description.replace("`", "")} ({p.type_name}; {"; ".join(extra)})'
        lines += ['    # ' + t for t in textwrap.wrap(text, 91)]
        lines.append(f'    {p.name}: {json.dumps(p.default)}')
    return '\n'.join(lines) + '\n'
