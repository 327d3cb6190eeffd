# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Image conversion: every accepted encoding, padded rows, JPEG/PNG, and each malformed case.

The oracle for colour handling is OpenCV's own conversion of the same pixels (cvtColor with the
code cv_bridge uses, convertScaleAbs for 16 bits) on a real photo, in both byte orders; the
YUV and Bayer tables are checked once more against the photo itself (the right layout gives it
back, the others do not). Malformed frames must raise ImageError naming the field, never decode
wrong or allocate for a lying header.
"""

import cv2
from demand_layering_ros.service import imaging
from demand_layering_ros.service.imaging import ImageError
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
import skimage.data

# The oracle's table, written from ROS 2's image_encodings.hpp and cv_bridge.cpp, apart from
# imaging.py: encoding -> (channels, bytes per channel, OpenCV conversion to RGB or None)
OPENCV = {
    'rgb8': (3, 1, None),
    'bgr8': (3, 1, cv2.COLOR_BGR2RGB),
    'rgba8': (4, 1, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, 1, cv2.COLOR_BGRA2RGB),
    'mono8': (1, 1, cv2.COLOR_GRAY2RGB),
    '8UC1': (1, 1, cv2.COLOR_GRAY2RGB),
    '8UC3': (3, 1, cv2.COLOR_BGR2RGB),
    'rgb16': (3, 2, None),
    'bgr16': (3, 2, cv2.COLOR_BGR2RGB),
    'mono16': (1, 2, cv2.COLOR_GRAY2RGB),
    'uyvy': (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422': (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuyv': (2, 1, cv2.COLOR_YUV2RGB_YUY2),
    'yuv422_yuy2': (2, 1, cv2.COLOR_YUV2RGB_YUY2),
    'bayer_rggb8': (1, 1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (1, 1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (1, 1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (1, 1, cv2.COLOR_BayerGB2RGB),
}
SIXTEEN = ['rgb16', 'bgr16', 'mono16']
YUV = {'uyvy': 'UYVY', 'yuv422': 'UYVY', 'yuyv': 'YUYV', 'yuv422_yuy2': 'YUYV'}
BAYER = {'bayer_rggb8': 'RGGB', 'bayer_bggr8': 'BGGR', 'bayer_gbrg8': 'GBRG',
         'bayer_grbg8': 'GRBG'}


@pytest.fixture(scope='module')
def photo():
    # a real photo, cropped to an odd size so row lengths are not multiples of 4
    return np.ascontiguousarray(skimage.data.astronaut()[:201, :303])


def opencv_rgb(encoding, pixels):
    """Return what OpenCV makes of a driver's [H, W, C] pixels (uint8 or uint16) as RGB."""
    channels, depth, code = OPENCV[encoding]
    if channels == 1:
        pixels = pixels[:, :, 0]
    if depth == 2:      # cv_bridge: convertTo(CV_8U, 255 / 65535), i.e. rounded
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)
    return pixels if code is None else cv2.cvtColor(pixels, code)


def pixels_from_fields(encoding, width, height, step, data, bigendian):
    """Read Image fields into [H, W, C] pixels with numpy's own byte-order handling."""
    channels, depth, _ = OPENCV[encoding]
    row = width * channels * depth
    buf = np.frombuffer(bytes(data), np.uint8)[:step * height].reshape(height, step)[:, :row]
    if depth == 1:
        return buf.reshape(height, width, channels)
    order = '>u2' if bigendian else '<u2'
    return buf.copy().view(order).astype(np.uint16).reshape(height, width, channels)


def to_bytes(pixels, pad, bigendian):
    """Image fields for [H, W, C] pixels: rows padded with `pad` junk bytes, in a byte order."""
    h, w, c = pixels.shape
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('>u2' if bigendian else '<u2')
    raw = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, -1)
    step = raw.shape[1] + pad
    buf = np.full((h, step), 0xAB, np.uint8)    # padding bytes hold junk
    buf[:, :raw.shape[1]] = raw
    return step, buf.tobytes()


