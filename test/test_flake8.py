# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""ROS 2 code style (ament_flake8 with the build farm's plugins)."""

from pathlib import Path
import subprocess
import sys

import ament_flake8  # noqa: F401 - the lint runs in a subprocess: a missing one fails here
import pytest

# flake8 checks files in a pool of forked processes. Forked from this test process after tests
# that ran ROS nodes, DDS and torch threads in it, a child segfaulted collecting their garbage
# and the pool waited for it for ever: the lint runs in a fresh interpreter.
LINT = """
import sys
from ament_flake8.main import main_with_errors
from lint_paths import python_paths
rc, errors = main_with_errors(argv=python_paths())
print('\\n'.join(errors), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    proc = subprocess.run([sys.executable, '-c', LINT], cwd=Path(__file__).parent,
                          capture_output=True, text=True, timeout=900)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 0, 'Found %d code style errors / warnings:\n' % len(errors) + \
        '\n'.join(errors)
