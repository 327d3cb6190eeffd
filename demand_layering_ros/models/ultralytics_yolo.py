# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Ultralytics YOLO detectors (YOLOv8, YOLO11, ...) behind the Detector interface; optional.

The `ultralytics` package is AGPL-3.0. This package neither ships nor imports it: this module
imports it only when the registry's 'ultralytics' family is used, and tells how to install it
when it is missing. The network is Ultralytics' own DetectionModel, built from Ultralytics' model
configuration (a dict, as the `.yaml` gives it); pre- and post-processing are ours and do what
Ultralytics' `predict` does: letterbox to a stride-aligned rectangle (grey 114), the Detect
head's decoded output (boxes from the DFL in input pixels, class scores after the sigmoid), one
class per box, NMS per class, boxes scaled back and clipped to the image.

`ultralytics:yolov8n.yaml` builds a named configuration with seeded weights;
`ultralytics:PATH.pt` reads a trained checkpoint, which is a pickle and so is read only with
trust_pickle=True. A weight pack stores the configuration dict as model.yaml and the class names
in its manifest, so the skeleton is built again from them, never from the checkpoint.
"""

from pathlib import Path
import threading

from demand_layering_ros.models.detector import (as_image_list, Detections, Detector,
                                                 load_state_dict_file, load_weights_into,
                                                 UntrustedPickle)
import numpy as np
import torch

CONFIG_FILE = 'model.yaml'
DEFAULT_SIZE = (640, 640)
PAD_VALUE = 114
MAX_WH = 7680          # Ultralytics' class offset for NMS per class
MAX_NMS = 30000        # at most this many boxes enter NMS (as Ultralytics)
HEADS = ('Detect', 'v10Detect')   # heads whose eval output is decoded here
_META_LOCK = threading.Lock()   # a meta build briefly replaces Detect.bias_init
INSTALL_HINT = 'python -m pip install --no-deps ultralytics==8.4.190'   # deps are ours already


def _tasks():
    """Import ultralytics.nn.tasks, or say how to install Ultralytics (AGPL-3.0)."""
    try:
        from ultralytics.nn import tasks
    except ImportError as e:
        raise ImportError('model family ultralytics needs the ultralytics package (AGPL-3.0, '
                          f'not installed by this package): {INSTALL_HINT}') from e
    return tasks


def load_config(arg):
    """
    Return the model configuration dict for a configuration name or file.

    A file whose dict already names its scale (as a pack's model.yaml does) is read as it is;
    a name like 'yolov8n.yaml' or a file of several scales is resolved by Ultralytics, which
    takes the scale from the file name.
    """
    import yaml
    p = Path(str(arg)).expanduser()
    if p.is_file():
        with open(p) as f:
            cfg = yaml.safe_load(f)
        if not isinstance(cfg, dict) or 'backbone' not in cfg or 'head' not in cfg:
            raise ValueError(f'{p} is not an Ultralytics model configuration '
                             '(no backbone/head)')
        if cfg.get('scale') or not cfg.get('scales'):
            return cfg
        return _tasks().yaml_model_load(p)
    if '/' in str(arg):
        raise FileNotFoundError(f'Ultralytics model configuration {arg} not found')
    try:
        return _tasks().yaml_model_load(str(arg))
    except FileNotFoundError as e:
        raise FileNotFoundError(f'no Ultralytics model configuration named {arg!r}: {e}') from e


def read_checkpoint(path, trust_pickle=False):
    """
    Return (config dict, class names, float32 state dict) of an Ultralytics `.pt` checkpoint.

    A checkpoint is a pickle of the model object: loading it runs code stored in the file, so
    this refuses unless trust_pickle is True.
    """
    path = Path(path).expanduser()
    if not trust_pickle:
        raise UntrustedPickle(f'{path} is a pickle (an Ultralytics .pt holds the model object '
                              'and loading it can run any code): pass --trust-pickle '
                              '(trust_pickle=True) only for a file from a source you trust')
    if not path.is_file():
        raise FileNotFoundError(f'Ultralytics checkpoint {path} not found')
    tasks = _tasks()
    ckpt, _ = tasks.torch_safe_load(str(path))
    model = (ckpt.get('ema') or ckpt.get('model')) if isinstance(ckpt, dict) else None
    if not isinstance(getattr(model, 'yaml', None), dict):
        raise ValueError(f'{path}: not an Ultralytics checkpoint (no model with a yaml dict)')
    if not isinstance(model, tasks.DetectionModel) or type(model) is not tasks.DetectionModel:
        raise ValueError(f'{path}: a {type(model).__name__}; only detection models '
                         '(DetectionModel) are supported')
    names = getattr(model, 'names', None) or {}
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names)]
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    return dict(model.yaml), list(names), state


def _strides(model, channels):
    """Return the Detect strides of a model whose tensors may be on 'meta'."""
    head = model.model[-1]
    s = 256
    device = next(model.parameters()).device
    was = head.training
    head.training = True   # the head then returns its feature maps, as Ultralytics' own build
    try:
        with torch.no_grad():
            out = model.forward(torch.zeros(1, channels, s, s, device=device))
    finally:
        head.training = was
    if 'one2many' in out:
        out = out['one2many']
    return [s / x.shape[-2] for x in out['feats']]


def build_model(config, seed=None, meta=False):
    """
    Build Ultralytics' DetectionModel from a config dict, on 'meta' or with seeded weights.

    Seeded weights are Ultralytics' own initialisation after torch.manual_seed(seed), i.e. what
    YOLO('yolov8n.yaml') gives; the global random state is left as it was.
    """
    tasks = _tasks()
    channels = int(config.get('channels', 3))
    if meta:
        with _META_LOCK, torch.device('meta'):
            bias_init = tasks.Detect.bias_init
            tasks.Detect.bias_init = lambda self: None   # it reads the strides' values
            try:
                model = tasks.DetectionModel(dict(config), ch=channels, verbose=False)
            finally:
                tasks.Detect.bias_init = bias_init
        head = model.model[-1]
        head.stride = torch.tensor(_strides(model, channels))   # a real tensor, not 'meta'
        model.stride = head.stride
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else int(seed))
            model = tasks.DetectionModel(dict(config), ch=channels, verbose=False)
    head = model.model[-1]
    if type(head).__name__ not in HEADS:
        raise ValueError(f'the configuration ends in {type(head).__name__}; the ultralytics '
                         f'family runs detection heads ({", ".join(HEADS)})')
    return model.eval()


def letterbox(image, new_shape, auto, stride=32):
    """
    Letterbox an RGB uint8 HxWx3 numpy image as Ultralytics' LetterBox (predict's settings).

    Returns (uint8 image, (top, left)). auto: pad only to a multiple of stride.
    """
    import cv2
    h, w = image.shape[:2]
    r = min(new_shape[0] / h, new_shape[1] / w)
    new_unpad = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if (w, h) != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                               value=(PAD_VALUE,) * 3)
    return image, (top, left)


def scale_boxes(boxes, net_shape, image_shape):
    """Map xyxy boxes from the letterboxed input back to the image, clipped (Ultralytics')."""
    h0, w0 = image_shape
    gain = min(net_shape[0] / h0, net_shape[1] / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    gain_y, gain_x = new_h / h0, new_w / w0
    pad_x = round((net_shape[1] - new_w) / 2 - 0.1)
    pad_y = round((net_shape[0] - new_h) / 2 - 0.1)
    boxes = boxes.clone()
    boxes[:, 0] -= pad_x
    boxes[:, 1] -= pad_y
    boxes[:, 2] -= pad_x
    boxes[:, 3] -= pad_y
    boxes[:, 0] /= gain_x
    boxes[:, 1] /= gain_y
    boxes[:, 2] /= gain_x
    boxes[:, 3] /= gain_y
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w0)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h0)
    return boxes


