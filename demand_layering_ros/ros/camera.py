# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
A replay camera: photos, folders or video files published as a ROS 2 camera stream.

The detector is only as testable as its input. This node turns real pictures (or a video read
with OpenCV) into a `sensor_msgs/Image` or `sensor_msgs/CompressedImage` stream with proper
headers (stamp at publish time, frame_id) at a fixed rate, so the demo, the tests and users with
their own pictures all drive the detector exactly like a camera driver would. Frames are read
and converted here; pixels go through `imaging` so the camera and the detector agree on layout.
"""

import argparse
from pathlib import Path
import sys
import time

import numpy as np

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
VIDEO_EXTS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')
CACHE_BYTES = 512 << 20   # decoded photos kept in memory up to this size (videos are streamed)


class SourceError(ValueError):
    """A camera source (file, folder, video, photo name) that cannot be used."""


def expand_sources(items):
    """
    Turn command-line items into a list of ('image' | 'video', path) sources, in order.

    An item is an image file, a video file, a folder (its images and videos, sorted by name, not
    recursive) or 'photo:NAME' for a bundled real photo (see assets.photo: dog, person, horses,
    giraffe, kite, astronaut, coffee, ...).
    """
    sources = []
    for item in items:
        item = str(item)
        if item.startswith('photo:'):
            from demand_layering_ros.models import assets
            try:
                sources.append(('image', str(assets.photo(item[len('photo:'):]))))
            except (KeyError, FileNotFoundError) as e:
                raise SourceError(f'{item}: {e}') from None
            continue
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.iterdir())
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS]
            if not found:
                raise SourceError(f'{path}: folder has no image or video files '
                                  f'({", ".join(IMAGE_EXTS + VIDEO_EXTS)})')
            sources += [(_kind(p), str(p)) for p in found]
        elif path.is_file():
            sources.append((_kind(path), str(path)))
        else:
            raise SourceError(f'{item}: no such file or folder')
    if not sources:
        raise SourceError('no images given')
    return sources


def _kind(path):
    # anything that is not a known image extension is tried as a video (OpenCV decides)
    return 'image' if Path(path).suffix.lower() in IMAGE_EXTS else 'video'


def parse_size(text):
    """Parse 'WxH' into (width, height)."""
    try:
        w, h = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise SourceError(f'size {text!r} must look like WIDTHxHEIGHT, e.g. 640x480') from None
    if w <= 0 or h <= 0:
        raise SourceError(f'size {text!r} must be positive')
    return w, h


class FrameSource:
    """Yields (name, rgb) frames from the sources, once or looping, decoding photos once."""

    def __init__(self, sources, loop=False, resize=None):
        self.sources = list(sources)
        self.loop = loop
        self.resize = resize
        self._cache = {}
        self._cached_bytes = 0

    def _image(self, path):
        rgb = self._cache.get(path)
        if rgb is None:
            import cv2
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f'{path}: cannot decode as an image')
            rgb = self._prepare(bgr)
            if self._cached_bytes + rgb.nbytes <= CACHE_BYTES:
                self._cache[path] = rgb
                self._cached_bytes += rgb.nbytes
        return rgb

    def _prepare(self, bgr):
        import cv2
        if self.resize is not None and (bgr.shape[1], bgr.shape[0]) != tuple(self.resize):
            bgr = cv2.resize(bgr, tuple(self.resize), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def _video(self, path):
        import cv2
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise SourceError(f'{path}: OpenCV cannot open it as a video')
            n = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                n += 1
                yield f'{Path(path).name}#{n}', self._prepare(bgr)
            if n == 0:
                raise SourceError(f'{path}: video has no readable frames')
        finally:
            cap.release()

    def __iter__(self):
        while True:
            for kind, path in self.sources:
                if kind == 'image':
                    yield Path(path).name, self._image(path)
                else:
                    yield from self._video(path)
            if not self.loop:
                return


def make_qos(reliability='reliable', depth=1):
    """Return a QoS profile for the camera publisher (keep last `depth`, volatile)."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    policy = {'reliable': ReliabilityPolicy.RELIABLE,
              'best_effort': ReliabilityPolicy.BEST_EFFORT}.get(reliability)
    if policy is None:
        raise ValueError(f'qos reliability {reliability!r} must be reliable or best_effort')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy)


