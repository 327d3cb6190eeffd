# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
fp16/bf16 weight packs: half the bytes on disk, the same computation streamed and resident.

The oracle for a float16 pack is the same pack loaded fully resident (load_resident converts
the same way the runtime does as units land), compared with torch.equal; against the float32
pack of the real COCO yolov3-tiny the float16 pack must find the same objects on Debian's
photos (same classes, IoU >= 0.9, score within 0.02).
"""

import json

from demand_layering_ros import cli
from demand_layering_ros import pack as P
from demand_layering_ros.layout.arena import ArenaTooSmall
from demand_layering_ros.loading import load, load_resident
from demand_layering_ros.models import assets, registry
from demand_layering_ros.models.detector import Detector, read_image
from demand_layering_ros.pack import Pack, PackError
from demand_layering_ros.planning import planner, profiler
from demand_layering_ros.runtime.binding import conversion_reserve
from demand_layering_ros.runtime.errors import ExecutorError
from demand_layering_ros.sizes import MB
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torchvision.ops import box_iou

CUDA = torch.cuda.is_available()


@pytest.fixture(scope='module')
def real_packs(tmp_path_factory):
    """Write the real COCO yolov3-tiny at 416x416 as a float32 and a float16 pack."""
    cfg, weights, _ = assets.yolov3_tiny()
    root = tmp_path_factory.mktemp('fp16')
    return {dtype: P.write_pack(f'darknet:{cfg}', root / str(dtype), weights=str(weights),
                                input_size='416x416', progress=False, dtype=dtype)
            for dtype in (None, 'float16')}


def same(a, b):
    """torch.equal over lists of tensors, dtypes included."""
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y)
                                    for x, y in zip(a, b))


def test_float16_pack_halves_the_weights_file(real_packs):
    p32, p16 = real_packs[None], real_packs['float16']
    assert p32.stored_dtype is None and p16.stored_dtype == 'float16'
    assert p16.manifest['total_nbytes'] * 2 == p32.manifest['total_nbytes']
    assert p16.file_size <= p32.file_size // 2 + 64 * len(p16.units) * 4096
    assert [u.name for u in p16.units] == [u.name for u in p32.units]
    assert {t.dtype for u in p16.units for t in u.tensors} == {'float16'}
    # the stored values are the float32 weights rounded once
    s32, s16 = p32.load_state_dict(), p16.load_state_dict()
    assert all(torch.equal(s16[k], s32[k].half()) for k in s32)
    assert json.loads((p16.path / P.MANIFEST_FILE).read_text())['stored_dtype'] == 'float16'


def test_old_packs_without_the_key_still_load_and_bad_values_are_refused(tmp_path):
    det = registry.build('darknet:yolov3-tiny', seed=2, input_size=(64, 64))
    pack = P.write_pack_from_module(det.model, det.example_input(), tmp_path / 'p',
                                    {'spec': 'darknet:yolov3-tiny', 'input_size': [64, 64]},
                                    progress=False)
    mpath = pack.path / P.MANIFEST_FILE
    m = json.loads(mpath.read_text())
    del m['stored_dtype']                       # as written before the key existed
    mpath.write_text(json.dumps(m))
    old = Pack.open(pack.path)
    assert old.stored_dtype is None
    x = det.example_input()
    assert same(load(old.path)(x), det.model(x))
    m['stored_dtype'] = 'int8'
    mpath.write_text(json.dumps(m))
    with pytest.raises(PackError, match='stored_dtype'):
        Pack.open(pack.path)


def test_integer_tensors_keep_their_dtype(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    pack = P.write_pack_from_module(model, torch.rand(1, 3, 8, 8), tmp_path / 'p',
                                    {'spec': 'none'}, progress=False, dtype='bfloat16')
    dtypes = {t.name: t.dtype for u in pack.units for t in u.tensors}
    assert dtypes['1.num_batches_tracked'] == 'int64' and dtypes['0.weight'] == 'bfloat16'
    with pytest.raises(ValueError, match='float16'):
        P.write_pack_from_module(model, torch.rand(1, 3, 8, 8), tmp_path / 'q',
                                 {'spec': 'none'}, progress=False, dtype='int8')


@pytest.mark.parametrize('photo', assets.DARKNET_PHOTOS)
def test_float16_pack_finds_the_same_objects_as_float32(real_packs, photo):
    p32, p16 = real_packs[None], real_packs['float16']
    det = p32.build_detector(meta=True)
    img = read_image(assets.photo(photo))
    x, meta = det.preprocess([img])
    m16 = load(p16.path)                                  # streamed, converted as it lands
    found = {}
    for key, model in (('32', load_resident(p32.path)), ('16', m16)):
        found[key] = det.postprocess(model(x), meta)[0]
    a, b = found['32'], found['16']
    assert sorted(a.class_names) == sorted(b.class_names), photo
    if len(a):
        iou = box_iou(a.boxes, b.boxes)
        for i in range(len(a)):
            match = iou[i] * (b.class_ids == a.class_ids[i])
            j = int(match.argmax())
            assert match[j] >= 0.9, (photo, a.class_names[i])
            assert abs(float(a.scores[i] - b.scores[j])) <= 0.02, (photo, a.class_names[i])


def test_streamed_float16_equals_resident_at_every_budget(real_packs):
    pack = real_packs['float16']
    img = read_image(assets.photo('dog'))
    x = pack.build_detector(meta=True).preprocess([img])[0]
    want = load_resident(pack.path)(x)
    assert all(o.dtype == torch.float32 for o in want)      # the CPU computes in float32
    stored = sum(u.length for u in pack.units)
    largest = max(u.length for u in pack.units)
    m = load(pack.path)
    reserve = m._engine.binding.convert_reserve
    assert reserve == 2 * max(u.nbytes for u in pack.units)  # the largest unit, in float32
    for budget in (None, (reserve + largest * 1.2) / MB, (reserve + stored) / MB):
        m = load(pack.path, budget_mb=budget)
        assert same(m(x), want), budget
        assert same(m(x), want), budget                      # second pass: prefetched
        st = m.stats()
        if budget is not None:
            assert st['peak_weight_bytes'] <= st['budget_bytes'], budget
        # the arena and the residents hold stored (float16) bytes, the copies come on top
        assert st['peak_weight_bytes'] > st['arena_bytes'] + st['resident_bytes']
        m.close()
    split = load(pack.path, split_bytes=1 << 20)
    assert split.stats()['split_units']
    out = split(x)
    assert all(torch.allclose(o, w, rtol=1e-5, atol=1e-5) for o, w in zip(out, want))


def test_a_budget_below_the_conversion_copies_is_refused(real_packs):
    pack = real_packs['float16']
    with pytest.raises(ArenaTooSmall, match='converted from the pack of float16'):
        load(pack.path, budget_mb=8)


class Parent(nn.Module):
    """Owns a weight and calls a child inside its own forward (nested units)."""

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)
        self.inner = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.inner(x) * self.scale


class Awkward(nn.Module):
    """Nested units, tied weights, a weight read outside any call, a BatchNorm counter."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.big = nn.Conv2d(c, 8 * c, 3, padding=1)
        self.parent = Parent(8 * c)
        self.down = nn.Conv2d(8 * c, c, 1)
        self.tied_a = nn.Conv2d(c, c, 1, bias=False)
        self.tied_b = nn.Conv2d(c, c, 1, bias=False)
        self.tied_b.weight = self.tied_a.weight
        self.gate = nn.Linear(c, 1)

    def forward(self, x):
        y = self.parent(F.relu(self.big(F.relu(self.bn(self.stem(x))))))
        y = self.down(y)
        return self.tied_b(self.tied_a(self.tied_a(y))) * self.gate.weight.sum()


