# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""What a profile measures on this machine, one module per quantity (`profiler` runs them)."""
