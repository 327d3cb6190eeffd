# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The ROS 2 adapter: the lifecycle node and the replay camera (the only rclpy users)."""
