# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
package.xml declares exactly what the code imports: every import has its key, every key a use.

The imports are read from the source (imports inside functions count): the installed package
and the launch file for exec_depend, the tests for test_depend. The modules pip provides
(torch, torchvision, safetensors, xxhash: no rosdep key fits) are named in the README instead,
and so is the optional `ultralytics` family's package (AGPL-3.0, never a dependency: only a
user who packs an Ultralytics model installs it).
"""

import ast
from pathlib import Path
import sys
import xml.etree.ElementTree as ET

ROOT = Path(__file__).resolve().parents[1]
# top-level module -> rosdep key
KEYS = {'numpy': 'python3-numpy', 'yaml': 'python3-yaml', 'cv2': 'python3-opencv',
        'tqdm': 'python3-tqdm', 'matplotlib': 'python3-matplotlib',
        'skimage': 'python3-skimage', 'pytest': 'python3-pytest',
        'hypothesis': 'python3-hypothesis'}
FROM_PIP = {'torch', 'torchvision', 'safetensors', 'xxhash', 'ultralytics'}
LOCAL = {'demand_layering_ros', 'tools', 'bench', 'lint_paths'}


def imported(paths):
    """Return the top-level names of the modules `paths` import, the standard library left out."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split('.')[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split('.')[0])
    local = {p.stem for p in (ROOT / 'test').glob('*.py')}
    return {n for n in names - LOCAL - local - FROM_PIP if n not in sys.stdlib_module_names}


def declared(tag):
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {e.text.strip() for e in root.iter(tag)}


def test_exec_depends_are_what_the_package_and_launch_file_import():
    paths = sorted((ROOT / 'demand_layering_ros').rglob('*.py')) + sorted(
        (ROOT / 'launch').glob('*.py'))
    keys = {KEYS.get(n, n) for n in imported(paths)}
    assert keys == declared('exec_depend')
    assert 'cv_bridge' not in keys


def test_test_depends_are_what_only_the_tests_import():
    runtime = declared('exec_depend')
    keys = {KEYS.get(n, n) for n in imported(sorted((ROOT / 'test').glob('*.py')))}
    assert keys - runtime == declared('test_depend')
