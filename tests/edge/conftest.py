"""Edge fixtures: a real YOLOv8n ONNX file and a detector bundle made from it (the bundle contract by hand, no
training), shared by the edge tests in one session. The ONNX file is exported once and cached
(tests.fixture_cache), so a base-only venv runs these tests without Ultralytics."""

from __future__ import annotations

import ast
import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.conftest import ASSETS
from tests.fixture_cache import CACHE, ROOT, cached, cached_path, source_key

SIZE = 320


@pytest.fixture(scope="session")
def yolo_onnx() -> Path:
    """The shared yolov8n.pt exported to ONNX at 320 px (dynamic batch), kept in build/test-fixtures/
    (tests.fixture_cache, keyed by the weights, this file and constraints.txt) so later sessions and a base-only venv
    (`make test-edge`) use it without Ultralytics."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    weights = ASSETS / "models" / "yolov8n.pt"
    key = source_key([str(SIZE)], [weights, Path(__file__), ROOT / "constraints.txt"])
    hit = cached_path("yolov8n-onnx", key)
    if hit is None:
        if importlib.util.find_spec("ultralytics") is None:
            pytest.skip(f"no yolov8n.onnx cached in {CACHE} and ultralytics is not installed to export one: run the "
                        "tests once in the dev venv (`make test-edge` does)")
        hit = cached("yolov8n-onnx", key, lambda out: _export_yolo(weights, out))
    return hit / "yolov8n.onnx"


def _export_yolo(weights: Path, out: Path) -> None:
    """Export `weights` with Ultralytics to out/yolov8n.onnx (SIZE px, dynamic batch, simplified), offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "true")
        mp.setenv("YOLO_AUTOINSTALL", "false")
        import ultralytics

        shutil.copy(weights, out / "yolov8n.pt")  # export writes beside the weights
        exported = ultralytics.YOLO(str(out / "yolov8n.pt")).export(format="onnx", imgsz=SIZE, dynamic=True,
                                                                     simplify=True, verbose=False)
    if Path(exported) != out / "yolov8n.onnx":
        shutil.move(exported, out / "yolov8n.onnx")
    (out / "yolov8n.pt").unlink()


@pytest.fixture(scope="session")
def detect_bundle(yolo_onnx, tmp_path_factory) -> Path:
    """A verified detect bundle around yolov8n.onnx: what `dkit export` writes for a YOLO detector."""
    import onnxruntime as ort

    from dkit.edge.bundle import open_bundle
    from dkit.export.manifest import write_manifest

    root = tmp_path_factory.mktemp("bundle") / "bundle"
    root.mkdir()
    shutil.copy(yolo_onnx, root / "student.onnx")
    (root / "README.md").write_text("# yolov8n test bundle\n")
    session = ort.InferenceSession(str(root / "student.onnx"), providers=["CPUExecutionProvider"])
    names = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])  # Ultralytics' {id: name}
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
def kiosk_server(judge_bundle, tmp_path_factory):
    """`dkit serve` on the session's judge bundle, on a free loopback port with a fresh database."""
    import signal

    from tests.edge.test_server import Server

    srv = Server(judge_bundle, tmp_path_factory.mktemp("kiosk") / "kiosk.sqlite")
    yield srv
    srv.kill(signal.SIGTERM)
