"""#24 review: the device's detection agreement (`dkit bench runtime --matrix`, dkit.edge.infer.agreement) matches
boxes one
to one, as the mAP50 it stands beside: a candidate that keeps one box where the reference has two is not 100% in
agreement.

Real outputs: yolov8n (ONNX, onnxruntime) on COCO-128 images, the reference decoded with NMS IoU 0.7 and the
candidate with NMS IoU 0.45: the candidate's boxes are a strict subset of the reference's, so the share of the
reference it reproduces is exactly len(candidate) / len(reference). Counting every reference box that overlaps
some candidate box (many to one) scored it 0.991 where the truth is 0.911 (64 images at 640 px; the 24 here at
320 px: 0.987 for 72 / 79 = 0.911).
"""

from __future__ import annotations

import numpy as np

from dkit.edge.infer.agreement import agreement
from dkit.edge.infer.postprocess import Detections, decode_yolo
from dkit.edge.infer.preprocess import preprocess
from dkit.edge.infer.runtime import Result
from tests.conftest import ASSETS

SPEC = {"resize": "letterbox", "size": [320, 320], "pad_value": 114, "interpolation": "linear", "channels": "RGB",
        "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}


def _result(i: int, d: Detections) -> Result:
    return Result(i, 0.0, 0.0, "detect", detections=d)


def test_finding_review_agreement_matches_boxes_one_to_one(yolo_onnx):
    import cv2
    import onnxruntime as ort

    paths = sorted((ASSETS / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:24]
    x = np.concatenate([preprocess(cv2.imread(str(p))[:, :, ::-1].copy(), SPEC)[0] for p in paths])
    session = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: x})[0]  # (24, 84, A)
    ref = [_result(i, d) for i, d in enumerate(decode_yolo(raw, 0.25, 0.7))]
    got = [_result(i, d) for i, d in enumerate(decode_yolo(raw, 0.25, 0.45))]  # fewer boxes: a subset of ref's
    n_ref, n_got = sum(len(r.detections) for r in ref), sum(len(g.detections) for g in got)
    assert n_got < n_ref
    for r, g in zip(ref, got, strict=True):  # every candidate box is one of the reference's
        assert all((np.abs(r.detections.xyxy - box).max(1) == 0).any() for box in g.detections.xyxy)
    assert agreement(ref, got) == n_got / n_ref
    assert agreement(ref, ref) == 1.0


def test_finding_review_agreement_one_box_for_two_counts_once():
    ref = Detections(np.array([[0, 0, 100, 100], [0, 20, 100, 120]], np.float32), np.array([0.9, 0.8]), [0, 0])
    merged = Detections(np.array([[0, 10, 100, 110]], np.float32), np.array([0.9]), [0])  # IoU 0.82 with each
    assert agreement([_result(0, ref)], [_result(0, merged)]) == 0.5
    assert agreement([_result(0, merged)], [_result(0, ref)]) == 0.5
