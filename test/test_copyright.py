# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""License headers on every source file (what ament_copyright checks on a ROS install)."""

from lint_paths import python_files
import pytest

HEADER = ('# Copyright 2026 The demand_layering_ros Authors',
          '# SPDX-License-Identifier: Apache-2.0')


@pytest.mark.copyright
@pytest.mark.linter
def test_license_headers():
    missing = []
    for path in python_files():
        head = path.read_text(encoding='utf-8').splitlines()[:3]
        if not (HEADER[0] in head and HEADER[1] in head):
            missing.append(str(path))
    assert not missing, 'files without the Apache-2.0 header:\n' + '\n'.join(missing)
