"""mAP50 of one model's detections against another's, in numpy: the export's accuracy guard, on the device.

    from dkit.edge.infer.map50 import map50

    score = map50([(pred_xyxy, pred_conf, pred_cls, ref_xyxy, ref_cls), ...])    # one tuple per image

The export measures a reduced-precision model by Ultralytics' mAP50 against the fp32 model's detections
(dkit.distill.metrics.detection_map: its `match_predictions` and `ap_per_class`); a device has no torch or
Ultralytics, so this is the same computation at the one IoU threshold 0.5, written here and tested against
Ultralytics (tests/edge/test_map50.py):
- matching, per image: predictions in descending confidence each take the unclaimed reference box of the same
  class with the highest IoU, a true positive when that IoU is at least 0.5;
- AP per class present in the references: precision/recall over all images' predictions of that class sorted by
  confidence, the precision envelope, 101-point interpolation (COCO), trapezoid rule; the mean over those classes.
With no reference box at all the score is 1.0 when there is no prediction either, else 0.0 (Ultralytics: 0.0).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dkit.edge.infer.postprocess import box_iou

IOU = 0.5
_AP_X = np.linspace(0, 1, 101)  # 101-point interpolation (COCO)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 (Python 3.10 devices) has only trapz


def match(pboxes: np.ndarray, pcls: np.ndarray, gboxes: np.ndarray, gcls: np.ndarray, iou: float = IOU) -> np.ndarray:
    """(N,) bool: which predictions (best first) are true positives at IoU `iou` (0.5) against the (M,) references;
    one to one: a reference box is claimed by at most one prediction."""
    correct = np.zeros(len(pcls), bool)
    if not len(pcls) or not len(gcls):
        return correct
    overlap = box_iou(gboxes, pboxes) * (np.asarray(gcls)[:, None] == np.asarray(pcls)[None])  # (M, N), other classes 0
    claimed = np.zeros(len(gcls), bool)
    for j in np.flatnonzero((overlap >= iou).any(0)):
        available = np.where(claimed, 0.0, overlap[:, j])
        k = int(available.argmax())
        if available[k] >= iou:
            correct[j] = claimed[k] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # the precision envelope
    return float(_trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X))


def map50(pairs: Iterable[tuple]) -> float:
    """The mean AP at IoU 0.5 over the reference classes (see the module docstring)."""
    tps, confs, pclss, gclss = [], [], [], []
    for pboxes, conf, pcls, gboxes, gcls in pairs:
        conf = np.asarray(conf, np.float32)
        order = np.argsort(-conf, kind="stable")  # matching wants predictions best first
        pboxes = np.asarray(pboxes, np.float32).reshape(-1, 4)[order]
        pcls = np.asarray(pcls, np.int64)[order]
        gboxes, gcls = np.asarray(gboxes, np.float32).reshape(-1, 4), np.asarray(gcls, np.int64)
        tps.append(match(pboxes, pcls, gboxes, gcls))
        confs.append(conf[order])
        pclss.append(pcls)
        gclss.append(gcls)
    tp, conf, pcls, gcls = (np.concatenate(a) if a else np.zeros(0) for a in (tps, confs, pclss, gclss))
    if not len(gcls):
        return 1.0 if not len(pcls) else 0.0
    i = np.argsort(-conf)  # as Ultralytics' ap_per_class sorts
    tp, conf, pcls = tp[i].astype(np.float64), conf[i], pcls[i]
    classes, counts = np.unique(gcls, return_counts=True)
    ap = np.zeros(len(classes))
    for ci, (c, n_l) in enumerate(zip(classes, counts, strict=True)):
        mask = pcls == c
        if not mask.any():
            continue
        tpc, fpc = tp[mask].cumsum(), (1 - tp[mask]).cumsum()
        ap[ci] = average_precision(tpc / (n_l + 1e-16), tpc / (tpc + fpc))
    return float(ap.mean())
