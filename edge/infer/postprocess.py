"""Post-processing on the device: detector decode + NMS, classifier top-k, embedding scores (numpy only).

    from dkit.edge.infer.postprocess import decode_yolo

    x, box = preprocess(rgb, manifest.preprocess)            # edge/infer/preprocess.py
    raw = session.run(None, {input_name: x})[0]                  # (B, 4 + C, A) YOLOv8 detect head
    dets = decode_yolo(raw, conf_threshold=0.25, iou_threshold=0.7, max_det=300)[0]
    dets = dets.scaled(box)                                      # boxes in original image pixels
    dets.xyxy, dets.confidence, dets.class_id                    # (N, 4), (N,), (N,), best first

    probs = softmax(logits)                                      # or softmax(out, already_probabilities=True)
    indices, values = topk(probs, 5)                             # best first, ties -> lower class index
    scores = cosine_scores(image_embeddings, prompt_embeddings)  # (N, P) in [-1, 1]

`decode_yolo` reproduces `ultralytics.utils.nms.non_max_suppression(raw, conf, iou, max_det=...)` (single
label per box, class-wise NMS through the `max_wh` class offset, `torchvision.ops.nms` semantics) box for box;
tests/edge/test_postprocess.py compares the two on real YOLOv8n outputs. Thresholds come from the manifest,
never from constants here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dkit.edge.infer.preprocess import Letterbox

MAX_NMS = 30000  # Ultralytics keeps at most this many candidates (highest scores) per image before NMS
MAX_WH = 7680  # Ultralytics' per-class coordinate offset: boxes of different classes never overlap
_BLOCK = 128  # NMS resolves sorted candidates this many at a time (an IoU block of _BLOCK x _BLOCK)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best first: boxes in input pixels (or image pixels after `scaled`)."""

    xyxy: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 pixels
    confidence: np.ndarray  # (N,) float32
    class_id: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        confidence = np.asarray(self.confidence, dtype=np.float32)
        class_id = np.asarray(self.class_id)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy: expected shape (N, 4), got {xyxy.shape}")
        n = xyxy.shape[0]
        if confidence.shape != (n,):
            raise ValueError(f"Detections.confidence: expected shape ({n},), got {confidence.shape}")
        if class_id.shape != (n,):
            raise ValueError(f"Detections.class_id: expected shape ({n},), got {class_id.shape}")
        if n and not np.issubdtype(class_id.dtype, np.integer):
            if not np.array_equal(class_id, np.round(class_id)):
                raise ValueError(f"Detections.class_id: expected integers, got {class_id.dtype} values {class_id[:5]}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "class_id", class_id.astype(np.int64))

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def scaled(self, letterbox: Letterbox) -> Detections:
        """The same detections with boxes mapped from input pixels back to the original image (clipped to it)."""
        return Detections(letterbox.to_image(self.xyxy), self.confidence, self.class_id)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(5, K), (5, M) rows x1, y1, x2, y2, area (float32) -> (K, M) IoU float32, the same float32 operations as
    torchvision's CPU kernel (so the same bits)."""
    w = np.minimum(a[2][:, None], b[2][None, :]) - np.maximum(a[0][:, None], b[0][None, :])  # (K, M)
    h = np.minimum(a[3][:, None], b[3][None, :]) - np.maximum(a[1][:, None], b[1][None, :])  # (K, M)
    inter = np.maximum(w, np.float32(0), out=w) * np.maximum(h, np.float32(0), out=h)  # (K, M)
    with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: 0 / 0 = nan, never suppresses
        return inter / ((a[4][:, None] + b[4][None, :]) - inter)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) xyxy -> (N, M) IoU float32 (the NMS's own kernel)."""
    def rows(x):
        x = np.asarray(x, np.float32).reshape(-1, 4)
        return np.vstack([x.T, (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])])  # (5, K)

    return np.nan_to_num(_pairwise_iou(rows(a), rows(b)))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS with `torchvision.ops.nms` semantics: indices of kept boxes, by score descending.

    boxes (N, 4) xyxy, scores (N,). A box is suppressed by a kept, higher-ranked box when their IoU is
    > iou_threshold; equal scores rank by lower index (a stable sort, as torchvision's CPU kernel). `max_keep`
    stops once that many are kept (the same first `max_keep` as the full result). Sorted candidates are
    resolved in blocks: a block is first checked against every box kept so far, then resolved within itself
    by fixed-point iteration on its IoU matrix (Cluster-NMS, identical to greedy NMS), all vectorised.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms boxes: expected shape (N, 4), got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms scores: expected shape ({boxes.shape[0]},), got {scores.shape}")
    if max_keep is not None and max_keep < 1:
        raise ValueError(f"nms max_keep: expected >= 1 or None, got {max_keep}")
    n = boxes.shape[0]
    limit = n if max_keep is None else min(max_keep, n)
    threshold = np.float64(iou_threshold)  # compared in double, as torchvision does
    order = np.argsort(-scores, kind="stable")  # (N,) best first, ties by index
    x1, y1, x2, y2 = boxes[order].T  # (N,) each, sorted
    cols = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])  # (5, N) coordinates and area
    kept: list[np.ndarray] = []  # positions in `order`, per block
    kept_cols = cols[:, :0]  # (5, K) boxes kept so far
    n_kept = 0
    for start in range(0, n, _BLOCK):
        block = cols[:, start:start + _BLOCK]  # (5, M)
        alive = np.ones(block.shape[1], dtype=bool)  # (M,) not suppressed by a box kept in an earlier block
        if n_kept:
            alive &= ~(_pairwise_iou(kept_cols, block) > threshold).any(axis=0)
        over = np.triu(_pairwise_iou(block, block) > threshold, k=1) & alive[:, None]  # (M, M) alive i < j
        over_f = over.astype(np.float32)
        keep = alive  # (M,) fixed point: keep[j] = alive[j] and no kept i < j overlaps j
        while True:
            nxt = alive & ((keep.astype(np.float32) @ over_f) == 0)
            if np.array_equal(nxt, keep):
                break
            keep = nxt
        idx = np.flatnonzero(keep)
        if not idx.size:
            continue
        kept.append(idx + start)
        kept_cols = np.concatenate([kept_cols, block[:, idx]], axis=1)
        n_kept += idx.size
        if n_kept >= limit:
            break
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return order[np.concatenate(kept)[:limit]].astype(np.int64)


