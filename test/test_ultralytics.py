# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The ultralytics family against Ultralytics itself: same weights, same photos, same detections.

Ultralytics' seeded weights give every box the same score (about 1.6e-4: the features fade
through the random layers to the head's bias), so the comparison uses a deterministic
"lively" checkpoint made here, like a user's model trained on three classes: the seeded
YOLOv8n/YOLO11n with nc=3, each batch norm calibrated on Debian's darknet photos (one pass,
cumulative statistics) and the class convolutions scaled to logits of standard deviation 1.5
around -3, saved with its class names the way Ultralytics saves a model (`YOLO.save`, a pickled
.pt in tmp_path). It gives 2 to 300 boxes a photo with scores spread over 0.25-1. Three
classes, not 80: where scores saturate near 1, two classes of one box can tie within 1e-5, and
Ultralytics' predict (which folds the batch norms into the convolutions, a different rounding)
may then pick the other one. A seeded yolov8n pack also goes through `profile`, `plan` and the
node over real DDS (test_node_models' harness), answering as the resident model. Skipped where
ultralytics (AGPL-3.0, optional) is not installed.
"""

import json
import math

from demand_layering_ros import cli, load, load_resident, pack as P
from demand_layering_ros.models import assets, registry, ultralytics_yolo
from demand_layering_ros.models.detector import read_image, UntrustedPickle
from demand_layering_ros.service.torch_threads import cpu_threads
from demand_layering_ros.sizes import MB
import pytest
from test_node_models import assert_same, expected, Harness, resident_oracle
import torch
import yaml

ultralytics = pytest.importorskip('ultralytics')

CONFIGS = ['yolov8n.yaml', 'yolo11n.yaml']
BIAS = -3.0
NAMES = ['apple', 'pear', 'plum']
PHOTOS = ['dog', 'person', 'eagle', 'giraffe', 'kite']


@pytest.fixture(scope='module')
def photos():
    return {n: read_image(assets.photo(n)) for n in PHOTOS}


def _lively(model, xs):
    """Calibrate the batch norms on `xs` and scale the class logits (see the module doc)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for x in xs:
            model(x)
        for m in bns:
            m.momentum = 0.03
        model.eval()
        logits = torch.cat([model(x)[1]['scores'].flatten() for x in xs])
        for seq in model.model[-1].cv3:
            seq[-1].weight.mul_(1.5 / float(logits.std()))
            seq[-1].bias.fill_(BIAS)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory, photos):
    """Return {config: path of a lively three-class .pt (class names NAMES)}."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    out = {}
    for cfg in CONFIGS:
        y = YOLO(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            y.model = DetectionModel(cfg, nc=len(NAMES), verbose=False)
        shape = registry.build(f'ultralytics:{cfg}', meta=True)
        _lively(y.model, [shape.preprocess([p])[0] for p in photos.values()])
        y.model.names = dict(enumerate(NAMES))
        out[cfg] = tmp_path_factory.mktemp('pt') / 'best.pt'
        y.save(str(out[cfg]))
    return out


@pytest.mark.parametrize('cfg,params', [('yolov8n.yaml', 3157200), ('yolo11n.yaml', 2624080)])
def test_seeded_weights_are_ultralytics_own(cfg, params):
    from ultralytics import YOLO
    state = torch.random.get_rng_state()
    det = registry.build(f'ultralytics:{cfg}', seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(3)
    want = YOLO(cfg).model.state_dict()
    got = det.model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert sum(p.numel() for p in det.model.parameters()) == params
    assert det.class_names[:3] == ['person', 'bicycle', 'car'] and len(det.class_names) == 80
    assert det.input_size == (640, 640) and det.stride == 32
    meta = registry.build(f'ultralytics:{cfg}', meta=True, input_size='320x416')
    assert all(t.is_meta for t in meta.model.state_dict().values())
    assert {k: t.shape for k, t in meta.model.state_dict().items()} == \
        {k: t.shape for k, t in got.items()}
    assert meta.model.stride.tolist() == [8.0, 16.0, 32.0] and meta.input_size == (320, 416)


def _unmatched(a, b, conf):
    """Count detections of `a` with no detection in `b` of the same class, box and score."""
    bad = []
    for box, score, cid in zip(a.boxes, a.scores, a.class_ids):
        if abs(float(score) - conf) < 1e-3:
            continue       # on the threshold: either side may keep it
        ok = (b.class_ids == cid) & ((b.boxes - box).abs().amax(1) <= 1.0) & \
            ((b.scores - score).abs() <= 1e-3)
        if not bool(ok.any()):
            bad.append((int(cid), box.tolist(), float(score)))
    return bad


@pytest.mark.parametrize('cfg', CONFIGS)
def test_detections_agree_with_ultralytics_predict(tmp_path, checkpoints, photos, cfg):
    """A pack of a trained-style .pt detects what Ultralytics' predict detects on real photos."""
    from ultralytics import YOLO
    ref = YOLO(str(checkpoints[cfg]))
    pack = P.write_pack(f'ultralytics:{checkpoints[cfg]}', tmp_path / 'pack',
                        trust_pickle=True, progress=False)
    det = pack.build_detector(meta=True)
    det.model = load_resident(pack.path)
    assert det.class_names == NAMES
    counts = []
    for name, rgb in photos.items():
        r = ref.predict(rgb[:, :, ::-1].copy(), conf=0.25, iou=0.7, max_det=300,
                        verbose=False)[0]
        theirs = type('R', (), {'boxes': r.boxes.xyxy, 'scores': r.boxes.conf,
                                'class_ids': r.boxes.cls.long()})
        ours = det.detect(rgb, score_threshold=0.25, nms_iou=0.7, max_detections=300)[0]
        assert len(ours) == len(theirs.scores), name
        assert not _unmatched(ours, theirs, 0.25), name
        assert not _unmatched(theirs, ours, 0.25), name
        assert ours.class_names == [NAMES[i] for i in ours.class_ids.tolist()]
        counts.append(len(ours))
    assert min(counts) > 0 and sum(0 < c < 300 for c in counts) >= 3, counts


