# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The code must run on Python 3.10 (ROS 2 Humble on JetPack 6), not only on 3.11/3.12."""

from pathlib import Path
import shutil
import subprocess
import sys

from lint_paths import python_files, python_paths
import pytest


@pytest.mark.linter
def test_vermin_minimum_version_is_310():
    # vermin finds the minimum version each construct and stdlib API needs.
    proc = subprocess.run(
        [str(Path(sys.executable).parent / 'vermin'), '-t=3.10-', '--no-tips', '--violations',
         '--eval-annotations', '--backport', 'typing_extensions'] + python_paths(),
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _python310():
    # pyenv's shim on PATH may refuse to run; prefer a concrete interpreter.
    pyenv = Path.home() / '.pyenv' / 'versions'
    candidates = [str(c) for c in sorted(pyenv.glob('3.10*/bin/python3.10'))]
    candidates += [c for c in [shutil.which('python3.10')] if c]
    for cand in candidates:
        if subprocess.run([cand, '--version'], capture_output=True).returncode == 0:
            return cand
    return None


@pytest.mark.linter
def test_compiles_with_python310():
    py310 = _python310()
    if py310 is None:
        pytest.skip('no python3.10 interpreter on this machine; vermin still checks')
    code = ('import sys\n'
            'for f in sys.argv[1:]:\n'
            '    compile(open(f, encoding="utf-8").read(), f, "exec")\n')
    proc = subprocess.run([py310, '-c', code] + [str(f) for f in python_files()],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