def decode_yolo(raw: np.ndarray, conf_threshold: float, iou_threshold: float, max_det: int = 300,
                classes: Sequence[int] | None = None, *, max_nms: int = MAX_NMS,
                max_wh: int = MAX_WH) -> list[Detections]:
    """YOLOv8 detect-head output (B, 4 + C, A) -> one `Detections` per image, in input pixels, best first.

    raw: boxes as xywh (centre, size) in input pixels, then C class probabilities (no objectness), per anchor.
    A box is a candidate when its best class score is > conf_threshold (one label per box); `classes` keeps
    only those class ids; at most `max_nms` candidates (highest scores) enter class-wise NMS (IoU >
    iou_threshold suppresses within a class); the best `max_det` survivors are returned. Equal to
    `ultralytics.utils.nms.non_max_suppression(torch.from_numpy(raw), conf_threshold, iou_threshold,
    classes, max_det=max_det)`.
    """
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[1] < 5:
        raise ValueError(f"decode_yolo raw: expected shape (B, 4 + C, A) with C >= 1, got {raw.shape}")
    if not np.issubdtype(raw.dtype, np.floating):
        raise ValueError(f"decode_yolo raw: expected a float array, got {raw.dtype}")
    if not 0.0 <= conf_threshold <= 1.0:
        raise ValueError(f"decode_yolo conf_threshold: expected a value in [0, 1], got {conf_threshold}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"decode_yolo iou_threshold: expected a value in [0, 1], got {iou_threshold}")
    if max_det < 1 or max_nms < 1:
        raise ValueError(f"decode_yolo max_det and max_nms: expected >= 1, got {max_det} and {max_nms}")
    wanted = None if classes is None else np.asarray(list(classes), dtype=np.int64)  # (K,)
    pred = raw.astype(np.float32, copy=False)  # (B, 4 + C, A)
    conf_thr = np.float32(conf_threshold)  # compared in float32, as torch does
    best = pred[:, 4:].max(axis=1)  # (B, A) best class score per anchor
    out = []
    for image, best_score in zip(pred, best, strict=True):
        idx = np.flatnonzero(best_score > conf_thr)  # (n,) candidate anchors
        cls = image[4:, idx].argmax(axis=0)  # (n,) first best class, as torch.max
        if wanted is not None:
            chosen = np.isin(cls, wanted)  # (n,)
            idx, cls = idx[chosen], cls[chosen]
        if not idx.size:
            out.append(Detections.empty())
            continue
        score = best_score[idx]  # (n,)
        if idx.size > max_nms:
            top = np.argsort(-score, kind="stable")[:max_nms]
            idx, cls, score = idx[top], cls[top], score[top]
        xywh = image[:4, idx].T  # (n, 4) centre x, centre y, w, h
        half = xywh[:, 2:] / np.float32(2)
        xyxy = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)  # (n, 4) input pixels
        offset = cls.astype(np.float32) * np.float32(max_wh)  # (n,) classes never overlap each other
        keep = nms(xyxy + offset[:, None], score, iou_threshold, max_keep=max_det)
        out.append(Detections(xyxy[keep], score[keep], cls[keep]))
    return out


