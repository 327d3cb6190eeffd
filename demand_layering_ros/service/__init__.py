# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The detector as a ROS-free service: settings, scheduling, serving, imaging, inference."""
