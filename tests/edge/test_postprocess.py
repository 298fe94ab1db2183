"""Edge post-processing: numpy decode + NMS equals Ultralytics' on real YOLOv8n outputs; classifier, embedding tables.

The real-output tests export the shared yolov8n.pt to ONNX (320 px, in a temporary folder), run onnxruntime on real
COCO-128 images and photos, and compare `decode_yolo` with `ultralytics.utils.nms.non_max_suppression` and with
`YOLO(onnx).predict` end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dkit.edge.infer.postprocess import Detections, cosine_scores, decode_yolo, nms, softmax, topk
from dkit.edge.infer.preprocess import Letterbox, preprocess
from tests.conftest import ASSETS, ROOT

SPEC = {"resize": "letterbox", "size": [320, 320], "pad_value": 114, "interpolation": "linear", "channels": "RGB",
        "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}
N_IMAGES = 24
PHOTOS = ["pets.jpg", "kite_and_cold.jpg", "parrot.jpg", "grace_hopper.bmp", "hot_dog.jpg"]  # real, not square


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def coco_raw(yolo_onnx) -> np.ndarray:
    """(24, 84, 2100) raw detect-head outputs of onnxruntime on real COCO-128 images, edge-preprocessed."""
    import onnxruntime as ort

    paths = sorted((ASSETS / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:N_IMAGES]
    x = np.concatenate([preprocess(_rgb(p), SPEC)[0] for p in paths])  # (24, 3, 320, 320)
    session = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ultralytics_nms(raw: np.ndarray, conf: float, iou: float, max_det: int, classes=None) -> list[np.ndarray]:
    """Ultralytics' NMS on the same array: per image (N, 6) x1, y1, x2, y2, conf, class."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    out = non_max_suppression(torch.from_numpy(raw), conf, iou, classes=classes, max_det=max_det)
    return [o.numpy() for o in out]


def _assert_same(ours: list[Detections], theirs: list[np.ndarray], box_atol: float = 1e-3, conf_atol: float = 1e-5):
    assert len(ours) == len(theirs)
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert len(o) == len(t), f"image {i}: {len(o)} boxes, Ultralytics {len(t)}"
        np.testing.assert_array_equal(o.class_id, t[:, 5].astype(np.int64), err_msg=f"image {i} classes")
        np.testing.assert_allclose(o.xyxy, t[:, :4], rtol=0, atol=box_atol, err_msg=f"image {i} boxes")
        np.testing.assert_allclose(o.confidence, t[:, 4], rtol=0, atol=conf_atol, err_msg=f"image {i} confidences")
        assert np.all(np.diff(o.confidence) <= 0), f"image {i}: not sorted by confidence"


@pytest.mark.parametrize(("conf", "iou", "max_det", "classes", "at_least"), [
    (0.001, 0.7, 300, None, 2000),  # hundreds of candidates per image
    (0.001, 0.45, 300, None, 1000),
    (0.001, 0.7, 10, None, 200),
    (0.001, 0.45, 1, None, 24),
    (0.25, 0.7, 300, None, 50),
    (0.25, 0.45, 10, None, 50),
    (0.25, 0.7, 1, None, 20),
    (0.5, 0.7, 300, None, 30),
    (0.5, 0.45, 10, None, 30),
    (0.25, 0.7, 300, [0, 2, 56], 10),
])
@pytest.mark.devenv("torch", "torchvision", "ultralytics")
def test_decode_matches_ultralytics_on_real_outputs(coco_raw, conf, iou, max_det, classes, at_least):
    pytest.importorskip("torchvision")  # Ultralytics' predictor imports it, so its NMS is torchvision.ops.nms
    ours = decode_yolo(coco_raw, conf, iou, max_det, classes)
    _assert_same(ours, _ultralytics_nms(coco_raw, conf, iou, max_det, classes))
    assert sum(len(d) for d in ours) >= at_least  # the comparison is not vacuous
    if classes is not None:
        assert set(np.concatenate([d.class_id for d in ours]).tolist()) <= set(classes)


