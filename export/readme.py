"""The bundle's README.md, for the person installing it: what the model is, how to run it, what was measured.

    from dkit.export.readme import render_readme

    text = render_readme(kit, manifest, evaluation)   # -> str, written as bundle/README.md by dkit.export.bundle

`manifest` is the bundle's dkit.edge.bundle.manifest.Manifest (its task, classes, teacher, student, models and score
calibration); `evaluation` is the run's eval.json as a dict (`dkit eval`; {} when there is none). Sections:
- a header and one paragraph on what the model is (by task), with a warning for an untrained teacher;
- "Run it": the edge runtime's install and run commands (and `dkit serve` for the kiosk judge);
- "Measured": the ONNX parity figures for the task, each precision variant against fp32 (or why it was
  refused), and `dkit eval`'s held-out figures;
- "TensorRT (on the device)": the device's engine build command (engines are not portable, so none ships).
"""

from __future__ import annotations

from dkit.edge.bundle.manifest import Manifest
from dkit.edge.infer.extras import install_hint


def render_readme(kit, manifest: Manifest, evaluation: dict) -> str:
    """The README.md text; `kit` gives the title (name, student kind) and the TensorRT input size."""
    m = manifest.models["student"]
    lines = _header(kit, manifest)
    lines += _run_it(manifest.task)
    lines += ["## Measured", ""]
    lines += _parity_lines(manifest)
    lines += _variant_lines(manifest)
    lines += _eval_lines(evaluation)
    lines += _tensorrt_section(kit.student.imgsz, m.inputs[0]["name"])
    return "\n".join(lines)


def _what(manifest: Manifest) -> str:
    """One phrase on what the model is, by task."""
    imgsz, n_classes = manifest.student["imgsz"], len(manifest.classes)
    return {"detect": f"A {imgsz} px object detector for {n_classes} classes",
            "classify": f"A {imgsz} px image classifier for {n_classes} classes",
            "embed": f"A kiosk judge: a {imgsz} px image encoder that reproduces the teacher's "
                     "image embeddings, scored against text prompts (the teacher's text encoder ships too, so new "
                     "prompts are embedded on the device), with moderation prompts and a 0-100 score calibration; "
                     f"its ontology has {n_classes} classes"}[manifest.task]


def _header(kit, manifest: Manifest) -> list[str]:
    """The title, the untrained-teacher warning when it applies, and the paragraph on what the bundle is."""
    lines = [f"# {kit.name}: {kit.student.kind} bundle", ""]
    if manifest.teacher["random"]:
        lines += ["**WARNING: made from an UNTRAINED (random) teacher. Its outputs are meaningless; tests only.**", ""]
    names = manifest.classes
    lines += [
        f"{_what(manifest)} ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}), distilled from the "
        f"teacher `{manifest.teacher['id']}`. Everything the device needs is in `manifest.json`; every file's "
        "sha256 is checked before anything loads.", "",
    ]
    return lines


def _run_it(task: str) -> list[str]:
    """The "Run it" section: install the edge runtime, run the bundle (and serve the kiosk judge)."""
    lines = [
        "## Run it", "",
        "The device needs the base install of distill-kit (the edge runtime only: numpy, onnxruntime, OpenCV; "
        "no torch; CPython 3.10-3.13). It is not on PyPI (`pip install distill-kit` fails). With no network on the "
        "device, make a wheelhouse where there is one (a checkout of distill-kit) and copy it over:", "",
        "```bash",
        "dkit device-pack --target pi --out dkit-pi     # Raspberry Pi OS Bookworm; --target jetson for JetPack 6",
        "sh dkit-pi/install.sh                          # on the device: ~/dkit, pip install --no-index --find-links",
        "```", "",
        "With a network on the device, from the git repository:", "",
        "```bash",
        "python3 -m venv ~/dkit && ~/dkit/bin/pip install \"distill-kit @ git+https://github.com/distill-kit/distill-kit\"",
        "```", "",
        "Then (docs/DEVICE.md in the repository has the details):", "",
        "```bash",
        "~/dkit/bin/dkit run bundle/ --source 0 --jsonl     # camera 0; or a video file, an rtsp:// URL, a folder",
        "~/dkit/bin/dkit doctor bundle/                     # what this device runs it with: backend, precision, fps",
    ]
    if task == "embed":
        lines.append("~/dkit/bin/dkit serve bundle/ --port 8000          # the kiosk: drawing canvas, camera, "
                     "leaderboard")
    return [*lines, "```", ""]


