# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The real assets that `make setup` provides are where assets.py says, and readable.

These tests fail (never skip) when an asset is missing: the models' evidence depends on them.
"""

from demand_layering_ros.models import assets
from demand_layering_ros.models.detector import read_image
import pytest

LISTED_CFGS = ['yolov2', 'yolov2-tiny', 'yolov3', 'yolov3-tiny', 'yolov3-spp', 'resnet152',
               'densenet201', 'vgg-16', 'alexnet']


@pytest.mark.parametrize('name', LISTED_CFGS)
def test_listed_cfgs_exist(name):
    path = assets.darknet_cfg(name)
    assert path.name == f'{name}.cfg' and path.read_text().lstrip().startswith('[net')
    assert assets.darknet_cfg(f'{name}.cfg') == path


@pytest.mark.parametrize('name', list(assets.DARKNET_PHOTOS) + ['astronaut', 'coffee',
                                                                'chelsea', 'rocket'])
def test_photos_are_rgb_images(name):
    img = read_image(assets.photo(name))
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype.name == 'uint8'
    assert min(img.shape[:2]) >= 200


def test_read_image_is_rgb():
    import skimage.data
    assert (read_image(assets.photo('astronaut')) == skimage.data.astronaut()).all()


def test_yolov3_tiny_and_names():
    cfg, weights, names = assets.yolov3_tiny()
    assert cfg.suffix == '.cfg' and weights.stat().st_size == 35434956
    coco = assets.coco_names()
    assert len(coco) == 80 and coco[0] == 'person' and coco[-1] == 'toothbrush'
    assert assets.read_names(names) == coco
    imagenet = assets.imagenet_names()
    assert len(imagenet) == 1000 and len(set(imagenet)) > 990


def test_env_override_and_clear_errors(tmp_path, monkeypatch):
    (tmp_path / 'cfg').mkdir()
    (tmp_path / 'cfg' / 'mine.cfg').write_text('[net]\n')
    monkeypatch.setenv('DLR_DARKNET_DIR', str(tmp_path))
    assert assets.darknet_dir() == tmp_path
    assert assets.darknet_cfg('mine') == tmp_path / 'cfg' / 'mine.cfg'
    with pytest.raises(FileNotFoundError, match='make setup'):
        assets.darknet_cfg('yolov9')
    with pytest.raises(FileNotFoundError, match=r'missing photo .*dog\.jpg.*make setup'):
        assets.photo('dog')
    with pytest.raises(KeyError, match='unknown photo'):
        assets.photo('unicorn')
    with pytest.raises(FileNotFoundError, match='missing thing .*nothing.*make setup'):
        assets.require(tmp_path / 'nothing', 'thing')
