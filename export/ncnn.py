"""NCNN models for the bundle (`export.backends: [onnx, ncnn]`): the student through pnnx (a YOLO student as
Ultralytics exports it, a clip-embed image encoder with `pnnx.export` of its torch module), checked against the
bundle's ONNX model on the kit's held-out images before it is shipped.

    entries = export_ncnn(kit, run, bundle_dir, onnx_entry, held_out, task)   # {"student_ncnn": {...}, ...}

Two models: `student_ncnn` (fp32 weights; the device runs it in fp32) and `student_ncnn_fp16` (fp16 weights, half
the size; the device switches on NCNN's fp16 storage and arithmetic, which Arm v8.2+ CPUs such as the Raspberry
Pi 5's run natively). Each is run through dkit.edge's own NCNN backend with the same square-letterboxed inputs as
the ONNX model (the graph pnnx writes has the anchor count of the export size baked in) and compared with the
variants' metric (dkit.export.variants.agreement: mAP50 against the ONNX detections, top-1 agreement, or the
mean cosine of the embeddings); below
`export.accuracy_guard` it is refused, listed under `refused_variants`, and not shipped.
There is no NCNN int8 here: NCNN quantizes with its ncnn2table/ncnn2int8 tools, which neither the PyPI wheels
(ncnn, pnnx) nor Debian ship.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from dkit.core.errors import DkitError, UsageError, require
from dkit.core.run import RunDir
from dkit.edge.manifest import Preprocess
from dkit.edge.preprocess import preprocess

log = logging.getLogger(__name__)
KINDS = ("yolo-detect", "yolo-cls", "clip-embed")


def export_ncnn(kit, run: RunDir, bundle_dir: Path, entry: dict, held_out: list[np.ndarray], task: str) -> dict:
    """{role: manifest entry} of the NCNN models written into bundle_dir (a refused one has `refused`)."""
    if kit.student.kind not in KINDS:
        raise UsageError(f"export.backends: ncnn is exported for {', '.join(KINDS)} students; "
                         f"this kit's student.kind is {kit.student.kind}")
    require("pnnx", what="the NCNN export (export.backends: ncnn)", extra="export")
    require("ncnn", what="checking the NCNN model", extra="export")
    spec = replace(Preprocess.from_dict(entry["preprocess"]), letterbox="square")
    inputs = [preprocess(rgb, spec)[0] for rgb in held_out]  # (1, 3, S, S) each
    out = {}
    for precision in ("fp32", "fp16"):
        role = "student_ncnn" if precision == "fp32" else "student_ncnn_fp16"
        stem = "student" if precision == "fp32" else "student-fp16"
        param, weights = _convert(kit, run, bundle_dir, stem, half=precision == "fp16")
        doc = {"file": param.name, "weights": weights.name, "format": "ncnn", "precision": precision,
               "inputs": [{"name": "in0", "shape": [1, 3, *spec.size], "dtype": "float32", "layout": "NCHW"}]}
        doc["vs_onnx"] = _parity(bundle_dir / entry["file"], param, weights, precision, inputs, kit, task)
        if doc["vs_onnx"]["agreement"] < kit.export.accuracy_guard:
            param.unlink()
            weights.unlink()
            doc["refused"] = (f"NCNN {precision}: {doc['vs_onnx']['metric']} against the ONNX model "
                              f"{doc['vs_onnx']['agreement']:.3f} is below export.accuracy_guard "
                              f"{kit.export.accuracy_guard:g}: not shipped")
            log.warning("%s", doc["refused"])
        out[role] = doc
    return out


def _convert(kit, run: RunDir, bundle_dir: Path, stem: str, *, half: bool) -> tuple[Path, Path]:
    """The trained student through pnnx -> bundle_dir/<stem>.ncnn.param, .bin."""
    if kit.student.kind == "clip-embed":
        return _convert_module(kit, run, bundle_dir, stem, half=half)
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
    return param, weights


def _convert_module(kit, run: RunDir, bundle_dir: Path, stem: str, *, half: bool) -> tuple[Path, Path]:
    """A clip-embed student's image encoder (a torch module) through `pnnx.export`, traced at its input size."""
    import tempfile

    import pnnx
    import torch

    from dkit.distill.students import clip_embed

    best = run.trained_weights()
    model, ckpt = clip_embed.load_student(best)
    size = ckpt["preprocess"]["size"]
    param, weights = bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin"
    with tempfile.TemporaryDirectory(prefix="dkit-pnnx-") as tmp:
        log_file = Path(tmp) / "pnnx.log"
        side = {k: str(Path(tmp) / name) for k, name in (  # pnnx's by-products, left in the temporary folder
            ("pnnxparam", "model.pnnx.param"), ("pnnxbin", "model.pnnx.bin"), ("pnnxpy", "model_pnnx.py"),
            ("pnnxonnx", "model.pnnx.onnx"), ("ncnnpy", "model_ncnn.py"))}
        try:
            with _stdout_to(log_file), torch.inference_mode(False):
                pnnx.export(model.float().eval(), str(Path(tmp) / "model.pt"), torch.zeros(1, 3, size, size),
                            ncnnparam=str(param), ncnnbin=str(weights), fp16=half, **side)
        except Exception as e:
            tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file.is_file() else []
            raise DkitError(f"NCNN export of {best} failed: {type(e).__name__}: {e}"
                            + ("\npnnx said:\n  " + "\n  ".join(tail) if tail else "")) from e
    if not (param.is_file() and weights.is_file()):
        raise DkitError(f"NCNN export of {best}: pnnx wrote no {param.name} / {weights.name}")
    return param, weights


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
            task: str) -> dict:
    from dkit.edge.backends.ncnn_backend import NcnnBackend
    from dkit.edge.backends.ort_backend import OrtBackend
    from dkit.export.variants import agreement

    ref_be, got_be = OrtBackend(onnx_file, "", providers=["cpu"]), NcnnBackend(param, weights, precision)
    ref = [ref_be.run(x) for x in inputs]
    got = [got_be.run(x) for x in inputs]
    result = agreement(ref, got, kit, task)
    log.info("NCNN %s against ONNX on %d images: %s %.3f, max abs diff %.2e", precision, len(inputs),
             result["metric"], result["agreement"], result["max_abs_diff"])
    return result
