"""The manifest `dkit export` writes: built as a typed dkit.edge.bundle.manifest.Manifest, then written with the sha256
of every file of the bundle.

    from dkit.export.manifest import build_manifest, write_manifest

    manifest = build_manifest(kit, run, task, exported, variants, formats)   # a Manifest
    write_manifest(bundle_dir, manifest)        # fills `files`, writes manifest.json atomically, returns it

The device parses the file back with the same dataclasses (dkit.edge.bundle.verify), so what export writes is by
construction what the device reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dkit.core.files import write_json
from dkit.core.run import RunDir
from dkit.core.version import __version__
from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.manifest import SCHEMA_VERSION, Manifest, ModelEntry, RuntimeHints, Thresholds
from dkit.edge.bundle.verifier import MANIFEST
from dkit.export.exporters import Built, Exported, Refused


def write_manifest(root: Path, manifest: Manifest | Mapping[str, Any]) -> Manifest:
    """Fill in the sha256 of every file under `root` (hidden files aside), write manifest.json atomically."""
    files = {p.relative_to(root).as_posix(): sha256_file(p)
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    if isinstance(manifest, Manifest):
        manifest = dataclasses.replace(manifest, files=files)
    else:  # the plain document (tests build bundles by hand): parsed like the device parses it
        manifest = Manifest.from_dict({"schema_version": SCHEMA_VERSION, **manifest, "files": files})
    write_json(root / MANIFEST, manifest.to_dict())
    return manifest


def thresholds(kit, task: str, classes: list[str]) -> Thresholds:
    """The device's starting thresholds, from the kit's `edge:` section."""
    if task == "detect":
        return Thresholds(conf=kit.edge.conf, iou=kit.edge.iou, max_det=kit.edge.max_det)
    if task == "classify":
        return Thresholds(conf=kit.edge.conf, top_k=min(Thresholds.top_k, len(classes)))
    return Thresholds()


def build_manifest(kit, run: RunDir, task: str, exported: Exported, variants: Iterable[Built] = (),
                   formats: Iterable[Built] = ()) -> Manifest:
    """The bundle's manifest from the exporter's result and the further models: the reduced-precision ONNX
    `variants`, then `formats` (NCNN models, TensorRT engines); a refused one is listed under `refused_variants`
    with its reason, e.g. {"int8": "mAP50 against fp32 0.512 is below ...", "ncnn_fp16": "..."}."""
    first = next(iter(run.records()), None)
    variants, formats = list(variants), list(formats)
    models = {"student": exported.model} | {b.role: b for b in variants if isinstance(b, ModelEntry)}
    if exported.judge is not None:
        models["text"] = exported.judge.text
    models |= {b.role: b for b in formats if isinstance(b, ModelEntry)}
    built = variants + formats
    judge = exported.judge
    teacher_id = judge.teacher_id if judge is not None else None
    return Manifest(
        name=kit.name, task=task,
        teacher={"id": teacher_id or (first.teacher if first else None), "random": kit.teacher.is_random},
        student={"kind": kit.student.kind, "model": kit.student.model, "imgsz": kit.student.imgsz,
                 "weights_sha256": sha256_file(run.student_weights)},
        models=models, preprocess=exported.preprocess, classes=tuple(exported.classes),
        thresholds=thresholds(kit, task, exported.classes),
        runtime=RuntimeHints(tuple(kit.edge.providers), kit.edge.threads, kit.edge.max_fps),
        decode=exported.decode,
        prompts=None if judge is None else judge.prompts,
        calibration=None if judge is None else judge.calibration,
        tokenizer=None if judge is None else judge.tokenizer,
        judge=kit.judge.device_config() if task == "embed" and kit.judge else None,
        logit_scale=None if judge is None else judge.logit_scale,
        info={"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dkit_version": __version__,
              "refused_variants": {b.role.removeprefix("student_"): b.reason for b in built if isinstance(b, Refused)}},
    )
