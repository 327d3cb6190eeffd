# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Image message fields -> RGB numpy arrays, validated before a byte is trusted.

Camera drivers send padded rows, odd encodings, truncated buffers and broken JPEGs; the PyPI
cv_bridge port decodes padded rows wrong and raises KeyError on unknown encodings. This module
converts the plain fields of `sensor_msgs/Image` and `sensor_msgs/CompressedImage` (or any
object carrying them) itself, with numpy and OpenCV, and raises ImageError naming what was
wrong, so the node can drop one bad frame, count it and keep serving. Dimensions are checked
before any allocation, including the ones declared in a JPEG or PNG header. It imports no ROS
package.

Each encoding converts as ROS 2's cv_bridge converts it to rgb8: YUV 4:2:2 and Bayer through
OpenCV's cvtColor with the code cv_bridge uses, 16-bit channels scaled to 8 bits like its
`convertTo(CV_8U, 255.0 / 65535)`, i.e. round(v / 257) (not v >> 8), after reading them in the
byte order `is_bigendian` gives.
"""

import numpy as np

# Encodings the detector accepts: name -> (bytes per pixel, bytes per channel, conversion).
# The conversion is a channel order (for R, G and B, which input channel holds it) or the
# name of OpenCV's colour conversion to RGB of the whole image (cv_bridge's choice).
ENCODINGS = {
    'rgb8': (3, 1, (0, 1, 2)),
    'bgr8': (3, 1, (2, 1, 0)),
    'rgba8': (4, 1, (0, 1, 2)),
    'bgra8': (4, 1, (2, 1, 0)),
    'mono8': (1, 1, (0, 0, 0)),
    # OpenCV type names, read as cv_bridge reads them for display: one channel as mono8, three
    # in OpenCV's own order, bgr8 (an image sent with cv2_to_imgmsg's default 'passthrough')
    '8UC1': (1, 1, (0, 0, 0)),
    '8UC3': (3, 1, (2, 1, 0)),
    'rgb16': (6, 2, (0, 1, 2)),
    'bgr16': (6, 2, (2, 1, 0)),
    'mono16': (2, 2, (0, 0, 0)),
    # YUV 4:2:2, two pixels in four bytes: U Y0 V Y1 (uyvy) or Y0 U Y1 V (yuyv); ROS 2 keeps
    # the older names yuv422 (= uyvy) and yuv422_yuy2 (= yuyv), which drivers still send
    'uyvy': (2, 1, 'COLOR_YUV2RGB_UYVY'),
    'yuv422': (2, 1, 'COLOR_YUV2RGB_UYVY'),
    'yuyv': (2, 1, 'COLOR_YUV2RGB_YUYV'),
    'yuv422_yuy2': (2, 1, 'COLOR_YUV2RGB_YUYV'),
    # Bayer mosaics, demosaiced bilinearly; OpenCV names a pattern by its second row's second
    # and third pixels, so ROS's rggb is OpenCV's BG
    'bayer_rggb8': (1, 1, 'COLOR_BayerBG2RGB'),
    'bayer_bggr8': (1, 1, 'COLOR_BayerRG2RGB'),
    'bayer_gbrg8': (1, 1, 'COLOR_BayerGR2RGB'),
    'bayer_grbg8': (1, 1, 'COLOR_BayerGB2RGB'),
}

MAX_SIDE = 16384               # pixels per side; larger is a corrupt header, not a camera
MAX_PIXELS = 64 * 1024 * 1024  # width x height; 64 Mpx = 192 MiB of RGB


class ImageError(ValueError):
    """A frame that cannot be converted; the message says which field and why."""


def _check_dims(width, height, max_pixels, where):
    for name, value in (('width', width), ('height', height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ImageError(f'{where}: {name} must be an integer, got {value!r}')
        if value <= 0:
            raise ImageError(f'{where}: {name} is {value}; an image needs at least one pixel')
        if value > MAX_SIDE:
            raise ImageError(f'{where}: {name} {value} exceeds the limit of {MAX_SIDE} pixels')
    if width * height > max_pixels:
        raise ImageError(f'{where}: {width}x{height} = {width * height} pixels exceeds the '
                         f'limit of {max_pixels} pixels')


def _as_bytes_view(data, where):
    """Return a flat uint8 view of a buffer without copying (bytes, array('B'), ndarray...)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageError(f'{where}: data must hold uint8, got {data.dtype}')
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        pass
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8)
        except (ValueError, OverflowError) as e:
            raise ImageError(f'{where}: data is not a byte sequence ({e})') from None
    raise ImageError(f'{where}: data of type {type(data).__name__} is not a byte buffer')