def softmax(logits: np.ndarray, *, already_probabilities: bool = False) -> np.ndarray:
    """(..., C) scores -> (..., C) probabilities over the last axis (max-subtracted, so large logits are safe).

    With `already_probabilities=True` (a model that ends in softmax, e.g. Ultralytics' classify export) the
    input is returned as is, after checking that each row is in [0, 1] and sums to 1 (within 1e-2).
    """
    x = np.asarray(logits)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"softmax: expected shape (..., C) with C >= 1, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if already_probabilities:
        sums = x.sum(axis=-1)  # (...,)
        if np.any(x < 0) or np.any(x > 1) or not np.allclose(sums, 1.0, atol=1e-2):
            raise ValueError(f"softmax: expected probabilities (rows in [0, 1] summing to 1), got row sums "
                             f"{np.ravel(sums)[:5]}; are these logits? (already_probabilities=False)")
        return x
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # (..., C) in (0, 1]
    return e / e.sum(axis=-1, keepdims=True)


def topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., C) -> indices (..., k) int64 and values (..., k), best first; ties go to the lower index.

    k larger than C returns all C.
    """
    p = np.asarray(probs)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise ValueError(f"topk probs: expected shape (..., C) with C >= 1, got {p.shape}")
    if k < 1:
        raise ValueError(f"topk k: expected >= 1, got {k}")
    p = p.astype(np.float64, copy=False) if not np.issubdtype(p.dtype, np.floating) else p
    indices = np.argsort(-p, axis=-1, kind="stable")[..., :k].astype(np.int64)  # (..., k)
    return indices, np.take_along_axis(p, indices, axis=-1)


def cosine_scores(embeddings: np.ndarray, prompts: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(N, D) image embeddings x (P, D) prompt embeddings -> (N, P) float32 cosine similarity.

    Both sides are L2-normalised here; a zero vector scores 0 against everything (never nan).
    """
    e = np.asarray(embeddings, dtype=np.float32)
    p = np.asarray(prompts, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"cosine_scores embeddings: expected shape (N, D), got {e.shape}")
    if p.ndim != 2 or p.shape[1] != e.shape[1]:
        raise ValueError(f"cosine_scores prompts: expected shape (P, {e.shape[1]}), got {p.shape}")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), eps)  # (N, D) unit or zero rows
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), eps)  # (P, D)
    return np.clip(e @ p.T, -1.0, 1.0)  # (N, P)
