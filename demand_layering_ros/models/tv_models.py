# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
torchvision detectors behind the Detector interface, offline.

torchvision's builders are always called with weights=None and weights_backbone=None, so
nothing is ever downloaded: weights come from a local file (safetensors or a state dict read with
torch.load(weights_only=True)) or from a seeded random initialisation for benchmarks. Batch norms
are frozen (FrozenBatchNorm2d, as torchvision itself uses with pretrained weights) so that
torchvision's own COCO checkpoints load as they are and the state dict holds no training
counters. The models resize internally and return boxes in original-image pixels.
"""

from demand_layering_ros.models.detector import (as_image_list, Detections, Detector,
                                                 load_state_dict_file, load_weights_into)
import torch
from torch import nn

# name -> (family, default input size (h, w))
MODELS = {
    'fasterrcnn_resnet50_fpn': ('rcnn', (800, 1333)),
    'fasterrcnn_resnet50_fpn_v2': ('rcnn', (800, 1333)),
    'fasterrcnn_mobilenet_v3_large_fpn': ('rcnn', (800, 1333)),
    'fasterrcnn_mobilenet_v3_large_320_fpn': ('rcnn', (320, 640)),
    'retinanet_resnet50_fpn': ('rcnn', (800, 1333)),
    'retinanet_resnet50_fpn_v2': ('rcnn', (800, 1333)),
    'fcos_resnet50_fpn': ('rcnn', (800, 1333)),
    'maskrcnn_resnet50_fpn': ('rcnn', (800, 1333)),
    'maskrcnn_resnet50_fpn_v2': ('rcnn', (800, 1333)),
    'ssd300_vgg16': ('ssd', (300, 300)),
    'ssdlite320_mobilenet_v3_large': ('ssd', (320, 320)),
}


def coco_category_names():
    """Return torchvision's 91 COCO category names ('__background__' and 'N/A' included)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta['categories'])


def freeze_batchnorm_(model):
    """Replace every nn.BatchNorm2d by a FrozenBatchNorm2d with the same statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                device = child.weight.device if child.weight is not None else None
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(device)
                if not child.weight.is_meta:
                    with torch.no_grad():
                        frozen.weight.copy_(child.weight)
                        frozen.bias.copy_(child.bias)
                        frozen.running_mean.copy_(child.running_mean)
                        frozen.running_var.copy_(child.running_var)
                setattr(parent, name, frozen)
    return model


def set_input_size_(model, family, input_size):
    """Make the model's internal transform resize images to `input_size` (h, w)."""
    h, w = input_size
    t = model.transform
    t.min_size = (min(h, w),)
    t.max_size = max(h, w)
    if family == 'ssd':
        t.fixed_size = (w, h)  # torchvision's fixed_size is (width, height)


def set_score_threshold_(model, threshold):
    """
    Make a torchvision detector keep candidates down to `threshold` (its own is a floor).

    torchvision filters inside the forward pass (Faster/Mask R-CNN box_score_thresh 0.05,
    RetinaNet 0.05, FCOS 0.2, SSD 0.01), so a lower score_threshold would silently give nothing
    between the two. `model` may be the demand-layered wrapper, whose `.module` is the model.
    """
    inner = getattr(model, 'module', model)
    holder = getattr(inner, 'roi_heads', inner)
    if hasattr(holder, 'score_thresh'):
        holder.score_thresh = float(threshold)


class TorchvisionDetector(Detector):
    """A torchvision detection model; the model takes a list of [3, H, W] float images."""

    def detect(self, images, score_threshold=0.25, nms_iou=0.45, max_detections=100):
        """Detect with the model's own score threshold set to `score_threshold` first."""
        set_score_threshold_(self.model, score_threshold)
        return super().detect(images, score_threshold=score_threshold, nms_iou=nms_iou,
                              max_detections=max_detections)

    __call__ = detect

    def preprocess(self, images):
        """Convert images to float tensors in [0, 1]; the model normalises and resizes."""
        images = as_image_list(images)
        x = [img.to(self.device).permute(2, 0, 1).to(self.dtype) / 255.0 for img in images]
        return x, {'sizes': [tuple(img.shape[:2]) for img in images]}

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100):
        """
        Map torchvision's output dicts to Detections (boxes already in original pixels).

        The models run their own per-class NMS inside the forward (box_nms_thresh /
        nms_thresh, 0.45-0.5); nms_iou here suppresses further, and a value above the model's
        own threshold changes nothing.
        """
        import torchvision.ops
        results = []
        for out, (img_h, img_w) in zip(outputs, meta['sizes']):
            boxes, scores, labels = out['boxes'].float(), out['scores'].float(), out['labels']
            keep = scores > score_threshold
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep].long()
            if boxes.numel():
                keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_iou)
                keep = keep[:max_detections]
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            boxes = boxes.clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
            names = [self.class_names[i] if i < len(self.class_names) else f'class_{i}'
                     for i in labels.tolist()]
            results.append(Detections(boxes, scores, labels, names))
        return results


def build(arg, weights=None, seed=None, input_size=None, device='cpu', meta=False, **kwargs):
    """
    Build a torchvision detector by name (registry family 'torchvision').

    kwargs go to the torchvision builder (e.g. num_classes, box_score_thresh) and must be
    JSON-serialisable so that a weight pack can rebuild the model.
    """
    if arg not in MODELS:
        raise KeyError(f'unknown torchvision detector {arg!r}; supported: '
                       + ', '.join(sorted(MODELS)))
    family, default_size = MODELS[arg]
    for key in ('weights', 'weights_backbone'):
        if key in kwargs:
            raise ValueError(f'{key} is always None here (no downloads); pass a local file '
                             'with weights=PATH instead')
    import torchvision.models.detection as tvd
    fn = getattr(tvd, arg)
    if meta:
        with torch.device('meta'):
            model = fn(weights=None, weights_backbone=None, **kwargs)
            freeze_batchnorm_(model)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else int(seed))
            model = fn(weights=None, weights_backbone=None, **kwargs)
        freeze_batchnorm_(model)
        if weights is not None:
            sd = load_state_dict_file(weights)
            sd = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
            load_weights_into(model, sd, weights)
    size = tuple(input_size) if input_size is not None else default_size
    set_input_size_(model, family, size)
    model.eval()
    num_classes = kwargs.get('num_classes', 91)
    names = coco_category_names() if num_classes == 91 else \
        [f'class_{i}' for i in range(num_classes)]
    build_args = {'spec': f'torchvision:{arg}', 'input_size': list(size)}
    build_args.update(kwargs)
    det = TorchvisionDetector(name=arg, spec=f'torchvision:{arg}', model=model,
                              class_names=names, input_size=size, build_args=build_args,
                              device=device)
    if not meta:
        model.to(device)
    return det