def compressed_topic(topic):
    """Return the image_transport compressed topic for an image topic."""
    topic = topic.rstrip('/')
    return topic if topic.endswith('/compressed') else topic + '/compressed'


class ReplayCamera:
    """A ROS 2 node publishing RGB frames as Image (rgb8/bgr8) or CompressedImage (jpeg/png)."""

    def __init__(self, node, topic='/camera/image_raw', frame_id='camera', transport='raw',
                 encoding='rgb8', fmt='jpeg', qos=None):
        from sensor_msgs.msg import CompressedImage, Image
        if transport not in ('raw', 'compressed'):
            raise ValueError(f'transport {transport!r} must be raw or compressed')
        if transport == 'raw' and encoding not in ('rgb8', 'bgr8'):
            raise ValueError(f'encoding {encoding!r} must be rgb8 or bgr8')
        if transport == 'compressed' and fmt not in ('jpeg', 'png'):
            raise ValueError(f'format {fmt!r} must be jpeg or png')
        self.node = node
        self.frame_id = frame_id
        self.transport = transport
        self.encoding = encoding
        self.fmt = fmt
        qos = qos if qos is not None else make_qos()
        if transport == 'raw':
            self.topic = topic
            self.publisher = node.create_publisher(Image, topic, qos)
        else:
            self.topic = compressed_topic(topic)
            self.publisher = node.create_publisher(CompressedImage, self.topic, qos)
        self._msg_types = (Image, CompressedImage)
        self.published = 0

    def make_msg(self, rgb, stamp=None):
        """Build the message for one RGB frame (header stamp: now unless given)."""
        from demand_layering_ros.service import imaging
        Image, CompressedImage = self._msg_types
        if self.transport == 'raw':
            fields = imaging.rgb_to_image_fields(rgb, self.encoding)
            msg = Image(height=fields['height'], width=fields['width'],
                        encoding=fields['encoding'], is_bigendian=0, step=fields['step'])
            msg.data = fields['data']
        else:
            msg = CompressedImage(format=self.fmt)
            msg.data = imaging.encode_compressed(rgb, self.fmt)
        msg.header.frame_id = self.frame_id
        msg.header.stamp = stamp if stamp is not None else self.node.get_clock().now().to_msg()
        return msg

    def publish(self, rgb, stamp=None):
        """Publish one frame and return the message."""
        msg = self.make_msg(rgb, stamp)
        self.publisher.publish(msg)
        self.published += 1
        return msg

    def subscribers(self):
        """Return how many subscriptions are matched to this camera's topic."""
        return self.publisher.get_subscription_count()


def add_arguments(parser, command=None):
    """Add the `camera` command's options."""
    parser.add_argument('--images', nargs='+', required=True, metavar='DIR_OR_FILES',
                        help='image files, folders of images, video files (OpenCV), or '
                             'photo:NAME for a bundled photo (dog, person, astronaut, ...)')
    parser.add_argument('--rate', type=float, default=10.0, metavar='HZ',
                        help='frames per second (default 10)')
    parser.add_argument('--topic', default='/camera/image_raw', metavar='T',
                        help='image topic (default /camera/image_raw; with --transport '
                             'compressed, T/compressed)')
    parser.add_argument('--frame-id', default='camera', help='header.frame_id (default camera)')
    parser.add_argument('--transport', choices=('raw', 'compressed'), default='raw',
                        help='publish sensor_msgs/Image (raw) or CompressedImage')
    parser.add_argument('--encoding', choices=('rgb8', 'bgr8'), default='rgb8',
                        help='raw image encoding (default rgb8)')
    parser.add_argument('--format', dest='fmt', choices=('jpeg', 'png'), default='jpeg',
                        help='compressed format (default jpeg)')
    parser.add_argument('--resize', type=parse_size, default=None, metavar='WxH',
                        help='resize every frame to WIDTHxHEIGHT')
    parser.add_argument('--loop', action='store_true', help='start again after the last frame')
    parser.add_argument('--count', type=int, default=0, metavar='N',
                        help='stop after N frames (default: every frame once, or forever '
                             'with --loop)')
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable',
                        help='publisher reliability (default reliable)')
    parser.add_argument('--depth', type=int, default=1, help='publisher queue depth (default 1)')
    parser.add_argument('--wait-subscribers', type=float, default=0.0, metavar='SECONDS',
                        help='before the first frame, wait up to SECONDS for a subscriber')
    parser.add_argument('--node-name', default='replay_camera', help='ROS node name')
    parser.add_argument('--quiet', action='store_true', help='print only the summary')


