# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
PROFILE.json: the file a profile lives in, its format name, and reading it back checked.

A pack is profiled once per machine (`profiler.profile`) and planned many times (`planner.plan`
takes the dict or the path), so the file's format sits below both: the planner reads profiles
without importing what measures them.
"""

import json

from demand_layering_ros import atomic

PROFILE_FORMAT = 'demand_layering_ros.profile'
PROFILE_VERSION = 2      # 2: `threads` and `disk.rounds` added; version 1 files still load


def load_profile(path):
    """Read PROFILE.json and check its format."""
    with open(path) as f:
        prof = json.load(f)
    if prof.get('format') != PROFILE_FORMAT:
        raise ValueError(f'{path}: not a profile (format {prof.get("format")!r}, expected '
                         f'{PROFILE_FORMAT!r})')
    return prof


def save_profile(profile, path):
    """Write a profile dict as PROFILE.json (indented JSON, atomically); return the path."""
    return atomic.write_json(path, profile)
