"""NCNN models for the bundle (`export.backends: [onnx, ncnn]`), through pnnx, checked against the bundle's ONNX
model on the kit's held-out images before they are shipped.

    from dkit.export.ncnn import export_ncnn

    entries = export_ncnn(kit, run, bundle_dir, onnx_entry, held_out, task)   # {"student_ncnn": {...}, ...}

- A YOLO detector is exported up to its head's raw convolutions (`pnnx.export` of the torch model, traced at the
  square size and at a 16:9 frame's minimal letterbox), with no anchor grid in the graph: the entry's `head`
  (strides, reg_max) tells the device to decode in numpy (dkit.edge.infer.yolo_head), and NCNN then takes any
  stride-aligned input, the minimal letterbox included. (Ultralytics' own NCNN export bakes the export size's
  anchor count in, and a dynamic head's grid becomes pnnx.Expression layers NCNN cannot load.)
- A YOLO classifier goes through Ultralytics' own NCNN export; a clip-embed image encoder through `pnnx.export`.
  Which converter a student kind uses is part of its declaration (dkit.core.student_kinds.StudentKind.ncnn; a kind
  without one has no NCNN model): `convert(kit, run, bundle_dir, stem, *, half) -> (param, weights, head | None)`.

Two models: `student_ncnn` (fp32 weights; the device runs it in fp32) and `student_ncnn_fp16` (fp16 weights, half
the size; the device switches on NCNN's fp16 storage and arithmetic, which Arm v8.2+ CPUs such as the Raspberry
Pi 5's run natively). Each is run through dkit.edge's own NCNN backend on the inputs the ONNX model gets and
compared with the variants' metric (dkit.export.variants.output_agreement: mAP50 against the ONNX detections, top-1
agreement, or the mean cosine of the embeddings); below `export.accuracy_guard` it is refused, listed under
`refused_variants`, and not shipped.
With int8 in `export.precisions`, a detector also gets `student_ncnn_int8` (dkit.export.ncnn_int8: the format
of NCNN's ncnn2table/ncnn2int8 tools, which no wheel ships, written in Python; calibrated on the kit's training
images), under the same guard.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from dkit.core.errors import DkitError, UsageError, require
from dkit.core.run import RunDir
from dkit.core.student_kinds import student_kinds
from dkit.edge.bundle.manifest import ModelEntry, Preprocess
from dkit.edge.infer.preprocess import preprocess
from dkit.export.exporters import Built, Refused, resolve

log = logging.getLogger(__name__)


def ncnn_kinds() -> list[str]:
    """The declared student kinds that have an NCNN converter (StudentKind.ncnn)."""
    return [key for key, kind in student_kinds().items() if kind.ncnn]


def export_ncnn(kit, run: RunDir, bundle_dir: Path, model: ModelEntry, spec: Preprocess, held_out: list[np.ndarray],
                task: str, calibration: list[np.ndarray] | None = None) -> dict[str, Built]:
    """{role: model entry} of the NCNN models written into bundle_dir, checked against the ONNX student `model`
    (prepared by `spec`), a Refused where below the guard; with `calibration` images and int8 in
    export.precisions, a detector's int8 NCNN model too (dkit.export.ncnn_int8)."""
    kind = kit.student.spec
    if kind.ncnn is None:
        raise UsageError(f"export.backends: ncnn is exported for {', '.join(ncnn_kinds())} students; "
                         f"this kit's student.kind is {kit.student.kind}")
    require("pnnx", what="the NCNN export (export.backends: ncnn)", extra="export")
    require("ncnn", what="checking the NCNN model", extra="export")
    convert = resolve(kind.ncnn)
    detector = kind.task == "detect"
    spec = spec if detector else replace(spec, letterbox="square")  # a detector keeps the bundle's letterbox
    inputs = [preprocess(rgb, spec)[0] for rgb in held_out]  # (1, 3, H, W) each
    out = {}
    for precision in ("fp32", "fp16"):
        role = "student_ncnn" if precision == "fp32" else "student_ncnn_fp16"
        stem = "student" if precision == "fp32" else "student-fp16"
        param, weights, head = convert(kit, run, bundle_dir, stem, half=precision == "fp16")
        size = ["height", "width"] if head else list(spec.size)
        parity = _parity(bundle_dir / model.file, param, weights, precision, inputs, kit, task, head)
        info = {**({"checked_on": platform.machine()} if precision != "fp32" else {}),
                **({"head": head} if head else {}), "vs_onnx": parity}
        shape = {"name": "in0", "shape": [1, 3, *size], "dtype": "float32", "layout": "NCHW"}
        doc = ModelEntry(role, param.name, precision, "ncnn", weights.name, info=info, inputs=(shape,))
        out[role] = _guard(doc, kit, param, weights)
    if detector and calibration and "int8" in kit.export.precisions and isinstance(out["student_ncnn"], ModelEntry):
        out["student_ncnn_int8"] = _int8(kit, bundle_dir, model, out["student_ncnn"], spec, calibration, inputs,
                                         task)
    return out


