"""Evaluating the clip-embed student: `evaluate(kit, run_dir, store=...)` -> the eval.json dict.

Measured on the held-out split: cosine to the teacher's embedding, the Spearman rank correlation per prompt
of prompt scores across images, top-1 class agreement and (judge kits) moderation agreement, each also for
the same architecture untrained (the baseline training must beat; moderation: `_moderation`); parameters,
GFLOPs (torch's FlopCounterMode: a multiply-add is 2) and the median single-image latency (preprocessing
included) of the student and of the teacher's image tower, on the same first TIMING_IMAGES held-out images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from dkit.core.errors import UsageError
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers
from dkit.distill.evaluate import profile, profile_teacher, timed_median
from dkit.distill.students.clip_embed.data import iter_decoded, labelled_records, preprocess, teacher_embeddings
from dkit.distill.students.clip_embed.model import KIND, build_student, load_student
from dkit.distill.students.clip_embed.prompts import _moderation_sets, moderation_agreement, prompt_embeddings
from dkit.distill.teachers import build_teacher
from dkit.distill.teachers.base import resolve_device
from dkit.edge.bundle.manifest import Preprocess

TIMING_IMAGES = 20  # held-out images timed one by one in evaluate (after WARMUP_PASSES)
WARMUP_PASSES = 3


def evaluate(kit, run_dir: Path, *, store, ground_truth: Path | None = None) -> dict:
    """The student against the teacher (and against its own untrained init) on the held-out images."""
    from scipy.stats import spearmanr

    run_dir = Path(run_dir)
    best, teacher, model, ckpt, val_recs = _inputs(kit, run_dir, store, ground_truth)
    spec, seed = ckpt["preprocess"], int(ckpt.get("seed", 0))
    device = resolve_device(kit.student.device)
    model = model.to(device)
    baseline = build_student(ckpt["backbone"], ckpt["dim"], seed).eval().to(device)
    teacher_emb = teacher_embeddings(val_recs, teacher, run_dir)  # (N, D)
    student_emb, baseline_emb, timed = _embed_held_out(kit, val_recs, spec, model, baseline, device)
    prompts = prompt_embeddings(kit, teacher)
    moderation = _moderation(kit, teacher, student_emb, teacher_emb)
    student_speed, teacher_speed = _speed(kit, teacher, model, spec, device, timed)
    return {
        "task": "embed", "split": "val", "images": len(val_recs), "kit": kit.name, "random_teacher": teacher.random,
        "student": {
            "kind": KIND, "weights": str(best), **student_speed, "device": device,
            **_agreement(student_emb, teacher_emb, prompts, teacher.text, spearmanr),
            "moderation_agreement": moderation,
        },
        "teacher": {"id": teacher.id, **teacher_speed, "device": teacher.device},
        "baseline": _agreement(baseline_emb, teacher_emb, prompts, teacher.text, spearmanr),
    }


def _inputs(kit, run_dir: Path, store, ground_truth: Path | None) -> tuple:
    """(best.pt, teacher, trained student, its checkpoint, held-out records), or a UsageError saying why not."""
    best = RunDir(run_dir).trained_weights()
    if ground_truth is not None:
        raise UsageError("--ground-truth scores detection labels; a clip-embed student is measured against its teacher")
    teacher = build_teacher(kit, store)
    model, ckpt = load_student(best)
    if ckpt.get("teacher_cache_key") != teacher.cache_key:
        raise UsageError(f"{best} was trained on {ckpt.get('teacher')}, the kit's teacher is {teacher.id}: "
                         "run dkit train again")
    val_recs = [r for r in labelled_records(run_dir) if r.split == "val"]
    if not val_recs:
        raise UsageError(f"no held-out images in {run_dir / 'labels'}: nothing to evaluate on")
    return best, teacher, model, ckpt, val_recs


def _embed_held_out(kit, val_recs, spec: Preprocess, model, baseline, device) -> tuple[np.ndarray, np.ndarray, list]:
    """(N, D) student and baseline embeddings of the held-out images, and the first TIMING_IMAGES decoded."""
    student_emb, baseline_emb, timed = [], [], []  # timed: the first TIMING_IMAGES decoded images
    workers = decode_workers(kit.data.workers)
    batch = kit.student.batch
    chunk: list[np.ndarray] = []  # preprocessed inputs, (3, S, S) each
    for k, rgb in enumerate(iter_decoded(val_recs, workers)):
        if len(timed) < TIMING_IMAGES:
            timed.append(rgb)
        chunk.append(preprocess(rgb, spec))
        if len(chunk) == batch or k == len(val_recs) - 1:
            x = torch.from_numpy(np.stack(chunk)).to(device)
            with torch.inference_mode():
                student_emb.append(model(x).float().cpu().numpy())
                baseline_emb.append(baseline(x).float().cpu().numpy())
            chunk = []
    return np.concatenate(student_emb), np.concatenate(baseline_emb), timed


def _agreement(emb: np.ndarray, teacher_emb: np.ndarray, prompts: np.ndarray, text: np.ndarray, spearmanr) -> dict:
    """Cosine to the teacher, Spearman per prompt across images, top-1 class agreement (text: the classes)."""
    cos = np.sum(emb * teacher_emb, axis=1)
    s_scores, t_scores = emb @ prompts.T, teacher_emb @ prompts.T  # (N, P)
    with warnings.catch_warnings():  # a constant column (one image, a degenerate student) has no rank order
        warnings.simplefilter("ignore")
        rhos = [spearmanr(s_scores[:, p], t_scores[:, p]).statistic for p in range(prompts.shape[0])]
    rhos = [float(r) for r in rhos if r is not None and np.isfinite(r)]
    top1 = np.argmax(emb @ text.T, axis=1) == np.argmax(teacher_emb @ text.T, axis=1)
    return {"cosine_mean": round(float(np.mean(cos)), 5),
            "spearman_mean": round(float(np.mean(rhos)), 5) if rhos else None,
            "top1_agreement": round(float(np.mean(top1)), 5)}


def _moderation(kit, teacher, student_emb: np.ndarray, teacher_emb: np.ndarray) -> float | None:
    """moderation_agreement over (held-out image, judge prompt) pairs: the prompts of `judge_prompts` (judge.prompt
    and judge.prompts, else the ontology's prompts), the kit's margins; the content rules only (blocked, text or
    neither: no_match needs the export's calibration). The bundle's `calibration.agreement.moderation.
    moderation_agreement` is the same figure; its `agreement` adds no_match. None without a judge or prompts."""
    sets = _moderation_sets(kit, teacher)
    if sets is None:
        return None
    moderation = moderation_agreement(student_emb, teacher_emb, *sets)
    return None if moderation is None else round(moderation, 5)


def _speed(kit, teacher, model, spec: Preprocess, device, timed: list[np.ndarray]) -> tuple[dict, dict]:
    """({params, gflops, ms_per_image} of the student, the same of the teacher's image tower)."""
    size = spec.size[0]

    def student_forward(rgb: np.ndarray) -> np.ndarray:  # what the device does per frame: preprocess + model
        return model(torch.from_numpy(preprocess(rgb, spec))[None].to(device)).cpu().numpy()

    s_params, s_gflops = profile(model, (1, 3, size, size))
    t_params, t_gflops = profile_teacher(teacher, kit.teacher.imgsz)
    with torch.inference_mode():
        s_ms, _ = timed_median(student_forward, timed, warmup=WARMUP_PASSES)
        t_ms, _ = timed_median(lambda rgb: teacher.embed_images([rgb]), timed, warmup=WARMUP_PASSES)
    return ({"params": s_params, "gflops": round(s_gflops, 4), "ms_per_image": s_ms},
            {"params": t_params, "gflops": round(t_gflops, 4), "ms_per_image": t_ms})
