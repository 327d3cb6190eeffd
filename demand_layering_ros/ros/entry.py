# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Console script `detector_node`: Ctrl-C is quiet from the first moment of the process.

The node's module imports rclpy, torch and the runtime, which takes a second or more; a Ctrl-C
meanwhile used to end the process with the KeyboardInterrupt traceback of whichever import it
hit, and `ros2 launch` reported "process has died ... exit code -2". This module imports only
`signal` before it installs the handling, then imports the node: a SIGINT or SIGTERM during the
imports ends the process with status 0 and nothing printed, as a Ctrl-C of the running node
does. Keep it light: whatever it imports at its top runs before the handling is in place.
"""

import signal
import sys

_stopped = []      # the signal that interrupted the imports, if one did


def _interrupt(signum, frame):
    """
    SIGINT or SIGTERM: raise KeyboardInterrupt in the main thread, once.

    Ctrl-C under `ros2 launch` reaches the process twice (the terminal's process group and
    launch's own SIGINT); the second must not interrupt the way out of the first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stopped.append(signum)
    raise KeyboardInterrupt


def detector_node(args=None):
    """Run the detector node (`ros.node.main`) with Ctrl-C handled from the start."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from demand_layering_ros.ros import node
    except BaseException:  # noqa: B902 - e.g. rclpy's C library turns it into an ImportError
        if _stopped:
            return 0    # stopped before the node existed: nothing to release
        raise
    return node.main(args)


if __name__ == '__main__':
    sys.exit(detector_node())
