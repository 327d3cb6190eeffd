# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Fuzzing (hypothesis) of everything that parses bytes from outside: images, packs, cfg files.

A robot's detector reads camera messages it did not make and files someone else copied. Each
parser must answer every input either with a correct result or with its own specific error
(ImageError, PackError, DarknetError): never another exception, a hang, or an allocation sized
by a lying header field. Every example runs under a wall-clock alarm and, for images, with the
process's peak RSS reset before and checked after. The bounds keep the whole file to well under
a minute on two cores; the examples are drawn fresh on every run (derandomize is off).
"""

import copy
import json
import os
from pathlib import Path
import shutil
import signal

from demand_layering_ros import pack as pack_mod
from demand_layering_ros.models import assets, darknet
from demand_layering_ros.service import imaging
from demand_layering_ros.service.imaging import ImageError
from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest
import skimage.data
from test_imaging import opencv_rgb, pixels_from_fields
from tools import cgroups
import torch

MIB = 1 << 20
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                max_examples=200)
COUNTS = {}     # test -> examples run (printed in the summary line of the RELIABILITY figures)


class Hang(Exception):
    """An example ran past its wall-clock limit."""


class guard:
    """Fail an example that runs longer than `seconds` or grows peak RSS more than `max_bytes`."""

    def __init__(self, seconds=5.0, max_bytes=None, name=None):
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.name = name

    def __enter__(self):
        def on_alarm(signum, frame):
            raise Hang(f'example ran longer than {self.seconds} s')
        self._old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self._measure = self.max_bytes is not None and cgroups.reset_peak_rss()
        self._rss0 = cgroups.process_rss() if self._measure else 0
        if self.name:
            COUNTS[self.name] = COUNTS.get(self.name, 0) + 1
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        if self._measure and exc[0] is None:
            grown = cgroups.process_peak_rss() - self._rss0
            assert grown <= self.max_bytes, f'peak RSS grew {grown / MIB:.1f} MiB'


# ------------------------------------------------------------------------------ images

SIZES = st.one_of(st.integers(-3, 40), st.sampled_from(
    [0, 1, 2 ** 15, imaging.MAX_SIDE, imaging.MAX_SIDE + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
     2 ** 32, 2 ** 63 - 1, 2 ** 64, -2 ** 31]))
ODD = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4),
                st.just(np.int64(7)), st.just(np.uint32(2 ** 32 - 1)))
ENCODINGS = st.one_of(st.sampled_from(sorted(imaging.ENCODINGS)),
                      st.sampled_from(['rgba16', '16UC1', '32FC1', 'RGB8', '', 'bgr8\x00',
                                       'nv21', 'bayer_rggb16', 'YUYV']),
                      st.text(max_size=10))


@st.composite
def raw_images(draw):
    """Mostly plausible Image fields with one or more adversarial twists."""
    encoding = draw(ENCODINGS)
    bpp = imaging.ENCODINGS.get(encoding, (3,))[0]
    width = draw(st.one_of(SIZES, ODD) if draw(st.integers(0, 9)) == 0 else SIZES)
    height = draw(st.one_of(SIZES, ODD) if draw(st.integers(0, 9)) == 0 else SIZES)
    w = width if isinstance(width, int) and 0 < width <= 40 else 4
    h = height if isinstance(height, int) and 0 < height <= 40 else 4
    step = draw(st.one_of(st.integers(-2, 8).map(lambda pad: w * bpp + pad), SIZES,
                          st.just(w * bpp), ODD))
    want = (step if isinstance(step, int) and 0 < step < 400 else w * bpp) * h
    size = draw(st.one_of(st.just(want), st.integers(0, want + 16),
                          st.integers(max(0, want - 8), want + 8)))
    data = draw(st.binary(min_size=size, max_size=size))
    kind = draw(st.sampled_from(['bytes', 'bytearray', 'ndarray', 'list', 'memoryview',
                                 'int16', 'str']))
    if kind == 'bytearray':
        data = bytearray(data)
    elif kind == 'ndarray':
        data = np.frombuffer(data, np.uint8)
    elif kind == 'list':
        data = list(data)
    elif kind == 'memoryview':
        data = memoryview(data)
    elif kind == 'int16':
        data = np.frombuffer(data[:len(data) // 2 * 2], np.int16)
    elif kind == 'str':
        data = data.decode('latin-1')
    max_pixels = draw(st.sampled_from([imaging.MAX_PIXELS, 1 << 12, 1]))
    bigendian = draw(st.sampled_from([0, 1, 255]))
    return encoding, width, height, step, data, bigendian, max_pixels


@FUZZ
@given(raw_images())
def test_fuzz_raw_image_fields(fields):
    encoding, width, height, step, data, bigendian, max_pixels = fields
    with guard(max_bytes=32 * MIB, name='raw image'):
        try:
            out = imaging.image_to_rgb(encoding, width, height, step, data, bigendian,
                                       max_pixels=max_pixels)
        except ImageError as e:
            assert str(e)
            return
    # accepted: the fields were consistent and the result is OpenCV's of the same pixels
    assert encoding in imaging.ENCODINGS
    bpp = imaging.ENCODINGS[encoding][0]
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    assert step >= width * bpp and width * height <= max_pixels
    pixels = pixels_from_fields(encoding, width, height, step, data, bigendian)
    assert np.array_equal(out, opencv_rgb(encoding, pixels))


def test_header_sizes_are_refused_before_allocating():
    with guard(max_bytes=8 * MIB):
        for w, h in ((2 ** 31, 1), (1, 2 ** 31), (2 ** 31, 2 ** 31), (imaging.MAX_SIDE,) * 2):
            with pytest.raises(ImageError, match='limit'):
                imaging.image_to_rgb('rgb8', w, h, w * 3, b'\0' * 64)


@pytest.fixture(scope='module')
def encoded():
    rgb = np.ascontiguousarray(skimage.data.astronaut()[100:148:, 150:214])   # 48 x 64
    return {'jpeg': imaging.encode_compressed(rgb, 'jpeg'),
            'png': imaging.encode_compressed(rgb, 'png')}


def _size_field(blob, kind):
    """Byte range of (height, width) in the header: JPEG SOF0 or PNG IHDR."""
    if kind == 'png':
        return 16, 24
    i = blob.find(b'\xff\xc0')
    return i + 5, i + 9


@st.composite
def compressed_blobs(draw, encoded):
    kind = draw(st.sampled_from(['jpeg', 'png']))
    blob = bytearray(encoded[kind])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(['flip', 'truncate', 'size', 'insert', 'prefix', 'eoi']))
        if not blob:
            break
        if op == 'flip':
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] ^= draw(st.integers(1, 255))
        elif op == 'truncate':
            del blob[draw(st.integers(0, len(blob))):]
        elif op == 'size' and len(blob) >= 24:
            a, b = _size_field(bytes(blob), kind)
            if a >= 0 and b <= len(blob):
                blob[a:b] = draw(st.binary(min_size=b - a, max_size=b - a))
        elif op == 'insert':
            i = draw(st.integers(0, len(blob)))
            blob[i:i] = draw(st.binary(max_size=16))
        elif op == 'prefix':
            blob[:0] = draw(st.binary(max_size=8))
        else:
            blob += b'\xff\xd9'
    fmt = draw(st.one_of(st.sampled_from([kind, 'jpeg', 'png', '', 'bgr8; jpeg compressed bgr8',
                                          'rgb8; compressedDepth', 'tiff', 'PNG']),
                         st.text(max_size=12)))
    return fmt, bytes(blob)


@FUZZ
@given(st.data())
def test_fuzz_compressed_images(encoded, data):
    fmt, blob = data.draw(compressed_blobs(encoded))
    max_pixels = 1 << 16
    with guard(max_bytes=48 * MIB, name='compressed image'):
        try:
            out = imaging.compressed_to_rgb(fmt, blob, max_pixels=max_pixels)
        except ImageError as e:
            assert str(e)
            return
    _, w, h = imaging.compressed_size(blob)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8 and w * h <= max_pixels


def test_real_ros_messages_with_extreme_fields():
    msg_mod = pytest.importorskip('sensor_msgs.msg')
    cases = [('rgb8', 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1), ('rgb8', 2 ** 31, 1, 0),
             ('mono8', 4, 4, 2 ** 32 - 1), ('bgr8', 0, 0, 0), ('rgb8', 4, 2 ** 20, 12)]
    with guard(max_bytes=16 * MIB):
        for encoding, width, height, step in cases:
            msg = msg_mod.Image(encoding=encoding, width=width, height=height, step=step,
                                data=b'\x07' * 48)
            with pytest.raises(ImageError):
                imaging.msg_to_rgb(msg)
        with pytest.raises(ImageError):
            imaging.msg_to_rgb(msg_mod.CompressedImage(format='jpeg', data=b''))
        with pytest.raises(ImageError):
            imaging.msg_to_rgb(msg_mod.CompressedImage(format='jpeg',
                                                       data=b'\xff\xd8\xff' + b'\0' * 40))


# ------------------------------------------------------------------------------ packs

@pytest.fixture(scope='module')
def tiny_pack(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                                torch.nn.Conv2d(16, 4, 1)).eval()
    out = tmp_path_factory.mktemp('fuzzpack') / 'tiny'
    p = pack_mod.write_pack_from_module(model, torch.randn(1, 3, 12, 12), out,
                                        {'spec': 'fuzz:tiny'}, merge_bytes=0, progress=False)
    assert len(p.units) >= 3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return out, json.loads((out / 'manifest.json').read_text()), state


def _copy_pack(src, dst):
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def _paths(obj, prefix=()):
    """Every JSON path (tuple of keys/indices) inside obj, containers included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2 ** 70, 2 ** 70),
    st.sampled_from([0, -1, 1, 4095, 4096, 2 ** 31, 2 ** 63, -4096, 10 ** 30]),
    st.sampled_from(['', '..', '../x', '../../etc/passwd', '/etc/passwd', 'a/b', 'x\\..\\y',
                     'weights.safetensors', 'manifest.json', '.', 'float32', 'F32', 'ffffffff',
                     '0' * 16, 'parameter', 'buffer', '\x00', '\udcff'.encode(
                         'utf-8', 'surrogatepass').decode('latin-1')]),
    st.text(max_size=20),
    st.lists(st.integers(-5, 5), max_size=4), st.just({}), st.just([]),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def _open_and_read(pack_mod, path):
    """Open and fully read (verifying) a pack; only PackError may come out."""
    try:
        p = pack_mod.Pack.open(path)
        return p.load_state_dict(verify=True)
    except pack_mod.PackError as e:
        assert 'pack ' in str(e)
        return None


