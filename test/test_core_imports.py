# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The core (packs, direct I/O, executor, planner, models) must be usable without ROS."""

import json
from pathlib import Path
import subprocess
import sys

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


CHECK = """
import importlib, json, sys
found = {}
for module in json.loads(sys.argv[1]):
    importlib.import_module(module)
    bad = [m for m in ("rclpy", "cv_bridge") if m in sys.modules]
    if bad:
        found[module] = bad      # the first module whose import pulled ROS in
        break
print(json.dumps(found))
"""


def test_core_modules_import_no_ros():
    """
    Import every core module in turn in one fresh interpreter; none may pull in ROS.

    One process for all (each module imported after the ones before it): the first module
    whose import brings rclpy or cv_bridge is named. A process per module cost ~1.7 s each
    (torch's import) for the same answer.
    """
    modules = core_modules()
    assert len(modules) > 40 and 'demand_layering_ros.runtime.engine' in modules
    proc = subprocess.run([sys.executable, '-c', CHECK, json.dumps(modules)], cwd=str(ROOT),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_the_check_names_a_module_that_imports_ros(tmp_path):
    (tmp_path / 'pulls_ros.py').write_text('import rclpy\n')
    proc = subprocess.run([sys.executable, '-c', CHECK, json.dumps(['json', 'pulls_ros'])],
                          cwd=str(tmp_path), capture_output=True, text=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {'pulls_ros': ['rclpy']}
