"""`dkit export`: a trained student -> RUN_DIR/bundle/ (and bundle.tar.gz), verified before it is put in place.

    result = export_bundle(kit, run_dir, store=ModelStore())

The bundle is built in a temporary folder: the model files for the student's kind, a README.md for the
person installing it, and manifest.json (dkit.export.manifest: everything the device reads, with the
sha256 of every file). It is then opened with the edge's own verifier, exactly as a device would, and only
then swapped into place; the archive is written beside it the same way. Nothing half-written is ever left
where a bundle is expected.

By student kind (task in the manifest):
- `yolo-detect` (detect): student.onnx, letterbox preprocessing, YOLOv8 decoding, NMS thresholds (dkit.export.yolo).
- `yolo-cls` (classify): student.onnx giving probabilities, Ultralytics' classify preprocessing (dkit.export.yolo).
- `clip-embed` (embed, the kiosk judge): the image encoder, the teacher's text encoder, the tokenizer vocab,
  the prompt embeddings and the score calibration (dkit.export.judge).
Each gets the fp16/int8 variants the kit asks for (dkit.export.variants), each measured against fp32 and refused
below the accuracy guard. TensorRT engines are device-specific: the README carries the device's build command,
and with the `tensorrt` package and a GPU here an engine is built too (dkit.export.tensorrt).
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
from dkit.edge.manifest import Manifest
from dkit.export.exporters import exporter_for
from dkit.export.manifest import build_manifest, write_manifest

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
        entry = exported.entry
        variants = {}
        later = [p for p in dict.fromkeys(kit.export.precisions) if p != "fp32"]
        if later:
            held_out = _split_images(run.root, "val", 256)
            # int8 scales from the training images: the held-out ones judge the result
            calibration = _split_images(run.root, "train", kit.export.calibration_images)
            for precision in later:
                variants[precision] = make_variant(precision, tmp / entry["file"], tmp, kit, held_out, calibration,
                                                   entry["preprocess"], task)
        engines = _engines(kit, tmp, entry, variants)
        manifest = build_manifest(kit, run, task, entry, variants, exported.classes, exported.parts, engines)
        atomic_write(tmp / "README.md", _readme(kit, manifest, read_json(run.eval_json)))
        write_manifest(tmp, manifest)
        with open_bundle(tmp):  # the device's own check, on exactly what will be shipped
            pass
        replace_dir(tmp, run.bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    archive = _archive(run) if kit.export.archive else None
    return {"bundle": str(run.bundle), "archive": None if archive is None else str(archive), "task": task,
            "models": {k: v.file for k, v in manifest.models.items()},
            "parity": {k: dict(v.info["parity"]) for k, v in manifest.models.items() if "parity" in v.info},
            "variants": variants, "calibration": None if manifest.calibration is None
            else manifest.calibration.to_dict()}


def _archive(run: RunDir) -> Path:
    """RUN_DIR/bundle.tar.gz, written beside as a part file and renamed, then verified like the folder."""
    part = run.root / f".bundle.tar.gz.{os.getpid()}.part"
    try:
        with tarfile.open(part, "w:gz") as tf:
            tf.add(run.bundle, arcname="bundle")
        os.replace(part, run.archive)
    finally:
        part.unlink(missing_ok=True)
    with open_bundle(run.archive):
        pass
    return run.archive


def _split_images(run_dir: Path, split: str, limit: int) -> list:
    """Up to `limit` of the kit's images of one split, or of both when that split is empty."""
    from dkit.export.yolo import kit_images

    try:
        return kit_images(run_dir, split=split, limit=limit)
    except UsageError:
        return kit_images(run_dir, split=None, limit=limit)


def _engines(kit, bundle_dir: Path, entry: dict, variants: dict) -> dict:
    """TensorRT engines built here when possible (dkit.export.tensorrt), else none: the README has the command."""
    if not kit.export.tensorrt:
        return {}
    if not _tensorrt_here():
        log.info("TensorRT: no GPU with TensorRT here, so no engine; the bundle README has the device's build command")
        return {}
    from dkit.export.tensorrt import build_engines

    return build_engines(kit, bundle_dir, entry, variants)


