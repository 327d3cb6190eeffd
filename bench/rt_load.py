# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Camera load for a detector node: real photos published over DDS, answers timed on receipt.

One process plays every camera and the external observer: a publishing thread sends real photos
(Debian's darknet photos through `models.assets`) at a fixed rate per camera, raw
(`sensor_msgs/Image`, bgr8) or pre-encoded JPEG (`CompressedImage`, so the encoding does not
cost the machine during the run), each stamped with the wall clock at publish time; an executor
thread receives the detections and `/diagnostics`. A frame's latency is its receipt time (the
DDS reception timestamp, so this process's own scheduling does not count) minus its header
stamp, the definition a user downstream sees; its publication time (the DDS source timestamp)
says whether the node published it after its deadline. QoS is reliable, depth 1 on the images
(what a camera driver offers) and reliable on the answers.

`python -m bench.rt_load --cameras 2 --fps 15 --transport raw --seconds 30 --out r.json` waits
for the node to subscribe, publishes for warm-up + measured seconds, waits for the last answers,
and writes every frame (camera, index, stamp, receipt or none) and the node's last diagnostics.
"""

import argparse
import json
import threading
import time

NAMES = ('dog', 'person', 'horses', 'eagle', 'giraffe')


def load_photos(transport, names=NAMES):
    """Return [(name, fields)]: Image fields (bgr8) or JPEG bytes of real photos."""
    from demand_layering_ros.models import assets
    from demand_layering_ros.models.detector import read_image
    from demand_layering_ros.service import imaging
    out = []
    for name in names:
        path = assets.photo(name)
        if transport == 'jpeg':
            out.append((name, {'format': 'jpeg', 'data': path.read_bytes()}))
        else:
            out.append((name, imaging.rgb_to_image_fields(read_image(path), 'bgr8')))
    return out


def make_messages(transport, photos):
    """Build one message per photo once; publishing then only sets the header."""
    from sensor_msgs.msg import CompressedImage, Image
    msgs = []
    for name, fields in photos:
        if transport == 'jpeg':
            msg = CompressedImage(format='jpeg')
            msg.data = fields['data']
        else:
            msg = Image(height=fields['height'], width=fields['width'],
                        encoding=fields['encoding'], is_bigendian=0, step=fields['step'])
            msg.data = fields['data']
        msgs.append((name, msg))
    return msgs


def image_topic(i, transport):
    """Return camera i's image topic for the transport (raw or jpeg)."""
    return f'/cam{i}/image_raw' + ('/compressed' if transport == 'jpeg' else '')


class Load:
    """The cameras, the answers and the diagnostics, in one ROS node of its own context."""

    def __init__(self, cameras, transport, domain=None):
        """Create the node, the camera publishers and the answer subscriptions; spin."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from vision_msgs.msg import Detection2DArray
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node('rt_load', context=self.ctx)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=ReliabilityPolicy.RELIABLE)
        answer_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                reliability=ReliabilityPolicy.RELIABLE)
        msg_type = CompressedImage if transport == 'jpeg' else Image
        self.msgs = make_messages(transport, load_photos(transport))
        self.pubs = [self.node.create_publisher(msg_type, image_topic(i, transport), image_qos)
                     for i in range(cameras)]
        self.lock = threading.Lock()
        self.sent = []          # (camera, index, stamp seconds)
        self.answers = {}       # (camera, stamp ns) -> (receipt, publication, detections)
        self.diagnostics = None
        for i in range(cameras):
            self.node.create_subscription(
                Detection2DArray, f'/cam{i}/detections',
                lambda m, info, i=i: self._on_answer(i, m, info), answer_qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag,
                                      QoSProfile(depth=10))
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_answer(self, cam, msg, info):
        received = (info.get('received_timestamp') or time.time_ns()) / 1e9
        published = (info.get('source_timestamp') or 0) / 1e9 or None
        key = (cam, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        with self.lock:
            self.answers.setdefault(key, (received, published, len(msg.detections)))

    def _on_diag(self, msg):
        values = {}
        for st in msg.status:
            values[st.name] = {kv.key: kv.value for kv in st.values}
        with self.lock:
            self.diagnostics = values

    def wait_ready(self, timeout):
        """Wait until every camera topic has a subscriber; return True when they do."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(p.get_subscription_count() > 0 for p in self.pubs):
                return True
            time.sleep(0.1)
        return False

    def publish(self, fps, seconds, start_index=0, together=False):
        """
        Publish every camera at `fps` for `seconds`.

        Phases spread over one period, or, `together`, every camera in the same instant (a
        stereo pair, a hardware-triggered rig: the case where one camera could starve another).
        """
        from builtin_interfaces.msg import Time
        period = 1.0 / fps
        n = len(self.pubs)
        t0 = time.monotonic() + 0.01
        nexts = [t0 + (0.0 if together else i * period / n) for i in range(n)]
        counts = [start_index] * n
        end = t0 + seconds
        while True:
            i = min(range(n), key=nexts.__getitem__)
            t = nexts[i]
            if t >= end:
                break
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name, msg = self.msgs[counts[i] % len(self.msgs)]
            now = time.time()
            sec = int(now)
            msg.header.stamp = Time(sec=sec, nanosec=int((now - sec) * 1e9))
            msg.header.frame_id = f'cam{i}'
            stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            self.pubs[i].publish(msg)
            with self.lock:
                self.sent.append((i, counts[i], stamp_ns))
            counts[i] += 1
            nexts[i] = max(t + period, time.monotonic() - period)   # never burst to catch up
        return counts

    def result(self):
        """Return every frame sent with its receipt (or None) and the last diagnostics."""
        with self.lock:
            none = (None, None, 0)
            frames = [{'camera': c, 'index': k, 'stamp_ns': s,
                       'receipt': self.answers.get((c, s), none)[0],
                       'published': self.answers.get((c, s), none)[1],
                       'detections': self.answers.get((c, s), none)[2]}
                      for c, k, s in self.sent]
            return {'frames': frames, 'diagnostics': self.diagnostics,
                    'answers_unmatched': len(set(self.answers) -
                                             {(c, s) for c, _, s in self.sent})}

    def close(self):
        """Stop spinning and leave the context."""
        self.executor.shutdown(timeout_sec=5.0)
        self.spinner.join(5.0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def run(args):
    """Publish warm-up then measured frames; write the result (JSON) to args.out."""
    load = Load(args.cameras, args.transport, args.domain)
    try:
        if not load.wait_ready(args.ready_timeout):
            raise SystemExit(f'rt_load: no subscriber on the image topics after '
                             f'{args.ready_timeout:g} s')
        cpu0 = time.process_time()
        warm = load.publish(args.fps, args.warmup, together=args.together)
        measured_from = time.time()
        load.publish(args.fps, args.seconds, start_index=max(warm), together=args.together)
        measured_to = time.time()
        cpu1 = time.process_time()
        time.sleep(args.tail)        # the last answers and one more diagnostics report
        out = load.result()
        out.update({'cameras': args.cameras, 'fps': args.fps, 'transport': args.transport,
                    'warmup_s': args.warmup, 'seconds': args.seconds,
                    'measured_from': measured_from, 'measured_to': measured_to,
                    'load_cpu_s': cpu1 - cpu0})
        with open(args.out, 'w') as f:
            json.dump(out, f)
    finally:
        load.close()


def main(argv=None):
    """Command line: publish, collect, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cameras', type=int, default=1)
    p.add_argument('--fps', type=float, default=10.0)
    p.add_argument('--transport', choices=('raw', 'jpeg'), default='raw')
    p.add_argument('--together', action='store_true',
                   help='every camera publishes in the same instant (default: phases apart)')
    p.add_argument('--warmup', type=float, default=3.0, help='seconds not measured')
    p.add_argument('--seconds', type=float, default=20.0, help='measured seconds')
    p.add_argument('--tail', type=float, default=2.5, help='seconds to wait for late answers')
    p.add_argument('--ready-timeout', type=float, default=120.0)
    p.add_argument('--domain', type=int, default=None)
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    run(args)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
