# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The node's ROS parameters, made from the settings table: descriptors, coercion, change checks.

`service.settings` is the one table; this module turns a row into a `ParameterDescriptor` (type,
description, range, read-only, notes on when a change applies), accepts a value written another
way (`8` for a double, `2.0` for an integer, one topic for a list of topics: ROS itself refuses
them with a traceback), says why a start-up value cannot be used, and why a requested change is
refused: an invalid value, or a configure-time setting while the model is loaded.
"""

from demand_layering_ros.service import settings
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

WORDS = {'bool': 'true or false', 'integer': 'an integer', 'double': 'a number',
         'string': 'a string', 'string_array': 'a list of strings',
         'integer_array': 'a list of integers'}
TYPES = {'bool': ParameterType.PARAMETER_BOOL, 'integer': ParameterType.PARAMETER_INTEGER,
         'double': ParameterType.PARAMETER_DOUBLE, 'string': ParameterType.PARAMETER_STRING,
         'string_array': ParameterType.PARAMETER_STRING_ARRAY,
         'integer_array': ParameterType.PARAMETER_INTEGER_ARRAY}


def descriptor(p):
    """Return the ParameterDescriptor of a settings.Param."""
    d = ParameterDescriptor(name=p.name, type=TYPES[p.type_name], description=p.description,
                            read_only=p.applies == 'startup',
                            dynamic_typing=p.default == [])   # rclpy types [] as bytes
    notes = []
    if p.choices:
        notes.append('one of: ' + ', '.join(p.choices))
    if p.applies == 'configure':
        notes.append('applies at configure (change while unconfigured)')
    elif p.applies == 'runtime':
        notes.append('may change at run time')
    d.additional_constraints = '; '.join(notes)
    if p.limits is not None:
        if p.type_name == 'double':
            d.floating_point_range = [FloatingPointRange(
                from_value=float(p.limits[0]), to_value=float(p.limits[1]), step=0.0)]
        else:
            d.integer_range = [IntegerRange(
                from_value=int(p.limits[0]), to_value=int(p.limits[1]), step=1)]
    return d


def plain(value):
    """Return a parameter value as plain Python (arrays as lists)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == 'array':
        return list(value)
    return value


def refusal(name, value, state, current):
    """
    Return why setting `name` to `value` is refused in lifecycle `state`, or None.

    `current` is the value in effect: a configure-time setting may only change while the node
    is unconfigured (or finalized), or to the value it already has.
    """
    p = settings.param_for(name)
    reason = settings.validate(name, value)
    if reason is None and p is not None and not _type_ok(p.type_name, value):
        reason = f'{name}: {value!r} is not {WORDS[p.type_name]}'
    if reason is None and p is not None and p.applies == 'configure' and \
            state not in ('unconfigured', 'finalized') and value != current:
        reason = (f'{name} applies at configure; the node is {state}: '
                  'deactivate and clean up first')
    return reason


def coerce(p, value):
    """
    Return `value` in the type of settings.Param `p` when it is the same value written another way.

    An integer for a double, an integral double for an integer, one string for a list of
    strings; anything else comes back unchanged (and is refused by whoever checks it).
    """
    t = p.type_name
    if t == 'double' and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t == 'integer' and isinstance(value, float) and value.is_integer():
        return int(value)
    if t == 'integer_array' and isinstance(value, list) and \
            any(isinstance(v, float) and v.is_integer() for v in value):
        return [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
    if t == 'string_array' and isinstance(value, str):
        return [value]
    if t == 'string_array' and value is None:    # `[]` in a parameter file: no type, no value
        return []
    return value


def _type_ok(t, value):
    if t == 'bool':
        return isinstance(value, bool)
    if t == 'integer':
        return isinstance(value, int) and not isinstance(value, bool)
    if t == 'double':
        return isinstance(value, float)
    if t == 'string':
        return isinstance(value, str)
    item = str if t == 'string_array' else int
    return isinstance(value, list) and all(
        isinstance(v, item) and not isinstance(v, bool) for v in value)


def startup_value(p, value):
    """Return (value coerced to `p`'s type, None) or (None, the one-line reason it is refused)."""
    value = coerce(p, plain(value))
    if not _type_ok(p.type_name, value):
        return None, f'{p.name}: {value!r} is not {WORDS[p.type_name]}'
    reason = settings.validate(p.name, value)
    return (None, reason) if reason else (value, None)


def coerce_request(requested):
    """Return a parameter change request with its values coerced (a pre-set callback)."""
    from rclpy.parameter import Parameter
    out = []
    for param in requested:
        p = settings.param_for(param.name)
        if p is not None:
            value = plain(param.value)
            fixed = coerce(p, value)
            if fixed is not value:
                param = Parameter(param.name, value=fixed)
        out.append(param)
    return out


def take_startup_overrides(overrides):
    """
    Coerce the node's start-up overrides in place; return {name: reason} for the refused ones.

    `overrides` maps names to rclpy Parameters (what the node declares its parameters from). A
    refused value is removed, so the parameter is declared at its default and the node can
    report the reason instead of dying in `declare_parameter` with a traceback.
    """
    errors = {}
    for p in settings.PARAMS:
        if p.name in overrides:
            _take(p, overrides, errors)
    models = overrides['models'].value if 'models' in overrides else []
    for name in list(overrides):
        parts = settings.split_name(name)
        if parts is None or name in settings.PARAM_BY_NAME:
            continue
        if parts[0] not in models:
            errors[name] = (f'{name}: {parts[0]!r} is not in models '
                            f'[{", ".join(models)}]')
            del overrides[name]
        else:
            _take(settings.param_for(name), overrides, errors)
    return errors


def _take(p, overrides, errors):
    """Coerce the override of `p` in place, or drop it and note why it is refused."""
    from rclpy.parameter import Parameter
    value, reason = startup_value(p, overrides[p.name].value)
    if reason:
        errors[p.name] = reason
        del overrides[p.name]
    else:
        overrides[p.name] = Parameter(p.name, value=value)