@FUZZ
@given(st.data())
def test_fuzz_manifest_values(tiny_pack, tmp_path_factory, data):
    src, manifest, _ = tiny_pack
    m = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(m) if p]
        path = data.draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(BAD_VALUES)
    dst = _copy_pack(src, tmp_path_factory.getbasetemp() / 'fuzz-manifest')
    (dst / 'manifest.json').write_text(json.dumps(m))
    with guard(seconds=10, name='manifest'):
        _open_and_read(pack_mod, dst)


@FUZZ
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                              st.text(max_size=8)),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4),
                    max_leaves=20))
def test_fuzz_random_json_manifest(tiny_pack, tmp_path_factory, doc):
    dst = _copy_pack(tiny_pack[0], tmp_path_factory.getbasetemp() / 'fuzz-json')
    if isinstance(doc, dict) and doc:
        doc.setdefault('format', 'demand_layering_ros.pack')
        doc.setdefault('version', 1)
    (dst / 'manifest.json').write_text(json.dumps(doc))
    with guard(seconds=10, name='manifest'):
        with pytest.raises(pack_mod.PackError):
            pack_mod.Pack.open(dst)


@FUZZ
@given(st.data())
def test_fuzz_garbled_manifest_bytes(tiny_pack, tmp_path_factory, data):
    dst = _copy_pack(tiny_pack[0], tmp_path_factory.getbasetemp() / 'fuzz-bytes')
    raw = bytearray((dst / 'manifest.json').read_bytes())
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    for _ in range(data.draw(st.integers(0, 4)) if raw else 0):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    (dst / 'manifest.json').write_bytes(bytes(raw))
    with guard(seconds=10, name='manifest'):
        _open_and_read(pack_mod, dst)


