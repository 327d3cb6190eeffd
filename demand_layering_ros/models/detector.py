# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
One interface for every detection model: preprocess -> nn.Module forward -> postprocess.

Only `Detector.model` touches weights. Keeping pre- and post-processing outside the module lets
the executor swap the module for a demand-layered one with the same call signature, and lets the
node, the benchmarks and the CLI treat torchvision and Darknet models alike. Results are always in
original-image pixels so callers never see the model's internal resolution.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np
import torch


@dataclass
class Detections:
    """Detections (or, for a classifier, top-k classes) for one image."""

    boxes: torch.Tensor          # [N, 4] float32 xyxy in original image pixels
    scores: torch.Tensor         # [N] float32
    class_ids: torch.Tensor      # [N] int64
    class_names: List[str]       # [N]
    has_boxes: bool = True       # False for classifiers: boxes is [0, 4], see topk
    topk: Optional[List[Tuple[int, str, float]]] = field(default=None)

    def __len__(self):
        return len(self.topk) if not self.has_boxes else int(self.scores.numel())

    def to_json(self):
        """Return a JSON-ready list of dicts (box omitted for classifiers)."""
        if not self.has_boxes:
            return [{'class_id': int(c), 'class_name': n, 'score': round(float(s), 6)}
                    for c, n, s in (self.topk or [])]
        out = []
        boxes = self.boxes.detach().float().cpu().tolist()
        scores = self.scores.detach().float().cpu().tolist()
        ids = self.class_ids.detach().cpu().tolist()
        for box, score, cid, name in zip(boxes, scores, ids, self.class_names):
            out.append({'class_id': int(cid), 'class_name': name, 'score': round(score, 6),
                        'box': [round(v, 2) for v in box]})
        return out

    @staticmethod
    def empty(device='cpu'):
        """Return an empty detection result."""
        return Detections(torch.zeros((0, 4), dtype=torch.float32, device=device),
                          torch.zeros((0,), dtype=torch.float32, device=device),
                          torch.zeros((0,), dtype=torch.int64, device=device), [])