def nms_one(pred, conf, iou, max_det):
    """
    Ultralytics' non_max_suppression for one image's [4+nc, anchors] head output.

    Returns (xyxy boxes, scores, class ids): the best class of each box, scores above conf,
    NMS per class (boxes offset by class * MAX_WH), at most max_det, best first.
    """
    import torchvision.ops
    pred = pred.float()
    keep = pred[4:].amax(0) > conf
    x = pred.transpose(0, 1)[keep]
    xy, wh = x[:, :2], x[:, 2:4] / 2
    box = torch.cat((xy - wh, xy + wh), 1)
    score, cls = x[:, 4:].max(1)
    keep = score > conf
    box, score, cls = box[keep], score[keep], cls[keep]
    if score.numel() > MAX_NMS:
        top = score.argsort(descending=True)[:MAX_NMS]
        box, score, cls = box[top], score[top], cls[top]
    i = torchvision.ops.nms(box + cls[:, None].float() * MAX_WH, score, iou)[:max_det]
    return box[i], score[i], cls[i]


def end2end_one(pred, conf, max_det):
    """Read one image's [k, 6] end-to-end output (x1, y1, x2, y2, score, class), as Ultralytics."""
    pred = pred.float()
    pred = pred[pred[:, 4] > conf][:max_det]
    return pred[:, :4], pred[:, 4], pred[:, 5].long()