def image_to_rgb(encoding, width, height, step, data, is_bigendian=0,
                 max_pixels=MAX_PIXELS, where='image'):
    """
    Convert raw `sensor_msgs/Image` fields to a new [height, width, 3] uint8 RGB array.

    `step` is the row length in bytes and may exceed width x bytes-per-pixel (row padding).
    `is_bigendian` (nonzero: most significant byte first) matters for the 16-bit encodings
    only. Raises ImageError.
    """
    if encoding not in ENCODINGS:
        raise ImageError(f'{where}: unsupported encoding {encoding!r}; accepted: '
                         f'{", ".join(ENCODINGS)}')
    bpp, depth, conversion = ENCODINGS[encoding]
    _check_dims(width, height, max_pixels, where)
    if isinstance(conversion, str) and conversion.startswith('COLOR_YUV') and width % 2:
        raise ImageError(f'{where}: width {width} is odd; {encoding} packs two pixels in '
                         f'four bytes, so its width must be even')
    row = width * bpp
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ImageError(f'{where}: step must be an integer, got {step!r}')
    if step < row:
        raise ImageError(f'{where}: step {step} is smaller than width x bytes per pixel = '
                         f'{width} x {bpp} = {row} for {encoding}')
    buf = _as_bytes_view(data, where)
    # The last row needs only its pixels, but the message definition says step x height.
    need = int(step) * int(height)      # Python ints: numpy scalars would overflow
    if buf.size < need:
        raise ImageError(f'{where}: data has {buf.size} bytes, step x height = {step} x '
                         f'{height} = {need} needed')
    rows = buf[:need].reshape(height, step)[:, :row]
    if isinstance(conversion, str):
        return _opencv_to_rgb(rows, width, bpp, conversion, where)
    pixels = rows.reshape(height, width, bpp // depth, depth)
    if depth == 2:
        pixels = _scale_16_to_8(pixels, bool(is_bigendian))
    else:
        pixels = pixels[:, :, :, 0]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if conversion == (0, 1, 2):
        return pixels[:, :, :3].copy()   # a copy: the result must not alias the message
    return np.ascontiguousarray(pixels[:, :, list(conversion)])


# 16-bit value -> 8 bits: round(v * 255 / 65535) = floor((v + 128) / 257), as cv_bridge's
# convertTo(CV_8U, 255.0 / 65535) rounds it (a 64 KiB table)
_SCALE_16_TO_8 = ((np.arange(1 << 16, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def _scale_16_to_8(pixels, bigendian):
    """[H, W, C, 2] bytes of 16-bit channels (in the given byte order) -> [H, W, C] uint8."""
    high, low = (0, 1) if bigendian else (1, 0)
    values = (pixels[..., high].astype(np.uint16) << 8) | pixels[..., low]
    return _SCALE_16_TO_8[values]


def _opencv_to_rgb(rows, width, bpp, conversion, where):
    """YUV 4:2:2 ([H, W, 2]) or Bayer ([H, W]) rows to RGB with OpenCV's cvtColor."""
    import cv2

    src = rows.reshape(rows.shape[0], width, bpp) if bpp > 1 else rows
    try:
        return np.ascontiguousarray(cv2.cvtColor(src, getattr(cv2, conversion)))
    except cv2.error as e:     # checked above; a failure left is OpenCV's, said in one line
        detail = str(e).strip().splitlines()[-1]
        raise ImageError(f'{where}: OpenCV could not convert {rows.shape[1] // bpp}x'
                         f'{rows.shape[0]} by {conversion}: {detail}') from None


def _jpeg_size(data):
    """(width, height) from a JPEG's start-of-frame segment, or raise ImageError."""
    n = len(data)
    i = 2
    while i < n:
        if data[i] != 0xFF:
            raise ImageError(f'JPEG: expected a marker at byte {i}, found 0x{data[i]:02x}')
        while i < n and data[i] == 0xFF:   # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageError('JPEG: no frame header before the image data')
        if i + 2 > n:
            break
        length = (data[i] << 8) | data[i + 1]
        if length < 2:
            raise ImageError(f'JPEG: segment 0x{marker:02x} at byte {i} has length {length}')
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                break
            height = (data[i + 3] << 8) | data[i + 4]
            width = (data[i + 5] << 8) | data[i + 6]
            return width, height
        i += length
    raise ImageError(f'JPEG: truncated header ({n} bytes, no frame size found)')


def compressed_size(data):
    """Return (kind, width, height) declared by a JPEG or PNG header, without decoding."""
    data = bytes(data)
    head = data[:8]
    if head[:3] == b'\xff\xd8\xff':
        width, height = _jpeg_size(data)
        return 'jpeg', width, height
    if head == b'\x89PNG\r\n\x1a\n':
        if len(data) < 24 or bytes(data[12:16]) != b'IHDR':
            raise ImageError('PNG: truncated or missing IHDR header')
        width = int.from_bytes(bytes(data[16:20]), 'big')
        height = int.from_bytes(bytes(data[20:24]), 'big')
        return 'png', width, height
    raise ImageError(f'compressed data is neither JPEG nor PNG (starts with {head[:4].hex()})')


def compressed_to_rgb(fmt, data, max_pixels=MAX_PIXELS, where='compressed image'):
    """
    Decode `sensor_msgs/CompressedImage` fields (jpeg or png) to a [H, W, 3] uint8 RGB array.

    `fmt` is the message's format string ('jpeg', 'png', or image_transport's
    'bgr8; jpeg compressed bgr8'); the bytes themselves decide the decoder, and a format that
    names neither jpeg nor png is refused. Raises ImageError.
    """
    import cv2

    fmt_l = (fmt or '').lower()
    if fmt_l and not any(k in fmt_l for k in ('jpeg', 'jpg', 'png')):
        raise ImageError(f'{where}: unsupported format {fmt!r}; accepted: jpeg, png')
    buf = _as_bytes_view(data, where)
    if buf.size == 0:
        raise ImageError(f'{where}: data is empty')
    try:
        kind, width, height = compressed_size(buf.tobytes())
    except ImageError as e:
        raise ImageError(f'{where}: {e}') from None
    _check_dims(width, height, max_pixels, f'{where} ({kind} header)')
    if kind == 'jpeg':
        tail = buf[-64:].tobytes()
        if b'\xff\xd9' not in tail:
            raise ImageError(f'{where}: JPEG is truncated (no end-of-image marker); '
                             f'{buf.size} bytes')
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f'{where}: {kind} data ({buf.size} bytes) could not be decoded')
    if bgr.shape[:2] != (height, width):
        raise ImageError(f'{where}: decoded size {bgr.shape[1]}x{bgr.shape[0]} differs from '
                         f'the {kind} header {width}x{height}')
    return np.ascontiguousarray(bgr[:, :, ::-1])


def msg_to_rgb(msg, max_pixels=MAX_PIXELS, where=None):
    """Convert an Image or CompressedImage message (any object with their fields) to RGB."""
    if where is None:
        frame = getattr(getattr(msg, 'header', None), 'frame_id', '')
        where = f'frame {frame!r}' if frame else 'image'
    if hasattr(msg, 'encoding'):
        return image_to_rgb(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                            getattr(msg, 'is_bigendian', 0), max_pixels, where)
    if hasattr(msg, 'format'):
        return compressed_to_rgb(msg.format, msg.data, max_pixels, where)
    raise ImageError(f'{where}: {type(msg).__name__} has neither encoding nor format')


def rgb_to_image_fields(rgb, encoding='rgb8'):
    """Return the Image fields (dict) for an [H, W, 3] uint8 RGB array in rgb8 or bgr8."""
    rgb = _check_rgb(rgb)
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding == 'bgr8':
        pixels = rgb[:, :, ::-1]
    else:
        raise ImageError(f'cannot encode to {encoding!r}; use rgb8 or bgr8')
    height, width = rgb.shape[:2]
    return {'encoding': encoding, 'width': width, 'height': height, 'step': width * 3,
            'is_bigendian': 0, 'data': np.ascontiguousarray(pixels).tobytes()}


def encode_compressed(rgb, fmt='jpeg', quality=90):
    """Encode an [H, W, 3] uint8 RGB array to JPEG or PNG bytes."""
    import cv2

    rgb = _check_rgb(rgb)
    ext = {'jpeg': '.jpg', 'jpg': '.jpg', 'png': '.png'}.get(fmt)
    if ext is None:
        raise ImageError(f'cannot compress to {fmt!r}; use jpeg or png')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == '.jpg' else []
    ok, out = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ImageError(f'OpenCV failed to encode a {rgb.shape[1]}x{rgb.shape[0]} {fmt}')
    return out.tobytes()


def _check_rgb(rgb):
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f'expected an [H, W, 3] uint8 RGB array, got {rgb.dtype} '
                         f'{tuple(rgb.shape)}')
    return rgb


def draw_detections(rgb, boxes, labels, scores=None, color=(255, 64, 0)):
    """Return a copy of `rgb` with boxes (xyxy pixels) and 'label score' captions drawn."""
    import cv2

    out = np.ascontiguousarray(_check_rgb(rgb)).copy()
    height, width = out.shape[:2]
    thick = max(1, round(min(width, height) / 300))
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
        y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = str(labels[i])
        if scores is not None:
            text += f' {float(scores[i]):.2f}'
        scale = 0.4 * thick
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - 1, y1 + th + 2)
        cv2.rectangle(out, (x1, ty - th - base // 2), (x1 + tw, ty + base // 2), color, -1)
        cv2.putText(out, text, (x1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
