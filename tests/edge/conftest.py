"""Edge fixtures: a real YOLOv8n ONNX file and a detector bundle made from it (the bundle contract by hand, no
training), shared by the edge tests in one session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ASSETS

SIZE = 320


@pytest.fixture(scope="session")
def yolo_onnx(tmp_path_factory) -> Path:
    """The shared yolov8n.pt exported to ONNX at 320 px (dynamic batch), in a temporary folder."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "true")
        mp.setenv("YOLO_AUTOINSTALL", "false")
        ultralytics = pytest.importorskip("ultralytics")
        tmp = tmp_path_factory.mktemp("yolo-onnx")
        shutil.copy(ASSETS / "models" / "yolov8n.pt", tmp / "yolov8n.pt")  # export writes beside the weights
        exported = ultralytics.YOLO(str(tmp / "yolov8n.pt")).export(format="onnx", imgsz=SIZE, dynamic=True,
                                                                     simplify=True, verbose=False)
    return Path(exported)


@pytest.fixture(scope="session")
def detect_bundle(yolo_onnx, tmp_path_factory) -> Path:
    """A verified detect bundle around yolov8n.onnx: what `dkit export` writes for a YOLO detector."""
    import onnxruntime as ort
    from ultralytics import YOLO

    from dkit.edge.bundle import open_bundle
    from dkit.export.manifest import write_manifest

    root = tmp_path_factory.mktemp("bundle") / "bundle"
    root.mkdir()
    shutil.copy(yolo_onnx, root / "student.onnx")
    (root / "README.md").write_text("# yolov8n test bundle\n")
    names = YOLO(str(yolo_onnx), task="detect").names
    session = ort.InferenceSession(str(root / "student.onnx"), providers=["CPUExecutionProvider"])
    write_manifest(root, {
        "name": "yolov8n-test", "task": "detect", "teacher": {"id": "yolo:yolov8n.pt", "random": False},
        "student": {"kind": "yolo-detect", "model": "yolov8n.pt", "imgsz": SIZE},
        "models": {"student": {"file": "student.onnx", "precision": "fp32", "opset": 17,
                               "inputs": [{"name": i.name, "shape": i.shape} for i in session.get_inputs()]}},
        "preprocess": {"resize": "letterbox", "size": [SIZE, SIZE], "pad_value": 114, "interpolation": "linear",
                       "channels": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"},
        "decode": {"type": "yolov8-detect"}, "classes": [names[i] for i in range(len(names))],
        "thresholds": {"conf": 0.25, "iou": 0.7, "max_det": 300},
        "runtime": {"providers": [], "threads": 0, "max_fps": 0.0},
    })
    with open_bundle(root):
        pass
    return root


@pytest.fixture(scope="session")
def kiosk_server(judge_run, tmp_path_factory):
    """`dkit serve` on the session's judge bundle, on a free loopback port with a fresh database."""
    import signal

    from tests.edge.test_server import Server

    _, run, _, _ = judge_run
    srv = Server(run / "bundle", tmp_path_factory.mktemp("kiosk") / "kiosk.sqlite")
    yield srv
    srv.kill(signal.SIGTERM)
