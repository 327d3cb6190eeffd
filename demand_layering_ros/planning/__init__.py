# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Planning beside the runtime: profile a pack, simulate plans, search for the best one."""
