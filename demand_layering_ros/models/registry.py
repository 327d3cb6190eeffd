# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Model families by name, so a spec string like 'darknet:yolov3' builds a Detector.

Families are found first among the built-ins, then in functions registered at run time, then in
Python entry points of group `demand_layering_ros.models`; a third-party package adds a family
without touching this one. A family is a callable
`build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False, **kwargs)`
returning a Detector whose `build_args` let `build(**constructor_args(det))` rebuild the same
architecture (that is what a weight pack stores).
"""

import importlib
import importlib.metadata

ENTRY_POINT_GROUP = 'demand_layering_ros.models'
BUILTIN = {
    'torchvision': 'demand_layering_ros.models.tv_models:build',
    'darknet': 'demand_layering_ros.models.darknet:build',
    'ultralytics': 'demand_layering_ros.models.ultralytics_yolo:build',   # optional, AGPL-3.0
}
_registered = {}


def register(family, build_fn):
    """Register a family builder in this process (tests, notebooks, plugins loaded by hand)."""
    if not family or ':' in family:
        raise ValueError(f'bad family name {family!r}')
    _registered[family] = build_fn


def _entry_points():
    try:
        return list(importlib.metadata.entry_points().select(group=ENTRY_POINT_GROUP))
    except Exception:  # a broken third-party distribution must not break the built-ins
        return []


def families():
    """Return {family: 'module:function' or 'registered'} for every known family."""
    out = {ep.name: ep.value for ep in _entry_points()}
    out.update(dict.fromkeys(_registered, 'registered'))
    out.update(BUILTIN)
    return out


def _load_target(target):
    module, _, attr = target.partition(':')
    obj = importlib.import_module(module)
    for part in attr.split('.') if attr else []:
        obj = getattr(obj, part)
    return obj


def family_builder(family):
    """Return the build function of a family."""
    if family in BUILTIN:
        return _load_target(BUILTIN[family])
    if family in _registered:
        return _registered[family]
    for ep in _entry_points():
        if ep.name == family:
            return ep.load()
    known = ', '.join(sorted(families()))
    raise KeyError(f'unknown model family {family!r}; known families: {known} '
                   f'(others come from entry points in group {ENTRY_POINT_GROUP!r})')


def split_spec(spec):
    """Split 'family:arg' into (family, arg)."""
    family, sep, arg = str(spec).partition(':')
    if not sep or not family or not arg:
        raise ValueError(f'model spec {spec!r} must look like FAMILY:ARG, e.g. '
                         "'torchvision:fasterrcnn_resnet50_fpn' or 'darknet:yolov3'")
    return family, arg


def parse_input_size(value):
    """Parse an input size: None, 'HxW', 'N' (square), an int, or a (h, w) sequence."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(',', 'x').split('x')
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f'bad input size {value!r}: expected HxW, e.g. 416x416') from None
    else:
        nums = [int(v) for v in value]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise ValueError(f'bad input size {value!r}: expected two positive integers HxW')
    return tuple(nums)


def build(spec, weights=None, seed=None, input_size=None, device='cpu', meta=False, **kwargs):
    """
    Build a Detector from a spec ('torchvision:NAME', 'darknet:PATH_OR_NAME', 'FAMILY:ARG').

    weights: a local file (None: seeded random initialisation). seed: random init seed
    (default 0). input_size: (h, w) or 'HxW'. meta: build on torch.device('meta') without weight
    memory (the executor fills the weights); weights must then be None.
    """
    if meta and weights is not None:
        raise ValueError('meta=True builds without weight memory; do not pass weights')
    family, arg = split_spec(spec)
    builder = family_builder(family)
    det = builder(arg, weights=weights, seed=seed, input_size=parse_input_size(input_size),
                  device=device, meta=meta, **kwargs)
    det.build_args.setdefault('spec', spec)
    return det


def constructor_args(detector):
    """Return JSON-ready kwargs so that build(**args) rebuilds the same architecture."""
    args = dict(detector.build_args)
    args.setdefault('spec', detector.spec)
    if detector.input_size is not None:
        args['input_size'] = list(detector.input_size)
    return args
