# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The node's ROS parameters, made from the settings table: descriptors and change checks.

`service.settings` is the one table; this module turns a row into a `ParameterDescriptor` (type,
description, range, read-only, notes on when a change applies) and says why a requested change
is refused: an invalid value, or a configure-time setting while the model is loaded.
"""

from demand_layering_ros.service import settings
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

TYPES = {'bool': ParameterType.PARAMETER_BOOL, 'integer': ParameterType.PARAMETER_INTEGER,
         'double': ParameterType.PARAMETER_DOUBLE, 'string': ParameterType.PARAMETER_STRING,
         'string_array': ParameterType.PARAMETER_STRING_ARRAY,
         'integer_array': ParameterType.PARAMETER_INTEGER_ARRAY}


def descriptor(p):
    """Return the ParameterDescriptor of a settings.Param."""
    d = ParameterDescriptor(name=p.name, type=TYPES[p.type_name], description=p.description,
                            read_only=p.applies == 'startup')
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
    reason = settings.validate(name, value)
    p = settings.PARAM_BY_NAME.get(name)
    if reason is None and p is not None and p.applies == 'configure' and \
            state not in ('unconfigured', 'finalized') and value != current:
        reason = (f'{name} applies at configure; the node is {state}: '
                  'deactivate and clean up first')
    return reason
