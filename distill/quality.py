"""How good are labels? Detection labels scored against YOLO-format ground truth with Ultralytics' metrics.

    from dkit.distill.quality import detection_quality

    q = detection_quality(records, Path("coco128/labels/train2017"), names)
    q["map50"], q["map50_95"], q["precision"], q["recall"], q["f1"]

mAP uses each label's confidence to rank (Ultralytics' matching and `ap_per_class`, as in `yolo val`);
precision, recall and F1 are of the labels as written, at IoU 0.5: what a student would train on.
Ground truth for image `a/b/stem.jpg` is `GT_DIR/stem.txt` (`class cx cy w h`, normalised, class ids
in the kit's ontology order); an image without a file has no objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dkit.core.errors import UsageError
from dkit.core.records import LabelRecord


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


def detection_quality(records: list[LabelRecord], gt_dir: Path, names: list[str]) -> dict:
    """mAP50, mAP50-95 and P/R/F1 at IoU 0.5 of the records' boxes against the ground truth in `gt_dir`."""
    from dkit.distill.metrics import detection_map

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise UsageError(f"--ground-truth: no such folder: {gt_dir}")
    scored = [r for r in records if r.skipped is None]
    if not scored:
        raise UsageError("no labelled images to score against the ground truth")

    def pairs():
        for rec in scored:
            gcls, gboxes = read_yolo_labels(gt_dir / f"{Path(rec.image).stem}.txt", rec.width, rec.height)
            labels = rec.labels
            yield (np.array([lab["box"] for lab in labels], np.float32).reshape(-1, 4),
                   np.array([lab["confidence"] for lab in labels], np.float32),
                   np.array([lab["class_id"] for lab in labels], np.int64), gboxes, gcls)

    m = detection_map(pairs(), names)
    precision = m["tp50"] / m["pred_boxes"] if m["pred_boxes"] else 0.0
    recall = m["tp50"] / m["ref_boxes"] if m["ref_boxes"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"images": m["images"], "gt_boxes": m["ref_boxes"], "label_boxes": m["pred_boxes"],
            "map50": m["map50"], "map50_95": m["map50_95"], "precision": precision, "recall": recall, "f1": f1}
