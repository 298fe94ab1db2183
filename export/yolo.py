"""YOLO students (detector, classifier) -> ONNX, with parity against the PyTorch student on the kit's own images.

    from dkit.export.yolo import export_detector, export_classifier

    exported = export_detector(kit, run_dir, bundle_dir)    # writes bundle_dir/student.onnx: an Exported (its model
    exported = export_classifier(kit, run_dir, bundle_dir)  # entry, preprocess, decode, classes in output order)

The graph comes from Ultralytics' exporter (opset from the kit, dynamic batch, simplified with onnxslim).
Detector parity: the same letterboxed images (dkit.edge.infer.preprocess, what the device will do) go through the
PyTorch student and through onnxruntime; the raw outputs' largest absolute difference must stay within
`export.parity_atol`, and after Ultralytics' NMS at the kit's edge thresholds the boxes must agree one to one
(same class, IoU >= 0.9, each ONNX box claiming one PyTorch box: dkit.edge.infer.map50.match) at least
`export.accuracy_guard` of the time.
Classifier parity: the device's input (dkit.edge.infer.preprocess: shortest side, centre crop, Pillow's bilinear
in numpy) against Ultralytics' own torchvision transform of the same image (largest difference, expected
0), the ONNX probabilities against the PyTorch student's on that input (within `export.parity_atol`), and
the top-1 class of the whole device path against Ultralytics' whole path (at least `export.accuracy_guard`).
Out of tolerance, the export fails and says by how much.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from dkit.core.errors import DkitError, UsageError, require
from dkit.core.run import RunDir
from dkit.edge.bundle.manifest import Decode, ModelEntry, Preprocess
from dkit.edge.infer.map50 import match
from dkit.edge.infer.preprocess import preprocess
from dkit.export.exporters import Exported

log = logging.getLogger(__name__)

PARITY_IMAGES = 16  # held-out images first, then training images, as many as there are up to this
PARITY_IOU = 0.9  # an ONNX box agrees with a PyTorch box of the same class at this IoU or more


def export_yolo_detect(kit, run: RunDir, bundle_dir: Path, store=None) -> Exported:
    """The `yolo-detect` exporter (dkit.export.exporters): its classes are the detector's own, in its output order."""
    return export_detector(kit, run, bundle_dir)


def export_yolo_cls(kit, run: RunDir, bundle_dir: Path, store=None) -> Exported:
    """The `yolo-cls` exporter (dkit.export.exporters): its classes are the ones the classifier was trained on."""
    return export_classifier(kit, run, bundle_dir)


def export_detector(kit, run_dir: Path, bundle_dir: Path) -> Exported:
    """The detector's model entry, preprocessing, decoding and class names in output order (`model.names`: the kit's
    ontology order when it was trained; a kit whose classes changed since is refused by _export_onnx, not renamed)."""
    model, onnx_path, best = _export_onnx(kit, run_dir, bundle_dir)
    names = [model.names[i] for i in range(len(model.names))]
    spec = preprocess_spec(kit, int(max(model.model.stride)))
    parity = detector_parity(model, onnx_path, kit_images(run_dir, split=None, limit=PARITY_IMAGES), spec, kit)
    _check(parity, kit, best, "box/class agreement after NMS")
    decode = Decode("yolov8-detect", {"output": "(batch, 4 + classes, anchors)", "boxes": "xywh, input pixels",
                                      "scores": "class probabilities, no objectness", "nms": "class-wise"})
    return Exported(_entry(onnx_path, kit, parity), spec, decode, names)


def export_classifier(kit, run_dir: Path, bundle_dir: Path) -> Exported:
    """The classifier's model entry, preprocessing, decoding and class names in output order (the classes it was
    trained on)."""
    model, onnx_path, best = _export_onnx(kit, run_dir, bundle_dir)
    transform = _classify_transform(model, kit.student.imgsz)
    spec = classifier_spec(transform, kit.student.imgsz)
    images = kit_images(run_dir, split=None, limit=PARITY_IMAGES)
    parity = classifier_parity(model, onnx_path, images, spec, transform)
    _check(parity, kit, best, "top-1 agreement with Ultralytics' predict")
    names = [model.names[i] for i in range(len(model.names))]
    decode = Decode("classify", {"output": "(batch, classes)", "scores": "probabilities (softmax inside the model)"})
    return Exported(_entry(onnx_path, kit, parity), spec, decode, names)


def _export_onnx(kit, run_dir: Path, bundle_dir: Path):
    ultralytics = require("ultralytics", what="exporting a YOLO student", extra="distill")
    require("onnx", what="exporting to ONNX", extra="export")
    best = RunDir(run_dir).trained_weights()
    s, e = kit.student, kit.export
    model = ultralytics.YOLO(str(best))
    names = [model.names[i] for i in range(len(model.names))]  # output order: what the bundle's classes must be
    if sorted(names) != sorted(kit.ontology.names):
        raise UsageError(f"{best} was trained on the classes {names}, but the kit's ontology now lists "
                         f"{list(kit.ontology.names)}: run `dkit label` and `dkit train` again before exporting")
    quiet = logging.getLogger("ultralytics")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its exporter's banner goes to stdout, where `dkit export` reports
    try:
        exported = Path(model.export(format="onnx", imgsz=s.imgsz, opset=e.opset, dynamic=True, simplify=True,
                                     verbose=False))
    finally:
        quiet.setLevel(level)
    onnx_path = bundle_dir / "student.onnx"
    shutil.move(str(exported), onnx_path)
    return model, onnx_path, best