def as_image_list(images):
    """
    Validate images and return a list of HxWx3 uint8 torch tensors (CPU or device).

    Accepts one image or a list of images; each an RGB uint8 array/tensor of shape HxWx3.
    A 4-D array/tensor is read as a batch BxHxWx3.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            images = list(images)
        else:
            images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f'expected an image or a non-empty list of images, got {type(images)}')
    out = []
    for i, img in enumerate(images):
        if isinstance(img, np.ndarray):
            if img.dtype != np.uint8:
                raise TypeError(f'image {i}: dtype {img.dtype}, expected uint8 RGB')
            t = torch.from_numpy(np.ascontiguousarray(img))
        elif isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8:
                raise TypeError(f'image {i}: dtype {img.dtype}, expected torch.uint8 RGB')
            t = img
        else:
            raise TypeError(f'image {i}: expected numpy.ndarray or torch.Tensor, got {type(img)}')
        if t.ndim != 3 or t.shape[2] != 3:
            raise ValueError(f'image {i}: shape {tuple(t.shape)}, expected HxWx3 (RGB, '
                             'channels last)')
        if t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f'image {i}: empty image of shape {tuple(t.shape)}')
        out.append(t)
    return out


def read_image(path):
    """Read an image file as an RGB uint8 HxWx3 numpy array (with OpenCV, never torchvision)."""
    import cv2

    path = str(path)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot read image {path} (missing file or unknown format)')
    return np.ascontiguousarray(bgr[:, :, ::-1])


class Detector:
    """
    A model with its pre- and post-processing; subclasses implement the three steps.

    Attributes: name, spec, class_names, kind ('detector' or 'classifier'), model (nn.Module,
    the only part holding weights), input_size ((h, w) or None), build_args (JSON-ready
    arguments that rebuild the same architecture with registry.build), device, dtype.
    """

    kind = 'detector'

    def __init__(self, name, spec, model, class_names, input_size=None, build_args=None,
                 device='cpu'):
        self.name = name
        self.spec = spec
        self.model = model
        self.class_names = list(class_names)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.build_args = dict(build_args or {'spec': spec})
        self.device = torch.device(device)
        self.dtype = torch.float32

    def preprocess(self, images) -> Tuple[Any, Any]:
        """Turn RGB uint8 images into (model_input, meta)."""
        raise NotImplementedError

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100) -> List[Detections]:
        """Turn model outputs into one Detections per image, in original-image pixels."""
        raise NotImplementedError

    def example_input(self, batch=1):
        """Return a model input for tracing, packing and profiling (batch of grey images)."""
        h, w = self.input_size or (416, 416)
        img = np.full((h, w, 3), 127, dtype=np.uint8)
        return self.preprocess([img] * batch)[0]

    def timing_input(self, batch=1, seed=0):
        """
        Return a model input for timing: camera-like pixels (seeded noise), not flat grey.

        On a CPU the compute time depends on the pixel values: a flat grey image runs the
        Darknet YOLOs about 20% faster than a photo or noise (which agree within 4%), so a
        profile taken on the tracing input would promise latencies no camera frame reaches.
        """
        if type(self).example_input is not Detector.example_input:
            return self.example_input(batch)    # a model with its own kind of input knows best
        h, w = self.input_size or (416, 416)
        rng = np.random.default_rng(seed)
        imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
        return self.preprocess(imgs)[0]

    def forward(self, model_input):
        """Run the model without autograd (inference mode: no version counters, no views kept)."""
        with torch.inference_mode():
            return self.model(model_input)

    def detect(self, images, score_threshold=0.25, nms_iou=0.45, max_detections=100):
        """Detect objects in one image or a list of images (RGB uint8 HxWx3)."""
        x, meta = self.preprocess(images)
        outputs = self.forward(x)
        return self.postprocess(outputs, meta, score_threshold=score_threshold,
                                nms_iou=nms_iou, max_detections=max_detections)

    __call__ = detect

    def to(self, device):
        """Move the model to `device` (a no-op for a module built on 'meta')."""
        self.device = torch.device(device)
        if not _is_meta(self.model):
            self.model.to(self.device)
        return self

    def half(self):
        """Run in float16 (meant for CUDA; CPU float16 convolutions are slow or unsupported)."""
        return self.set_dtype(torch.float16)

    def set_dtype(self, dtype):
        """
        Set the floating point type of the model and of its inputs.

        A 'meta' skeleton is cast too (its placeholders then carry the dtype the weights will
        have), and a model that cannot be cast (a demand-layered one computing in another
        dtype) raises rather than leave model and inputs disagreeing.
        """
        self.model.to(dtype=dtype)
        self.dtype = dtype
        return self

    def __repr__(self):
        return (f'{type(self).__name__}(spec={self.spec!r}, kind={self.kind!r}, '
                f'input_size={self.input_size}, classes={len(self.class_names)}, '
                f'device={self.device})')


def _is_meta(module):
    for p in module.parameters():
        return p.is_meta
    return False


class UntrustedPickle(ValueError):
    """A model file is a pickle (loading it runs code) and the caller did not say it trusts it."""


def load_state_dict_file(path):
    """Read a state dict from a .safetensors file or a torch file (weights_only=True)."""
    path = str(path)
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'cannot read weights file {path} as a torch state dict '
                         f'(weights_only=True): {e}') from e
    if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
        sd = sd['state_dict']
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f'{path}: expected a dict of tensors (a state dict)')
    return sd


def load_weights_into(model, state_dict, source):
    """Load a state dict strictly, with an error naming the file and the mismatching keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing (e.g. {missing[:3]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
        if shapes:
            parts.append(f'{len(shapes)} shape mismatches (e.g. {shapes[:3]})')
        raise ValueError(f'weights {source} do not fit the model: ' + '; '.join(parts))
    model.load_state_dict(state_dict, strict=True)
