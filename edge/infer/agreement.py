"""How far one model's results agree with another's on the same frames, by task (the edge's one measure).

    from dkit.edge.infer.agreement import agreement

    share = agreement(reference_results, candidate_results)     # lists of dkit.edge.infer.runtime.Result, frame by
    # frame

- detect: the share of boxes matched one to one (same class, IoU >= MATCH_IOU, the mAP50 threshold the export
  guard uses; the candidate's boxes, best first, each claim one unclaimed reference box, as mAP50's matching,
  dkit.edge.infer.map50.match), over the larger of the two counts per frame; 1.0 when neither has a box. One to one:
  a candidate that merges two reference boxes into one (or drops one under another) loses that box;
- classify: top-1 agreement;
- embed: the mean cosine of the embeddings.

Used by `dkit bench runtime --matrix` (against the fp32 onnxruntime rows) and by the on-device accuracy check
(dkit.edge.infer.device_check, against the results the export shipped).
"""

from __future__ import annotations

import numpy as np

from dkit.edge.infer.map50 import match

MATCH_IOU = 0.5


def agreement(ref: list, got: list) -> float:
    """How far `got` agrees with `ref`, frame by frame (see the module docstring); both hold Result objects."""
    if len(ref) != len(got):
        raise ValueError(f"agreement: {len(ref)} reference results against {len(got)}")
    if not ref:
        return 1.0
    if ref[0].task == "detect":
        return _boxes(ref, got)
    if ref[0].task == "classify":
        return float(np.mean([a.top[0][0] == b.top[0][0] for a, b in zip(ref, got, strict=True)]))
    cos = [float(a.embedding @ b.embedding / max(np.linalg.norm(a.embedding) * np.linalg.norm(b.embedding), 1e-12))
           for a, b in zip(ref, got, strict=True)]
    return float(np.mean(cos))


def _boxes(ref: list, got: list) -> float:
    matched = total = 0
    for a, b in zip(ref, got, strict=True):
        n = max(len(a.detections), len(b.detections))
        total += n
        if n:  # b's boxes (best first) each claim one unclaimed box of a
            matched += int(match(b.detections.xyxy, b.detections.class_id, a.detections.xyxy,
                                 a.detections.class_id, MATCH_IOU).sum())
    return 1.0 if total == 0 else matched / total