def _check(parity: dict, kit, best: Path, what: str) -> None:
    e = kit.export
    if parity["max_abs_diff"] > e.parity_atol or parity["agreement"] < e.accuracy_guard:
        raise DkitError(
            f"ONNX export of {best} is out of tolerance on {parity['images']} images: max abs output difference "
            f"{parity['max_abs_diff']:.3g} (export.parity_atol {e.parity_atol:g}), {what} "
            f"{parity['agreement']:.3f} (export.accuracy_guard {e.accuracy_guard:g})"
        )
    log.info("ONNX parity on %d images: max abs diff %.2e, agreement %.3f", parity["images"],
             parity["max_abs_diff"], parity["agreement"])


def _entry(onnx_path: Path, kit, parity: dict) -> ModelEntry:
    """The fp32 student's model entry (`models.student`): its file, opset, parity report, inputs and outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return ModelEntry(
        "student", onnx_path.name, "fp32", info={"opset": kit.export.opset, "parity": parity},
        inputs=tuple({"name": i.name, "shape": i.shape, "dtype": "float32", "layout": "NCHW"}
                     for i in session.get_inputs()),
        outputs=tuple({"name": o.name, "shape": o.shape} for o in session.get_outputs()))


def preprocess_spec(kit, stride: int = 32) -> Preprocess:
    """What the device does to a frame before the detector: Ultralytics' letterbox at the student's size, minimal
    (stride-aligned padding; the ONNX graph has dynamic spatial axes) or square, as the kit's `edge.letterbox`."""
    size = kit.student.imgsz
    minimal = kit.edge.letterbox == "minimal"
    return Preprocess("letterbox", (size, size), pad_value=114, interpolation="linear", channels="RGB", scale=1 / 255,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), layout="NCHW",
                      letterbox="minimal" if minimal else "square", stride=stride if minimal else 32)


def detector_parity(model, onnx_path: Path, images: list[np.ndarray], spec: Preprocess, kit) -> dict:
    """Max abs difference of raw outputs, and box/class agreement after NMS, PyTorch vs onnxruntime."""
    import onnxruntime as ort
    import torch
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
                                    max_det=kit.edge.max_det)[0].numpy() for o in (ref, got))  # (N, 6) best first
        total += max(len(a), len(b))
        # one to one: each ONNX box (best first) claims one unclaimed PyTorch box of its class
        matched += int(match(b[:, :4], b[:, 5].astype(np.int64), a[:, :4], a[:, 5].astype(np.int64), PARITY_IOU).sum())
    return {"images": len(images), "max_abs_diff": max_diff,
            "agreement": 1.0 if total == 0 else matched / total, "boxes": total}


def _classify_transform(model, imgsz: int):
    """The torchvision transform Ultralytics' predictor applies for this classifier (its own, or the default)."""
    from ultralytics.data.augment import classify_transforms

    transform = getattr(model.model, "transforms", None)
    size = getattr(transform.transforms[0], "size", None) if transform is not None else None
    return transform if size in (imgsz, [imgsz], (imgsz, imgsz)) else classify_transforms(imgsz)


def classifier_spec(transform, imgsz: int) -> Preprocess:
    """Ultralytics' classify transform (Resize shortest, CenterCrop, ToTensor, Normalize) as manifest data."""
    import torchvision.transforms as T

    steps = {type(t): t for t in transform.transforms}
    resize, normalize = steps.get(T.Resize), steps.get(T.Normalize)
    if resize is None or normalize is None or resize.interpolation != T.InterpolationMode.BILINEAR:
        raise DkitError(f"this classifier's transform ({transform}) is not the Resize(bilinear) + CenterCrop + "
                        "Normalize the edge reproduces")
    return Preprocess("shortest", (imgsz, imgsz), crop="center", interpolation="pil-bilinear", channels="RGB",
                      scale=1 / 255, mean=tuple(float(v) for v in normalize.mean),
                      std=tuple(float(v) for v in normalize.std), layout="NCHW", size_is_int=True)


def classifier_parity(model, onnx_path: Path, images: list[np.ndarray], spec: Preprocess, transform) -> dict:
    """Device input vs Ultralytics' input, ONNX vs PyTorch outputs, and the two whole paths' top-1 classes."""
    import onnxruntime as ort
    import torch
    from PIL import Image

    net = model.model.float().eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    input_diff, max_diff, same = 0.0, 0.0, 0
    for rgb in images:
        x, _ = preprocess(rgb, spec)  # (1, 3, S, S): what the device feeds
        theirs = transform(Image.fromarray(rgb)).numpy()[None]  # what Ultralytics' predict feeds
        input_diff = max(input_diff, float(np.abs(x - theirs).max()))
        with torch.inference_mode():
            ref, ref_theirs = (_probs(net(torch.from_numpy(v))) for v in (x, theirs))  # (1, C) each
        got = session.run(None, {name: x})[0]
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        same += int(got.argmax() == ref_theirs.argmax())
    return {"images": len(images), "max_abs_diff": max_diff, "input_max_abs_diff": input_diff,
            "agreement": same / len(images)}


def _probs(out) -> np.ndarray:
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def kit_images(run_dir: Path, *, split: str | None, limit: int) -> list[np.ndarray]:
    """Up to `limit` of the kit's own labelled images as (H, W, 3) RGB: one split, or all (held-out first)."""
    import cv2

    run = RunDir(run_dir)
    records = sorted((r for r in run.records() if r.split and split in (None, r.split)),
                     key=lambda r: (r.split != "val", r.image))
    images = []
    for rec in records:
        path = run.labels / rec.dataset_image if rec.dataset_image else Path(rec.source)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # the data set's copy: normalised images are plain JPEGs
        if bgr is not None:
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len(images) == limit:
            break
    if not images:
        raise UsageError(f"no readable {split or ''} images in {run.labels} to check the export against")
    return images
