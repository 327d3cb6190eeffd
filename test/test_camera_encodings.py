# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Cameras in YUV 4:2:2 and Bayer over real DDS: served as OpenCV decodes them, bad frames counted.

One node (a seeded Darknet pack, like test_node_models) serves a camera publishing
`yuv422_yuy2` and one publishing `bayer_rggb8`, both with padded rows. The oracle for what each
camera receives is the same model fully resident, run here on the RGB image OpenCV's own
cvtColor makes of the same pixels: boxes, scores and classes must be exactly its own. A
malformed frame of each kind (odd YUV width, YUV data cut short, Bayer step below the width) is
dropped, counted for its camera and named in one line; the next good frame is served.
"""

from demand_layering_ros import pack as P
import numpy as np
import pytest
from sensor_msgs.msg import Image
import skimage.data
from test_imaging import bayer, opencv_rgb, to_bytes, yuv422
from test_node_models import (assert_same, expected, Harness, resident_oracle, THRESHOLD,
                              wait_for)

CAMERAS = {'yuv422_yuy2': '/yuyv_cam', 'bayer_rggb8': '/bayer_cam'}
TOPICS = {enc: f'{ns}/image_raw' for enc, ns in CAMERAS.items()}
OUT = {enc: f'{ns}/detections' for enc, ns in CAMERAS.items()}
PAD = 6     # bytes of junk after every row


@pytest.fixture(scope='module')
def oracle(tmp_path_factory):
    pack = P.write_pack('darknet:yolov3-tiny', tmp_path_factory.mktemp('encodings') / 'pack',
                        seed=1, input_size='64x64', progress=False, verify=False)
    return pack, resident_oracle({enc: pack for enc in CAMERAS})


@pytest.fixture(scope='module')
def harness(oracle):
    pack, _ = oracle
    h = Harness({'pack_path': str(pack.path), 'image_topics': list(TOPICS.values()),
                 'score_threshold': THRESHOLD, 'autostart': False}, topics=TOPICS,
                outs=OUT).start()
    yield h
    h.close()


def camera_pixels(encoding, crop):
    """Return what the camera sends: a real photo as YUYV pairs or through an RGGB mosaic."""
    rgb = np.ascontiguousarray(skimage.data.astronaut()[crop:crop + 90, crop:crop + 120])
    return yuv422(rgb, 'YUYV') if encoding == 'yuv422_yuy2' else bayer(rgb, 'RGGB')


def publish(h, encoding, pixels, step=None, data=None, width=None):
    """Publish Image fields (padded rows by default) on the encoding's camera; its header."""
    height, w = pixels.shape[:2]
    padded_step, padded = to_bytes(pixels, PAD, 0)
    msg = Image(height=height, width=w if width is None else width, encoding=encoding,
                is_bigendian=0, step=padded_step if step is None else step)
    msg.data = padded if data is None else data
    h.count += 1
    msg.header.frame_id = f'{encoding}_{h.count}'
    msg.header.stamp = h.client.get_clock().now().to_msg()
    h.pubs[TOPICS[encoding]].publish(msg)
    return msg.header


@pytest.mark.parametrize('encoding', list(CAMERAS))
def test_each_camera_is_served_as_opencv_decodes_it(harness, oracle, encoding):
    _, dets = oracle
    for crop in (0, 200):
        pixels = camera_pixels(encoding, crop)
        header = publish(harness, encoding, pixels)
        got = harness.answer(encoding, header)
        want = expected(dets, encoding, header, opencv_rgb(encoding, pixels))
        assert want.detections, 'the oracle found nothing: the comparison would be empty'
        assert_same(got, want)


def malformed(encoding, pixels):
    """Return [(fields to change, words of the error)] for one camera's encoding."""
    step, data = to_bytes(pixels, PAD, 0)
    if encoding == 'yuv422_yuy2':
        return [({'width': pixels.shape[1] - 1}, 'is odd'),
                ({'data': data[:len(data) // 2]}, f'data has {len(data) // 2} bytes')]
    return [({'step': pixels.shape[1] - 1}, 'is smaller than width x bytes per pixel')]


def test_malformed_frames_are_dropped_and_counted_per_camera(harness, oracle):
    _, dets = oracle
    for encoding, ns in CAMERAS.items():
        pixels = camera_pixels(encoding, 100)
        before = harness.node.camera_stats()[ns]['drops']['malformed']
        cases = malformed(encoding, pixels)
        for n, (fields, words) in enumerate(cases, 1):
            publish(harness, encoding, pixels, **fields)
            wait_for(lambda: harness.node.camera_stats()[ns]['drops']['malformed'] ==
                     before + n, 10, f'malformed {encoding} frame counted')
            error = harness.node.camera_stats()[ns]['last_error']
            assert error.startswith(TOPICS[encoding]) and words in error, error
            assert '\n' not in error
        # the node keeps serving this camera: the next good frame is answered exactly
        header = publish(harness, encoding, pixels)
        assert_same(harness.answer(encoding, header),
                    expected(dets, encoding, header, opencv_rgb(encoding, pixels)))
    stats = harness.node.camera_stats()
    assert stats['/yuyv_cam']['drops']['malformed'] >= 2
    assert stats['/bayer_cam']['drops']['malformed'] >= 1
