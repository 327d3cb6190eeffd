# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""The demand-layered runtime: weights bound to a meta skeleton, streamed through an arena."""
