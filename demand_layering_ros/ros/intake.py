# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Images as they arrive: received on a loop of their own, kept serialized, stamps read in place.

At 30 fps most frames are superseded before the model is free, so receiving one must cost
little. Measured on a 2-core machine with 1.3 MB images at 30 fps, rclpy's multi-threaded
executor spends 8-16 ms of CPU per image in Python (waits, futures, the thread pool: all under
the GIL the inference thread needs for its per-layer hooks), a single-threaded executor about
1 ms. So `Intake` receives the images on its own single-threaded executor and thread, whatever
executor runs the node itself, through a hidden node of the same context. It subscribes to the
serialized bytes (`raw=True`), reads only the header stamp from the CDR (`header_stamp`) for
admission, and the frame actually run is converted later (`decode`), its pixels read in place
(`read_in_place`): rclpy's deserialisation copies a frame four times on the way to a Python
message (Fast CDR's buffer, the C message, a bytes object, the message's array), 14 MiB of
transient heap for one 1352x900 frame in the inference thread, where glibc then keeps it.
"""

import struct
import threading
import time

from demand_layering_ros.service import imaging
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

# CDR encapsulation identifiers whose first member starts right after the 4-byte header:
# plain CDR and XCDR2 of a final type (ROS 2 messages), big- or little-endian (odd: little).
PLAIN = {0x0000: '>', 0x0001: '<', 0x0006: '>', 0x0007: '<'}


def header_stamp(data):
    """
    Return (sec, nanosec) of the std_msgs/Header a serialized message starts with, or None.

    None when the encapsulation is not plain CDR (the caller then treats the stamp as unusable).
    """
    if len(data) < 12:
        return None
    order = PLAIN.get((data[0] << 8) | data[1])
    if order is None:
        return None
    return struct.unpack_from(order + 'iI', data, 4)


class _Cdr:
    """A cursor over plain CDR: 4-byte aligned integers, strings; IndexError past the end."""

    def __init__(self, data, order):
        self.data, self.order, self.pos = data, order, 4

    def uint(self, fmt='I'):
        size = struct.calcsize(fmt)
        self.pos += -(self.pos - 4) % size          # aligned from the encapsulation's end
        if self.pos + size > len(self.data):
            raise IndexError('past the end')
        value = struct.unpack_from(self.order + fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def octets(self):
        n = self.uint()
        if self.pos + n > len(self.data):
            raise IndexError('past the end')
        self.pos += n
        return self.pos - n, n

    def string(self):
        start, n = self.octets()
        if n < 1 or self.data[start + n - 1] != 0:
            raise ValueError('string without its terminating NUL')
        return bytes(self.data[start:start + n - 1]).decode('utf-8')


def read_in_place(data, msg_type):
    """
    Return (message without its pixels, the pixels: a view of `data`) of a serialized frame.

    Image and CompressedImage in plain CDR only; None for anything else, or for bytes that do
    not hold exactly one such message (then the caller deserialises them, and says why not).
    """
    order = PLAIN.get((data[0] << 8) | data[1]) if len(data) >= 4 else None
    if order is None or msg_type not in (Image, CompressedImage):
        return None
    try:
        c = _Cdr(data, order)
        header = Header(frame_id='')
        header.stamp.sec, header.stamp.nanosec = c.uint('i'), c.uint()
        header.frame_id = c.string()
        if msg_type is Image:
            msg = Image(header=header, height=c.uint(), width=c.uint(), encoding=c.string(),
                        is_bigendian=c.uint('B'), step=c.uint())
        else:
            msg = CompressedImage(header=header, format=c.string())
        start, n = c.octets()
    except (IndexError, ValueError, AssertionError, struct.error):
        return None
    if len(data) - c.pos > 3:            # no more than the padding to a 4-byte boundary
        return None
    return msg, memoryview(data)[start:start + n]


def decode(data, msg_type, where):
    """
    Convert one frame's bytes: (message, [H, W, 3] uint8 RGB).

    The message carries the header and the image fields; its pixels are only in the RGB array
    when they could be read in place (`read_in_place`), which is the only copy of them made.
    """
    fields = read_in_place(data, msg_type)
    if fields is not None:
        msg, pixels = fields
        if hasattr(msg, 'encoding'):
            return msg, imaging.image_to_rgb(msg.encoding, msg.width, msg.height, msg.step,
                                             pixels, msg.is_bigendian, where=where)
        return msg, imaging.compressed_to_rgb(msg.format, pixels, where=where)
    try:
        msg = deserialize_message(data, msg_type)
    except Exception as e:   # the rmw layer's error types differ between distributions
        raise imaging.ImageError(f'{where}: {len(data)} bytes are not a valid '
                                 f'{msg_type.__name__} ({type(e).__name__}: {e})') from None
    return msg, imaging.msg_to_rgb(msg, where=where)


def decode_taken(batch, queue, slack, log):
    """
    Decode the frames taken to run: [(frame, message, RGB)]; each frame keeps the message.

    A malformed frame is dropped and counted in `queue`; `slack` gets each frame's decode time
    and, when its stamp was usable, its age at arrival.
    """
    frames = []
    for f in batch:
        t0 = time.perf_counter()
        try:
            msg, rgb = decode(f.msg, f.camera.msg_type, f.camera.sub_topic)
        except imaging.ImageError as e:
            queue.drop(f.camera, 'malformed', str(e))
            log.warning(f'dropped a malformed frame: {e}', throttle_duration_sec=5.0)
            continue
        slack.add('decode', time.perf_counter() - t0)
        f.msg = msg     # the bytes go now, not after the pass: the RGB array is the frame's copy
        if f.base != f.arrival:      # a usable stamp: how old the frame came in
            slack.add('age', f.arrival - f.base)
        frames.append((f, msg, rgb))
    return frames


class Intake:
    """
    The image subscriptions, spun by a single-threaded executor in a thread of their own.

    The hidden node ignores the command line's arguments (topics come already resolved by the
    detector node, remaps included) and offers no parameter services.
    """

    def __init__(self, name, namespace, context):
        """Start the loop for the detector node `name` in `namespace` (its context)."""
        from rclpy.node import Node
        self.node = Node(f'_{name}_intake', namespace=namespace, context=context,
                         use_global_arguments=False, start_parameter_services=False,
                         enable_rosout=False)
        self.context = context
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.subscriptions = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name='dlr-intake', daemon=True)
        self.thread.start()

    def _spin(self):
        # spin_once in a loop, not spin(): close() ends the loop and joins the thread before it
        # shuts the executor down (an executor shut down while a thread waits in it can crash)
        from rclpy.executors import ExternalShutdownException, ShutdownException
        try:
            while not self.stop.is_set() and self.context.ok():
                self.executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, ShutdownException):   # nothing more to receive
            pass

    def subscribe(self, msg_type, topic, qos, callback):
        """Subscribe `callback(serialized bytes)` to an absolute topic."""
        sub = self.node.create_subscription(msg_type, topic, callback, qos, raw=True)
        self.subscriptions.append(sub)
        return sub

    def close(self):
        """Stop receiving: end the loop, then destroy the subscriptions and the node."""
        self.stop.set()
        self.thread.join(5.0)
        self.executor.shutdown(timeout_sec=5.0)
        for sub in self.subscriptions:
            self.node.destroy_subscription(sub)
        self.subscriptions = []
        self.node.destroy_node()
