"""YOLO detector student -> ONNX, with parity against the PyTorch student on the kit's own images.

    entry = export_detector(kit, run_dir, bundle_dir)   # writes bundle_dir/student.onnx, returns its manifest entry

The graph comes from Ultralytics' exporter (opset from the kit, dynamic batch, simplified with onnxslim).
Parity: the same letterboxed images (edge.preprocess, what the device will do) go through the PyTorch
student and through onnxruntime; the raw outputs' largest absolute difference must stay within
`export.parity_atol`, and after Ultralytics' NMS at the kit's edge thresholds the boxes must agree
(same class, IoU >= 0.9) at least `export.accuracy_guard` of the time. Otherwise the export fails and
says by how much.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from dkit.errors import DkitError, UsageError, require
from edge.preprocess import preprocess

log = logging.getLogger(__name__)

PARITY_IMAGES = 16  # held-out images first, then training images, as many as there are up to this


def export_detector(kit, run_dir: Path, bundle_dir: Path) -> dict:
    ultralytics = require("ultralytics", what="exporting a YOLO student", extra="distill")
    require("onnx", what="exporting to ONNX", extra="export")
    best = run_dir / "student" / "weights" / "best.pt"
    if not best.is_file():
        raise UsageError(f"no trained student in {run_dir / 'student'}: run `dkit train` first")
    s, e = kit.student, kit.export
    model = ultralytics.YOLO(str(best))
    exported = Path(model.export(format="onnx", imgsz=s.imgsz, opset=e.opset, dynamic=True, simplify=True,
                                 verbose=False))
    onnx_path = bundle_dir / "student.onnx"
    shutil.move(str(exported), onnx_path)

    spec = preprocess_spec(kit)
    parity = detector_parity(model, onnx_path, kit_images(run_dir, split=None, limit=PARITY_IMAGES), spec, kit)
    if parity["max_abs_diff"] > e.parity_atol or parity["agreement"] < e.accuracy_guard:
        raise DkitError(
            f"ONNX export of {best} is out of tolerance on {parity['images']} images: max abs output difference "
            f"{parity['max_abs_diff']:.3g} (export.parity_atol {e.parity_atol:g}), box/class agreement after NMS "
            f"{parity['agreement']:.3f} (export.accuracy_guard {e.accuracy_guard:g})"
        )
    log.info("ONNX parity on %d images: max abs diff %.2e, agreement %.3f", parity["images"],
             parity["max_abs_diff"], parity["agreement"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {
        "file": onnx_path.name, "precision": "fp32", "opset": e.opset, "parity": parity,
        "inputs": [{"name": i.name, "shape": i.shape, "dtype": "float32", "layout": "NCHW"}
                   for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": o.shape} for o in session.get_outputs()],
        "preprocess": spec,
        "decode": {"type": "yolov8-detect", "output": "(batch, 4 + classes, anchors)", "boxes": "xywh, input pixels",
                   "scores": "class probabilities, no objectness", "nms": "class-wise"},
    }


def preprocess_spec(kit) -> dict:
    """What the device does to a frame before the detector: Ultralytics' letterbox at the student's size."""
    size = kit.student.imgsz
    return {"resize": "letterbox", "size": [size, size], "pad_value": 114, "interpolation": "linear",
            "channels": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW"}


def detector_parity(model, onnx_path: Path, images: list[np.ndarray], spec: dict, kit) -> dict:
    """Max abs difference of raw outputs, and box/class agreement after NMS, PyTorch vs onnxruntime."""
    import onnxruntime as ort
    import torch
    from ultralytics.utils.metrics import box_iou
    from ultralytics.utils.nms import non_max_suppression

    net = model.model.float().eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    max_diff, matched, total = 0.0, 0, 0
    for rgb in images:
        x, _ = preprocess(rgb, spec)  # (1, 3, S, S)
        with torch.inference_mode():
            out = net(torch.from_numpy(x))
        ref = (out[0] if isinstance(out, (tuple, list)) else out).numpy()  # (1, 4 + C, A)
        got = session.run(None, {name: x})[0]
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        a, b = (non_max_suppression(torch.from_numpy(o), conf_thres=kit.edge.conf, iou_thres=kit.edge.iou,
                                    max_det=kit.edge.max_det)[0] for o in (ref, got))  # (N, 6) xyxy, conf, cls
        total += max(len(a), len(b))
        if len(a) and len(b):
            iou = box_iou(a[:, :4], b[:, :4]) * (a[:, 5:6] == b[:, 5][None])  # same class only
            matched += int((iou.max(1).values >= 0.9).sum())
    return {"images": len(images), "max_abs_diff": max_diff,
            "agreement": 1.0 if total == 0 else matched / total, "boxes": total}


def kit_images(run_dir: Path, *, split: str | None, limit: int) -> list[np.ndarray]:
    """Up to `limit` of the kit's own labelled images as (H, W, 3) RGB: one split, or all (held-out first)."""
    import json

    import cv2

    jsonl = run_dir / "labels" / "labels.jsonl"
    if not jsonl.is_file():
        raise UsageError(f"no labels in {run_dir / 'labels'}: run `dkit label` first")
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = sorted((r for r in records if r["split"] and split in (None, r["split"])),
                     key=lambda r: (r["split"] != "val", r["image"]))
    images = []
    for rec in records:
        path = run_dir / "labels" / rec["dataset_image"] if rec.get("dataset_image") else Path(rec["source"])
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # the data set's copy: normalised images are plain JPEGs
        if bgr is not None:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len(images) == limit:
            break
    if not images:
        raise UsageError(f"no readable {split or ''} images in {run_dir / 'labels'} to check the export against")
    return images
