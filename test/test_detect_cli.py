# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The `detect` command and the model registry it builds through.

The CLI's JSON lines are a contract (image, detections: class_id, class_name, score, box), and
third-party model families arrive through Python entry points, so both are tested with real
models, real photos and a real (temporary) installed distribution.
"""

import json
import os
import subprocess
import sys
import textwrap

from demand_layering_ros import cli
from demand_layering_ros.models import assets, registry
from demand_layering_ros.models.detector import Detector
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(capsys, *argv):
    rc = cli.main(['detect', *argv])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_real_yolov3_tiny_through_python_m():
    """The real entry point: dog.jpg and person.jpg give what a person sees."""
    cfg, weights, _ = assets.yolov3_tiny()
    dog, person = str(assets.photo('dog')), str(assets.photo('person'))
    proc = subprocess.run(
        [sys.executable, '-m', 'demand_layering_ros', 'detect', '--model', f'darknet:{cfg}',
         '--weights', str(weights), dog, person],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line['image'] for line in lines] == [dog, person]
    for line in lines:
        assert set(line) == {'image', 'detections'}
        for d in line['detections']:
            assert set(d) == {'class_id', 'class_name', 'score', 'box'}
            assert d['score'] > 0.25 and len(d['box']) == 4
    names = [{d['class_name'] for d in line['detections']} for line in lines]
    assert {'dog', 'bicycle'} <= names[0] and names[0] & {'car', 'truck'}
    assert {'person', 'horse', 'dog'} <= names[1]
    # where a person sees them (dog.jpg is 768x576): the dog bottom-left, the car top-right
    best = {}
    for d in lines[0]['detections']:
        if d['score'] > best.get(d['class_name'], {'score': 0})['score']:
            best[d['class_name']] = d
    x1, y1, x2, y2 = best['dog']['box']
    assert x2 < 450 and y1 > 150 and (x2 - x1) * (y2 - y1) > 150 * 250
    car = best.get('car') or best['truck']
    assert car['box'][0] > 400 and car['box'][3] < 250


def test_classifier_prints_top5_without_box(capsys):
    rc, lines, err = _run(capsys, '--model', 'darknet:densenet201', '--input-size', '64x64',
                          '--seed', '3', str(assets.photo('eagle')))
    assert rc == 0, err
    dets = lines[0]['detections']
    assert len(dets) == 5 and all(set(d) == {'class_id', 'class_name', 'score'} for d in dets)
    assert [d['score'] for d in dets] == sorted((d['score'] for d in dets), reverse=True)


def test_torchvision_model_and_batches(capsys):
    photos = [str(assets.photo(n)) for n in ('dog', 'kite', 'giraffe')]
    rc, lines, err = _run(capsys, '--model', 'torchvision:ssdlite320_mobilenet_v3_large',
                          '--input-size', '128x128', '--threshold', '0', '--batch', '2',
                          '--max-detections', '3', *photos)
    assert rc == 0, err
    assert 'random weights (seed 0)' in err
    assert [line['image'] for line in lines] == photos
    assert all(len(line['detections']) == 3 for line in lines)


@pytest.mark.parametrize('argv,message', [
    (['--model', 'nosuch:thing'], "unknown model family 'nosuch'"),
    (['--model', 'darknet'], 'must look like FAMILY:ARG'),
    (['--model', 'darknet:yolov3-tiny', '--fp16'], '--fp16 needs a CUDA device'),
    (['--model', 'darknet:yolov3-tiny', '--budget-mb', '10'], 'need --pack'),
    (['--model', 'darknet:yolov3-tiny', '--pack', '/nonexistent/pack'], 'replaces --model'),
    ([], 'give --model SPEC'),
    (['--model', 'darknet:yolov3-tiny', '--input-size', '4x4x4'], 'bad input size'),
    (['--model', 'darknet:no-such-cfg'], "no Darknet cfg named 'no-such-cfg'"),
])
def test_usage_errors(capsys, argv, message):
    rc, lines, err = _run(capsys, *argv, str(assets.photo('dog')))
    assert rc == 2 and lines == []
    assert message in err


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / 'not-an-image.jpg'
    bad.write_bytes(b'hello')
    rc, lines, err = _run(capsys, '--model', 'darknet:yolov3-tiny', '--input-size', '64x64',
                          str(bad))
    assert rc == 2 and 'cannot read image' in err and str(bad) in err


def test_pack_errors_are_clear(capsys, tmp_path):
    rc, lines, err = _run(capsys, '--pack', str(tmp_path / 'missing'), str(assets.photo('dog')))
    assert rc == 2 and lines == [] and 'missing' in err


def test_weights_and_seed_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        cli.main(['detect', '--model', 'darknet:yolov3-tiny', '--weights', 'a', '--seed', '1',
                  'x.jpg'])
    assert 'not allowed with argument' in capsys.readouterr().err


# --------------------------------------------------------------------------- registry


TOY_FAMILY = """
from demand_layering_ros.models.detector import as_image_list, Detections, Detector
import torch


