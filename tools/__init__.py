# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Development tools of the source checkout: the memory-cgroup runner and the demo."""
