# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Image conversion: every accepted encoding, padded rows, JPEG/PNG, and each malformed case.

The oracle for colour handling is OpenCV's own cvtColor on a real photo; malformed frames must
raise ImageError naming the field, never decode wrong or allocate for a lying header.
"""

import cv2
from demand_layering_ros.service import imaging
from demand_layering_ros.service.imaging import ImageError
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
import skimage.data


@pytest.fixture(scope='module')
def photo():
    # a real photo, cropped to an odd size so row lengths are not multiples of 4
    return np.ascontiguousarray(skimage.data.astronaut()[:201, :303])


def _encode(rgb, encoding):
    """Raw pixels for an encoding, made with OpenCV (independent of imaging.py)."""
    conv = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA,
            'bgra8': cv2.COLOR_RGB2BGRA, 'mono8': cv2.COLOR_RGB2GRAY}[encoding]
    out = rgb if conv is None else cv2.cvtColor(rgb, conv)
    return out if out.ndim == 3 else out[:, :, None]


def _expected(rgb, encoding):
    if encoding == 'mono8':
        return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return rgb


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
@pytest.mark.parametrize('pad', [0, 13])
def test_raw_encodings_with_and_without_row_padding(photo, encoding, pad):
    pixels = _encode(photo, encoding)
    h, w, c = pixels.shape
    step = w * c + pad
    buf = np.full((h, step), 0xAB, np.uint8)    # padding bytes hold junk
    buf[:, :w * c] = pixels.reshape(h, w * c)
    out = imaging.image_to_rgb(encoding, w, h, step, buf.tobytes())
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous
    assert np.array_equal(out, _expected(photo, encoding))


def test_result_is_an_owned_writable_copy(photo):
    data = photo.tobytes()
    out = imaging.image_to_rgb('rgb8', photo.shape[1], photo.shape[0], photo.shape[1] * 3, data)
    assert out.flags.writeable and out.flags.owndata
    out[:] = 0
    assert data == photo.tobytes()


def test_real_ros_messages_raw_and_compressed(photo):
    h, w = photo.shape[:2]
    msg = Image(**imaging.rgb_to_image_fields(photo, 'bgr8'))
    msg.header.frame_id = 'cam0'
    assert msg.step == w * 3 and msg.encoding == 'bgr8'
    assert np.array_equal(imaging.msg_to_rgb(msg), photo)

    png = CompressedImage(format='png', data=imaging.encode_compressed(photo, 'png'))
    assert np.array_equal(imaging.msg_to_rgb(png), photo)

    jpg = CompressedImage(format='jpeg', data=imaging.encode_compressed(photo, 'jpeg', 95))
    out = imaging.msg_to_rgb(jpg)
    assert out.shape == (h, w, 3)
    assert np.abs(out.astype(int) - photo.astype(int)).mean() < 3.0   # lossy, colours kept
    # image_transport's format string names the encoding before the codec
    jpg.format = 'bgr8; jpeg compressed bgr8'
    assert np.array_equal(imaging.msg_to_rgb(jpg), out)


def test_compressed_header_size(photo):
    jpg = imaging.encode_compressed(photo, 'jpeg')
    png = imaging.encode_compressed(photo, 'png')
    assert imaging.compressed_size(jpg) == ('jpeg', photo.shape[1], photo.shape[0])
    assert imaging.compressed_size(png) == ('png', photo.shape[1], photo.shape[0])


@pytest.mark.parametrize('fields, words', [
    ({'encoding': 'yuv422'}, 'unsupported encoding'),
    ({'encoding': '16UC1'}, 'unsupported encoding'),
    ({'step': 29}, 'step 29 is smaller'),
    ({'data': b'\0' * (40 * 10 - 1)}, 'data has 399 bytes'),
    ({'width': 0}, 'width is 0'),
    ({'height': -3}, 'height is -3'),
    ({'width': 10.0}, 'width must be an integer'),
    ({'width': 100000, 'step': 300000}, 'exceeds the limit of 16384'),
    ({'width': 12000, 'height': 12000, 'step': 36000}, 'exceeds the limit of'),
    ({'data': object()}, 'not a byte buffer'),
])
def test_malformed_raw_images_raise_specific_errors(fields, words):
    base = {'encoding': 'rgb8', 'width': 10, 'height': 10, 'step': 40, 'data': b'\0' * 400}
    base.update(fields)
    with pytest.raises(ImageError, match=words):
        imaging.image_to_rgb(base['encoding'], base['width'], base['height'], base['step'],
                             base['data'])


def _patch_jpeg_size(jpg, width, height):
    data = bytearray(jpg)
    i = 2
    while True:   # walk segments to the SOF0 marker written by libjpeg
        marker, length = data[i + 1], (data[i + 2] << 8) | data[i + 3]
        if marker == 0xC0:
            data[i + 5:i + 7] = height.to_bytes(2, 'big')
            data[i + 7:i + 9] = width.to_bytes(2, 'big')
            return bytes(data)
        i += 2 + length


def test_malformed_compressed_images(photo):
    jpg = imaging.encode_compressed(photo, 'jpeg')
    png = imaging.encode_compressed(photo, 'png')
    with pytest.raises(ImageError, match='truncated'):
        imaging.compressed_to_rgb('jpeg', jpg[:len(jpg) // 2])
    with pytest.raises(ImageError, match='neither JPEG nor PNG'):
        imaging.compressed_to_rgb('jpeg', b'hello world, not an image')
    with pytest.raises(ImageError, match='empty'):
        imaging.compressed_to_rgb('jpeg', b'')
    with pytest.raises(ImageError, match='could not be decoded'):
        imaging.compressed_to_rgb('png', png[:len(png) // 2])
    with pytest.raises(ImageError, match='unsupported format'):
        imaging.compressed_to_rgb('tiff', png)
    # header bytes only: the frame size is never reached
    with pytest.raises(ImageError, match='truncated header'):
        imaging.compressed_to_rgb('jpeg', jpg[:20])
    # a header lying about its size is refused before the decoder allocates for it
    huge = _patch_jpeg_size(jpg, 16000, 16000)
    with pytest.raises(ImageError, match='exceeds the limit'):
        imaging.compressed_to_rgb('jpeg', huge)
    with pytest.raises(ImageError, match='height is 0'):
        imaging.compressed_to_rgb('jpeg', _patch_jpeg_size(jpg, 100, 0))
    # a smaller caller limit applies to compressed frames too
    with pytest.raises(ImageError, match='exceeds the limit of 1000 pixels'):
        imaging.compressed_to_rgb('png', png, max_pixels=1000)


def test_duck_typed_message_without_fields():
    class Nothing:
        pass
    with pytest.raises(ImageError, match='neither encoding nor format'):
        imaging.msg_to_rgb(Nothing())


def test_draw_detections_marks_the_box_only(photo):
    out = imaging.draw_detections(photo, [[50, 60, 150, 160]], ['person'], [0.9])
    assert out.shape == photo.shape and not np.shares_memory(out, photo)
    diff = np.any(out != photo, axis=2)
    assert diff[60:161, 50].all() and diff[160, 50:151].all()   # left and bottom edges drawn
    assert not diff[100:140, 80:120].any()                      # inside untouched
    assert not diff[180:, 200:].any()                           # far away untouched


def test_encoders_refuse_bad_input(photo):
    with pytest.raises(ImageError, match='RGB array'):
        imaging.rgb_to_image_fields(photo[:, :, 0])
    with pytest.raises(ImageError, match='rgb8 or bgr8'):
        imaging.rgb_to_image_fields(photo, 'mono16')
    with pytest.raises(ImageError, match='jpeg or png'):
        imaging.encode_compressed(photo, 'webp')
