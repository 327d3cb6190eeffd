# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Pre- and post-processing as in Darknet's C code (pjreddie, 2018), and the DarknetDetector.

Letterbox with its separable bilinear resize, region/yolo decoding, box correction and
per-class NMS, so that boxes agree with the `darknet` binary.
"""

from pathlib import Path

from demand_layering_ros.models import assets
from demand_layering_ros.models.darknet.layers import Yolo
from demand_layering_ros.models.detector import as_image_list, Detections, Detector
from demand_layering_ros.models.nms import batched_nms
import numpy as np
import torch


def _unit(x):
    """Return pixels as float32 in [0, 1]: uint8 / 255 (in place on the new float copy)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _resize_axis(x, out, dim):
    """
    Resize along one axis exactly like Darknet's resize_image (float32, corners aligned).

    A uint8 `x` is gathered first and only the gathered columns become floats (`_unit`): the
    same values as converting the whole image, without a float copy of a camera frame (14 MiB
    for 1352x900) and its / 255 beside it. The blend runs in place on the gathered copies.
    """
    n = x.shape[dim]
    if out == n:
        return _unit(x)
    if out == 1 or n == 1:
        idx = torch.full((out,), n - 1, dtype=torch.long, device=x.device)
        return _unit(x.index_select(dim, idx))
    scale = torch.tensor(np.float32(n - 1) / np.float32(out - 1), dtype=torch.float32)
    s = torch.arange(out, dtype=torch.float32) * scale
    i0 = s.long()
    d = s - i0.float()
    i0[-1] = n - 1   # the last sample is the last pixel, without interpolation
    d[-1] = 0.0
    i1 = (i0 + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[dim] = out
    d = d.to(x.device, torch.float32).view(shape)
    a = _unit(x.index_select(dim, i0.to(x.device)))
    b = _unit(x.index_select(dim, i1.to(x.device)))
    return a.mul_(1 - d).add_(b.mul_(d))     # (1 - d) * a + d * b


def letterbox_geometry(img_h, img_w, net_h, net_w):
    """Return (new_h, new_w, top, left) of Darknet's letterbox_image."""
    if np.float32(net_w) / np.float32(img_w) < np.float32(net_h) / np.float32(img_h):
        new_w, new_h = net_w, (img_h * net_w) // img_w
    else:
        new_h, new_w = net_h, (img_w * net_h) // img_h
    return new_h, new_w, (net_h - new_h) // 2, (net_w - new_w) // 2


def letterbox(image, net_h, net_w, device='cpu'):
    """Letterbox an RGB uint8 HxWx3 tensor into a float32 [3, net_h, net_w] tensor in [0, 1]."""
    h, w = image.shape[:2]
    new_h, new_w, top, left = letterbox_geometry(h, w, net_h, net_w)
    x = _resize_axis(image.to(device).permute(2, 0, 1), new_w, 2)   # floats from here
    x = _resize_axis(x, new_h, 1)
    out = torch.full((3, net_h, net_w), 0.5, dtype=torch.float32, device=device)
    out[:, top:top + new_h, left:left + new_w] = x
    return out


def correct_boxes(cx, cy, bw, bh, img_h, img_w, net_h, net_w):
    """Undo the letterbox (Darknet's correct_yolo_boxes) and return xyxy in image pixels."""
    new_h, new_w, _, _ = letterbox_geometry(img_h, img_w, net_h, net_w)
    cx = (cx - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    cy = (cy - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    bw = bw * (net_w / new_w)
    bh = bh * (net_h / new_h)
    x1 = ((cx - bw / 2) * img_w).clamp(0, img_w - 1)
    x2 = ((cx + bw / 2) * img_w).clamp(0, img_w - 1)
    y1 = ((cy - bh / 2) * img_h).clamp(0, img_h - 1)
    y2 = ((cy + bh / 2) * img_h).clamp(0, img_h - 1)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def decode_head(layer, out, net_h, net_w):
    """
    Decode one image's head output [A*(5+C), h, w] into (cx, cy, bw, bh, obj, cls_prob).

    Coordinates are relative to the network input (0..1), as Darknet's get_*_box.
    """
    n = len(layer.anchors)
    c5 = layer.classes + 5
    h, w = out.shape[-2:]
    v = out.float().reshape(n, c5, h, w)
    anchors = torch.tensor(layer.anchors, dtype=torch.float32, device=out.device)
    col = torch.arange(w, dtype=torch.float32, device=out.device).view(1, 1, w)
    row = torch.arange(h, dtype=torch.float32, device=out.device).view(1, h, 1)
    tx, ty = v[:, 0], v[:, 1]
    if isinstance(layer, Yolo):
        s = layer.scale_x_y
        if s != 1.0:
            tx, ty = tx * s - (s - 1) / 2, ty * s - (s - 1) / 2
        cx, cy = (col + tx) / w, (row + ty) / h
        bw = torch.exp(v[:, 2]) * anchors[:, 0].view(n, 1, 1) / net_w
        bh = torch.exp(v[:, 3]) * anchors[:, 1].view(n, 1, 1) / net_h
    else:  # region: anchors in grid cells
        cx, cy = (col + tx) / w, (row + ty) / h
        bw = torch.exp(v[:, 2]) * anchors[:, 0].view(n, 1, 1) / w
        bh = torch.exp(v[:, 3]) * anchors[:, 1].view(n, 1, 1) / h
    return (cx.reshape(-1), cy.reshape(-1), bw.reshape(-1), bh.reshape(-1),
            v[:, 4].reshape(-1), v[:, 5:].permute(0, 2, 3, 1).reshape(-1, layer.classes))


class DarknetDetector(Detector):
    """A Darknet cfg with letterbox preprocessing and YOLO decoding (or top-k for classifiers)."""

    # at most this many (box, class) candidates enter NMS; real weights stay far below it
    max_candidates = 5000

    def __init__(self, model, cfg_path, class_names, build_args, device='cpu'):
        kind = 'detector' if model.heads else 'classifier'
        super().__init__(name=Path(cfg_path).stem, spec=build_args['spec'], model=model,
                         class_names=class_names, input_size=model.input_size,
                         build_args=build_args, device=device)
        self.kind = kind
        self.cfg_path = str(cfg_path)
        # layer metadata (anchors, classes) for decoding; holds no weights the decoder reads
        self._layers = list(model.layers)
        self._heads = list(model.heads)

    def preprocess(self, images):
        """Letterbox every image to the network size and stack them into one batch."""
        images = as_image_list(images)
        net_h, net_w = self.input_size
        boxed = [letterbox(img, net_h, net_w, self.device) for img in images]
        x = boxed[0].unsqueeze(0) if len(boxed) == 1 else torch.stack(boxed)   # no copy of one
        meta = {'sizes': [tuple(img.shape[:2]) for img in images], 'net': (net_h, net_w)}
        return x.to(self.dtype), meta

    def postprocess(self, outputs, meta, score_threshold=0.25, nms_iou=0.45,
                    max_detections=100):
        """Decode heads, threshold like Darknet (obj > t, obj*p > t), per-class NMS."""
        if self.kind == 'classifier':
            return self._topk(outputs[0], max(1, min(5, max_detections)))
        net_h, net_w = meta['net']
        heads = [self.model_layers[i] for i in self.model_heads]
        results = []
        for b, (img_h, img_w) in enumerate(meta['sizes']):
            boxes, scores, ids = [], [], []
            for layer, out in zip(heads, outputs):
                cx, cy, bw, bh, obj, cls = decode_head(layer, out[b], net_h, net_w)
                keep = obj > score_threshold
                if not keep.any():
                    continue
                probs = obj[keep, None] * cls[keep]
                cand, cid = (probs > score_threshold).nonzero(as_tuple=True)
                if cand.numel() == 0:
                    continue
                xyxy = correct_boxes(cx[keep], cy[keep], bw[keep], bh[keep], img_h, img_w,
                                     net_h, net_w)
                boxes.append(xyxy[cand])
                scores.append(probs[cand, cid])
                ids.append(cid)
            if not boxes:
                results.append(Detections.empty(self.device))
                continue
            boxes, scores, ids = torch.cat(boxes), torch.cat(scores), torch.cat(ids)
            if scores.numel() > self.max_candidates:
                top = scores.topk(self.max_candidates).indices
                boxes, scores, ids = boxes[top], scores[top], ids[top]
            keep = batched_nms(boxes, scores, ids, nms_iou)[:max_detections]
            ids = ids[keep].long()
            results.append(Detections(boxes[keep].float(), scores[keep].float(), ids,
                                      [self._name(i) for i in ids.tolist()]))
        return results

    @property
    def model_layers(self):
        """Return the cfg layers (kept also when the executor wraps the model)."""
        return self._layers

    @property
    def model_heads(self):
        """Return the indices of the yolo/region layers."""
        return self._heads

    def _topk(self, probs, k):
        results = []
        probs = probs.float()
        for row in probs:
            k = min(k, row.numel())
            vals, idx = row.topk(k)
            topk = [(int(i), self._name(int(i)), float(v)) for v, i in zip(vals, idx)]
            det = Detections(torch.zeros((0, 4)), vals.cpu(), idx.cpu(),
                             [t[1] for t in topk], has_boxes=False, topk=topk)
            results.append(det)
        return results

    def _name(self, i):
        return self.class_names[i] if i < len(self.class_names) else f'class_{i}'


def class_names_for(model, names=None):
    """Return the class names of a model: from `names`, else by its class count."""
    if names:
        return assets.read_names(names)
    if model.heads:
        n = model.layers[model.heads[-1]].classes
    else:
        n = model.shapes[-1][0] * model.shapes[-1][1] * model.shapes[-1][2]
    try:
        if n == 80:
            return assets.coco_names()
        if n == 1000:
            return assets.imagenet_names()
        if n == 20:
            return assets.read_names(assets.darknet_data('voc.names'))
    except FileNotFoundError:
        pass
    return [f'class_{i}' for i in range(n)]