@pytest.mark.parametrize(("conf", "iou"), [(0.25, 0.7), (0.4, 0.45)])
@pytest.mark.devenv("ultralytics")
def test_end_to_end_matches_ultralytics_predict(yolo_onnx, conf, iou, monkeypatch):
    import onnxruntime as ort
    from ultralytics import YOLO

    from tests.edge.test_runtime import exact_resize

    exact_resize(monkeypatch)  # the device's letterbox is OpenCV's bit-exact bilinear (dkit.edge.infer.preprocess)
    model = YOLO(str(yolo_onnx), task="detect")
    session = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"])
    paths = [ASSETS / "data" / "photos" / name for name in PHOTOS]
    paths += sorted((ASSETS / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[:2]
    total = 0
    for path in paths:
        x, box = preprocess(_rgb(path), SPEC)
        dets = decode_yolo(session.run(None, {session.get_inputs()[0].name: x})[0], conf, iou)[0].scaled(box)
        # rect=False: predict defaults to a minimal (stride-multiple) letterbox for dynamic models; ours is square
        ref = model.predict(str(path), imgsz=320, conf=conf, iou=iou, rect=False, verbose=False)[0].boxes
        assert len(dets) == len(ref), f"{path.name}: {len(dets)} boxes, Ultralytics {len(ref)}"
        np.testing.assert_array_equal(dets.class_id, ref.cls.numpy().astype(np.int64), err_msg=path.name)
        np.testing.assert_allclose(dets.xyxy, ref.xyxy.numpy(), rtol=0, atol=1e-2, err_msg=path.name)
        np.testing.assert_allclose(dets.confidence, ref.conf.numpy(), rtol=0, atol=1e-4, err_msg=path.name)
        total += len(dets)
    assert total >= 10


def test_imports_without_the_training_stack():
    code = ("import sys, dkit.edge.infer.postprocess; "
            "print(sorted({'torch', 'torchvision', 'ultralytics', 'open_clip', 'onnx'} & set(sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- synthetic detector outputs
def _raw(boxes_xywh: list[list[float]], scores: list[list[float]], num_classes: int = 3) -> np.ndarray:
    """(1, 4 + C, A) from A boxes (cx, cy, w, h) and A rows of class scores (padded with zeros to C)."""
    a = len(boxes_xywh)
    raw = np.zeros((1, 4 + num_classes, a), np.float32)
    if a:
        raw[0, :4] = np.asarray(boxes_xywh, np.float32).T
        for i, row in enumerate(scores):
            raw[0, 4:4 + len(row), i] = row
    return raw


SAME = [50, 50, 20, 20]  # (cx, cy, w, h) -> xyxy (40, 40, 60, 60)
SYNTHETIC = {  # name: (raw, conf, iou, max_det, classes, expected [(class, conf)], best first)
    "empty input": (_raw([], []), 0.25, 0.7, 300, None, []),
    "nothing above conf": (_raw([SAME, [10, 10, 4, 4]], [[0.1, 0.2], [0.2, 0.05]]), 0.25, 0.7, 300, None, []),
    "score equal to conf is not kept": (_raw([SAME], [[0.25]]), 0.25, 0.7, 300, None, []),
    "identical boxes": (_raw([SAME] * 5, [[0.5], [0.9], [0.7], [0.8], [0.6]]), 0.25, 0.7, 300, None, [(0, 0.9)]),
    "other classes are not suppressed": (_raw([SAME] * 3, [[0.9, 0, 0], [0, 0.8, 0], [0, 0, 0.95]]), 0.25, 0.5, 300,
                                         None, [(2, 0.95), (0, 0.9), (1, 0.8)]),
    "one label per box": (_raw([SAME], [[0.6, 0.55, 0.3]]), 0.25, 0.7, 300, None, [(0, 0.6)]),
    "IoU equal to threshold survives": (_raw([[5, 5, 10, 10], [5, 2.5, 10, 5]], [[0.9], [0.8]]), 0.25, 0.5, 300,
                                        None, [(0, 0.9), (0, 0.8)]),
    "IoU above threshold is suppressed": (_raw([[5, 5, 10, 10], [5, 2.5, 10, 5]], [[0.9], [0.8]]), 0.25, 0.49, 300,
                                          None, [(0, 0.9)]),
    "max_det keeps the best": (_raw([[10, 10, 8, 8], [40, 40, 8, 8], [80, 80, 8, 8]], [[0.3], [0.9], [0.6]]),
                               0.25, 0.7, 2, None, [(0, 0.9), (0, 0.6)]),
    "classes filter": (_raw([[10, 10, 8, 8], [40, 40, 8, 8], [80, 80, 8, 8]], [[0.9, 0], [0, 0.8], [0, 0, 0.7]]),
                       0.25, 0.7, 300, [1, 2], [(1, 0.8), (2, 0.7)]),
    "empty classes filter": (_raw([SAME], [[0.9]]), 0.25, 0.7, 300, [], []),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_decode_synthetic(name):
    raw, conf, iou, max_det, classes, expected = SYNTHETIC[name]
    (dets,) = decode_yolo(raw, conf, iou, max_det, classes)
    assert [(int(c), round(float(s), 4)) for c, s in zip(dets.class_id, dets.confidence, strict=True)] == expected
    assert dets.xyxy.dtype == np.float32 and dets.xyxy.shape == (len(expected), 4)
    if name == "identical boxes":
        np.testing.assert_array_equal(dets.xyxy, [[40, 40, 60, 60]])


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.devenv("torch", "ultralytics")
def test_decode_synthetic_matches_ultralytics(name):
    pytest.importorskip("ultralytics")
    raw, conf, iou, max_det, classes, _ = SYNTHETIC[name]
    _assert_same(decode_yolo(raw, conf, iou, max_det, classes), _ultralytics_nms(raw, conf, iou, max_det, classes))


def test_decode_batch_keeps_images_apart():
    one = _raw([SAME, [52, 50, 20, 20]], [[0.9, 0], [0.8, 0]])  # two overlapping boxes, one class
    two = _raw([SAME, [52, 50, 20, 20]], [[0.9, 0], [0, 0.8]])  # the same boxes, different classes
    none = _raw([SAME, [52, 50, 20, 20]], [[0.1, 0], [0, 0.1]])
    out = decode_yolo(np.concatenate([one, two, none, one]), 0.25, 0.5)
    assert [len(d) for d in out] == [1, 2, 0, 1]
    assert out[1].class_id.tolist() == [0, 1] and out[3].confidence.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize(("boxes", "scores", "iou", "max_keep", "expected"), [
    (np.zeros((0, 4)), np.zeros(0), 0.5, None, []),
    ([[0, 0, 10, 10]] * 3, [0.5, 0.5, 0.5], 0.5, None, [0]),  # ties: the lower index wins
    ([[0, 0, 10, 10], [100, 0, 110, 10], [0, 0, 10, 10]], [0.5, 0.5, 0.5], 0.5, None, [0, 1]),
    ([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]], [0.9, 0.8, 0.7], 0.7, None, [0, 2]),  # 2 survives 0, 1 gone
    ([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0.1, 0.3, 0.2], 0.5, 2, [1, 2]),
    ([[0, 0, 0, 0], [0, 0, 0, 0]], [0.9, 0.8], 0.0, None, [0, 1]),  # empty boxes never overlap
])
def test_nms_table(boxes, scores, iou, max_keep, expected):
    keep = nms(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), iou, max_keep)
    assert keep.dtype == np.int64 and keep.tolist() == expected


@pytest.mark.devenv("torch", "torchvision")
def test_nms_matches_torchvision_on_many_tied_boxes():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    corner = rng.random((3000, 2)) * 300
    boxes = np.concatenate([corner, corner + rng.random((3000, 2)) * 60 + 1], 1).astype(np.float32)
    scores = (rng.integers(0, 20, 3000) / 20).astype(np.float32)  # many equal scores
    for iou in (0.3, 0.5, 0.7):
        ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, iou), ref)
        np.testing.assert_array_equal(nms(boxes, scores, iou, max_keep=50), ref[:50])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: decode_yolo(np.zeros((84, 2100), np.float32), 0.25, 0.7), r"\(B, 4 \+ C, A\).*got \(84, 2100\)"),
    (lambda: decode_yolo(np.zeros((1, 4, 10), np.float32), 0.25, 0.7), r"C >= 1, got \(1, 4, 10\)"),
    (lambda: decode_yolo(np.zeros((1, 6, 10), np.int64), 0.25, 0.7), "float array, got int64"),
    (lambda: decode_yolo(np.zeros((1, 6, 10), np.float32), 1.5, 0.7), r"conf_threshold: expected .*\[0, 1\], got 1.5"),
    (lambda: decode_yolo(np.zeros((1, 6, 10), np.float32), 0.2, -0.1), r"iou_threshold: .*got -0.1"),
    (lambda: decode_yolo(np.zeros((1, 6, 10), np.float32), 0.2, 0.7, 0), "expected >= 1, got 0"),
    (lambda: nms(np.zeros((3, 5)), np.zeros(3), 0.5), r"expected shape \(N, 4\), got \(3, 5\)"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(2), 0.5), r"expected shape \(3,\), got \(2,\)"),
    (lambda: Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2, int)), r"confidence: expected shape \(2,\)"),
    (lambda: Detections(np.zeros(4), np.zeros(1), np.zeros(1, int)), r"xyxy: expected shape \(N, 4\), got \(4,\)"),
    (lambda: Detections(np.zeros((1, 4)), np.zeros(1), np.array([0.5])), "class_id: expected integers"),
    (lambda: softmax(np.float32(1.0)), r"expected shape \(..., C\) with C >= 1, got \(\)"),
    (lambda: softmax(np.array([2.0, -1.0]), already_probabilities=True), "are these logits"),
    (lambda: topk(np.ones(3), 0), "k: expected >= 1, got 0"),
    (lambda: topk(np.ones((2, 0)), 1), r"got \(2, 0\)"),
    (lambda: cosine_scores(np.ones(4), np.ones((2, 4))), r"embeddings: expected shape \(N, D\), got \(4,\)"),
    (lambda: cosine_scores(np.ones((1, 4)), np.ones((2, 3))), r"prompts: expected shape \(P, 4\), got \(2, 3\)"),
])
def test_invalid_inputs_name_expected_and_got(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_detections_scaled_to_the_original_image():
    box = Letterbox(scale=0.5, pad_left=0, pad_top=40, orig_shape=(480, 640))  # 640x480 into 320x320
    dets = Detections(np.array([[10, 50, 110, 150], [-5, 30, 330, 290]], np.float32), [0.9, 0.8], [3, 1])
    scaled = dets.scaled(box)
    np.testing.assert_allclose(scaled.xyxy, [[20, 20, 220, 220], [0, 0, 640, 480]])  # the second one is clipped
    assert scaled.class_id.tolist() == [3, 1] and scaled.confidence.dtype == np.float32
    assert len(Detections.empty()) == 0 and len(Detections.empty().scaled(box)) == 0


# ---------------------------------------------------------------- classifier and embeddings
@pytest.mark.parametrize(("logits", "expected"), [
    ([0.0, 0.0], [0.5, 0.5]),
    ([1000.0, 1000.0, -1000.0], [0.5, 0.5, 0.0]),  # no overflow
    ([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[0.09003057, 0.24472847, 0.66524096], [1 / 3, 1 / 3, 1 / 3]]),
    ([5], [1.0]),  # integers, one class
    ([-np.inf, 0.0], [0.0, 1.0]),
])
def test_softmax_table(logits, expected):
    probs = softmax(np.asarray(logits))
    assert np.issubdtype(probs.dtype, np.floating) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_softmax_passes_probabilities_through():
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], np.float32)
    assert softmax(probs, already_probabilities=True) is probs
    np.testing.assert_allclose(softmax(np.log(probs[:1])), probs[:1], atol=1e-6)