def test_pt_needs_trust_and_the_pack_holds_no_pickle(tmp_path, checkpoints, capsys):
    pt = checkpoints['yolov8n.yaml']
    with pytest.raises(SystemExit) as err:
        cli.main(['pack', '--model', f'ultralytics:{pt}', '--out', str(tmp_path / 'p')])
    msg = str(err.value)
    assert '\n' not in msg and 'pickle' in msg and '--trust-pickle' in msg
    assert not (tmp_path / 'p' / P.MANIFEST_FILE).exists()
    with pytest.raises(UntrustedPickle):
        registry.build(f'ultralytics:{pt}')
    assert cli.main(['pack', '--model', f'ultralytics:{pt}', '--out', str(tmp_path / 'p'),
                     '--trust-pickle', '--input-size', '320x320']) == 0
    capsys.readouterr()
    files = sorted(p.name for p in (tmp_path / 'p').iterdir())
    assert files == [P.MANIFEST_FILE, ultralytics_yolo.CONFIG_FILE, P.WEIGHTS_FILE]
    manifest = json.loads((tmp_path / 'p' / P.MANIFEST_FILE).read_text())
    assert manifest['model']['spec'] == 'ultralytics:model.yaml'
    assert manifest['model']['names'] == NAMES
    moved = tmp_path / 'moved.pt'
    pt.rename(moved)                  # the pack never goes back to the checkpoint
    try:
        det = P.Pack.open(tmp_path / 'p').build_detector(meta=True)
    finally:
        moved.rename(pt)
    assert det.input_size == (320, 320) and det.class_names == NAMES


@pytest.fixture(scope='module', params=CONFIGS)
def seeded_pack(request, tmp_path_factory):
    out = tmp_path_factory.mktemp('pack') / request.param
    assert cli.main(['pack', '--model', f'ultralytics:{request.param}', '--seed', '1',
                     '--input-size', '320x320', '--out', str(out)]) == 0
    return P.Pack.open(out)


