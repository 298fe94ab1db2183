"""Detection agreement with Ultralytics' own matching and mAP (as `yolo val`), for any two sets of boxes.

    from dkit.distill.metrics import detection_map

    score = detection_map(pairs, names)   # pairs: (pred boxes, conf, cls, reference boxes, cls) per image

Used to score labels against ground truth (dkit.distill.quality), a student against its teacher, and an
fp16/int8 model against its fp32 original (dkit.export.variants): one implementation of the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import numpy as np

from dkit.core.errors import require

Pair = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def detection_map(pairs: Iterable[Pair], names: list[str]) -> dict:
    """{images, ref_boxes, pred_boxes, tp50, map50, map50_95} over per-image
    (pred (N, 4) xyxy, pred conf (N,), pred class (N,), reference (M, 4) xyxy, reference class (M,))."""
    torch = require("torch", what="detection metrics", extra="distill")
    metrics_mod = require("ultralytics.utils.metrics", what="detection metrics", extra="distill")
    from ultralytics.engine.validator import BaseValidator

    metrics = metrics_mod.DetMetrics(names=dict(enumerate(names)))
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))  # the thresholds `yolo val` uses
    images = refs = preds = tp50 = 0
    for pboxes, conf, pcls, gboxes, gcls in pairs:
        order = np.argsort(-np.asarray(conf), kind="stable")  # matching wants predictions best first
        pboxes = np.asarray(pboxes, np.float32).reshape(-1, 4)[order]
        conf, pcls = np.asarray(conf, np.float32)[order], np.asarray(pcls, np.int64)[order]
        gboxes, gcls = np.asarray(gboxes, np.float32).reshape(-1, 4), np.asarray(gcls, np.int64)
        if len(pcls) and len(gcls):
            iou = metrics_mod.box_iou(torch.from_numpy(gboxes), torch.from_numpy(pboxes))  # (M, N)
            tp = BaseValidator.match_predictions(matcher, torch.from_numpy(pcls), torch.from_numpy(gcls), iou).numpy()
        else:
            tp = np.zeros((len(pcls), 10), bool)
        metrics.update_stats({"tp": tp, "conf": conf, "pred_cls": pcls, "target_cls": gcls,
                              "target_img": np.unique(gcls), "im_name": str(images)})
        images += 1
        refs += len(gcls)
        preds += len(pcls)
        tp50 += int(tp[:, 0].sum())
    metrics.process()
    return {"images": images, "ref_boxes": refs, "pred_boxes": preds, "tp50": tp50,
            "map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}