class Toy(Detector):
    def preprocess(self, images):
        images = as_image_list(images)
        x = torch.stack([i.permute(2, 0, 1).float() / 255 for i in images])
        return x, None

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100):
        return [Detections(torch.tensor([[0., 0., 1., 1.]]), torch.sigmoid(o.mean())[None],
                           torch.tensor([0]), ['thing']) for o in outputs]


def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False, **kw):
    torch.manual_seed(seed or 0)
    model = torch.nn.Conv2d(3, 1, 1)
    return Toy(name=arg, spec='toy:' + arg, model=model, class_names=['thing'],
               input_size=input_size or (8, 8), build_args={'spec': 'toy:' + arg, **kw})
"""


def test_entry_point_family(tmp_path, monkeypatch, capsys):
    """A third-party distribution adds a family with only an entry point."""
    (tmp_path / 'toy_family.py').write_text(textwrap.dedent(TOY_FAMILY))
    dist = tmp_path / 'toy_family-0.1.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: toy-family\nVersion: 0.1\n')
    (dist / 'entry_points.txt').write_text(
        '[demand_layering_ros.models]\ntoy = toy_family:build\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.families()['toy'] == 'toy_family:build'
    assert registry.families()['darknet'] == 'demand_layering_ros.models.darknet:build'
    det = registry.build('toy:abc', seed=1, colour='red')
    assert isinstance(det, Detector) and det.spec == 'toy:abc'
    res = det.detect(np.zeros((8, 8, 3), np.uint8))
    assert res[0].class_names == ['thing']
    args = registry.constructor_args(det)
    assert args == {'spec': 'toy:abc', 'colour': 'red', 'input_size': [8, 8]}
    again = registry.build(**args)
    assert again.input_size == det.input_size
    rc, lines, err = _run(capsys, '--model', 'toy:abc', str(assets.photo('dog')))
    assert rc == 0, err
    assert lines[0]['detections'][0]['class_name'] == 'thing'


def test_register_and_unknown_family():
    calls = []

    def fake_build(arg, **kwargs):
        calls.append((arg, kwargs['input_size']))
        return registry.family_builder('darknet')('yolov3-tiny', meta=True)

    registry.register('mine', fake_build)
    try:
        det = registry.build('mine:x', input_size='64x96')
        assert calls == [('x', (64, 96))] and det.build_args['spec'].startswith('darknet:')
    finally:
        registry._registered.pop('mine')
    with pytest.raises(KeyError, match="unknown model family 'nope'.*darknet.*torchvision"):
        registry.build('nope:x')
    with pytest.raises(ValueError, match='bad family name'):
        registry.register('a:b', fake_build)


def test_constructor_args_rebuild_darknet():
    det = registry.build('darknet:yolov3-tiny', seed=2, input_size=(96, 128))
    args = json.loads(json.dumps(registry.constructor_args(det)))
    assert args['input_size'] == [96, 128]
    again = registry.build(**args, meta=True)
    assert {k: v.shape for k, v in again.model.state_dict().items()} == \
        {k: v.shape for k, v in det.model.state_dict().items()}
    assert again.input_size == (96, 128)
    x = det.example_input(batch=2)
    assert x.shape == (2, 3, 96, 128) and x.dtype == torch.float32


def test_pack_gives_the_same_lines_as_the_model(capsys, tmp_path):
    """`--pack` (demand-layered and resident) prints what `--model` prints."""
    from demand_layering_ros.pack import write_pack
    write_pack('darknet:yolov3-tiny', tmp_path / 'pack', seed=4, input_size=(96, 128),
               progress=False)
    photos = [str(assets.photo('dog')), str(assets.photo('kite'))]
    common = ['--threshold', '0.005', *photos]
    rc, direct, err = _run(capsys, '--model', 'darknet:yolov3-tiny', '--seed', '4',
                           '--input-size', '96x128', *common)
    assert rc == 0, err
    assert any(line['detections'] for line in direct)
    for extra in (['--budget-mb', '1'], ['--resident']):
        rc, packed, err = _run(capsys, '--pack', str(tmp_path / 'pack'), *extra, *common)
        assert rc == 0, err
        assert packed == direct


def test_ultralytics_is_optional_and_never_imported_by_default(monkeypatch):
    """AGPL-3.0 ultralytics is imported only by its family, which says how to install it."""
    code = ('import sys; from demand_layering_ros.models import registry, ultralytics_yolo; '
            'import demand_layering_ros.pack.command, demand_layering_ros.detect; '
            "registry.build('darknet:yolov3-tiny', meta=True); "
            "assert 'ultralytics' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setitem(sys.modules, 'ultralytics', None)        # as if not installed
    monkeypatch.setitem(sys.modules, 'ultralytics.nn', None)
    with pytest.raises(ImportError, match=r'AGPL-3\.0.*--no-deps ultralytics==8\.4\.190'):
        registry.build('ultralytics:yolov8n.yaml', meta=True)
