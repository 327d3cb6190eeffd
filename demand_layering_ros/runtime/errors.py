# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The runtime's errors: what a caller of `load` catches, each naming what went wrong."""

from demand_layering_ros.pack import PackError


class ExecutorError(RuntimeError):
    """The executor cannot run as configured (bad plan, bad option, broken pipeline)."""


class UnitReadError(OSError):
    """Reading a unit from the pack failed (I/O error, short file); names pack, unit, offset."""

    def __init__(self, err, pack, unit, offset):
        """Wrap the reader's error with the unit it was reading."""
        super().__init__(getattr(err, 'errno', None) or 5,
                         f'pack {pack}: unit {unit!r}, offset {offset}: read failed: {err}')
        self.pack, self.unit, self.offset = str(pack), unit, offset


def read_error(err, pack, unit, offset):
    """Return the exception to raise for a failed read: PackErrors already name the unit."""
    if isinstance(err, (PackError, UnitReadError)) or not isinstance(err, OSError):
        return err
    e = UnitReadError(err, pack, unit, offset)
    e.__cause__ = err
    return e
