# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The replay camera: sources, frames, and real messages over DDS from the CLI and the node.

Real photos (scikit-image) and a real video file written with OpenCV go in; the test receives
the published messages over Fast DDS on its own domain and checks pixels, headers and rate.
"""

import argparse
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import cv2
from demand_layering_ros.ros import camera
from demand_layering_ros.service import imaging
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image
import skimage.data

ROOT = Path(__file__).resolve().parents[1]
# one DDS domain per test module and process, so parallel runs of other tests do not cross-talk
DOMAIN = 100 + (os.getpid() * 7 + 11) % 100


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp('camera_media')
    a = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])        # 128x128
    c = np.ascontiguousarray(skimage.data.coffee()[::4, ::4])           # 100x150
    cv2.imwrite(str(d / 'a_astronaut.png'), a[:, :, ::-1])
    cv2.imwrite(str(d / 'b_coffee.png'), c[:, :, ::-1])
    (d / 'notes.txt').write_text('not an image')
    video = d / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10, (128, 128))
    assert writer.isOpened()
    shifts = [0, 20, 40]
    for s in shifts:
        writer.write(np.ascontiguousarray(np.roll(a, s, axis=1)[:, :, ::-1]))
    writer.release()
    return {'dir': d, 'astronaut': a, 'coffee': c, 'video': video,
            'video_frames': [np.roll(a, s, axis=1) for s in shifts]}


def test_expand_sources(media, tmp_path):
    d = media['dir']
    got = camera.expand_sources([str(d)])
    assert got == [('image', str(d / 'a_astronaut.png')), ('image', str(d / 'b_coffee.png')),
                   ('video', str(d / 'clip.avi'))]
    assert camera.expand_sources(['photo:astronaut'])[0][0] == 'image'
    with pytest.raises(camera.SourceError, match='no such file'):
        camera.expand_sources([str(d / 'missing.jpg')])
    with pytest.raises(camera.SourceError, match='no image or video'):
        camera.expand_sources([str(tmp_path)])
    with pytest.raises(camera.SourceError, match='unknown photo'):
        camera.expand_sources(['photo:unicorn'])
    with pytest.raises(camera.SourceError, match='WIDTHxHEIGHT'):
        camera.parse_size('640by480')


def test_frames_from_photos_and_video(media):
    frames = list(camera.FrameSource(camera.expand_sources([str(media['dir'])])))
    names = [n for n, _ in frames]
    assert names == ['a_astronaut.png', 'b_coffee.png', 'clip.avi#1', 'clip.avi#2', 'clip.avi#3']
    assert np.array_equal(frames[0][1], media['astronaut'])
    assert np.array_equal(frames[1][1], media['coffee'])
    for (_, got), want in zip(frames[2:], media['video_frames']):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 6   # MJPG is lossy
    # looping repeats, resizing applies to photos and video frames alike
    src = camera.FrameSource(camera.expand_sources([str(media['dir'])]), loop=True,
                             resize=(64, 48))
    it = iter(src)
    looped = [next(it) for _ in range(7)]
    assert [n for n, _ in looped][5:] == ['a_astronaut.png', 'b_coffee.png']
    assert all(f.shape == (48, 64, 3) for _, f in looped)


def test_broken_files_are_named(tmp_path):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    with pytest.raises(camera.SourceError, match='broken.png: cannot decode'):
        list(camera.FrameSource(camera.expand_sources([str(bad)])))
    bad_video = tmp_path / 'broken.mp4'
    bad_video.write_bytes(b'no video here')
    with pytest.raises(camera.SourceError, match='broken.mp4'):
        list(camera.FrameSource(camera.expand_sources([str(bad_video)])))


def _collect(msg_type, topic, run, timeout=60.0):
    """Spin a subscriber on the test domain while `run()` publishes; return received msgs."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN)
    got = []
    try:
        node = rclpy.create_node('camera_test_listener', context=ctx)
        node.create_subscription(msg_type, topic, got.append, camera.make_qos('reliable', 50))
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        done = threading.Event()
        result = {}

        def target():
            try:
                result['value'] = run()
            finally:
                done.set()
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        end = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        tail = time.monotonic() + 1.0
        while time.monotonic() < tail:      # messages still in flight after the run ended
            executor.spin_once(timeout_sec=0.05)
        assert done.is_set(), f'camera did not finish within {timeout} s'
        executor.shutdown()
        node.destroy_node()
        return got, result.get('value')
    finally:
        ctx.try_shutdown()


def test_cli_publishes_real_images_with_headers_at_rate(media):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    cmd = [sys.executable, '-m', 'demand_layering_ros', 'camera', '--images',
           str(media['dir'] / 'a_astronaut.png'), str(media['dir'] / 'b_coffee.png'),
           '--rate', '20', '--topic', '/test_cam/image_raw', '--frame-id', 'test_optical',
           '--loop', '--count', '8', '--wait-subscribers', '20', '--encoding', 'bgr8']

    def run():
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    got, proc = _collect(Image, '/test_cam/image_raw', run)
    assert proc.returncode == 0, proc.stderr
    assert 'published 8 frames on /test_cam/image_raw' in proc.stdout
    assert len(got) >= 7, f'received {len(got)} of 8 frames'
    for msg in got:
        assert msg.header.frame_id == 'test_optical' and msg.encoding == 'bgr8'
        rgb = imaging.msg_to_rgb(msg)
        want = media['astronaut'] if msg.width == 128 else media['coffee']
        assert np.array_equal(rgb, want)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    period = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    # stamps come from the publisher's clock: not faster than 20 Hz; slower only by load spikes
    assert 0.03 <= period <= 0.25, f'mean period {period:.3f} s at 20 Hz'


def test_compressed_stream_in_process(media):
    args = argparse.Namespace(
        images=['photo:coffee'], rate=30.0, topic='/test_cam2/image_raw', frame_id='cam2',
        transport='compressed', encoding='rgb8', fmt='png', resize=(150, 100), loop=True,
        count=4, qos='reliable', depth=5, wait_subscribers=20.0, node_name='cam2',
        quiet=True)
    lines = []

    def run():
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=DOMAIN)
        try:
            return camera.run_camera(args, context=ctx, log=lines.append)
        finally:
            ctx.try_shutdown()
    got, summary = _collect(CompressedImage, '/test_cam2/image_raw/compressed', run)
    assert summary['frames'] == 4 and summary['topic'] == '/test_cam2/image_raw/compressed'
    assert len(got) >= 3
    want = camera.FrameSource(camera.expand_sources(['photo:coffee']), resize=(150, 100))
    want = next(iter(want))[1]
    for msg in got:
        assert msg.format == 'png' and msg.header.frame_id == 'cam2'
        assert np.array_equal(imaging.msg_to_rgb(msg), want)


def test_console_script_accepts_ros_remaps(media):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN))
    cmd = [sys.executable, '-c', 'import sys; from demand_layering_ros.ros.camera import main; '
           'sys.exit(main())', '--images', str(media['dir'] / 'a_astronaut.png'),
           '--count', '3', '--loop', '--rate', '30', '--wait-subscribers', '20', '--quiet',
           '--ros-args', '-r', '/camera/image_raw:=/remapped/image_raw']

    def run():
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    got, proc = _collect(Image, '/remapped/image_raw', run)
    assert proc.returncode == 0, proc.stderr
    assert len(got) >= 2 and got[0].width == 128
    # a bad source is a clear error and exit status 2, not a traceback
    bad = subprocess.run([sys.executable, '-m', 'demand_layering_ros', 'camera', '--images',
                          '/nonexistent/x.jpg'], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and 'no such file' in bad.stderr
