"""`dkit eval`: how much of the teacher the student kept, and how much faster it is, on the held-out split.

    from dkit.distill.evaluate import write_eval

    result = evaluate(kit, run_dir, store=store, ground_truth=None)   # the student plugin's evaluate()
    write_eval(run_dir, result)                                       # eval.json + eval.md

eval.json is a stable contract for CI and dashboards (version 1):
    task            "detect" | "classify" | "embed"
    split           "val" (the seeded held-out images of `dkit label`)
    images          how many
    kit, random_teacher, ground_truth (the --ground-truth path or null)
    student         {kind, weights, params, gflops, ms_per_image, ...}
    teacher         {id, params, gflops, ms_per_image, ...}
    ratios          {speed: teacher ms / student ms, map50: student / teacher (detection with ground truth)}
  detection:  student.map50_vs_teacher, map50_95_vs_teacher (against the teacher's labels);
              student.map50, map50_95 and teacher.map50, map50_95 against ground truth (null without it)
  classify:   student.top1_agreement (with the teacher's labels), accuracy (against ground truth, or null)
  embed:      student.cosine_mean, spearman_mean, top1_agreement, moderation_agreement; baseline {...}
              moderation_agreement: the share of (held-out image, judge prompt) pairs on which student and teacher
              get the same verdict from the device's rule (dkit.edge.infer.moderation, the kit's margins): blocked, text
              or neither (no_match needs the score calibration, made at export: see the bundle's calibration);
              the judge prompts are judge.prompt and judge.prompts (else the ontology's prompts), as in the
              bundle's calibration.agreement.moderation, whose moderation_agreement is this same figure
  detection also: student.validator_map50_vs_teacher (Ultralytics' validator, the figure `dkit train` ends with;
              notes.validator says what differs from map50_vs_teacher); teacher.augment (test-time augmentation)
    held_out        how `dkit label` formed the split (dkit.distill.split, labels/split.json): method "group",
                    seed, asked, val_images, train_images, groups, val_groups, grouped_images, largest_group,
                    near_duplicate_bits, reasons, cut_groups; sentence (what eval.md says); selected_weights: true
                    (the same images chose best.pt and early stopping: there is no separate test split)
    notes           sentences eval.md shows: selection (the above), speed (where the speed-up comes from, from the
                    measured parameter counts and input sizes), validator (detection)
The teacher is the one that labelled the images (its id: weights, size, test-time augmentation).
Times are medians of single-image passes in the same process, one after the other, on this machine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dkit.core.files import atomic_write
from dkit.core.run import RunDir

SCHEMA_VERSION = 1


def timed_median(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int = 2) -> tuple[float, list[Any]]:
    """(median milliseconds of fn(item), the outputs), after `warmup` untimed calls."""
    for item in items[:warmup]:
        fn(item)
    times, outputs = [], []
    for item in items:
        start = time.perf_counter()
        outputs.append(fn(item))
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    mid = len(times) // 2
    median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return round(median, 2), outputs


def profile(module, input_shape: tuple[int, ...]) -> tuple[int, float]:
    """(parameters, GFLOPs of one forward pass at `input_shape`), counted by torch's FlopCounterMode."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in module.parameters())
    model = copy.deepcopy(module).float().eval()  # Ultralytics keeps fused fp16 copies around; count fp32
    x = torch.zeros(input_shape, dtype=torch.float32, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    # Fused attention kernels (nn.MultiheadAttention's fast path, flash/efficient scaled-dot-product attention)
    # are invisible to the counter: count with the plain math implementation, which computes the same thing.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter, torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(params), counter.get_total_flops() / 1e9


def profile_teacher(teacher, imgsz: int) -> tuple[int, float]:
    """(parameters, GFLOPs) of what the teacher runs per image: a CLIP image tower, or a YOLO network."""
    model = teacher.model
    if hasattr(model, "visual"):  # open_clip
        size = model.visual.image_size
        size = size if isinstance(size, int) else size[0]
        return profile(model.visual, (1, 3, size, size))
    return profile(model.model, (1, 3, imgsz, imgsz))


SELECTION_NOTE = ("The same held-out images chose the student's weights (best.pt is the epoch with the best "
                  "held-out fitness, and early stopping watches it): there is no separate test split, so these "
                  "figures are those of a model selected on them and read slightly optimistic.")


def held_out(run_dir: Path) -> dict:
    """eval.json `held_out`: how `dkit label` formed the held-out split (labels/split.json, dkit.distill.split),
    and that the same images selected the weights."""
    from dkit.distill.split import read_summary

    summary = read_summary(RunDir(run_dir).labels)
    formed = summary.to_dict() if summary is not None else {"method": "unknown (labels made before labels/split.json"
                                                                      "; run dkit label again)"}
    return {**formed, "selected_weights": True, "sentence": summary.sentence() if summary is not None else None}


def speed_note(doc: dict) -> str | None:
    """Where the speed-up comes from, from the measured parameter counts and input sizes (None when unmeasured)."""
    s, t = doc.get("student") or {}, doc.get("teacher") or {}
    sp, tp, speed = s.get("params"), t.get("params"), (doc.get("ratios") or {}).get("speed")
    if not sp or not tp or not speed:
        return None
    inputs = (f"{s.get('imgsz')} px against the teacher's {t.get('imgsz')} px"
              + (" with test-time augmentation" if t.get("augment") else ""))
    if abs(sp - tp) <= 0.01 * tp:
        return (f"The student is the teacher's own network ({sp:,} parameters each): its {speed:.1f}x speed-up "
                f"comes from its input size ({inputs}), not from a smaller model.")
    return (f"The student has {sp:,} parameters against the teacher's {tp:,} ({sp / tp:.1%}); inputs {inputs}; "
            f"speed-up {speed:.1f}x.")


def write_eval(run_dir: Path, result: dict) -> tuple[Path, Path]:
    """eval.json (the contract above) and eval.md (a table a person reads), each written atomically."""
    doc = {"schema_version": SCHEMA_VERSION, **result, "held_out": held_out(run_dir),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    notes = {"selection": SELECTION_NOTE, "speed": speed_note(doc), **(result.get("notes") or {})}
    doc["notes"] = {k: v for k, v in notes.items() if v}
    run = RunDir(run_dir)
    paths = run.eval_json, run.eval_md
    for path, text in zip(paths, (json.dumps(doc, indent=2) + "\n", render_markdown(doc)), strict=True):
        atomic_write(path, text)
    return paths


def render_markdown(doc: dict) -> str:
    s, t = doc["student"], doc["teacher"]
    lines = [f"# {doc['kit']}: student vs teacher ({doc['task']}, {doc['images']} held-out images)", ""]
    if doc.get("random_teacher"):
        lines += ["**UNTRAINED (random) teacher: these figures prove the machinery, nothing more.**", ""]
    keys = [k for k in ("params", "gflops", "ms_per_image", "imgsz", "map50", "map50_95", "map50_vs_teacher",
                        "map50_95_vs_teacher", "top1_agreement", "accuracy", "cosine_mean", "spearman_mean",
                        "moderation_agreement") if s.get(k) is not None or t.get(k) is not None]  # measured
    lines += ["| | student | teacher |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(s.get(k), k)} | {_fmt(t.get(k), k)} |" for k in keys]
    lines += ["", f"student: `{s.get('kind')}` ({s.get('weights')}); teacher: `{t.get('id')}`"]
    if doc.get("baseline"):
        lines += ["", "Untrained student (same architecture) on the same images: "
                  + ", ".join(f"{k} {_fmt(v, k)}" for k, v in doc["baseline"].items() if v is not None)]
    ratios = {k: v for k, v in (doc.get("ratios") or {}).items() if v is not None}
    if ratios:
        lines += ["", "Ratios: " + ", ".join(
            f"{'speed (teacher ms / student ms)' if k == 'speed' else k + ' (student / teacher)'} {v:.3f}"
            for k, v in ratios.items())]
    if doc.get("ground_truth"):
        lines += ["", f"Ground truth: `{doc['ground_truth']}`."]
    formed = (doc.get("held_out") or {}).get("sentence")
    notes = doc.get("notes") or {}
    lines += ["", "Held-out images: " + (formed or "how they were chosen is not recorded (labels made before "
                                                   "labels/split.json; run `dkit label` again).")]
    for key in ("selection", "speed", "validator"):
        if notes.get(key):
            lines += ["", notes[key]]
    lines += ["", f"Times: median single-image ms on {doc['machine']['cpus']} CPU(s), {doc['machine']['platform']}.",
              ""]
    return "\n".join(lines)


def _fmt(v, key: str = "") -> str:
    """A figure as measured: ms to 0.1 ms, GFLOPs to 0.01, scores to 0.001; "–" where one side has none."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}" if key.startswith("ms") else f"{v:.2f}" if key == "gflops" else f"{v:.3f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)