class AwkwardDetector(Detector):
    """Pre/post-processing for Awkward (images in, the raw map out)."""

    kind = 'classifier'

    def preprocess(self, images):
        return torch.stack([torch.as_tensor(i).permute(2, 0, 1).float() / 255
                            for i in images]).to(self.dtype), None

    def postprocess(self, outputs, meta, **kwargs):
        return outputs


def build_awkward(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
                  **kwargs):
    if meta:
        with torch.device('meta'):
            model = Awkward(int(arg))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            model = Awkward(int(arg))
            model.bn.running_var.uniform_(0.5, 2.0)
    return AwkwardDetector('awkward', f'fp16test:{arg}', model.eval(), ['x'],
                           input_size=input_size or (16, 16),
                           build_args={'spec': f'fp16test:{arg}'}, device=device)


registry.register('fp16test', build_awkward)


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_awkward_model_streamed_equals_resident(tmp_path, dtype):
    pack = P.write_pack('fp16test:16', tmp_path / dtype, seed=3, progress=False,
                        merge_bytes=0, dtype=dtype)
    assert any(u.used_outside_forward for u in pack.units)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    want = load_resident(pack.path)(x)
    stored = sum(u.length for u in pack.units)
    reserve = load(pack.path)._engine.binding.convert_reserve
    assert reserve > 0
    for budget in (None, (reserve + stored * 0.6) / MB, (reserve + stored * 2) / MB):
        for timeline in (True, False):
            m = load(pack.path, budget_mb=budget, timeline=timeline)
            got = m(x)
            assert got.dtype == torch.float32 and torch.equal(got, want), (budget, timeline)
            assert torch.equal(m(x), want)
            st = m.stats()
            assert budget is None or st['peak_weight_bytes'] <= st['budget_bytes']
            m.close()


