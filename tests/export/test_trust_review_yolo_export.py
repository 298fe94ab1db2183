"""#24 review: a YOLO detector bundle's class names come from the detector (`model.names`, its output order), not
from the kit's ontology as it reads at export time; a kit whose classes changed since training is refused.

The student here is the real yolov8n.pt (80 COCO classes, person first) placed as a run's best.pt, with four real
COCO-128 images as its labelled images; the kit is the coco128 recipe with its ontology listed in another order.
The bundle used to name output 0 after the kit's first class ("toothbrush" here): every box on the device
renamed, nothing failing.

The export's box parity (ONNX against PyTorch after NMS) matches boxes one to one, as mAP50 does
(dkit.edge.infer.map50.match): one ONNX box at IoU >= 0.9 with two PyTorch boxes is one agreement, not two (possible
where `edge.iou` is 0.8 or more, so that NMS keeps two boxes that close).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ultralytics")
pytest.importorskip("onnx")

from dkit.core.errors import UsageError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.records import LabelRecord  # noqa: E402
from tests.conftest import ASSETS, RECIPES  # noqa: E402

TINY = ["student.imgsz=64", "export.precisions=[fp32]", "export.backends=[onnx]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder by hand: 4 labelled COCO-128 images (held out) and yolov8n.pt as the trained student."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    root = tmp_path_factory.mktemp("yolo-names") / "run"
    (root / "labels").mkdir(parents=True)
    (root / "student" / "weights").mkdir(parents=True)
    shutil.copy(ASSETS / "models" / "yolov8n.pt", root / "student" / "weights" / "best.pt")
    images = sorted((ASSETS / "data/coco128/images/train2017").glob("*.jpg"))[:4]
    lines = [json.dumps(LabelRecord(p.name, str(p), "0" * 64, "yolov8n", split="val", width=640, height=640)
                        .to_dict()) for p in images]
    (root / "labels" / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _kit(tmp: Path, classes: dict):
    doc = yaml.safe_load((RECIPES / "coco128" / "kit.yaml").read_text())
    doc["ontology"]["classes"] = classes
    (tmp / "kit.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_kit(tmp / "kit.yaml", overrides=TINY)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """(kit, bundle folder, Exported): the run exported with the coco128 kit's 80 classes listed toothbrush first."""
    from dkit.export.yolo import export_yolo_detect

    tmp = tmp_path_factory.mktemp("reversed")
    coco = yaml.safe_load((RECIPES / "coco128" / "kit.yaml").read_text())["ontology"]["classes"]
    kit = _kit(tmp, dict(reversed(coco.items())))
    (tmp / "bundle").mkdir()
    return kit, tmp / "bundle", export_yolo_detect(kit, run, tmp / "bundle")


def test_finding_review_detector_bundle_classes_from_the_model(run, exported):
    from ultralytics import YOLO

    kit, _, result = exported
    assert kit.ontology.names[0] == "toothbrush"
    names = YOLO(str(run / "student" / "weights" / "best.pt")).names
    assert result.classes == [names[i] for i in range(len(names))]
    assert result.classes[0] == "person"


def test_finding_review_detector_trained_on_other_classes_is_refused(run, tmp_path):
    from dkit.export.yolo import export_yolo_detect

    kit = _kit(tmp_path, {"person": ["person"], "forklift": ["truck"]})
    (tmp_path / "bundle").mkdir()
    with pytest.raises(UsageError, match=r"trained on the classes .*'person'.*forklift.*dkit train"):
        export_yolo_detect(kit, run, tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "student.onnx").exists()  # refused before any export work


def test_finding_review_detector_parity_counts_boxes_one_to_one(run, exported, monkeypatch):
    import numpy as np
    import torch
    import ultralytics.utils.nms as nms
    from ultralytics import YOLO

    from dkit.export.yolo import detector_parity, preprocess_spec

    kit, bundle, _ = exported
    model = YOLO(str(run / "student" / "weights" / "best.pt"))
    two = torch.tensor([[0, 0, 100, 100, 0.9, 0], [0, 0, 100, 92, 0.8, 0]], dtype=torch.float32)  # IoU 0.92
    one = torch.tensor([[0, 0, 100, 96, 0.9, 0]], dtype=torch.float32)  # IoU 0.96 with both
    calls = iter([[two], [one]])  # PyTorch's boxes, then onnxruntime's
    monkeypatch.setattr(nms, "non_max_suppression", lambda *a, **k: next(calls))
    image = np.full((64, 64, 3), 114, np.uint8)
    parity = detector_parity(model, bundle / "student.onnx", [image], preprocess_spec(kit), kit)
    assert (parity["boxes"], parity["agreement"]) == (2, 0.5)
