"""`dkit export`: a trained student -> RUN_DIR/bundle/ (and bundle.tar.gz), verified before it is put in place.

    from dkit.core.store import ModelStore
    from dkit.export.bundle import export_bundle

    result = export_bundle(kit, run_dir, store=ModelStore())

The bundle is built in a temporary folder: the model files for the student's kind, a README.md for the person
installing it (dkit.export.readme), and manifest.json (dkit.export.manifest: everything the device reads, with
the sha256 of every file). It is then opened with the edge's own verifier, exactly as a device would, and only
then swapped into place; the archive is written beside it the same way. Nothing half-written is ever left
where a bundle is expected.

By student kind (task in the manifest):
- `yolo-detect` (detect): student.onnx, letterbox preprocessing, YOLOv8 decoding, NMS thresholds (dkit.export.yolo).
- `yolo-cls` (classify): student.onnx giving probabilities, Ultralytics' classify preprocessing (dkit.export.yolo).
- `clip-embed` (embed, the kiosk judge): the image encoder, the teacher's text encoder, the tokenizer vocab,
  the prompt embeddings and the score calibration (dkit.export.judge).
Each gets the fp16/int8 variants the kit asks for (dkit.export.variants), each measured against fp32 and refused
below the accuracy guard; `export.backends: [onnx, ncnn]` adds NCNN models (dkit.export.ncnn),
checked against the ONNX model the same way; `checks/` carries held-out images and the fp32 results on them, so a
device of another CPU architecture checks a reduced-precision model before using it (dkit.export.device_checks).
TensorRT engines are device-specific: the README carries the
device's build command, and with the `tensorrt` package and a GPU here an engine is built too
(dkit.export.tensorrt).
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path

from dkit.core.errors import UsageError
from dkit.core.files import atomic_write, new_tmp_dir, read_json, replace_dir
from dkit.core.run import RunDir
from dkit.distill.students import student_plugin
from dkit.edge.bundle import open_bundle
from dkit.edge.bundle.manifest import ModelEntry
from dkit.export.exporters import Built, Exported, exporter_for
from dkit.export.manifest import build_manifest, write_manifest
from dkit.export.readme import render_readme

log = logging.getLogger(__name__)



def export_bundle(kit, run_dir: Path, *, store=None) -> dict:
    from dkit.core.store import ModelStore
    from dkit.export.variants import make_variant

    run = RunDir(run_dir)
    run.trained_weights()  # first: without a trained student there is nothing to export (and maybe no run folder)
    task = student_plugin(kit).task
    tmp = new_tmp_dir(run.root, f".bundle-{os.getpid()}-")
    try:
        exported = exporter_for(kit)(kit, run, tmp, store or ModelStore())
        model, spec = exported.model, exported.preprocess
        variants = {}
        later = [p for p in dict.fromkeys(kit.export.precisions) if p != "fp32"]
        ncnn = "ncnn" in kit.export.backends
        held_out = _split_images(run.root, "val", 256) if later or ncnn else []
        calibration = []
        if later:
            # int8 scales from the training images: the held-out ones judge the result
            calibration = _split_images(run.root, "train", kit.export.calibration_images)
            for precision in later:
                variants[precision] = make_variant(precision, tmp / model.file, tmp, kit, held_out, calibration,
                                                   spec, task)
        formats = {}
        if ncnn:
            from dkit.export.ncnn import export_ncnn

            formats = export_ncnn(kit, run, tmp, model, spec, held_out, task,
                                  calibration if "int8" in kit.export.precisions else None)
        engines = _engines(kit, tmp, exported, variants)
        manifest = build_manifest(kit, run, task, exported, variants.values(), (engines | formats).values())
        manifest = write_manifest(tmp, manifest)
        if any(m.precision != "fp32" for m in manifest.models.values()):
            manifest = _device_checks(kit, tmp, manifest, held_out)
        atomic_write(tmp / "README.md", render_readme(kit, manifest, read_json(run.eval_json)))
        manifest = write_manifest(tmp, manifest)
        with open_bundle(tmp, announce=False):  # the device's own check, on exactly what will be shipped
            pass
        replace_dir(tmp, run.bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = _archive(run) if kit.export.archive else None
    return {"bundle": str(run.bundle), "archive": None if archive is None else str(archive), "task": task,
            "models": {k: v.file for k, v in manifest.models.items()},
            "parity": {k: dict(v.info["parity"]) for k, v in manifest.models.items() if "parity" in v.info},
            "variants": {p: v.to_dict() for p, v in variants.items()},
            "formats": {r: v.to_dict() for r, v in formats.items()}, "calibration": None if manifest.calibration is None
            else manifest.calibration.to_dict(), "device_checks": _device_check_figures(manifest)}


def _device_check_figures(manifest) -> dict | None:
    """The on-device check run here on the shipped checks/ images (the figures the export's warnings quote), for the
    summary: {"machine", "guard", "figures": {"ncnn/int8": 0.933, ...}}; None without checks."""
    if manifest.checks is None:
        return None
    figures = dict((manifest.info.get("device_checks") or {}).get(manifest.checks.machine) or {})
    images = sum(1 for name in manifest.files if name.startswith("checks/") and name != manifest.checks.reference)
    return {"machine": manifest.checks.machine, "guard": manifest.checks.min_agreement, "figures": figures,
            "images": images}


def _device_checks(kit, tmp: Path, manifest, held_out: list):
    """checks/ for the reduced-precision models (dkit.export.device_checks); without them, say what it costs."""
    if kit.export.device_checks and held_out:
        from dkit.export.device_checks import write_checks

        return write_checks(tmp, kit, manifest, held_out)
    log.warning("no device checks in this bundle (export.device_checks is 0, or no held-out images): a device of "
                "another CPU architecture than this one leaves its fp16/int8 models out of --precision auto")
    return manifest


def _archive(run: RunDir) -> Path:
    """RUN_DIR/bundle.tar.gz, written beside as a part file and renamed, then verified like the folder."""
    part = run.root / f".bundle.tar.gz.{os.getpid()}.part"
    try:
        with tarfile.open(part, "w:gz") as tf:
            tf.add(run.bundle, arcname="bundle")
        os.replace(part, run.archive)
    finally:
        part.unlink(missing_ok=True)
    with open_bundle(run.archive, announce=False):
        pass
    return run.archive


def _split_images(run_dir: Path, split: str, limit: int) -> list:
    """Up to `limit` of the kit's images of one split, or of both when that split is empty."""
    from dkit.export.yolo import kit_images

    try:
        return kit_images(run_dir, split=split, limit=limit)
    except UsageError:
        return kit_images(run_dir, split=None, limit=limit)


def _engines(kit, bundle_dir: Path, exported: Exported, variants: dict[str, Built]) -> dict[str, ModelEntry]:
    """TensorRT engines built here when possible (dkit.export.tensorrt), else none: the README has the command."""
    if not kit.export.tensorrt:
        return {}
    if not _tensorrt_here():
        log.info("TensorRT: no GPU with TensorRT here, so no engine; the bundle README has the device's build command")
        return {}
    from dkit.export.tensorrt import build_engines

    return build_engines(kit, bundle_dir, exported.model, exported.preprocess, variants)


def _tensorrt_here() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
