# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Entry point for `python -m demand_layering_ros`."""

import sys

from demand_layering_ros.cli import main

sys.exit(main())
