# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The CUDA path's fixes, as far as a CPU can show them (and on a GPU, where there is one).

A configure that fails after the staging was allocated frees it again (registered host memory
would leak otherwise); a unit called fewer times than recorded still gets its release noted, so
the next pass's write into its range is ordered after the kernels that read it; the default
staging follows the GPU (zero_copy when integrated); the zero-copy mapping check refuses a
stale copy or a tensor on the wrong device; packs written with the old 64-byte tensor alignment
still load and stream exactly. With a GPU the release test runs on CUDA too, with sync=False in
both staging modes; the exactness test on CUDA is in test_executor.py.
"""

import errno
import threading
import types

from demand_layering_ros import pack as P
from demand_layering_ros.loading import load, load_resident
from demand_layering_ros.models import registry
from demand_layering_ros.models.detector import Detector
from demand_layering_ros.pack import writer
from demand_layering_ros.runtime import cuda_mapping, options
from demand_layering_ros.runtime.engine import Engine
from demand_layering_ros.runtime.errors import ExecutorError
import pytest
import torch
from torch import nn

CUDA = torch.cuda.is_available()


class Repeat(nn.Module):
    """`block` runs once per 32 pixels of width: fewer calls than traced on a narrower input."""

    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        for _ in range(x.shape[-1] // 32):
            y = torch.relu(self.block(y))
        return self.head(y)


class RepeatDetector(Detector):
    """Pre/post-processing for Repeat (a classifier-shaped output)."""

    kind = 'classifier'

    def preprocess(self, images):
        x = torch.stack([torch.as_tensor(i).permute(2, 0, 1).float() / 255 for i in images])
        return x, None

    def postprocess(self, outputs, meta, **kwargs):
        return outputs


def build_repeat(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
                 **kwargs):
    if meta:
        with torch.device('meta'):
            model = Repeat(int(arg))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            model = Repeat(int(arg))
    return RepeatDetector('repeat', f'dlrrepeat:{arg}', model.eval(), ['a', 'b', 'c', 'd'],
                          input_size=input_size or (32, 64),
                          build_args={'spec': f'dlrrepeat:{arg}'}, device=device)


registry.register('dlrrepeat', build_repeat)


@pytest.fixture(scope='module')
def repeat_pack(tmp_path_factory):
    """Write a pack traced on a 32x64 input: `block` is recorded with two calls."""
    out = tmp_path_factory.mktemp('packs') / 'repeat'
    return P.write_pack('dlrrepeat:32', out, seed=1, input_size='32x64', progress=False,
                        merge_bytes=0)


@pytest.fixture(scope='module')
def tiny_yolo(tmp_path_factory):
    out = tmp_path_factory.mktemp('packs') / 'yolov3-tiny'
    return P.write_pack('darknet:yolov3-tiny', out, seed=1, input_size='64x64', progress=False,
                        verify=False)


@pytest.fixture
def no_tf32():
    """Exactness on CUDA: TF32 off for cuDNN and cuBLAS while the test runs."""
    b = torch.backends
    saved = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved


def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def resident_out(pack, xs, device='cpu'):
    ref = load_resident(pack.path, device=device)
    with torch.no_grad():
        return [ref(x) for x in xs]


def yolo_input(pack):
    det = pack.build_detector(meta=True)
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8, generator=g).numpy()
    return det.preprocess([img])[0]


def first_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def loader_threads():
    return sum(1 for t in threading.enumerate() if t.name == 'dlr-loader')


# ----------------------------------------------------------------------------- defect 4


def freed(staging):
    """Return True when a staging holds no memory (arena, copy ring, registered memory)."""
    return staging.arena is None and getattr(staging, 'ring', None) is None \
        and getattr(staging, 'unregister', None) is None


ON_EACH_DEVICE = pytest.mark.parametrize('device,staging', [
    ('cpu', None),
    pytest.param('cuda:0', 'copy', marks=pytest.mark.skipif(not CUDA, reason='needs CUDA')),
    pytest.param('cuda:0', 'zero_copy', marks=pytest.mark.skipif(not CUDA, reason='needs CUDA'))])


@ON_EACH_DEVICE
def test_failed_configure_frees_what_it_allocated(tiny_yolo, monkeypatch, device, staging,
                                                  no_tf32):
    """A read fails after the staging was allocated: teardown still frees it (both paths)."""
    pack = tiny_yolo
    x = yolo_input(pack).to(device)
    want = first_output(resident_out(pack, [x], device)[0])
    head = min((u for u in pack.units if u.calls), key=lambda u: u.first_call)
    failing = {'on': False}

    def inject(offset, length):
        if failing['on'] and offset < head.end and head.offset < offset + length:
            raise OSError(errno.EIO, 'injected fault in the first unit')

    made = []
    real = Engine._staging

    def staging_spy(self):            # the real staging, remembered so the test can look at it
        made.append(real(self))
        return made[-1]

    monkeypatch.setattr(Engine, '_staging', staging_spy)
    before = loader_threads()
    m = load(pack.path, device=device, staging=staging, fault_injector=inject)
    assert same(first_output(m(x)), want)
    failing['on'] = True
    with pytest.raises(OSError, match='injected fault'):
        m.reconfigure(plan={'resident_units': [head.name]})    # the resident read fails
    failing['on'] = False
    assert len(made) == 3                   # the first, the failed one, the restored first
    assert freed(made[1]), 'the failed configuration kept its arena'
    assert freed(made[0]) and made[2].arena is not None
    assert m._engine.configured and loader_threads() == before + 1
    assert same(first_output(m(x)), want)
    m.close()
    assert freed(made[2]) and loader_threads() == before

    failing['on'] = True
    with pytest.raises(OSError, match='injected fault'):
        load(pack.path, device=device, staging=staging, plan={'resident_units': [head.name]},
             fault_injector=inject)
    assert len(made) == 4 and freed(made[3]) and loader_threads() == before


# ----------------------------------------------------------------------------- defect 7


@ON_EACH_DEVICE
def test_a_unit_called_fewer_times_than_recorded_is_released(repeat_pack, device, staging,
                                                             no_tf32):
    """
    Its range is handed back when the pass ends, with its release noted (CUDA: an event).

    On CUDA with sync=False the next pass's copy into that range must wait for the event, or it
    could overwrite weights that kernels of the pass before still read.
    """
    pack = repeat_pack
    info = next(u for u in pack.units if u.modules == ['block'])
    assert info.calls == 2
    g = torch.Generator().manual_seed(0)
    narrow, wide = (torch.rand(1, 3, 32, w, generator=g).to(device) for w in (32, 64))
    want = resident_out(pack, [narrow, wide], device)
    m = load(pack.path, device=device, staging=staging, sync=False)    # fully streamed
    block = m._engine.units[info.index].main
    assert block is not None and not m._engine.units[info.index].resident
    for x, w, calls in ((narrow, want[0], 1), (wide, want[1], 2), (narrow, want[0], 1)):
        before = block.release_seq
        assert same(m(x), w)
        ran = [c for c in m.stats()['calls'] if c[0] == info.index]
        assert len(ran) == calls
        assert block.release_seq > before, 'the range was given back without a release'
    m.close()


# ----------------------------------------------------------------------------- defect 5


def test_default_staging_follows_the_gpu(repeat_pack, monkeypatch):
    assert options.default_staging('cpu') == 'copy'
    props = {'is_integrated': True}
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda d: types.SimpleNamespace(**props))
    assert options.default_staging('cuda:0') == 'zero_copy'
    props['is_integrated'] = False
    assert options.default_staging('cuda:1') == 'copy'
    monkeypatch.undo()
    # a plan's staging wins over load()'s option, which wins over the default
    for kw, want in (({}, 'copy'), ({'staging': 'zero_copy'}, 'zero_copy'),
                     ({'staging': 'zero_copy', 'plan': {'staging': 'copy'}}, 'copy')):
        m = load(repeat_pack.path, **kw)
        assert m.plan()['staging'] == want, kw
        m.close()
    with pytest.raises(ExecutorError, match='staging must be one of'):
        load(repeat_pack.path, staging='mapped')


# ----------------------------------------------------------------------------- defects 3 and 6


def test_the_mapping_check_refuses_a_stale_copy_or_the_wrong_device():
    host = torch.zeros(3 * 4096, dtype=torch.uint8)
    cpu = torch.device('cpu')
    cuda_mapping.check_mapping(host, host, cpu)             # the same memory: it reads back
    with pytest.raises(ExecutorError, match='does not read what the host wrote'):
        cuda_mapping.check_mapping(host, host.clone(), cpu)  # a snapshot taken before
    with pytest.raises(ExecutorError, match='not on cuda:1'):
        cuda_mapping.check_mapping(host, host, torch.device('cuda', 1))


@pytest.mark.skipif(CUDA, reason='the CUDA tests register real memory')
def test_the_device_pointer_query_reaches_the_cuda_runtime():
    """Through ctypes, on torch's own libcudart: without a GPU the call fails, and says so."""
    try:
        lib = cuda_mapping.cudart_library()
    except ExecutorError:
        pytest.skip('no CUDA runtime library in this process (a CPU-only torch)')
    with pytest.raises(ExecutorError, match=r'cudaDeviceGetAttribute.*cudaError [1-9]'):
        cuda_mapping.device_pointer(4096, 0, lib)


# ----------------------------------------------------------------------------- defect 9


def test_a_pack_written_at_64_byte_alignment_still_streams_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, 'TENSOR_ALIGNMENT', 64)
    old = P.write_pack('dlrrepeat:24', tmp_path / 'old', seed=2, input_size='32x64',
                       progress=False, merge_bytes=0)
    monkeypatch.undo()
    offsets = [t.offset for u in old.units for t in u.tensors]
    assert old.manifest['tensor_alignment'] == 64 and any(o % 256 for o in offsets)
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(1))
    want = resident_out(old, [x])[0]
    m = load(old.path)
    assert same(m(x), want) and m.stats()['streamed_units'] == len(old.units)
    m.close()