@FUZZ
@given(st.data())
def test_fuzz_truncated_or_flipped_weights(tiny_pack, tmp_path_factory, data):
    src, manifest, state = tiny_pack
    dst = _copy_pack(src, tmp_path_factory.getbasetemp() / 'fuzz-weights')
    wpath = dst / 'weights.safetensors'
    size = wpath.stat().st_size
    orig = wpath.read_bytes()
    blob = bytearray(orig)
    truncated = data.draw(st.booleans())
    if truncated:
        del blob[data.draw(st.integers(0, size - 1)):]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, size - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    wpath.write_bytes(bytes(blob))
    changed = [i for i in range(min(len(orig), len(blob))) if orig[i] != blob[i]]
    in_header = any(i < manifest['data_offset'] for i in changed)
    hit = [u['name'] for u in manifest['units']
           if any(u['offset'] <= i < u['offset'] + u['length'] for i in changed)]
    with guard(seconds=10, name='weights file'):
        try:
            got = pack_mod.Pack.open(dst).load_state_dict(verify=True)
        except pack_mod.PackError as e:
            if truncated or in_header:
                return          # size mismatch, or a damaged safetensors header
            # a damaged unit: the checksum names it (the first damaged one in file order)
            assert hit and e.unit == hit[0] and 'checksum' in str(e), str(e)
            assert e.offset == manifest['units'][[u['name'] for u in manifest['units']]
                                                 .index(hit[0])]['offset']
            return
    # no error: then nothing inside a unit was touched and every tensor is intact
    assert not truncated and not hit
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# ------------------------------------------------------------------------------ darknet cfg

