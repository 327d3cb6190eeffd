# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The core (packs, direct I/O, executor, planner, models) must be usable without ROS."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_PACKAGE = 'ros'     # demand_layering_ros.ros: the adapter, the only place rclpy is allowed


def core_modules():
    pkg = ROOT / 'demand_layering_ros'
    out = []
    for p in pkg.rglob('*.py'):
        rel = p.relative_to(pkg).with_suffix('')
        if rel.parts[0] == ROS_PACKAGE or rel.name == '__main__':
            continue
        parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
        out.append('.'.join(('demand_layering_ros',) + parts))
    return sorted(out)


@pytest.mark.parametrize('module', core_modules())
def test_core_module_imports_no_ros(module):
    code = ('import sys, importlib\n'
            'importlib.import_module(%r)\n'
            'bad = [m for m in ("rclpy", "cv_bridge") if m in sys.modules]\n'
            'assert not bad, bad\n' % module)
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(ROOT),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