def _int8(kit, bundle_dir: Path, model: ModelEntry, fp32: ModelEntry, spec: Preprocess, calibration: list[np.ndarray],
          inputs: list[np.ndarray], task: str) -> Built:
    """The int8 NCNN detector from the fp32 one, checked against the ONNX model like the others."""
    from dkit.export.ncnn_int8 import quantize_ncnn

    param, weights = bundle_dir / "student-int8.ncnn.param", bundle_dir / "student-int8.ncnn.bin"
    calib = [preprocess(rgb, spec)[0] for rgb in calibration]
    how = quantize_ncnn(bundle_dir / fp32.file, bundle_dir / fp32.weights, param, weights, calib)
    # int8 kernels round differently per CPU family (measured: NCNN int8 on aarch64 agrees with x86's on 0.88 of
    # the boxes): the guard holds for the architecture it ran on; elsewhere the device checks it (checks/)
    head = fp32.info["head"]
    info = {"head": head, "int8": how, "checked_on": platform.machine(),
            "vs_onnx": _parity(bundle_dir / model.file, param, weights, "int8", inputs, kit, task, head)}
    doc = ModelEntry("student_ncnn_int8", param.name, "int8", "ncnn", weights.name, info=info, inputs=fp32.inputs)
    return _guard(doc, kit, param, weights)


def _guard(doc: ModelEntry, kit, param: Path, weights: Path) -> Built:
    """Below export.accuracy_guard against the ONNX model: the files go, and a Refused says why (not shipped)."""
    parity = doc.info["vs_onnx"]
    if parity["agreement"] >= kit.export.accuracy_guard:
        return doc
    param.unlink()
    weights.unlink()
    refused = Refused(doc, f"NCNN {doc.precision}: {parity['metric']} against the ONNX model "
                           f"{parity['agreement']:.3f} is below export.accuracy_guard "
                           f"{kit.export.accuracy_guard:g}: not shipped")
    log.warning("%s", refused.reason)
    return refused


def convert_yolo_detect(kit, run: RunDir, bundle_dir: Path, stem: str, *, half: bool) -> tuple[Path, Path, dict]:
    """The `yolo-detect` NCNN converter: a YOLO detector up to its head's raw convolutions (no anchor grid in the
    graph, so NCNN takes any input size), through `pnnx.export` traced at two shapes; returns the files and the
    head the device decodes."""
    import types

    import torch

    ultralytics = require("ultralytics", what="exporting a YOLO student", extra="distill")
    from ultralytics.nn.modules import Detect

    best = run.trained_weights()
    model = ultralytics.YOLO(str(best)).model.float().eval()
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    if len(heads) != 1 or type(heads[0]) is not Detect or getattr(heads[0], "end2end", False):
        raise UsageError(f"{best}: the NCNN detector export knows YOLOv8-style Detect heads; this model has "
                         f"{', '.join(type(h).__name__ for h in heads) or 'none'}")
    det = heads[0]

    def raw(self, x):  # each level: (1, 4 * reg_max + C, h, w), what Detect computes before decoding
        return tuple(torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl))

    det.forward = types.MethodType(raw, det)
    s = kit.student.imgsz
    wide = max(32, int(round(s * 9 / 16 / 32)) * 32)  # a 16:9 frame's minimal letterbox: the second traced shape
    head = {"type": "yolov8-raw", "strides": [float(v) for v in det.stride], "reg_max": int(det.reg_max)}
    _pnnx_export(model, best, bundle_dir, stem, half, torch.zeros(1, 3, s, s), torch.zeros(1, 3, wide, s))
    return bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin", head


