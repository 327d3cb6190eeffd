# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
Non-maximum suppression without torchvision: the same kept boxes, in the same order.

Importing torchvision.ops adds about 85 MiB to what the kernel charges a node serving a Darknet
pack (memory cgroup usage, 317 -> 402 MiB, on a 2-core x86 machine), for one function. So
Darknet packs use this instead. It follows torchvision's CPU code step by step: `batched_nms`
offsets each class's boxes by its id times (largest coordinate + 1) for up to 1000 boxes and
runs NMS class by class above that, as torchvision switches; the boxes are visited in the order
its kernel's sort gives (score, ties by index) and, class by class, merged by the same torch
sort; each IoU is computed in the boxes' dtype in the order of its C++ (NaN and infinite corners
included) and compared with the threshold as C++ compares a float with a double. The work runs
on the CPU (the candidates are a few thousand at most) and the indices come back on the boxes'
device; on CUDA torchvision's own kernel may break ties between equal scores differently.
"""

import numpy as np
import torch

# torchvision's batched_nms runs NMS class by class above this many box coordinates (CPU)
CLASS_BY_CLASS_ABOVE = 4000
# boxes whose IoUs with the rest are computed in one step (at 5000 boxes: 2.5 MB per array)
BLOCK = 128


def nms(boxes, scores, iou_threshold):
    """
    Return the int64 indices of the boxes kept by greedy NMS, in decreasing order of score.

    `boxes` [N, 4] are xyxy, `scores` [N]; a box is dropped when its IoU with a kept box of a
    higher score is greater than `iou_threshold` (as torchvision.ops.nms).
    """
    device = boxes.device
    boxes, scores = _cpu_float(boxes), _cpu_float(scores)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    order, corners, limit = _sorted(boxes, scores, float(iou_threshold))
    return order[torch.as_tensor(_greedy(corners, limit))].to(device)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """
    NMS within each class of `idxs` (as torchvision.ops.batched_nms): kept indices, int64.

    The indices are in decreasing order of score, ties ordered as torchvision orders them.
    """
    device = boxes.device
    boxes, scores, idxs = _cpu_float(boxes), _cpu_float(scores), idxs.cpu()
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    if boxes.numel() <= CLASS_BY_CLASS_ABOVE:
        max_coordinate = boxes.max()
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold).to(device)
    # class by class: each class's boxes in the order of one stable sort (score, then index),
    # the order torchvision's kernel gives them in a call for that class alone
    order, corners, limit = _sorted(boxes, scores, float(iou_threshold))
    classes = idxs[order].numpy()
    by_class = np.argsort(classes, kind='stable')
    ends = np.flatnonzero(np.diff(classes[by_class])) + 1
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for members in np.split(by_class, ends):
        kept = members[_greedy(corners[members], limit)]
        keep_mask[order[torch.as_tensor(kept)]] = True
    kept = torch.where(keep_mask)[0]
    return kept[scores[kept].sort(descending=True)[1]].to(device)


def _cpu_float(t):
    """Return `t` on the CPU in float32 or float64 (torchvision's CPU kernel takes only these)."""
    t = t.detach().cpu()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _sorted(boxes, scores, iou_threshold):
    """Return (order, the corners in that order, the threshold to compare with) for _greedy."""
    order = torch.sort(scores, stable=True, dim=0, descending=True)[1]
    corners = boxes[order].numpy()
    return order, corners, _limit(corners.dtype, iou_threshold)


def _greedy(corners, limit):
    """
    Greedy NMS of boxes already in score order: the positions kept, as nms_kernel.cpp keeps.

    Its loop visits the boxes in order and drops every later box whose IoU with a kept one
    exceeds the threshold. Here the IoUs of a block of rows against the boxes not yet dropped
    are computed at once, then the block's rows are walked in order: the same decisions with
    far fewer Python steps.
    """
    n = corners.shape[0]
    x1, y1, x2, y2 = (np.ascontiguousarray(corners[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for start in range(0, n, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n))
        rows = rows[~suppressed[rows]]
        if not rows.size:
            continue
        cols = np.flatnonzero(~suppressed[start:]) + start
        over = _overlaps((x1, y1, x2, y2, areas), rows, cols, limit)
        for k, r in enumerate(rows.tolist()):
            if suppressed[r]:
                continue
            keep.append(r)
            suppressed[cols[over[k]]] = True     # also r itself and earlier rows: walked past
    return np.asarray(keep, dtype=np.int64)


def _limit(dtype, iou_threshold):
    """
    Return the threshold to compare IoUs of `dtype` with, giving C++'s `float > double`.

    For float32 that is the largest float32 not above the threshold: x > t exactly when
    x > it, and the comparison then stays in float32.
    """
    if dtype == np.float64:
        return np.float64(iou_threshold)
    limit = np.float32(iou_threshold)
    if float(limit) > iou_threshold:
        limit = np.nextafter(limit, np.float32(-np.inf))
    return limit


def _overlaps(columns, rows, cols, limit):
    """
    Return [rows, cols] bools: IoU > limit, each IoU computed as torchvision computes it.

    numpy's maximum and minimum propagate NaN where std::max and std::min may not, and
    `zero < w` clamps a NaN width to 0 as std::max(0, w) does. Where they differ the IoU is NaN
    anyway: a NaN, or a width from two infinities of one sign, needs a box with a NaN corner
    or with both x (or both y) corners infinite, whose area, and so the union, is NaN.
    """
    x1, y1, x2, y2, areas = columns
    r = rows[:, None]
    zero = areas.dtype.type(0)
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        w = np.minimum(x2[r], x2[cols]) - np.maximum(x1[r], x1[cols])
        h = np.minimum(y2[r], y2[cols]) - np.maximum(y1[r], y1[cols])
        inter = np.where(zero < w, w, zero)
        inter *= np.where(zero < h, h, zero)
        union = areas[r] + areas[cols]
        union -= inter
        inter /= union                      # 0 / 0 is NaN there too: never above the limit
    return inter > limit
