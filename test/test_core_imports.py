# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The core (packs, direct I/O, executor, planner, models) must be usable without ROS."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = ('node', 'camera', 'demo')


def core_modules():
    pkg = ROOT / 'demand_layering_ros'
    return sorted('demand_layering_ros.' + p.stem for p in pkg.glob('*.py')
                  if p.stem not in ROS_MODULES + ('__main__',))


@pytest.mark.parametrize('module', core_modules())
def test_core_module_imports_no_ros(module):
    code = ('import sys, importlib\n'
            'importlib.import_module(%r)\n'
            'bad = [m for m in ("rclpy", "cv_bridge") if m in sys.modules]\n'
            'assert not bad, bad\n' % module)
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(ROOT),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