def yuv422(rgb, layout):
    """Pack RGB (even width) as 4:2:2 bytes, BT.601 limited range, chroma of each pair averaged."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.257 * r + 0.504 * g + 0.098 * b + 16
    u = -0.148 * r - 0.291 * g + 0.439 * b + 128
    v = 0.439 * r - 0.368 * g - 0.071 * b + 128
    y0, y1 = y[:, 0::2], y[:, 1::2]
    u, v = (u[:, 0::2] + u[:, 1::2]) / 2, (v[:, 0::2] + v[:, 1::2]) / 2
    planes = {'YUYV': (y0, u, y1, v), 'UYVY': (u, y0, v, y1)}[layout]
    out = np.stack([np.clip(np.round(p), 0, 255) for p in planes], axis=-1).astype(np.uint8)
    return out.reshape(rgb.shape[0], rgb.shape[1], 2)


def bayer(rgb, pattern):
    """Mosaic RGB through a colour filter array named by its top-left 2x2 ('RGGB', ...)."""
    out = np.empty(rgb.shape[:2] + (1,), np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2, 0] = rgb[dy::2, dx::2, 'RGB'.index(pattern[k])]
    return out


def driver_pixels(rgb, encoding):
    """Return the [H, W, C] pixels a driver would send for `rgb`, made without imaging.py."""
    if encoding in YUV:
        return yuv422(rgb[:, :rgb.shape[1] // 2 * 2], YUV[encoding])
    if encoding in BAYER:
        return bayer(rgb, BAYER[encoding])
    conv = {'bgr8': cv2.COLOR_RGB2BGR, '8UC3': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA,
            'bgra8': cv2.COLOR_RGB2BGRA, 'mono8': cv2.COLOR_RGB2GRAY, '8UC1': cv2.COLOR_RGB2GRAY,
            'bgr16': cv2.COLOR_RGB2BGR, 'mono16': cv2.COLOR_RGB2GRAY}.get(encoding)
    out = rgb if conv is None else cv2.cvtColor(rgb, conv)
    out = out if out.ndim == 3 else out[:, :, None]
    if encoding in SIXTEEN:    # every low byte used, so the rounding to 8 bits is exercised
        noise = np.random.default_rng(7).integers(0, 256, out.shape)
        out = (out.astype(np.uint16) << 8) | noise.astype(np.uint16)
    return out


@pytest.mark.parametrize('encoding', list(OPENCV))
@pytest.mark.parametrize('pad', [0, 13])
@pytest.mark.parametrize('bigendian', [0, 1])
def test_raw_encodings_against_opencv_padded_and_both_byte_orders(
        photo, encoding, pad, bigendian):
    pixels = driver_pixels(photo, encoding)
    h, w = pixels.shape[:2]
    step, data = to_bytes(pixels, pad, bigendian)
    out = imaging.image_to_rgb(encoding, w, h, step, data, bigendian)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous
    assert out.flags.writeable and not np.shares_memory(out, np.frombuffer(data, np.uint8))
    want = opencv_rgb(encoding, pixels)
    assert np.array_equal(out, want)
    # the oracle's own reading of the bytes gives the pixels back (the byte order is honoured)
    assert np.array_equal(pixels_from_fields(encoding, w, h, step, data, bigendian), pixels)


@pytest.mark.parametrize('encoding', list(YUV) + list(BAYER))
def test_yuv_and_bayer_layouts_give_the_photo_back(photo, encoding):
    """The table is right, not only equal to itself: the other layouts give another image."""
    pixels = driver_pixels(photo, encoding)
    h, w = pixels.shape[:2]
    ref = photo[:, :w].astype(int)
    step, data = to_bytes(pixels, 0, 0)
    own = np.abs(imaging.image_to_rgb(encoding, w, h, step, data).astype(int) - ref).mean()
    group = YUV if encoding in YUV else BAYER
    others = [np.abs(imaging.image_to_rgb(e, w, h, step, data).astype(int) - ref).mean()
              for e in group if group[e] != group[encoding]]
    assert own < (2.0 if encoding in YUV else 4.0), own
    assert min(others) > 4 * own, (own, others)


@pytest.mark.parametrize('bigendian', [0, 1])
def test_16_bit_scaling_matches_opencv_for_every_value(bigendian):
    values = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256, 1)
    step, data = to_bytes(values, 0, bigendian)
    out = imaging.image_to_rgb('mono16', 256, 256, step, data, bigendian)
    want = cv2.convertScaleAbs(values[:, :, 0], alpha=255.0 / 65535.0)
    assert np.array_equal(out[:, :, 0], want) and np.array_equal(out[:, :, 2], want)
    # cv_bridge's rounding, not a shift: they differ for a quarter of the values
    assert (want != values[:, :, 0] >> 8).sum() > 10000


def test_is_bigendian_travels_with_a_real_image_message(photo):
    pixels = driver_pixels(photo, 'rgb16')
    h, w = pixels.shape[:2]
    for bigendian in (0, 1):
        step, data = to_bytes(pixels, 5, bigendian)
        msg = Image(height=h, width=w, encoding='rgb16', is_bigendian=bigendian, step=step)
        msg.data = data
        assert np.array_equal(imaging.msg_to_rgb(msg), opencv_rgb('rgb16', pixels))
    msg.is_bigendian = 0    # big-endian bytes read as little-endian: another image
    assert not np.array_equal(imaging.msg_to_rgb(msg), opencv_rgb('rgb16', pixels))


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
    ({'encoding': 'nv21'}, 'unsupported encoding'),
    ({'encoding': '16UC1'}, 'unsupported encoding'),
    ({'encoding': 'bayer_rggb16'}, 'unsupported encoding'),
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


@pytest.mark.parametrize('encoding', list(YUV) + list(BAYER) + SIXTEEN + ['8UC1', '8UC3'])
def test_malformed_frames_of_each_new_kind(encoding):
    channels, depth, _ = OPENCV[encoding]
    bpp = channels * depth
    w, h = 6, 4
    good = {'width': w, 'height': h, 'step': w * bpp + 3, 'data': b'\0' * ((w * bpp + 3) * h)}
    imaging.image_to_rgb(encoding, **good)       # the base frame itself is fine
    cases = [({'step': w * bpp - 1}, f'step {w * bpp - 1} is smaller than width x bytes per '
                                     f'pixel = {w} x {bpp}'),
             ({'data': good['data'][:-1]}, f'data has {len(good["data"]) - 1} bytes'),
             ({'data': b''}, 'data has 0 bytes'),
             ({'height': 0}, 'height is 0')]
    if encoding in YUV:
        cases.append(({'width': 5}, 'width 5 is odd'))
    for fields, words in cases:
        with pytest.raises(ImageError, match=words) as e:
            imaging.image_to_rgb(encoding, **dict(good, **fields), where='frame x')
        assert str(e.value).startswith('frame x: ') and '\n' not in str(e.value)


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
