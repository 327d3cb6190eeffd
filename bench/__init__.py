# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""Benchmarks (development only): the harness of `make bench` and the bench_* scripts."""