def test_a_plan_from_a_profile_leaves_room_for_the_conversion_copies(tmp_path):
    """
    The node's path (profile, plan, load with the plan) fits a float16 pack's budget on the CPU.

    The profile records the float32 copies a pass holds; the planner fits the budget less
    them, so the engine accepts the plan. A plan from a profile without that figure (older
    profiles) spends the whole budget on weights and is refused at configure, as before.
    """
    pack = P.write_pack('darknet:yolov3-tiny', tmp_path / 'p', seed=1, input_size='64x64',
                        progress=False, dtype='float16')
    prof = profiler.profile(pack.path, repeats=1, progress=False, check_splits=False,
                            executor_overhead=False, activation=False)
    reserve = prof['convert_reserve_bytes']
    assert reserve == conversion_reserve(pack, 'cpu') == \
        load(pack.path)._engine.binding.convert_reserve > 0
    stored = sum(u.length for u in pack.units)
    budget = (reserve + 0.75 * stored) / MB
    plan = planner.plan(pack, prof, budget_mb=budget).to_dict()
    assert plan['predicted_peak_weight_bytes'] <= budget * MB
    assert plan['predicted_conversion_mb'] > 0
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = load(pack.path, budget_mb=budget, plan=plan)
    try:
        assert same(list(m(x)), list(load_resident(pack.path)(x)))
        assert m.stats()['peak_weight_bytes'] <= budget * MB
    finally:
        m.close()
    older = {k: v for k, v in prof.items() if k != 'convert_reserve_bytes'}
    with pytest.raises(ArenaTooSmall, match='conversion copies'):
        load(pack.path, budget_mb=budget, plan=planner.plan(pack, older, budget_mb=budget))
    assert conversion_reserve(P.write_pack('darknet:yolov3-tiny', tmp_path / 'f32', seed=1,
                                           input_size='64x64', progress=False), 'cpu') == 0


def test_bfloat16_compute_on_the_cpu_needs_no_conversion(tmp_path):
    pack = P.write_pack('fp16test:16', tmp_path / 'bf', seed=3, progress=False,
                        merge_bytes=0, dtype='bfloat16')
    m = load(pack.path, dtype=torch.bfloat16)
    assert m._engine.binding.convert_reserve == 0
    det = m.detector
    assert det.dtype == torch.bfloat16
    x = det.preprocess([torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8)])[0]
    got = m(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, load_resident(pack.path, dtype='bfloat16')(x))
    with pytest.raises(ExecutorError):
        load(pack.path, dtype='int8')


def test_set_dtype_casts_a_meta_skeleton():
    """Defect #2: set_dtype skipped the cast when the first parameter was a meta placeholder."""
    det = registry.build('darknet:yolov3-tiny', meta=True, input_size=(64, 64))
    det.set_dtype(torch.float16)
    dtypes = {t.dtype for t in det.model.state_dict().values()}
    assert dtypes == {torch.float16} and det.dtype == torch.float16
    assert all(t.is_meta for t in det.model.state_dict().values())


def test_a_demand_layered_model_refuses_a_dtype_it_does_not_compute_in(real_packs):
    det = load(real_packs['float16'].path).detector
    det.set_dtype(torch.float32)                    # what it computes in on the CPU: fine
    with pytest.raises(ExecutorError, match='cannot be moved or cast'):
        det.set_dtype(torch.float16)
    assert det.dtype == torch.float32               # model and inputs still agree


def test_detect_fp16_on_the_cpu_is_refused_in_one_line(real_packs, capsys):
    photo = str(assets.photo('dog'))
    rc = cli.main(['detect', '--pack', str(real_packs['float16'].path), '--fp16', photo])
    out, err = capsys.readouterr()
    assert rc == 2 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('detect: error: --fp16 needs a CUDA device')


def test_detect_runs_a_float16_pack_on_the_cpu(real_packs, capsys):
    photo = str(assets.photo('dog'))
    rc = cli.main(['detect', '--pack', str(real_packs['float16'].path), photo])
    out, err = capsys.readouterr()
    assert rc == 0, err
    names = {d['class_name'] for d in json.loads(out)['detections']}
    assert {'dog', 'bicycle'} <= names


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_computes_in_float16_straight_from_the_arena(real_packs):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pack = real_packs['float16']
    img = read_image(assets.photo('dog'))
    m = load(pack.path, device='cuda')
    assert m._engine.binding.convert_reserve == 0             # no conversion on CUDA
    det = m.detector
    assert det.dtype == torch.float16
    x = det.preprocess([img])[0]
    got = m(x)
    want = load_resident(pack.path, device='cuda')(x)
    assert all(o.dtype == torch.float16 for o in got) and same(got, want)
    a = det.postprocess(got, det.preprocess([img])[1])[0]
    assert {'dog', 'bicycle'} <= set(a.class_names)
    conv = load(real_packs[None].path, device='cuda', dtype=torch.float16)   # converted
    assert conv._engine.binding.convert_reserve > 0
    assert same(conv(x), load_resident(real_packs[None].path, device='cuda',
                                       dtype=torch.float16)(x))