def _parity_lines(manifest: Manifest) -> list[str]:
    """The fp32 ONNX parity figures of the task's models (and the judge's score calibration)."""
    m = manifest.models["student"]
    if manifest.task == "detect":
        return _detect_parity(m)
    if manifest.task == "classify":
        return _classify_parity(m)
    return _embed_parity(manifest, m)


def _detect_parity(m) -> list[str]:
    p = m.info["parity"]
    return [f"- ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on {p['images']} of the kit's"
            f" images: largest output difference {p['max_abs_diff']:.2e}, boxes agreeing after NMS "
            f"{p['agreement']:.3f}."]


def _classify_parity(m) -> list[str]:
    p = m.info["parity"]
    return [f"- ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on {p['images']} of the kit's"
            f" images: largest probability difference {p['max_abs_diff']:.2e}; the device's input differs "
            f"from Ultralytics' by at most {p['input_max_abs_diff']:.2e}; top-1 class agreeing with "
            f"Ultralytics' predict {p['agreement']:.3f}."]


def _embed_parity(manifest: Manifest, m) -> list[str]:
    p, t = m.info["parity"], manifest.models["text"].info["parity"]
    return [f"- Image encoder ONNX (fp32, opset {m.info['opset']}) against the PyTorch student on "
            f"{p['images']} of "
            f"the kit's images: largest difference {p['max_abs_diff']:.2e}, cosine mean {p['agreement']:.6f} "
            f"(min {p['min_cosine']:.6f}).",
            f"- Text encoder ONNX against open_clip on {t['prompts']} prompts: token ids identical "
            f"{t['token_agreement']:.3f}, largest difference {t['max_abs_diff']:.2e}, cosine mean "
            f"{t['agreement']:.6f}.",
            _calibration_line(manifest.calibration.to_dict())]


def _calibration_line(c: dict) -> str:
    a = c["agreement"]
    fitted = (f"{c['images']} training images against each ontology prompt alone (as the device embeds a typed "
              "prompt)" if c.get("split") == "train" else f"{c['images']} of the kit's images")
    agreement = ("" if a.get("mean_abs_score_diff") is None else
                 f"; student vs teacher scores on {a['pairs']} ({a['split']}) image-prompt pairs: mean absolute "
                 f"difference {a['mean_abs_score_diff']:.1f} points, Spearman {a['spearman']:.3f}")
    return (f"- Score calibration from {fitted}: cosine knots {', '.join(f'{x:.3f}' for x in c['cosine'])} -> "
            f"scores {', '.join(f'{y:g}' for y in c['score'])}{agreement}." + _moderation_sentence(a.get("moderation")))


def _moderation_sentence(m: dict | None) -> str:
    """The kiosk verdicts (dkit.edge.infer.moderation) of student and teacher compared; '' for an older export."""
    if not m or m.get("agreement") is None:
        return ""
    return (f" Kiosk verdicts (ok / text / no match / blocked, the device's rule) of student and teacher agree on "
            f"{m['agreement']:.3f} of {m['pairs']} image-prompt pairs.")