def test_streamed_equals_resident(seeded_pack, photos):
    det = seeded_pack.build_detector(meta=True)
    xs = [det.preprocess([photos[n]])[0] for n in ('dog', 'eagle')]
    assert xs[0].shape == (1, 3, 256, 320)          # predict's stride-aligned rectangle
    resident = load_resident(seeded_pack.path)
    want = [resident(x) for x in xs]
    for budget in (None, 0.25 * seeded_pack.total_bytes / MB):
        m = load(seeded_pack.path, budget_mb=budget)
        try:
            for x, w in zip(xs, want):
                got = m(x)
                assert torch.equal(got[0], w[0]), budget
                assert all(torch.equal(got[1][k], w[1][k]) for k in ('boxes', 'scores'))
            st = m.stats()
            assert st['streamed_units'] > 0
            assert budget is None or st['peak_weight_bytes'] <= st['budget_bytes']
        finally:
            m.close()


def _detect(capsys, *argv):
    rc = cli.main(['detect', *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_detect_pack_prints_what_the_model_prints(seeded_pack, capsys):
    spec = seeded_pack.manifest['source']['spec']
    common = ['--threshold', '0.0001', str(assets.photo('dog')), str(assets.photo('kite'))]
    direct = _detect(capsys, '--model', spec, '--seed', '1', '--input-size', '320x320',
                     *common)
    assert all(line['detections'] for line in direct)
    for extra in (['--budget-mb', '1'], ['--resident']):
        assert _detect(capsys, '--pack', str(seeded_pack.path), *extra, *common) == direct


def test_node_serves_a_pack_with_a_budget_planned_from_its_profile(tmp_path, photos, capsys):
    """
    A yolov8n pack through `profile`, `plan` and the node over real DDS: the resident answers.

    The node finds PACK/PROFILE.json and decides its plan for memory_budget_mb from it, the
    same plan `plan --budget-mb` writes. Seeded weights score every box about 1.6e-4 (see the
    module doc), hence the threshold below it.
    """
    out, threshold = tmp_path / 'v8n', 1e-4
    threads = str(cpu_threads())
    assert cli.main(['pack', '--model', 'ultralytics:yolov8n.yaml', '--seed', '1',
                     '--input-size', '64x64', '--out', str(out)]) == 0
    assert cli.main(['profile', str(out), '--repeats', '1', '--threads', threads]) == 0
    pack = P.Pack.open(out)
    budget = float(math.ceil(0.25 * pack.total_bytes / MB))
    assert cli.main(['plan', str(out), '--threads', threads, '--budget-mb', str(budget),
                     '--no-plots', '--out', str(tmp_path / 'PLAN.yaml')]) == 0
    capsys.readouterr()
    plan = yaml.safe_load((tmp_path / 'PLAN.yaml').read_text())
    oracle = resident_oracle({'cam': pack})
    h = Harness({'pack_path': str(out), 'image_topics': ['/v8_cam/image_raw'],
                 'memory_budget_mb': budget, 'score_threshold': threshold,
                 'autostart': False}, topics={'cam': '/v8_cam/image_raw'},
                outs={'cam': '/v8_cam/detections'}).start()
    try:
        assert h.node.service.profile['mode'] == 'resident'
        for name in ('dog', 'eagle'):
            header = h.publish('cam', photos[name])
            want = expected(oracle, 'cam', header, photos[name], threshold)
            assert want.detections, 'the oracle found nothing: the comparison would be empty'
            assert_same(h.answer('cam', header), want)
        held = h.node.model.plan()
        assert held['resident_units'] == plan['resident_units']
        assert held['arena_bytes'] == plan['arena_bytes']
        st = h.node.model.stats()
        assert st['streamed_units'] > 0 and st['passes'] >= 2
        assert 0 < st['peak_weight_bytes'] <= budget * MB < pack.total_bytes
    finally:
        h.close()
