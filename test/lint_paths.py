# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The project's own Python sources, for the lint tests (never the venv or build trees)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_paths():
    """Return the Python files and folders the lint tests check."""
    names = ['demand_layering_ros', 'test', 'launch', 'bench', 'tools', 'scripts', 'setup.py']
    return [str(ROOT / n) for n in names if (ROOT / n).exists()]


def python_files():
    """Return every project .py file."""
    files = []
    for p in python_paths():
        path = Path(p)
        files += [path] if path.is_file() else sorted(path.rglob('*.py'))
    return files