CFG_KEYS = ['batch', 'width', 'height', 'channels', 'filters', 'size', 'stride', 'pad',
            'padding', 'activation', 'batch_normalize', 'layers', 'from', 'mask', 'anchors',
            'classes', 'num', 'groups', 'output', 'coords', 'groups_id', 'dilation',
            'binary', 'xnor', 'group_id', 'bogus', 'crop_height', 'crop_width', 'probability']
CFG_VALUES = st.one_of(st.integers(-3, 40).map(str),
                       st.sampled_from(['0', '-1', '2147483648', '99999999999', '1e9', 'nan',
                                        'inf', '-0', '', ',', '1,2,,3', '-1,-3', 'leaky',
                                        'linear', 'mish', 'logistic', '3.5', '0x10', '٣']),
                       st.lists(st.integers(-20, 20).map(str), max_size=8).map(','.join),
                       st.text(max_size=6))
SECTIONS = ['net', 'convolutional', 'maxpool', 'route', 'shortcut', 'upsample', 'yolo',
            'region', 'avgpool', 'connected', 'softmax', 'dropout', 'reorg', 'crop', 'conv',
            'max', 'deconvolutional', 'lstm', 'NET', '']


@st.composite
def cfg_texts(draw):
    lines = ['[net]', f'width={draw(st.integers(-2, 64))}',
             f'height={draw(st.integers(-2, 64))}'] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 8))):
        lines.append(f'[{draw(st.sampled_from(SECTIONS))}]')
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f'{draw(st.sampled_from(CFG_KEYS))}={draw(CFG_VALUES)}')
        if draw(st.integers(0, 6)) == 0:
            lines.append(draw(st.text(max_size=12)))
    return '\n'.join(lines)


def _parse_and_build(darknet, text, size):
    """Parse and build on the meta device (no weight memory); only DarknetError may escape."""
    try:
        sections = darknet.parse_cfg(text, path='fuzz.cfg')
        with torch.device('meta'):
            darknet.DarknetModel(sections, size, cfg_path='fuzz.cfg')
    except darknet.DarknetError as e:
        assert 'fuzz.cfg' in str(e), str(e)


@FUZZ
@given(cfg_texts(), st.sampled_from([None, (32, 32), (13, 7)]))
def test_fuzz_random_cfg_text(text, size):
    with guard(seconds=10, name='cfg'):
        _parse_and_build(darknet, text, size)


@pytest.fixture(scope='module')
def real_cfg_lines():
    return Path(assets.yolov3_tiny()[0]).read_text().splitlines()


@FUZZ
@given(st.data())
def test_fuzz_mutated_real_cfg(real_cfg_lines, data):
    lines = list(real_cfg_lines)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(['value', 'value', 'value', 'delete', 'dup', 'key']))
        if op == 'value' and '=' in lines[i]:
            lines[i] = lines[i].split('=')[0] + '=' + data.draw(CFG_VALUES)
        elif op == 'delete':
            del lines[i]
        elif op == 'dup':
            lines.insert(i, lines[data.draw(st.integers(0, len(lines) - 1))])
        elif op == 'key':
            lines.insert(i, f'{data.draw(st.sampled_from(CFG_KEYS))}={data.draw(CFG_VALUES)}')
    size = data.draw(st.sampled_from([None, (64, 64), (32, 96)]))
    with guard(seconds=10, name='cfg'):
        _parse_and_build(darknet, '\n'.join(lines), size)


def test_zz_every_fuzzer_really_ran_its_examples():
    """Each fuzzer that ran fed its parser enough inputs; print the counts (RELIABILITY)."""
    if not COUNTS:
        pytest.skip('no fuzzer ran in this session')
    print('\nfuzzed inputs:', json.dumps(COUNTS, sort_keys=True), 'total', sum(COUNTS.values()))
    if os.environ.get('DLR_FUZZ_COUNTS'):
        Path(os.environ['DLR_FUZZ_COUNTS']).write_text(json.dumps(COUNTS))
    starved = {k: n for k, n in COUNTS.items() if n < 100}
    assert not starved, f'fuzzers that reached their parser too rarely: {starved}'