def convert_yolo_cls(kit, run: RunDir, bundle_dir: Path, stem: str, *, half: bool) -> tuple[Path, Path, None]:
    """The `yolo-cls` NCNN converter: Ultralytics' own NCNN export (pnnx) -> bundle_dir/<stem>.ncnn.param, .bin."""
    ultralytics = require("ultralytics", what="exporting a YOLO student", extra="distill")
    best = run.trained_weights()
    quiet = logging.getLogger("ultralytics")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    log_file = bundle_dir.parent / f".pnnx-{stem}.log"
    try:
        with _stdout_to(log_file):  # pnnx (a subprocess) prints its passes on stdout, where `dkit export` reports
            folder = Path(ultralytics.YOLO(str(best)).export(format="ncnn", imgsz=kit.student.imgsz,
                                                             quantize=16 if half else None, verbose=False))
    except Exception as e:
        tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file.is_file() else []
        raise DkitError(f"NCNN export of {best} failed: {type(e).__name__}: {e}"
                        + ("\npnnx said:\n  " + "\n  ".join(tail) if tail else "")) from e
    finally:
        quiet.setLevel(level)
        log_file.unlink(missing_ok=True)
    try:
        param, weights = bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin"
        shutil.move(str(folder / "model.ncnn.param"), param)
        shutil.move(str(folder / "model.ncnn.bin"), weights)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return param, weights, None


def convert_clip_embed(kit, run: RunDir, bundle_dir: Path, stem: str, *, half: bool) -> tuple[Path, Path, None]:
    """The `clip-embed` NCNN converter: the student's image encoder (a torch module) through `pnnx.export`, traced
    at its input size."""
    import torch

    from dkit.distill.students import clip_embed

    best = run.trained_weights()
    model, ckpt = clip_embed.load_student(best)
    size = ckpt["preprocess"].size[0]
    _pnnx_export(model.float().eval(), best, bundle_dir, stem, half, torch.zeros(1, 3, size, size))
    return bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin", None


def _pnnx_export(module, best: Path, bundle_dir: Path, stem: str, half: bool, x, x2=None) -> None:
    """`pnnx.export(module)` -> bundle_dir/<stem>.ncnn.param, .bin (x2: a second input shape, for dynamic axes);
    pnnx's by-products stay in a temporary folder, its log is shown only when it fails."""
    import tempfile

    import pnnx
    import torch

    param, weights = bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin"
    with tempfile.TemporaryDirectory(prefix="dkit-pnnx-") as tmp:
        log_file = Path(tmp) / "pnnx.log"
        side = {k: str(Path(tmp) / name) for k, name in (
            ("pnnxparam", "model.pnnx.param"), ("pnnxbin", "model.pnnx.bin"), ("pnnxpy", "model_pnnx.py"),
            ("pnnxonnx", "model.pnnx.onnx"), ("ncnnpy", "model_ncnn.py"))}
        try:
            with _stdout_to(log_file), torch.inference_mode(False):
                pnnx.export(module, str(Path(tmp) / "model.pt"), x, inputs2=x2, ncnnparam=str(param),
                            ncnnbin=str(weights), fp16=half, **side)
        except Exception as e:
            tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file.is_file() else []
            if param.is_file() and weights.is_file() and isinstance(e, (SyntaxError, ImportError)):
                # pnnx wrote the NCNN model, then failed importing its own Python by-product: not ours to use
                log.debug("pnnx's Python module failed to import (%s); the NCNN files are written", e)
                return
            raise DkitError(f"NCNN export of {best} failed: {type(e).__name__}: {e}"
                            + ("\npnnx said:\n  " + "\n  ".join(tail) if tail else "")) from e
    if not (param.is_file() and weights.is_file()):
        raise DkitError(f"NCNN export of {best}: pnnx wrote no {param.name} / {weights.name}")


@contextmanager
def _stdout_to(path: Path):
    """File descriptors 1 and 2 (this process's and its children's stdout and stderr) into `path` for the
    duration: pnnx prints every pass of its conversion; the tail is shown when it fails."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _parity(onnx_file: Path, param: Path, weights: Path, precision: str, inputs: list[np.ndarray], kit,
            task: str, head: dict | None = None) -> dict:
    from dkit.edge.infer.backends.ncnn_backend import NcnnBackend
    from dkit.edge.infer.backends.ort_backend import OrtBackend
    from dkit.export.variants import output_agreement

    ref_be = OrtBackend(onnx_file, "", providers=["cpu"])
    got_be = NcnnBackend(param, weights, precision, head=head)
    ref = [ref_be.run(x) for x in inputs]
    got = [got_be.run(x) for x in inputs]
    result = output_agreement(ref, got, kit, task)
    log.info("NCNN %s against ONNX on %d images: %s %.3f, max abs diff %.2e", precision, len(inputs),
             result["metric"], result["agreement"], result["max_abs_diff"])
    return result
