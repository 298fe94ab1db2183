"""The backends (dkit.edge.infer.backends) against onnxruntime, and the minimal letterbox against Ultralytics' own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dkit.edge.bundle.manifest import Preprocess
from dkit.edge.infer import backends
from dkit.edge.infer.preprocess import letterbox, preprocess
from dkit.edge.infer.runtime import Runtime, RuntimeConfigError
from tests.conftest import ASSETS
from tests.edge.test_runtime import _rgb, exact_resize

IMAGENET = ASSETS / "data" / "imagenet-sample"
COCO = ASSETS / "data" / "coco128" / "images" / "train2017"


def mixed_aspect(step: int) -> list[Path]:
    """Every `step`-th ImageNet sample photo: mixed sizes and aspect ratios (portrait, landscape, square)."""
    if not IMAGENET.is_dir():
        pytest.skip(f"real test assets not found at {ASSETS}")
    return sorted(IMAGENET.glob("*.JPEG"))[::step]


@pytest.mark.parametrize("size", [(320, 320), (640, 640), (256, 320)])
@pytest.mark.devenv("ultralytics")
def test_minimal_letterbox_is_ultralytics_letterbox_auto(size, monkeypatch):
    from ultralytics.data.augment import LetterBox

    exact_resize(monkeypatch)
    theirs = LetterBox(new_shape=size, auto=True, stride=32)
    shapes = set()
    for path in mixed_aspect(15):
        rgb = _rgb(path)
        ours, meta = letterbox(rgb, size, 114, "linear", stride=32)
        ref = theirs(image=rgb)
        assert ours.shape == ref.shape and np.array_equal(ours, ref), path.name
        assert ours.shape[0] % 32 == 0 and ours.shape[1] % 32 == 0 and max(ours.shape[:2]) <= max(size)
        shapes.add(ours.shape[:2])
    assert len(shapes) >= 3  # the photos really are of several shapes


def test_minimal_letterbox_feeds_fewer_pixels_for_a_wide_frame():
    frame = np.zeros((720, 1280, 3), np.uint8)  # 16:9
    square = Preprocess("letterbox", (320, 320))
    x_square, _ = preprocess(frame, square)
    x_minimal, meta = preprocess(frame, replace(square, letterbox="minimal"))
    assert x_square.shape == (1, 3, 320, 320) and x_minimal.shape == (1, 3, 192, 320)
    assert (meta.pad_left, meta.pad_top, meta.resized) == (0, 6, (180, 320))


@pytest.mark.devenv("ultralytics")
def test_minimal_letterbox_gives_ultralytics_default_predict_boxes(detect_bundle, yolo_onnx, monkeypatch):
    """YOLO(onnx).predict with its defaults (rect: minimal padding for a dynamic model) == the runtime, minimal."""
    from ultralytics import YOLO

    exact_resize(monkeypatch)
    model = YOLO(str(yolo_onnx), task="detect")
    total = 0
    with Runtime.load(detect_bundle, letterbox="minimal") as rt:
        assert rt.spec.letterbox == "minimal"
        for path in mixed_aspect(10):
            ours = rt(_rgb(path)).detections
            ref = model.predict(str(path), imgsz=320, conf=0.25, iou=0.7, verbose=False)[0].boxes
            assert len(ours) == len(ref), path.name
            np.testing.assert_array_equal(ours.class_id, ref.cls.numpy().astype(np.int64))
            np.testing.assert_allclose(ours.xyxy, ref.xyxy.numpy(), rtol=0, atol=1e-2)
            total += len(ours)
    assert total >= 20


@pytest.mark.devenv("openvino")
def test_openvino_gives_onnxruntime_detections(detect_bundle):
    pytest.importorskip("openvino")
    paths = sorted(COCO.glob("*.jpg"))[:6] + mixed_aspect(60)
    with Runtime.load(detect_bundle, letterbox="minimal") as ort_rt, \
            Runtime.load(detect_bundle, backend="openvino", letterbox="minimal") as ov_rt:
        assert ov_rt.provider == "openvino CPU" and ov_rt.backend.dynamic_shape and ov_rt.dynamic_batch
        boxes = 0
        for path in paths:
            rgb = _rgb(path)
            x, _ = ort_rt.preprocess(rgb)
            assert np.abs(ort_rt.infer(x) - ov_rt.infer(x)).max() < 1e-2  # raw head outputs, 0..320 px scale
            a, b = ort_rt(rgb).detections, ov_rt(rgb).detections
            assert len(a) == len(b) and np.array_equal(a.class_id, b.class_id), path.name
            np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.5)
            boxes += len(a)
        assert boxes >= 10
        frames = [_rgb(p) for p in paths[:3]]  # one batched run == one by one
        for frame, result in zip(frames, ov_rt.batch(frames), strict=True):
            np.testing.assert_allclose(result.detections.xyxy, ov_rt(frame).detections.xyxy, atol=1e-3)


def test_every_onnx_reader_opens_a_model_file_outside_a_bundle(detect_bundle):
    """What the export checks its variants with (backends.open_onnx_file): the same outputs as the bundle's."""
    x = np.full((1, 3, 320, 320), 0.5, np.float32)
    with Runtime.load(detect_bundle) as rt:
        want = rt.infer(x)
    for name in ["onnxruntime"] + (["openvino"] if "openvino" in backends.available() else []):
        be = backends.open_onnx_file(name, detect_bundle / "student.onnx", "fp32")
        try:
            np.testing.assert_allclose(be.run(x), want, atol=1e-2)
        finally:
            be.close()
    with pytest.raises(RuntimeConfigError, match="backend ncnn reads ncnn models, not an ONNX file"):
        backends.open_onnx_file("ncnn", detect_bundle / "student.onnx", "fp32")