def _variant_lines(manifest: Manifest) -> list[str]:
    """Each fp16/int8 variant against the fp32 model, then the variants refused by the accuracy guard."""
    lines = []
    for role, v in manifest.models.items():
        if role.startswith("student_") and "vs_fp32" in v.info:
            a = v.info["vs_fp32"]
            fmt = f", {v.info['int8_format']}" if "int8_format" in v.info else ""
            lines.append(f"- `{v.file}` ({v.precision}{fmt}): {a['metric']} {a['agreement']:.3f} against the fp32 "
                         f"model on {a['images']} held-out images; {a['ms_per_image']:.1f} ms/image vs "
                         f"{a['ms_per_image_fp32']:.1f} for fp32 on the exporting machine's CPU.")
        elif role.startswith("student_") and "vs_onnx" in v.info:
            a = v.info["vs_onnx"]
            lines.append(f"- `{v.file}` + `{v.weights}` (NCNN, {v.precision}): {a['metric']} {a['agreement']:.3f} "
                         f"against the fp32 ONNX model on {a['images']} held-out images (largest output difference "
                         f"{a['max_abs_diff']:.2g}); run it with `dkit run --backend ncnn` (NCNN: "
                         f"{install_hint('ncnn')}).")
    for precision, why in manifest.info["refused_variants"].items():
        lines.append(f"- {precision}: refused ({why}).")
    if manifest.checks is not None:
        here = manifest.info.get("device_checks", {}).get(manifest.checks.machine, {})
        guard = manifest.checks.min_agreement
        figures = ", ".join(f"{k} could not run" if v is None else f"{k} {v:.3f}" + (
            f" (FAILS: below {guard:g}; auto leaves it out on another CPU architecture)" if v < guard else "")
            for k, v in here.items())
        lines.append(f"- On-device check: `checks/` holds held-out images and the fp32 results on them. int8 kernels "
                     f"round differently per CPU family, so on another CPU architecture than this export's "
                     f"({manifest.checks.machine}) `dkit run` checks each reduced-precision model against them "
                     f"(at least {manifest.checks.min_agreement:g} agreement) before `--precision auto` uses it"
                     + (f"; here: {figures}." if figures else "."))
    return lines


def _eval_lines(evaluation: dict) -> list[str]:
    """`dkit eval`'s held-out figures (eval.json), by task; none without a student's."""
    s, t = evaluation.get("student") or {}, evaluation.get("teacher") or {}
    if not s:
        return []
    on = _speed(s, t, (evaluation.get("machine") or {}).get("cpus"))
    head = f"- On {evaluation.get('images')} held-out images (`dkit eval`): "
    if evaluation.get("task") == "detect":
        figures = _measured([("student mAP50 {} against the teacher's labels", s.get("map50_vs_teacher")),
                             ("{} against ground truth", s.get("map50")),
                             ("the teacher's own {} against ground truth", t.get("map50"))])
    elif "cosine_mean" in s:
        figures = _measured([("cosine to the teacher's embedding {}", s.get("cosine_mean")),
                             ("Spearman of prompt scores {}", s.get("spearman_mean")),
                             ("top-1 class agreement {}", s.get("top1_agreement")),
                             ("moderation agreement {}", s.get("moderation_agreement"))])
    elif "top1_agreement" in s:
        figures = _measured([("top-1 agreement with the teacher {}", s.get("top1_agreement")),
                             ("accuracy {} against ground truth", s.get("accuracy"))])
    else:
        return []
    speed = (evaluation.get("notes") or {}).get("speed")  # where the speed-up comes from (dkit.distill.evaluate)
    return ([f"{head}{'; '.join(x for x in (figures, on) if x)}."] if figures or on else []) + (
        [f"- {speed}"] if speed else [])


def _measured(parts: list[tuple[str, float | None]]) -> str:
    """The figures that were measured (a None is left out, not shown as a dash), comma-separated."""
    return ", ".join(text.format(_f(v)) for text, v in parts if v is not None)


def _speed(s: dict, t: dict, cpus) -> str:
    """"5.2 ms/image vs the teacher's 114.7 on 2 CPU cores", or what of it was measured."""
    ms, tms = s.get("ms_per_image"), t.get("ms_per_image")
    if ms is None:
        return ""
    where = f" on {cpus} CPU cores" if cpus else ""
    return f"{ms:.1f} ms/image" + (f" vs the teacher's {tms:.1f}" if tms is not None else "") + where


def _tensorrt_section(size: int, inp: str) -> list[str]:
    """How to build a TensorRT engine on the device (trtexec, or onnxruntime's TensorRT provider)."""
    return [
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


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
