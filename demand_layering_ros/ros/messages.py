# Copyright 2026 The demand_layering_ros Authors
# SPDX-License-Identifier: Apache-2.0
"""
The messages the node publishes, built from detection results: vision_msgs and the debug image.

A detector gives boxes in input pixels (x1, y1, x2, y2) with a class and a score each; a
classifier gives the top-k classes of the whole image, published as one detection covering it.
`class_id` carries the class index, or its name when `by_name` (class_id_mode: name).
"""

from demand_layering_ros.service import imaging
from sensor_msgs.msg import Image
from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)


def detections(header, rgb, det, names, by_name=False):
    """Return the Detection2DArray for one image's result (every detection with `header`)."""
    out = Detection2DArray()
    out.header = header
    h, w = rgb.shape[:2]
    if det.has_boxes:
        boxes = det.boxes.detach().float().cpu().tolist()
        scores = det.scores.detach().float().cpu().tolist()
        ids = det.class_ids.detach().cpu().tolist()
        items = [(b, [(c, sc)]) for b, c, sc in zip(boxes, ids, scores)]
    else:   # a classifier: one detection covering the image with the top-k classes
        items = [([0.0, 0.0, float(w), float(h)], [(c, sc) for c, _, sc in det.topk or []])]
    for box, hyps in items:
        d = Detection2D()
        d.header = header
        x1, y1, x2, y2 = box
        d.bbox.center.position.x = (x1 + x2) / 2.0
        d.bbox.center.position.y = (y1 + y2) / 2.0
        d.bbox.size_x = x2 - x1
        d.bbox.size_y = y2 - y1
        for cid, score in hyps:
            r = ObjectHypothesisWithPose()
            cid = int(cid)
            r.hypothesis.class_id = (names[cid] if by_name and 0 <= cid < len(names)
                                     else str(cid))
            r.hypothesis.score = float(score)
            d.results.append(r)
        out.detections.append(d)
    return out


def label_info(names, threshold, stamp):
    """Return the LabelInfo: the class map (index -> name) and the score threshold."""
    msg = LabelInfo()
    msg.header.stamp = stamp
    msg.class_map = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(names)]
    msg.threshold = float(threshold)
    return msg


def debug_image(header, rgb, det, names):
    """Return the image with the detections drawn on it (rgb8, same header)."""
    labels = [names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
              for c in (det.class_ids.tolist() if det.has_boxes else [])]
    boxes = det.boxes.tolist() if det.has_boxes else []
    scores = det.scores.tolist() if det.has_boxes else None
    drawn = imaging.draw_detections(rgb, boxes, labels, scores)
    fields = imaging.rgb_to_image_fields(drawn, 'rgb8')
    img = Image(height=fields['height'], width=fields['width'], encoding='rgb8',
                is_bigendian=0, step=fields['step'])
    img.data = fields['data']
    img.header = header
    return img
