"""The on-device accuracy check: a reduced-precision model exported on one CPU architecture, checked on this one
before `--precision auto` uses it.

    from dkit.edge.infer.device_check import check, needs_check

    outcome = check(bundle, "ncnn", "int8")     # Outcome(agreement=0.97, minimum=0.95, images=16): .passed
    needs_check(bundle.manifest.model("int8", "ncnn"))   # True where the export ran on another architecture

An int8 or fp16 model passes the export's accuracy guard on the export machine's kernels; another CPU family
rounds differently (measured, `make test-arm64-backends`: NCNN int8 on aarch64 agrees with x86's on 0.88 of the
boxes at IoU 0.9). So the export ships `checks/`: held-out images (JPEG quality 95, no larger than the model's
input: `make test-arm64` measured OpenCV's JPEG decoding identical on aarch64 and x86) and what the fp32
onnxruntime model found on those decoded pixels (manifest `checks.reference`). Here the candidate runs
on those images through the whole runtime, and its agreement with that reference by the export guard's own
metric (a detector's mAP50 against the reference boxes, dkit.edge.infer.map50; top-1 agreement; mean cosine) must
reach the export's guard (`checks.min_agreement`).
dkit.edge.infer.select runs it for each model whose `checked_on` is not this machine's architecture and keeps the
outcome with its choice; a model forced with --backend/--precision is checked too, and a warning says if it fails.
A bundle without checks (exported before them) cannot be checked: such a model is left out of auto.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass

import numpy as np

from dkit.edge.infer.backends.base import RuntimeConfigError

log = logging.getLogger(__name__)
MAX_IMAGES = 256  # the export writes at most this many (export.device_checks)
MAX_BYTES = 8 * 2**20  # one check image file
MAX_REFERENCE_BYTES = 32 * 2**20  # the reference document (32 images of 300 boxes: about 0.5 MB)
MAX_SIDE = 4096  # a check image is no larger than the model's input; anything bigger is not the export's
RANK_CONF = 0.001  # detections ranked for mAP50 down to this confidence (the export's variants.compare too)
METRICS = {"detect": "mAP50", "classify": "top-1 agreement", "embed": "mean cosine"}


@dataclass(frozen=True)
class Outcome:
    agreement: float
    minimum: float
    images: int
    metric: str = "agreement"

    @property
    def passed(self) -> bool:
        return self.agreement >= self.minimum

    def describe(self) -> str:
        return (f"{self.metric} {self.agreement:.3f} against the export's fp32 results on {self.images} images "
                f"({'passes' if self.passed else 'below'} the guard {self.minimum:g})")


def needs_check(entry) -> bool:
    """Whether `entry` was checked against fp32 on another CPU architecture than this one (or on an unknown one:
    an NCNN int8 model exported before `checked_on` was recorded). fp32 models and older ONNX variants: no."""
    if entry.precision == "fp32":
        return False
    default = None if (entry.format, entry.precision) == ("ncnn", "int8") else platform.machine()
    return entry.info.get("checked_on", default) != platform.machine()


def check(bundle, backend: str, precision: str, *, providers: list[str] | None = None,
          threads: int | None = None) -> Outcome:
    """Run the `precision` model on `backend` over the bundle's check images; its agreement with the reference
    by the export guard's own metric (METRICS)."""
    checks = bundle.manifest.checks
    if checks is None:
        raise RuntimeConfigError(f"{bundle.source}: no device checks in this bundle (export it again with "
                                 "export.device_checks above 0 to check its reduced-precision models here)")
    doc = read_reference(bundle)
    task = bundle.manifest.task
    m = bundle.manifest
    ref = reference_results(doc, task, max_det=m.thresholds.max_det, dim=m.prompts.dim if m.prompts else None)
    # a detector's predictions are ranked down to conf 0.001, as the export's mAP50 ranks them
    from dkit.edge.infer.model import Model

    letterbox = doc.get("letterbox") if doc.get("letterbox") in ("square", "minimal") else None
    try:
        model = Model(bundle, backend, precision, providers=providers, threads=threads, letterbox=letterbox,
                      warmup=0, **({"conf": RANK_CONF} if task == "detect" else {}))
        try:
            got = [model(load_image(bundle, item["file"]), frame_id=i) for i, item in enumerate(doc["images"])]
        finally:
            model.close()  # the bundle stays open: it is the caller's
        value = score(ref, got)
    except RuntimeConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a backend or library failure on the check images: not checkable here
        raise RuntimeConfigError(f"{bundle.source}: {backend}/{precision} failed on the check images "
                                 f"({type(e).__name__}: {e})") from e
    return Outcome(round(value, 4), checks.min_agreement, len(ref), METRICS[task])


def score(ref: list, got: list) -> float:
    """The export guard's metric of `got` against `ref` (Result lists, image by image)."""
    if ref and ref[0].task == "detect":
        from dkit.edge.infer.map50 import map50

        return map50((b.detections.xyxy, b.detections.confidence, b.detections.class_id, a.detections.xyxy,
                      a.detections.class_id) for a, b in zip(ref, got, strict=True))
    from dkit.edge.infer.agreement import agreement

    return agreement(ref, got)


