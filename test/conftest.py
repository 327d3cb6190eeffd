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


def pytest_configure(config):
    """
    Run torch at the thread count the node runs with by default (every core but one).

    Profiles and plans record the torch thread count and are refused at another (#18): a
    profile a test measures must be at the count the services it configures run with.
    """
    import torch
    from demand_layering_ros.service.torch_threads import cpu_threads
    torch.set_num_threads(cpu_threads())


def pytest_addoption(parser):
    """Register --soak-frames (`make soak` runs 5000) and --stress-changes (`make stress`)."""
    parser.addoption('--soak-frames', type=int, default=300,
                     help='frames the soak test sends through the node (default 300)')
    parser.addoption('--stress-changes', type=int, default=30,
                     help='live budget changes per scene in test_replan_stress.py (default 30)')
