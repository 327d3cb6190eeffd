# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Detector models: the Detector interface, the model families and their registry."""