@pytest.mark.parametrize(("probs", "k", "indices", "values"), [
    ([0.1, 0.6, 0.3], 2, [1, 2], [0.6, 0.3]),
    ([0.2, 0.5, 0.5, 0.1], 2, [1, 2], [0.5, 0.5]),  # tie: lower index first
    ([0.25, 0.25, 0.25, 0.25], 3, [0, 1, 2], [0.25] * 3),
    ([0.3, 0.7], 5, [1, 0], [0.7, 0.3]),  # k larger than C: all of them
    ([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]], 2, [[1, 0], [0, 2]], [[0.9, 0.1], [0.5, 0.3]]),
    ([3, 1, 3], 1, [0], [3]),  # integer scores
])
def test_topk_table(probs, k, indices, values):
    idx, val = topk(np.asarray(probs), k)
    assert idx.dtype == np.int64 and idx.tolist() == indices
    np.testing.assert_allclose(val, values)


@pytest.mark.parametrize(("embeddings", "prompts", "expected"), [
    ([[1, 0]], [[1, 0], [0, 1], [-1, 0]], [[1, 0, -1]]),
    ([[3, 4]], [[6, 8], [0.3, 0.4]], [[1, 1]]),  # scale does not matter
    ([[0, 0], [1, 1]], [[1, 0], [0, 0]], [[0, 0], [np.sqrt(0.5), 0]]),  # zero vectors score 0, never nan
    ([[1, 2, 3]], [[1, 2, 3]], [[1]]),
])
def test_cosine_scores_table(embeddings, prompts, expected):
    scores = cosine_scores(np.asarray(embeddings, np.float32), np.asarray(prompts, np.float32))
    assert scores.dtype == np.float32 and scores.shape == (len(embeddings), len(prompts))
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_cosine_scores_equal_normalised_dot_products():
    rng = np.random.default_rng(0)
    e, p = rng.normal(size=(6, 32)), rng.normal(size=(4, 32))
    ref = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_scores(e, p), ref, atol=1e-5)
