# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The floor of any torch + rclpy detector node, and the detector node's start-up step by step.

`python -m tools.floor --ros-args -p topic:=/camera/image_raw` is the floor: torch and rclpy
imported, one Image subscription and one Detection2DArray publisher (an empty array out for
every frame in), spun like the node (4 executor threads, the runtime's malloc settings). Run in
its own memory cgroup beside the node on the same camera, it is what a node costs before it
does anything: the detector node is held against it (`make demo`). With `--node`, the real
DetectorNode runs here instead (its `--ros-args` parameters, configured and activated here), so
that its start-up can be followed step by step. Either way, after each step it prints this
process's memory cgroup usage (`[floor] step NAME MiB`); SIGINT ends it.
"""

import signal
import sys
import threading
import time

MIB = 1 << 20
FLOOR_OUT = '/floor/detections'
STEP = '[floor] step'


def step(name):
    """Print the cgroup's usage now, after `name` (the kernel's figure, page cache included)."""
    from demand_layering_ros.process_memory import own_cgroup_usage
    usage = own_cgroup_usage()
    mib = usage['usage_bytes'] / MIB if usage else float('nan')
    print(f'{STEP} {name}: {mib:.1f}', flush=True)


def parse_steps(text):
    """Return [(step name, MiB)] from a floor process's output."""
    out = []
    for line in text.splitlines():
        if line.startswith(STEP):
            name, _, mib = line[len(STEP) + 1:].rpartition(': ')
            out.append((name, float(mib)))
    return out


class _Stop(Exception):
    pass


def _stop(*_):
    raise _Stop()


def _floor(rclpy):
    """Create the floor node: one raw Image subscription, one Detection2DArray publisher."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray
    node = rclpy.create_node('demand_layering_floor')
    topic = node.declare_parameter('topic', '/camera/image_raw').value
    reliable = node.declare_parameter('qos_reliability', 'reliable').value == 'reliable'
    pub = node.create_publisher(Detection2DArray, FLOOR_OUT, 10)
    served = [0]

    def on_image(_raw):
        pub.publish(Detection2DArray())
        served[0] += 1
    node.create_subscription(Image, topic, on_image, QoSProfile(depth=1, reliability=(
        ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)), raw=True)
    return node, lambda: served[0]


def _detector(rclpy):
    """Create, configure and activate the DetectorNode, a step after each."""
    from demand_layering_ros.ros import node as dnode
    step('import the node')
    node = dnode.DetectorNode()
    step('DDS: init and node')
    if node.trigger_configure() != dnode.TransitionCallbackReturn.SUCCESS:
        raise SystemExit(f'configure failed: {node.last_error}')
    step('configure (pack, plan, warm-up pass)')
    node.trigger_activate()
    step('activate')
    return node, lambda: sum(c['published'] for c in node.camera_stats().values())


def main(argv=None):
    """Run the floor (or, with --node, the detector node) until SIGINT; return 0."""
    argv = sys.argv if argv is None else argv
    step('python')
    import torch  # noqa: F401 - the floor is torch + rclpy
    step('import torch')
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    import vision_msgs.msg  # noqa: F401
    from demand_layering_ros.runtime import malloc
    step('import rclpy and the messages')
    malloc.limit_arenas()
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    served = int        # no frame served yet: int() is 0
    try:
        if '--node' in argv:
            node, served = _detector(rclpy)
        else:
            node, served = _floor(rclpy)
            step('DDS: init, node, subscription, publisher')
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        while served() == 0:
            time.sleep(0.05)
        step('first frame served')
        while True:
            time.sleep(1.0)
    except _Stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        step(f'after {served()} frames')
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=10.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