@pytest.mark.devenv("ncnn")
def test_a_bundle_without_an_ncnn_model_says_how_to_get_one(detect_bundle):
    pytest.importorskip("ncnn")
    with pytest.raises(RuntimeConfigError, match=r"no fp32 ncnn model in this bundle \(it has: onnx fp32\).*"
                                                 r"export.backends: \[onnx, ncnn\]"):
        Runtime.load(detect_bundle, backend="ncnn")


def test_unknown_and_uninstalled_backends_are_named(detect_bundle, monkeypatch):
    with pytest.raises(RuntimeConfigError, match="--backend 'tflite' is not one of onnxruntime, openvino, ncnn"):
        Runtime.load(detect_bundle, backend="tflite")
    monkeypatch.setitem(backends.BACKENDS, "openvino",
                        replace(backends.BACKENDS["openvino"], library="openvino_not_installed_here"))
    assert "openvino" not in backends.available()
    with pytest.raises(RuntimeConfigError, match=r"openvino_not_installed_here package is not installed here "
                                                 r"\(pip install 'openvino>=2024.0'.*device-pack --extra openvino"):
        Runtime.load(detect_bundle, backend="openvino")


def test_a_fixed_shape_backend_keeps_the_square_letterbox(detect_bundle, monkeypatch, caplog):
    from dkit.edge.infer.backends.ort_backend import OrtBackend

    monkeypatch.setattr(OrtBackend, "dynamic_shape", property(lambda self: False, lambda self, v: None))
    with caplog.at_level("INFO"), Runtime.load(detect_bundle, letterbox="minimal") as rt:
        assert rt.spec.letterbox == "square"
        assert rt.preprocess(np.zeros((720, 1280, 3), np.uint8))[0].shape == (1, 3, 320, 320)
    assert "square letterbox" in caplog.text


def test_letterbox_values_are_checked_first_and_ignored_for_other_resizes(detect_bundle, caplog):
    with pytest.raises(RuntimeConfigError, match="--letterbox 'wide' is not one of square, minimal"):
        Runtime.load(detect_bundle, letterbox="wide")


def test_an_ncnn_model_entry_must_list_its_weights(detect_bundle, tmp_path):
    import json
    import shutil

    from dkit.edge.bundle import BundleError, open_bundle

    root = tmp_path / "b"
    shutil.copytree(detect_bundle, root)
    doc = json.loads((root / "manifest.json").read_text())
    doc["models"]["student_ncnn"] = {"file": "student.onnx", "format": "ncnn", "weights": "missing.bin"}
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="models.student_ncnn.weights must name a file listed in 'files'"):
        open_bundle(root)