def _tensorrt_here() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _readme(kit, manifest: Manifest, evaluation: dict) -> str:
    task, m = manifest.task, manifest.models["student"]
    p = m.info["parity"]
    imgsz, n_classes = manifest.student["imgsz"], len(manifest.classes)
    what = {"detect": f"A {imgsz} px object detector for {n_classes} classes",
            "classify": f"A {imgsz} px image classifier for {n_classes} classes",
            "embed": f"A kiosk judge: a {imgsz} px image encoder that reproduces the teacher's "
                     "image embeddings, scored against text prompts (the teacher's text encoder ships too, so new "
                     "prompts are embedded on the device), with moderation prompts and a 0-100 score calibration; "
                     f"its ontology has {n_classes} classes"}[task]
    lines = [f"# {kit.name}: {kit.student.kind} bundle", ""]
    if manifest.teacher["random"]:
        lines += ["**WARNING: made from an UNTRAINED (random) teacher. Its outputs are meaningless; tests only.**", ""]
    names = manifest.classes
    lines += [
        f"{what} ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}), distilled from the teacher "
        f"`{manifest.teacher['id']}`. Everything the device needs is in `manifest.json`; every file's sha256 is "
        "checked before anything loads.", "",
        "## Run it", "",
        "```bash",
        "pip install distill-kit          # the edge runtime only: numpy, onnxruntime, opencv; no torch",
        "dkit run bundle/ --source 0 --jsonl     # camera 0; or a video file, an rtsp:// URL, a folder",
    ]
    if task == "embed":
        lines.append("dkit serve bundle/ --port 8000          # the kiosk: drawing canvas, camera, leaderboard")
    lines += ["```", "", "## Measured", ""]
    if task == "detect":
        lines.append(f"- ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on {p['images']} of the kit's"
                     f" images: largest output difference {p['max_abs_diff']:.2e}, boxes agreeing after NMS "
                     f"{p['agreement']:.3f}.")
    elif task == "classify":
        lines.append(f"- ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on {p['images']} of the kit's"
                     f" images: largest probability difference {p['max_abs_diff']:.2e}; the device's input differs "
                     f"from Ultralytics' by at most {p['input_max_abs_diff']:.2e}; top-1 class agreeing with "
                     f"Ultralytics' predict {p['agreement']:.3f}.")
    else:
        t = manifest.models["text"].info["parity"]
        c = manifest.calibration.to_dict()
        lines += [f"- Image encoder ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on "
                  f"{p['images']} of "
                  f"the kit's images: largest difference {p['max_abs_diff']:.2e}, cosine mean {p['agreement']:.6f} "
                  f"(min {p['min_cosine']:.6f}).",
                  f"- Text encoder ONNX against open_clip on {t['prompts']} prompts: token ids identical "
                  f"{t['token_agreement']:.3f}, largest difference {t['max_abs_diff']:.2e}, cosine mean "
                  f"{t['agreement']:.6f}.",
                  f"- Score calibration from {c['images']} of the kit's images: cosine knots "
                  f"{', '.join(f'{x:.3f}' for x in c['cosine'])} -> scores {', '.join(f'{y:g}' for y in c['score'])}; "
                  f"student vs teacher scores on {c['agreement']['pairs']} ({c['agreement']['split']}) image-class "
                  f"pairs: mean absolute difference {c['agreement']['mean_abs_score_diff']:.1f} points, Spearman "
                  f"{c['agreement']['spearman']:.3f}."]
    for role, v in manifest.models.items():
        if role.startswith("student_") and "vs_fp32" in v.info:
            a = v.info["vs_fp32"]
            lines.append(f"- `{v.file}` ({v.precision}): {a['metric']} {a['agreement']:.3f} against the fp32 "
                         f"model on {a['images']} held-out images; {a['ms_per_image']:.1f} ms/image vs "
                         f"{a['ms_per_image_fp32']:.1f} for fp32 on the exporting machine's CPU.")
    for precision, why in manifest.info["refused_variants"].items():
        lines.append(f"- {precision}: refused ({why}).")
    lines += _eval_lines(evaluation)
    size, inp = kit.student.imgsz, m.inputs[0]["name"]
    lines += [
        "", "## TensorRT (on the device)", "",
        "Engines are specific to the GPU and TensorRT version that build them, so none is trusted across devices. "
        "On a Jetson:", "",
        "```bash",
        f"trtexec --onnx=student.onnx --saveEngine=student.engine --fp16 "
        f"--minShapes={inp}:1x3x{size}x{size} --optShapes={inp}:1x3x{size}x{size} --maxShapes={inp}:4x3x{size}x{size}",
        "```", "",
        "or let onnxruntime's TensorRT execution provider build and cache it on first run "
        "(`trt_engine_cache_enable=True`, `trt_engine_cache_path=./trt-cache`).", "",
    ]
    return "\n".join(lines)


def _eval_lines(evaluation: dict) -> list[str]:
    s, t = evaluation.get("student") or {}, evaluation.get("teacher") or {}
    if not s:
        return []
    on = (f"{_f(s.get('ms_per_image'))} ms/image vs the teacher's {_f(t.get('ms_per_image'))} on "
          f"{(evaluation.get('machine') or {}).get('cpus', '?')} CPU cores")
    if evaluation.get("task") == "detect":
        return [f"- On {evaluation.get('images')} held-out images (`dkit eval`): student mAP50 {_f(s.get('map50'))} "
                f"vs the teacher's {_f(t.get('map50'))} (ground truth), {_f(s.get('map50_vs_teacher'))} against the "
                f"teacher's labels; {on}."]
    if "cosine_mean" in s:
        return [f"- On {evaluation.get('images')} held-out images (`dkit eval`): cosine to the teacher's embedding "
                f"{_f(s.get('cosine_mean'))}, Spearman of prompt scores {_f(s.get('spearman_mean'))}, top-1 class "
                f"agreement {_f(s.get('top1_agreement'))}, moderation agreement {_f(s.get('moderation_agreement'))}; "
                f"{on}."]
    if "top1_agreement" in s:
        return [f"- On {evaluation.get('images')} held-out images (`dkit eval`): top-1 agreement with the teacher "
                f"{_f(s.get('top1_agreement'))}, accuracy {_f(s.get('accuracy'))} (ground truth); {on}."]
    return []


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