class UltralyticsDetector(Detector):
    """An Ultralytics DetectionModel with predict's letterbox, decoding and NMS."""

    def __init__(self, name, spec, model, class_names, config, input_size, build_args,
                 device='cpu'):
        super().__init__(name=name, spec=spec, model=model, class_names=class_names,
                         input_size=input_size, build_args=build_args, device=device)
        self.config = config
        self.stride = max(int(model.model[-1].stride.max()), 32)

    def preprocess(self, images):
        """Letterbox like predict (a stride-aligned rectangle when all images share a shape)."""
        images = as_image_list(images)
        arrays = [img.cpu().numpy() for img in images]
        auto = len({a.shape for a in arrays}) == 1
        boxed = [letterbox(a, self.input_size, auto, self.stride)[0] for a in arrays]
        x = torch.from_numpy(np.stack(boxed)).to(self.device).permute(0, 3, 1, 2).contiguous()
        x = x.float().div_(255).to(self.dtype)
        meta = {'sizes': [a.shape[:2] for a in arrays], 'net': tuple(x.shape[2:])}
        return x, meta

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100):
        """Decode the Detect head's eval output (or an end-to-end head's) into Detections."""
        y = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        results = []
        for b, size in enumerate(meta['sizes']):
            if y.shape[-1] == 6 and y.shape[1] != 4 + len(self.class_names):
                boxes, scores, ids = end2end_one(y[b], score_threshold, max_detections)
            else:
                boxes, scores, ids = nms_one(y[b], score_threshold, nms_iou, max_detections)
            boxes = scale_boxes(boxes, meta['net'], size)
            ids = ids.long()
            results.append(Detections(boxes, scores, ids,
                                      [self._name(i) for i in ids.tolist()]))
        return results

    def pack_files(self):
        """Return ({file: bytes}, {role: file}, manifest model updates) for a weight pack."""
        import yaml
        text = yaml.safe_dump(self.config, sort_keys=False).encode()
        return ({CONFIG_FILE: text}, {'config': CONFIG_FILE},
                {'spec': f'ultralytics:{CONFIG_FILE}'})

    def _name(self, i):
        return self.class_names[i] if i < len(self.class_names) else f'class_{i}'


def default_names(nc):
    """Return COCO's names (Ultralytics' spelling) for 80 classes, else class_<i>."""
    if nc == 80:
        import yaml
        import ultralytics
        path = Path(ultralytics.__file__).parent / 'cfg' / 'datasets' / 'coco.yaml'
        try:
            names = yaml.safe_load(path.read_text())['names']
            return [str(names[i]) for i in range(80)]
        except (OSError, KeyError, TypeError):
            pass
    return [f'class_{i}' for i in range(nc)]


def _names(names, nc):
    if names is None:
        return default_names(nc)
    if isinstance(names, (str, Path)):
        from demand_layering_ros.models import assets
        names = assets.read_names(names)
    names = [str(n) for n in names]
    if len(names) != nc:
        raise ValueError(f'{len(names)} class names for a model of {nc} classes')
    return names


def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False,
          names=None, trust_pickle=False, **kwargs):
    """
    Build an UltralyticsDetector (registry family 'ultralytics').

    arg: a configuration name ('yolov8n.yaml', 'yolo11n.yaml'), a configuration file, or a
    trained checkpoint 'PATH.pt' (a pickle: read only with trust_pickle=True; its weights and
    class names are used). names: class names (a list or a names file).
    """
    if kwargs:
        raise TypeError(f'ultralytics models take no options {sorted(kwargs)}')
    state = None
    if str(arg).endswith(('.pt', '.pth')):
        if weights is not None:
            raise ValueError('a .pt checkpoint carries its weights; do not pass weights')
        config, ck_names, state = read_checkpoint(arg, trust_pickle)
        names = ck_names if names is None else names
    else:
        config = load_config(arg)
    model = build_model(config, seed=seed, meta=meta)
    if state is not None and not meta:
        load_weights_into(model, state, arg)
    elif weights is not None and not meta:
        load_weights_into(model, load_state_dict_file(weights), weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = dict(model.yaml)
    names = _names(names, int(config['nc']))
    size = tuple(int(v) for v in input_size) if input_size is not None else DEFAULT_SIZE
    build_args = {'spec': f'ultralytics:{arg}', 'names': names, 'input_size': list(size)}
    name = Path(str(config.get('yaml_file') or arg)).stem
    det = UltralyticsDetector(name, build_args['spec'], model, names, config, size, build_args,
                              device=device)
    if not meta:
        model.to(device)
    return det
