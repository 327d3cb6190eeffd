# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The detector node a ROS user writes first: inference inside the subscription callback.

The baseline `make bench-rt` measures the real node against, as common ROS detector nodes are
written: one plain node, `rclpy.spin`, a subscription with the usual queue depth of 10, and in
its callback the image converted, run through the model and the detections published. The same
demand-layered model (same pack, same budget), the same conversion (`service.imaging`) and the
same Detection2DArray (`ros.messages`) as the real node, so only the serving differs: no
newest-frame rule, no admission, no thread of its own.

    python -m bench.rt_baseline --pack DIR --topics /cam0/image_raw,... [--budget-mb 8]
"""

import argparse


def main(argv=None):
    """Run the baseline node until Ctrl-C."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--pack', required=True)
    p.add_argument('--topics', required=True, help='comma-separated image topics')
    p.add_argument('--budget-mb', type=float, default=0.0)
    args = p.parse_args(argv)

    import demand_layering_ros as dlr
    from demand_layering_ros.ros import messages
    from demand_layering_ros.service import imaging
    import rclpy
    from sensor_msgs.msg import CompressedImage, Image
    from vision_msgs.msg import Detection2DArray

    rclpy.init()
    node = rclpy.create_node('baseline_detector')
    model = dlr.load(args.pack, budget_mb=args.budget_mb or None)
    detector = model.detector
    names = detector.class_names

    def subscribe(topic):
        namespace = topic[:-len('/compressed')] if topic.endswith('/compressed') else topic
        pub = node.create_publisher(Detection2DArray, namespace.rsplit('/', 1)[0] +
                                    '/detections', 10)

        def callback(msg):
            rgb = imaging.msg_to_rgb(msg)
            det = detector.detect([rgb])[0]
            pub.publish(messages.detections(msg.header, rgb, det, names))
        msg_type = CompressedImage if topic.endswith('/compressed') else Image
        node.create_subscription(msg_type, topic, callback, 10)

    for topic in args.topics.split(','):
        subscribe(topic)
    node.get_logger().info('baseline active: ' + args.topics)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        model.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
