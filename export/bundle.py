"""`dkit export`: a trained student -> RUN_DIR/bundle/ (and bundle.tar.gz), verified before it is put in place.

    result = export_bundle(kit, run_dir)

The bundle is built in a temporary folder: the model (see export.yolo), a README.md for the person
installing it, and manifest.json (edge.bundle.write_manifest: everything the device reads, with the
sha256 of every file). It is then opened with the edge's own verifier, exactly as a device would, and
only then swapped into place; the archive is written beside it the same way. Nothing half-written is
ever left where a bundle is expected.

Built so far: the fp32 ONNX of a `yolo-detect` student. fp16/int8 variants, TensorRT engines and the
judge (clip-embed) bundle are issue #5's remaining parts: asking for them fails with a clear message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tarfile
from pathlib import Path

from dkit import __version__
from dkit.errors import NotBuiltError
from dkit.files import atomic_write, new_tmp_dir, read_json, replace_dir
from edge.bundle import open_bundle, sha256_file, write_manifest


def export_bundle(kit, run_dir: Path) -> dict:
    if kit.student.kind != "yolo-detect":
        raise NotBuiltError(f"exporting a {kit.student.kind} student is not built yet (issue #5: export); "
                            "yolo-detect students export today")
    later = [p for p in kit.export.precisions if p != "fp32"]
    if later or kit.export.tensorrt:
        asked = ", ".join(later + (["tensorrt"] if kit.export.tensorrt else []))
        raise NotBuiltError(f"export.precisions/tensorrt ask for {asked}, not built yet (issue #5); export the "
                            "fp32 bundle with --set export.precisions=[fp32] --set export.tensorrt=false")
    from export.yolo import export_detector

    tmp = new_tmp_dir(run_dir, f".bundle-{os.getpid()}-")
    try:
        entry = export_detector(kit, run_dir, tmp)
        manifest = _manifest(kit, run_dir, entry)
        atomic_write(tmp / "README.md", _readme(kit, manifest, read_json(run_dir / "eval.json")))
        write_manifest(tmp, manifest)
        with open_bundle(tmp):  # the device's own check, on exactly what will be shipped
            pass
        bundle = run_dir / "bundle"
        replace_dir(tmp, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = None
    if kit.export.archive:
        archive = run_dir / "bundle.tar.gz"
        part = run_dir / f".bundle.tar.gz.{os.getpid()}.part"
        try:
            with tarfile.open(part, "w:gz") as tf:
                tf.add(bundle, arcname="bundle")
            os.replace(part, archive)
        finally:
            part.unlink(missing_ok=True)
        with open_bundle(archive):
            pass
    return {"bundle": str(bundle), "archive": None if archive is None else str(archive),
            "models": {k: v["file"] for k, v in manifest["models"].items()}, "parity": entry["parity"]}


def _manifest(kit, run_dir: Path, entry: dict) -> dict:
    first = next((json.loads(line) for line in (run_dir / "labels" / "labels.jsonl").open(encoding="utf-8")), {})
    best = run_dir / "student" / "weights" / "best.pt"
    model = {k: v for k, v in entry.items() if k not in ("preprocess", "decode")}
    return {
        "name": kit.name,
        "task": kit.task,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dkit_version": __version__,
        "teacher": {"id": first.get("teacher"), "random": kit.teacher.is_random},
        "student": {"kind": kit.student.kind, "model": kit.student.model, "imgsz": kit.student.imgsz,
                    "weights_sha256": sha256_file(best)},
        "models": {"student": model},
        "preprocess": entry["preprocess"],
        "decode": entry["decode"],
        "classes": kit.ontology.names,
        "thresholds": {"conf": kit.edge.conf, "iou": kit.edge.iou, "max_det": kit.edge.max_det},
        "runtime": {"providers": kit.edge.providers, "threads": kit.edge.threads, "max_fps": kit.edge.max_fps},
    }


def _readme(kit, manifest: dict, evaluation: dict) -> str:
    m = manifest["models"]["student"]
    p = m["parity"]
    lines = [f"# {kit.name}: {kit.student.kind} bundle", ""]
    if manifest["teacher"]["random"]:
        lines += ["**WARNING: made from an UNTRAINED (random) teacher. Its outputs are meaningless; tests only.**", ""]
    lines += [
        f"A {manifest['student']['imgsz']} px object detector for {len(manifest['classes'])} classes "
        f"({', '.join(manifest['classes'][:12])}{', ...' if len(manifest['classes']) > 12 else ''}), distilled from "
        f"the teacher `{manifest['teacher']['id']}`. Everything the device needs is in `manifest.json`; every "
        "file's sha256 is checked before anything loads.", "",
        "## Run it", "",
        "```bash",
        "pip install distill-kit          # the edge runtime only: numpy, onnxruntime, opencv; no torch",
        "dkit run bundle/ --source 0 --jsonl     # camera 0; or a video file, an rtsp:// URL, a folder",
        "```", "",
        "## Measured", "",
        f"- ONNX (fp32, opset {m['opset']}) against the PyTorch student on {p['images']} of the kit's images: "
        f"largest output difference {p['max_abs_diff']:.2e}, boxes agreeing after NMS {p['agreement']:.3f}.",
    ]
    s, t = evaluation.get("student") or {}, evaluation.get("teacher") or {}
    if s:
        lines.append(f"- On {evaluation.get('images')} held-out images (`dkit eval`): student mAP50 "
                     f"{_f(s.get('map50'))} vs the teacher's {_f(t.get('map50'))} (ground truth), "
                     f"{_f(s.get('map50_vs_teacher'))} against the teacher's labels; "
                     f"{_f(s.get('ms_per_image'))} ms/image vs {_f(t.get('ms_per_image'))} on "
                     f"{(evaluation.get('machine') or {}).get('cpus', '?')} CPU cores.")
    lines += [
        "", "## TensorRT (on the device)", "",
        "Engines are specific to the GPU and TensorRT version that build them, so none ships here. On a Jetson:", "",
        "```bash",
        f"trtexec --onnx=student.onnx --saveEngine=student.engine --fp16 "
        f"--minShapes=images:1x3x{kit.student.imgsz}x{kit.student.imgsz} "
        f"--optShapes=images:1x3x{kit.student.imgsz}x{kit.student.imgsz} "
        f"--maxShapes=images:4x3x{kit.student.imgsz}x{kit.student.imgsz}",
        "```", "",
        "or let onnxruntime's TensorRT execution provider build and cache it on first run "
        "(`trt_engine_cache_enable=True`, `trt_engine_cache_path=./trt-cache`).", "",
    ]
    return "\n".join(lines)


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