def read_reference(bundle) -> dict:
    """The checks' reference document (its sha256 was verified with the bundle), its size and shape checked."""
    from dkit.edge.bundle import BundleError

    try:
        path = bundle.path(bundle.manifest.checks.reference)
        if path.stat().st_size > MAX_REFERENCE_BYTES:
            raise RuntimeConfigError(f"{path}: over {MAX_REFERENCE_BYTES // 2**20} MiB, not an export's reference")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (BundleError, OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RuntimeConfigError(f"{bundle.source}: not a readable checks reference ({type(e).__name__}: {e})") from e
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not 0 < len(images) <= MAX_IMAGES or not all(
            isinstance(i, dict) and isinstance(i.get("file"), str) for i in images):
        raise RuntimeConfigError(f"{bundle.source}: checks reference: 'images' must list 1 to {MAX_IMAGES} objects "
                                 "with a 'file'")
    return doc


def load_image(bundle, name: str) -> np.ndarray:
    """A check image (JPEG or PNG) as (H, W, 3) uint8 RGB; its size read from the header and bounded before it is
    decoded."""
    import cv2

    from dkit.edge.bundle import BundleError
    from dkit.edge.images.header import UploadError, image_size

    try:
        path = bundle.path(name)
    except BundleError as e:
        raise RuntimeConfigError(str(e)) from e
    if path.stat().st_size > MAX_BYTES:
        raise RuntimeConfigError(f"{bundle.source}: check image {name} is over {MAX_BYTES // 2**20} MiB")
    data = path.read_bytes()
    try:
        kind, w, h = image_size(data)
    except UploadError as e:
        raise RuntimeConfigError(f"{bundle.source}: check image {name}: {e.message}") from e
    if kind not in ("jpeg", "png"):
        raise RuntimeConfigError(f"{bundle.source}: check image {name} is {kind}, not a JPEG or PNG file")
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise RuntimeConfigError(f"{bundle.source}: check image {name} is {w}x{h} (at most {MAX_SIDE} a side)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeConfigError(f"{bundle.source}: check image {name} does not decode")
    return np.ascontiguousarray(bgr[:, :, ::-1])  # (H, W, 3) RGB


def reference_results(doc: dict, task: str, *, max_det: int = 300, dim: int | None = None) -> list:
    """The reference document's per-image results as Result objects (what the metric compares), each checked:
    a detector's rows are (N <= max_det, 6) finite numbers, a classifier's top1 an integer, an embedding (dim,)."""
    from dkit.edge.infer.postprocess import Detections
    from dkit.edge.infer.result import Result

    out = []
    for i, item in enumerate(doc["images"]):
        try:
            if task == "detect":
                rows = np.asarray(item["detections"], np.float32)  # (N, 6) x1 y1 x2 y2 conf class
                rows = rows.reshape(0, 6) if rows.size == 0 else rows
                if rows.ndim != 2 or rows.shape[1] != 6 or len(rows) > max_det or not np.isfinite(rows).all():
                    raise ValueError(f"expected at most {max_det} rows of 6 finite numbers, got shape {rows.shape}")
                out.append(Result(i, 0.0, 0.0, task, detections=Detections(rows[:, :4], rows[:, 4],
                                                                           rows[:, 5].astype(np.int64))))
            elif task == "classify":
                if not isinstance(item["top1"], int) or isinstance(item["top1"], bool):
                    raise TypeError(f"top1 must be an integer, got {item['top1']!r}")
                out.append(Result(i, 0.0, 0.0, task, top=[(item["top1"], 1.0)]))
            else:
                e = np.asarray(item["embedding"], np.float32)
                if e.ndim != 1 or (dim is not None and len(e) != dim) or not np.isfinite(e).all():
                    raise ValueError(f"expected {dim or 'D'} finite numbers, got shape {e.shape}")
                out.append(Result(i, 0.0, 0.0, task, embedding=e))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RuntimeConfigError(f"checks reference, image {i} ({item.get('file')}): not a {task} result "
                                     f"({type(e).__name__}: {e})") from e
    return out


def result_doc(result, file: str) -> dict:
    """One image's entry of the reference document (the export writes these from the fp32 onnxruntime run)."""
    if result.task == "detect":
        d = result.detections
        rows = np.concatenate([d.xyxy, d.confidence[:, None], d.class_id[:, None].astype(np.float32)], 1)
        return {"file": file, "detections": [[round(float(v), 2) for v in r] for r in rows]}
    if result.task == "classify":
        return {"file": file, "top1": int(result.top[0][0])}
    return {"file": file, "embedding": [round(float(v), 7) for v in result.embedding]}


__all__ = ["Outcome", "check", "needs_check", "read_reference", "reference_results", "result_doc"]
