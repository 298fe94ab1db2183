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


MAX_CROP_SIDE = 1024  # a crop larger than this is downscaled as it is cut (CLIP resizes to ~224-448 anyway)


def crop_boxes(image: np.ndarray, boxes: np.ndarray, pad: float, mode: str = "square",
               max_side: int = MAX_CROP_SIDE) -> list[np.ndarray]:
    """Square (s, s, 3) crops of `image` that each hold one of the (P, 4) xyxy `boxes` whole, with `pad` x its
    size of context on each side (`teacher.proposer.crop`).

    CLIP's preprocessing resizes the shorter side and centre-crops a square, so a tall box handed over as is
    loses its top and bottom; a square crop goes through that unchanged but for the resize.
    - `square`: a square of the image centred on the box, its side the box's longer side plus `pad` on each
      side, so a standing person comes with the scene to their left and right;
    - `letterbox`: the box plus `pad` x its width and height, filled out to a square on both sides.
    Whatever lies outside the image (and a letterbox's bars) is the image's mean colour. A crop whose side
    exceeds `max_side` is cut already shrunk to `max_side` (area interpolation), so a thin box across a
    50-megapixel image costs max_side^2 pixels, not its padded side squared.
    """
    if mode not in ("square", "letterbox"):
        raise ValueError(f"crop mode {mode!r}: expected 'square' or 'letterbox'")
    fill = image.reshape(-1, image.shape[-1]).mean(axis=0).round().astype(image.dtype) if len(boxes) else None
    crops = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        w, h = x2 - x1, y2 - y1
        if mode == "square":
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(w, h) * (1 + 2 * pad) / 2
            x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
        else:
            x1, y1, x2, y2 = x1 - w * pad, y1 - h * pad, x2 + w * pad, y2 + h * pad
        a, b = int(np.floor(x1)), int(np.floor(y1))
        c, d = max(int(np.ceil(x2)), a + 1), max(int(np.ceil(y2)), b + 1)
        side = max(c - a, d - b)  # square: the pixel rounding may leave one side a pixel short
        left, top = (side - (c - a)) // 2, (side - (d - b)) // 2
        if mode == "square":  # more of the image: the window is the whole square
            a, b, c, d, left, top = a - left, b - top, a - left + side, b - top + side, 0, 0
        crops.append(_canvas(image, (a, b, c, d), (left, top), side, fill, max_side))  # letterbox: bars of fill
    return crops


def _canvas(image: np.ndarray, window: tuple[int, int, int, int], at: tuple[int, int], side: int,
            fill: np.ndarray, max_side: int) -> np.ndarray:
    """A (side, side) canvas of `fill` (shrunk to max_side when larger) with image[b:d, a:c] placed at `at`; the
    parts of the window outside the image stay `fill`."""
    a, b, c, d = window
    scale = min(1.0, max_side / side)
    size = max(1, round(side * scale))
    out = np.empty((size, size, image.shape[2]), image.dtype)
    out[:] = fill
    height, width = image.shape[:2]
    ia, ib, ic, id_ = max(a, 0), max(b, 0), min(c, width), min(d, height)
    if ic <= ia or id_ <= ib:
        return out
    x0, y0 = round((at[0] + ia - a) * scale), round((at[1] + ib - b) * scale)
    x1, y1 = min(size, round((at[0] + ic - a) * scale)), min(size, round((at[1] + id_ - b) * scale))
    if x1 <= x0 or y1 <= y0:
        return out
    part = image[ib:id_, ia:ic]  # a view: nothing full-size is copied
    if scale < 1.0:
        import cv2

        part = cv2.resize(part, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    out[y0:y1, x0:x1] = part
    return out
