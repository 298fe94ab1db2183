"""Box proposers for a CLIP teacher on detection kits: where to look; CLIP then says what is there.

- `yolo`: any Ultralytics detector used class-agnostically (its class is ignored, its confidence
  is the objectness), for scenes with COCO-like objects.
- `sliding`: multi-scale square windows over the image; needs no weights, finds anything CLIP can
  name, at the cost of many more crops.

    from dkit.distill.proposers import build_proposer

    proposer = build_proposer(kit.teacher.proposer, store, "cpu")
    for boxes, objectness in proposer.propose(images): ...   # (P, 4) xyxy pixels, (P,)
"""

from __future__ import annotations

import numpy as np

from dkit.core.errors import require
from dkit.distill.teachers.base import file_digest


def build_proposer(cfg, store, device: str):
    return YoloProposer(cfg, store, device) if cfg.kind == "yolo" else SlidingProposer(cfg)


class YoloProposer:
    def __init__(self, cfg, store, device: str):
        ultralytics = require("ultralytics", what="the yolo proposer", extra="distill")
        self.cfg, self.device = cfg, device
        weights = store.yolo_weights(cfg.model)
        self.model = ultralytics.YOLO(weights, task="detect")
        self.cache_key = f"yolo-proposer|{file_digest(weights)}|conf={cfg.conf}|max={cfg.max_proposals}|pad={cfg.pad}"

    def propose(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
        results = self.model.predict(bgr, conf=self.cfg.conf, agnostic_nms=True, max_det=self.cfg.max_proposals,
                                     device=self.device, verbose=False)
        return [(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy()) for r in results]


class SlidingProposer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.cache_key = (f"sliding|scales={list(cfg.scales)}|overlap={cfg.overlap}|max={cfg.max_proposals}"
                          f"|pad={cfg.pad}")

    def propose(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for image in images:
            boxes = windows(image.shape[0], image.shape[1], self.cfg.scales, self.cfg.overlap, self.cfg.max_proposals)
            out.append((boxes, np.ones(len(boxes), np.float32)))
        return out


def windows(height: int, width: int, scales, overlap: float, limit: int) -> np.ndarray:
    """(P, 4) xyxy square windows: for each scale (a share of the shorter side), a grid with `overlap`
    between neighbours that reaches both edges. Largest scale first; more than `limit` are thinned evenly."""
    short = min(height, width)
    boxes = []
    for scale in sorted(scales, reverse=True):
        side = max(1.0, scale * short)
        stride = max(1.0, side * (1.0 - overlap))
        xs = _starts(width, side, stride)
        ys = _starts(height, side, stride)
        gx, gy = np.meshgrid(xs, ys)  # (len(ys), len(xs))
        x1, y1 = gx.ravel(), gy.ravel()
        boxes.append(np.stack([x1, y1, x1 + side, y1 + side], axis=1))
    out = np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    if len(out) > limit:
        out = out[np.linspace(0, len(out) - 1, limit).round().astype(int)]
    return out


def _starts(length: int, side: float, stride: float) -> np.ndarray:
    if side >= length:
        return np.zeros(1)
    starts = np.arange(0.0, length - side, stride)
    return np.append(starts, length - side) if length - side - starts[-1] > 1e-6 else starts


def crop_boxes(image: np.ndarray, boxes: np.ndarray, pad: float) -> list[np.ndarray]:
    """The (h, w, 3) crops of `boxes` with `pad` x their size of context on each side, clipped to the image."""
    height, width = image.shape[:2]
    crops = []
    for x1, y1, x2, y2 in boxes:
        dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
        a = int(np.clip(np.floor(x1 - dx), 0, width - 1))
        b = int(np.clip(np.floor(y1 - dy), 0, height - 1))
        c = int(np.clip(np.ceil(x2 + dx), a + 1, width))
        d = int(np.clip(np.ceil(y2 + dy), b + 1, height))
        crops.append(np.ascontiguousarray(image[b:d, a:c]))
    return crops
