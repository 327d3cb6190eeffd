# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Docstring conventions (ament_pep257)."""

from ament_pep257.main import main
from lint_paths import python_paths
import pytest


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    rc = main(argv=python_paths())
    assert rc == 0, 'Found code style errors / warnings'
