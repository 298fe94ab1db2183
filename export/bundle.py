"""`dkit export`: a trained student -> RUN_DIR/bundle/ (and bundle.tar.gz), verified before it is put in place.

    result = export_bundle(kit, run_dir)

The bundle is built in a temporary folder: the model (see export.yolo), a README.md for the person
installing it, and manifest.json (edge.bundle.write_manifest: everything the device reads, with the
sha256 of every file). It is then opened with the edge's own verifier, exactly as a device would, and
only then swapped into place; the archive is written beside it the same way. Nothing half-written is
ever left where a bundle is expected.

Built so far: a `yolo-detect` student as fp32 ONNX plus the fp16/int8 variants the kit asks for
(export.variants), and the TensorRT build command for the device. Building engines here (a GPU with
TensorRT) and the classifier and judge (clip-embed) bundles are issue #5's remaining parts: asking for
them fails with a clear message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

from dkit import __version__
from dkit.errors import NotBuiltError
from dkit.files import atomic_write, new_tmp_dir, read_json, replace_dir
from edge.bundle import open_bundle, sha256_file, write_manifest

log = logging.getLogger(__name__)


def export_bundle(kit, run_dir: Path) -> dict:
    if kit.student.kind != "yolo-detect":
        raise NotBuiltError(f"exporting a {kit.student.kind} student is not built yet (issue #5: export); "
                            "yolo-detect students export today")
    if kit.export.tensorrt and _tensorrt_here():
        raise NotBuiltError("building a TensorRT engine on this machine is not built yet (issue #5); set "
                            "export.tensorrt=false and build it on the device with the command in the bundle README")
    if kit.export.tensorrt:
        log.info("TensorRT: no GPU with TensorRT here, so no engine; the bundle README has the device's build command")
    from export.variants import make_variant
    from export.yolo import export_detector, kit_images, preprocess_spec

    tmp = new_tmp_dir(run_dir, f".bundle-{os.getpid()}-")
    try:
        entry = export_detector(kit, run_dir, tmp)
        variants = {}
        later = [p for p in dict.fromkeys(kit.export.precisions) if p != "fp32"]
        if later:
            held_out = kit_images(run_dir, split="val", limit=256)
            calibration = kit_images(run_dir, split="train", limit=kit.export.calibration_images)
            for precision in later:
                variants[precision] = make_variant(precision, tmp / entry["file"], tmp, kit, held_out, calibration,
                                                   preprocess_spec(kit))
        manifest = _manifest(kit, run_dir, entry, variants)
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
            "models": {k: v["file"] for k, v in manifest["models"].items()}, "parity": entry["parity"],
            "variants": variants}


def _tensorrt_here() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _manifest(kit, run_dir: Path, entry: dict, variants: dict) -> dict:
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
        "models": {"student": model, **{f"student_{p}": v for p, v in variants.items() if "refused" not in v}},
        "refused_variants": {p: v["refused"] for p, v in variants.items() if "refused" in v},
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
    for role, v in manifest["models"].items():
        if role != "student":
            a = v["vs_fp32"]
            lines.append(f"- `{v['file']}` ({v['precision']}): mAP50 {a['map50_vs_fp32']:.3f} against the fp32 model "
                         f"on {a['images']} held-out images; {a['ms_per_image']:.1f} ms/image vs "
                         f"{a['ms_per_image_fp32']:.1f} for fp32 on the exporting machine's CPU.")
    for precision, why in manifest["refused_variants"].items():
        lines.append(f"- {precision}: refused ({why}).")
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

