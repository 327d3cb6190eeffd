# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Demand-layered DNN inference for ROS 2: stream each layer's weights right before it runs.

The package root stays light (no torch import) so that `ros2 launch` and the CLI start fast;
`load` and `load_resident` import the runtime on first use.
"""

__version__ = '0.1.0'

__all__ = ['load', 'load_resident', 'load_shared', '__version__']


def load(*args, **kwargs):
    """Open a weight pack as a demand-layered model (see loading.load)."""
    from demand_layering_ros import loading
    return loading.load(*args, **kwargs)


def load_resident(*args, **kwargs):
    """Open a weight pack as the plain, fully resident model (see loading)."""
    from demand_layering_ros import loading
    return loading.load_resident(*args, **kwargs)


def load_shared(*args, **kwargs):
    """Open several packs as models under one memory budget (see loading.load_shared)."""
    from demand_layering_ros import loading
    return loading.load_shared(*args, **kwargs)
