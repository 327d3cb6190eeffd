# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The demand-layered runtime: weights bound to a meta skeleton, streamed through an arena.

Top to bottom: loading (load, load_resident) -> model (DemandLayeredModel, Stats) -> engine (one
configuration: plan, layout, install, passes) -> hooks (around each module call) -> pipeline
(acquire/release, demand misses) and loader (the read-ahead thread) over slot_state (a slot's
state in a pass) -> staging (HostArena; cuda_staging: DeviceArena, MappedHostArena over
cuda_mapping's registered host memory) -> the reader. Beside them: slots and arena (pure
layout, shared with the planner), binding (pack tensors to modules), timeline, options, errors.
"""
