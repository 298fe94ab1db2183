"""How good are labels? Detection labels scored against YOLO-format ground truth with Ultralytics' metrics.

    q = detection_quality(records, Path("coco128/labels/train2017"), names)
    q["map50"], q["map50_95"], q["precision"], q["recall"], q["f1"]

mAP uses each label's confidence to rank (Ultralytics' matching and `ap_per_class`, as in `yolo val`);
precision, recall and F1 are of the labels as written, at IoU 0.5: what a student would train on.
Ground truth for image `a/b/stem.jpg` is `GT_DIR/stem.txt` (`class cx cy w h`, normalised, class ids
in the kit's ontology order); an image without a file has no objects.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from dkit.errors import UsageError, require


def read_yolo_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(M,) class ids and (M, 4) xyxy pixel boxes from a YOLO label file; empty when it does not exist."""
    text = path.read_text() if path.is_file() else ""
    if not text.strip():  # no file, or an empty one: an image without objects
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    try:
        rows = np.loadtxt(text.splitlines(), ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise UsageError(f"cannot read ground-truth labels {path}: {e}") from e
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    if rows.shape[1] < 5:
        raise UsageError(f"{path}: expected 'class cx cy w h' per line, got {rows.shape[1]} columns")
    cls, (cx, cy, w, h) = rows[:, 0].astype(np.int64), (rows[:, 1:5] * [width, height, width, height]).T
    return cls, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def detection_quality(records: list[dict], gt_dir: Path, names: list[str]) -> dict:
    """mAP50, mAP50-95 and P/R/F1 at IoU 0.5 of the records' boxes against the ground truth in `gt_dir`."""
    torch = require("torch", what="label quality", extra="distill")
    metrics_mod = require("ultralytics.utils.metrics", what="label quality", extra="distill")
    from ultralytics.engine.validator import BaseValidator

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise UsageError(f"--ground-truth: no such folder: {gt_dir}")
    metrics = metrics_mod.DetMetrics(names=dict(enumerate(names)))
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))  # the thresholds `yolo val` uses
    images = gt_boxes = label_boxes = tp50 = 0
    for rec in records:
        if rec.get("skipped"):
            continue
        images += 1
        gcls, gboxes = read_yolo_labels(gt_dir / f"{Path(rec['image']).stem}.txt", rec["width"], rec["height"])
        labels = sorted(rec["labels"], key=lambda lab: -lab["confidence"])
        pcls = np.array([lab["class_id"] for lab in labels], np.int64)
        conf = np.array([lab["confidence"] for lab in labels], np.float32)
        pboxes = np.array([lab["box"] for lab in labels], np.float32).reshape(-1, 4)
        if len(pcls) and len(gcls):
            iou = metrics_mod.box_iou(torch.from_numpy(gboxes), torch.from_numpy(pboxes))  # (M, N)
            tp = BaseValidator.match_predictions(matcher, torch.from_numpy(pcls), torch.from_numpy(gcls), iou)
            tp = tp.numpy()
        else:
            tp = np.zeros((len(pcls), 10), bool)
        metrics.update_stats({"tp": tp, "conf": conf, "pred_cls": pcls, "target_cls": gcls,
                              "target_img": np.unique(gcls), "im_name": rec["image"]})
        gt_boxes += len(gcls)
        label_boxes += len(pcls)
        tp50 += int(tp[:, 0].sum())
    if images == 0:
        raise UsageError("no labelled images to score against the ground truth")
    metrics.process()
    precision = tp50 / label_boxes if label_boxes else 0.0
    recall = tp50 / gt_boxes if gt_boxes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "images": images, "gt_boxes": gt_boxes, "label_boxes": label_boxes,
        "map50": float(metrics.box.map50), "map50_95": float(metrics.box.map),
        "precision": precision, "recall": recall, "f1": f1,
    }
