"""The manifest `dkit export` writes: built as a typed dkit.edge.bundle.manifest.Manifest, then written with the sha256
of every file of the bundle.

    from dkit.export.manifest import build_manifest, write_manifest

    manifest = build_manifest(kit, run, task, entry, variants, classes, parts, engines)   # a Manifest
    write_manifest(bundle_dir, manifest)        # fills `files`, writes manifest.json atomically, returns it

The device parses the file back with the same dataclasses (dkit.edge.bundle.verify), so what export writes is by
construction what the device reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dkit.core.files import write_json
from dkit.core.run import RunDir
from dkit.core.version import __version__
from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.manifest import (
    SCHEMA_VERSION,
    Calibration,
    Decode,
    Manifest,
    ModelEntry,
    Preprocess,
    Prompts,
    RuntimeHints,
    Thresholds,
    TokenizerSpec,
)
from dkit.edge.bundle.verifier import MANIFEST


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


def build_manifest(kit, run: RunDir, task: str, entry: dict, variants: dict, classes: list[str], parts: dict,
                   engines: dict) -> Manifest:
    """The bundle's manifest from the exporter's pieces (`entry`: the fp32 student's model entry and preprocess;
    `engines`: further model entries by role, TensorRT engines and NCNN models, a refused one with `refused`)."""
    first = next(iter(run.records()), None)
    models = {"student": ModelEntry.from_dict("student", {k: v for k, v in entry.items()
                                                         if k not in ("preprocess", "decode")})}
    models |= {f"student_{p}": ModelEntry.from_dict(f"student_{p}", v) for p, v in variants.items()
               if "refused" not in v}
    if "text" in parts:
        models["text"] = ModelEntry.from_dict("text", parts["text"])
    models |= {role: ModelEntry.from_dict(role, v) for role, v in engines.items() if "refused" not in v}
    decode = entry.get("decode") or {"type": "embedding", "output": "(batch, dim)", "normalized": True,
                                     "dim": parts["prompts"]["dim"]}
    return Manifest(
        name=kit.name, task=task,
        teacher={"id": parts.get("teacher_id") or (first.teacher if first else None), "random": kit.teacher.is_random},
        student={"kind": kit.student.kind, "model": kit.student.model, "imgsz": kit.student.imgsz,
                 "weights_sha256": sha256_file(run.student_weights)},
        models=models, preprocess=Preprocess.from_dict(entry["preprocess"]), classes=tuple(classes),
        thresholds=thresholds(kit, task, classes),
        runtime=RuntimeHints(tuple(kit.edge.providers), kit.edge.threads, kit.edge.max_fps),
        decode=Decode.from_dict(decode, task),
        prompts=Prompts.from_dict(parts["prompts"]) if "prompts" in parts else None,
        calibration=Calibration.from_dict(parts["calibration"]) if "calibration" in parts else None,
        tokenizer=TokenizerSpec.from_dict(parts["tokenizer"]) if "tokenizer" in parts else None,
        judge=kit.judge.device_config() if task == "embed" and kit.judge else None,
        logit_scale=parts.get("logit_scale"),
        info={"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dkit_version": __version__,
              "refused_variants": {p: v["refused"] for p, v in variants.items() if "refused" in v}
              | {r.removeprefix("student_"): v["refused"] for r, v in engines.items() if "refused" in v}},
    )
