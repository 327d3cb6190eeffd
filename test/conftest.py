# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Shared pytest setup: the repo root on sys.path and the real asset locations."""

import os
from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault('DLR_DARKNET_DIR', str(ROOT / '.data' / 'darknet'))


def pytest_addoption(parser):
    """Register --soak-frames (test_soak.py; `make soak` runs 5000)."""
    parser.addoption('--soak-frames', type=int, default=300,
                     help='frames the soak test sends through the node (default 300)')
