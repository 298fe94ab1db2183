"""YOLOv8's detect head decoding in numpy, for models exported without it (the bundle's NCNN detector).

    from dkit.edge.infer.yolo_head import decode_head

    raw = decode_head([p3, p4, p5], strides=(8, 16, 32), reg_max=16)   # (64 + C, h_i, w_i) each -> (4 + C, A)

The NCNN detector is exported up to the head's raw convolutions (box distributions and class logits per level),
so the graph has no anchor grid baked in and takes any stride-aligned input size (the minimal letterbox). This
is the rest of Ultralytics' `Detect` inference: the distribution focal loss expectation (softmax over `reg_max`
bins per side), distances to boxes around the anchor points (cell centres, `make_anchors` with offset 0.5, levels
in order, each row-major), xywh times the level's stride, and sigmoid class scores: the same (4 + C, A) layout as
the ONNX model's output, which dkit.edge.infer.postprocess.decode_yolo reads. tests/edge/test_yolo_head.py checks it
against Ultralytics' own make_anchors / DFL / dist2bbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def decode_head(maps: Sequence[np.ndarray], strides: Sequence[float], reg_max: int = 16) -> np.ndarray:
    """[(4 * reg_max + C, h, w) per level] -> (4 + C, A) float32: xywh in input pixels, then class scores."""
    bins = np.arange(reg_max, dtype=np.float32)[None, :, None]  # (1, R, 1)
    levels = []
    for m, stride in zip(maps, strides, strict=True):
        c, h, w = m.shape
        box = m[: 4 * reg_max].reshape(4, reg_max, h * w)  # (4 sides: l t r b, R bins, hw)
        e = np.exp(box - box.max(axis=1, keepdims=True))
        dist = (e * bins).sum(axis=1) / e.sum(axis=1)  # (4, hw): the expected distance per side
        ax = np.tile(np.arange(w, dtype=np.float32) + 0.5, h)  # (hw,) row-major anchor points
        ay = np.repeat(np.arange(h, dtype=np.float32) + 0.5, w)
        x1, y1, x2, y2 = ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]
        xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * np.float32(stride)  # (4, hw)
        scores = 1.0 / (1.0 + np.exp(-m[4 * reg_max:].reshape(c - 4 * reg_max, h * w)))  # (C, hw)
        levels.append(np.concatenate([xywh, scores]).astype(np.float32))
    return np.concatenate(levels, axis=1)  # (4 + C, A)