def run_camera(args, ros_args=None, context=None, log=print):
    """Publish frames as `args` says; return a summary dict (frames, seconds, fps, topic)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    if args.rate <= 0:
        raise SourceError(f'--rate must be positive, got {args.rate}')
    if args.count < 0:
        raise SourceError(f'--count must be >= 0, got {args.count}')
    frames = FrameSource(expand_sources(args.images), loop=args.loop, resize=args.resize)
    own_context = context is None
    context = rclpy.Context() if own_context else context
    if own_context:
        rclpy.init(args=ros_args, context=context)
    node = rclpy.create_node(args.node_name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        camera = ReplayCamera(node, args.topic, args.frame_id, args.transport, args.encoding,
                              args.fmt, make_qos(args.qos, args.depth))
        topic = camera.publisher.topic_name
        if args.wait_subscribers > 0:
            end = time.monotonic() + args.wait_subscribers
            while camera.subscribers() == 0 and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            if camera.subscribers() == 0 and not args.quiet:
                log(f'[camera] no subscriber on {topic} after {args.wait_subscribers:g} s; '
                    'publishing anyway')
        period = 1.0 / args.rate
        start = next_t = time.monotonic()
        for name, rgb in frames:
            now = time.monotonic()
            if next_t > now:
                executor.spin_once(timeout_sec=0)
                time.sleep(max(0.0, next_t - time.monotonic()))
            elif now - next_t > period:
                next_t = now     # fell behind (slow decode): do not burst to catch up
            msg = camera.publish(rgb)
            if not args.quiet:
                log(f'[camera] {topic} frame {camera.published} {name} '
                    f'{rgb.shape[1]}x{rgb.shape[0]} stamp {msg.header.stamp.sec}.'
                    f'{msg.header.stamp.nanosec:09d}')
            next_t += period
            if args.count and camera.published >= args.count:
                break
        seconds = time.monotonic() - start
        summary = {'topic': topic, 'frames': camera.published, 'seconds': round(seconds, 3),
                   'fps': round(camera.published / seconds, 2) if seconds > 0 else 0.0}
        log(f'[camera] published {summary["frames"]} frames on {topic} in '
            f'{summary["seconds"]} s ({summary["fps"]} fps)')
        return summary
    finally:
        executor.shutdown()
        node.destroy_node()
        if own_context:
            context.try_shutdown()


def run(args, command=None):
    """Run the `camera` command; returns the exit status."""
    return _exit_status(args, None, 'camera')


def _exit_status(args, ros_args, prog):
    """Publish until done or Ctrl-C; a bad source is one line on stderr and status 2."""
    try:
        run_camera(args, ros_args=ros_args)
    except SourceError as e:
        print(f'{prog}: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv=None):
    """Console script `camera_node`: the camera command, accepting --ros-args (remaps, ns)."""
    from rclpy.utilities import remove_ros_args
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog='camera_node',
                                     description='Publish images or a video as a ROS 2 camera.')
    add_arguments(parser)
    args = parser.parse_args(remove_ros_args(argv)[1:])
    return _exit_status(args, argv, 'camera_node')


if __name__ == '__main__':
    sys.exit(main())
