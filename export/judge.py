"""Judge (clip-embed) bundles: what a kiosk needs to score any prompt offline, each part checked on export.

    from dkit.core.store import ModelStore
    from dkit.export.judge import export_judge

    exported = export_judge(kit, run_dir, bundle_dir, store=ModelStore())   # an Exported with its JudgeParts

Writes into bundle_dir:
- `student.onnx`: the student image encoder, (N, 3, S, S) -> (N, D) L2-normalised embedding (torch.onnx,
  dynamic batch, simplified with onnxslim). Parity on the kit's images through the device's preprocessing:
  largest output difference (<= export.parity_atol) and cosine to the PyTorch student (mean >= accuracy_guard).
- `text.onnx`: the teacher's text encoder, (N, 77) int64 token ids -> (N, D) normalised, so the device embeds a
  new prompt itself. Parity: on every prompt the bundle ships and a table of kiosk-like prompts, the device's
  tokenizer (dkit.edge.infer.tokenizer, with the vocab file below) must give open_clip's ids exactly, and the ONNX
  embedding must match open_clip's encode_text (largest difference, cosine).
- `bpe_simple_vocab_16e6.txt.gz`: the tokenizer's vocabulary (open_clip's own file).
- `prompts.npy`: (P, D) float32, one row per prompt the kit names (ontology classes as template ensembles,
  background prompts, judge prompts, text and unsafe moderation prompts), listed in the manifest in row order.
  A plain .npy array, loaded with allow_pickle=False.
- the score calibration (`calibrate`), in the manifest.

Score calibration: a raw cosine means little on its own (CLIP cosines sit in a narrow band that depends on the
model), so it is mapped to 0-100 by a piecewise-linear curve through percentiles of the similarities actually
produced on the kit's images, against prompts embedded exactly as the device embeds a typed prompt: every prompt
of every ontology class on its own (one prompt x the bundle's templates), through the bundle's own tokenizer and
text.onnx (`dkit.edge.infer.judge.PromptEncoder`, or the shipped embedding where the judge would use it:
`typed_prompt_embeddings`), never the class ensembles (several prompts averaged, which raises cosines). So
`no_match_score` and the anchors mean the same for every prompt a kiosk is given. The fit uses the TRAINING split
only (up to CALIBRATION_IMAGES images); each image's class is the teacher's closest ontology class. For each image,
`best` are its cosines to its class's prompts and `rest` its cosines to the other classes' prompts; the knots are
ANCHORS: an unrelated pair at the median scores 10, the top 1% of unrelated pairs 40, a typical match 70, the top
1% of matches 100. Knots are computed for the student (what the device uses) and the teacher, and their agreement
is reported on the HELD-OUT images only (split val, never fitted on): the mean absolute difference of the two
scores over (image, prompt) pairs and their Spearman rank correlation, and the kiosk verdicts of both
(`verdict_agreement_report`, over the prompts of dkit.distill.students.clip_embed.prompts.judge_prompts, the same
set `dkit eval`'s moderation_agreement uses).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np

from dkit.core.errors import DkitError, UsageError, require
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers
from dkit.edge.bundle.manifest import Calibration, Decode, ModelEntry, Preprocess, Prompts, TokenizerSpec
from dkit.edge.infer.judge import PromptEncoder, shipped_prompts, typed_prompt_embeddings
from dkit.edge.infer.moderation import VERDICTS, verdict_agreement
from dkit.edge.infer.preprocess import preprocess
from dkit.edge.infer.tokenizer import VOCAB_NAME, Tokenizer
from dkit.export.exporters import Exported, JudgeParts

log = logging.getLogger(__name__)

PARITY_IMAGES = 16
CALIBRATION_IMAGES = 1024  # training images whose similarities set the score curve
HELD_OUT_IMAGES = 1024  # held-out images the student-teacher agreement is measured on
ANCHORS = (("rest", 1.0, 0.0), ("rest", 50.0, 10.0), ("rest", 99.0, 40.0), ("best", 50.0, 70.0), ("best", 99.0, 100.0))
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
# prompts every text-encoder parity check includes besides the kit's own: what kiosk operators type
EXTRA_PROMPTS = ("a raccoon driving a tractor", "A Photo Of A CAT!!", "un café crème, s'il vous plaît",
                 "🐱 cat emoji 🐶", "it's a bird... it's a plane", "naïve résumé façade", "3 little pigs & 1 wolf",
                 "一只猫", " ".join(["very long prompt"] * 40))


def export_clip_embed(kit, run: RunDir, bundle_dir: Path, store) -> Exported:
    """The `clip-embed` exporter (dkit.export.exporters): the judge's files and manifest parts."""
    return export_judge(kit, run.root, bundle_dir, store=store)


def export_judge(kit, run_dir: Path, bundle_dir: Path, *, store) -> Exported:
    """Write the judge's files into bundle_dir; return the image encoder's entry, preprocessing and decoding, the
    ontology's classes, and the judge's parts (text encoder, tokenizer, prompts, calibration)."""
    require("onnx", what="exporting to ONNX", extra="export")
    from dkit.distill.students import clip_embed
    from dkit.distill.students.clip_embed.prompts import moderation_sets, ontology_prompts
    from dkit.distill.teachers import build_teacher

    best = RunDir(run_dir).trained_weights()
    model, ckpt = clip_embed.load_student(best)
    spec = ckpt["preprocess"]
    teacher = build_teacher(kit, store)
    records = clip_embed.labelled_records(run_dir)
    if not records:
        raise UsageError(f"no labelled images in {run_dir / 'labels'} to check the export against")
    fit = [r for r in records if r.split == "train"][:CALIBRATION_IMAGES]  # the score curve: training images only
    held = [r for r in records if r.split == "val"][:HELD_OUT_IMAGES]  # the agreement: held-out images only
    if not fit:
        raise UsageError(f"no training images in {run_dir / 'labels'} (every labelled image is held out) to fit "
                         "the judge's score calibration on: lower data.val")
    workers = decode_workers(kit.data.workers)
    fit_images = list(clip_embed.iter_decoded(fit, workers))  # in worker processes
    held_images = list(clip_embed.iter_decoded(held, workers))
    images = held_images + fit_images

    student = _export_image_encoder(model, spec, ckpt["dim"], bundle_dir / "student.onnx", kit)
    parity = image_parity(model, bundle_dir / "student.onnx", images[:PARITY_IMAGES], spec)
    student = dataclasses.replace(student, info=student.info | {"parity": parity})
    _check(parity, kit, "image encoder", best)

    shutil.copyfile(_vocab(), bundle_dir / VOCAB_NAME)
    rows, embeddings = _prompt_table(kit, teacher)
    np.save(bundle_dir / "prompts.npy", embeddings, allow_pickle=False)
    context = int(getattr(teacher.tokenizer, "context_length", 77))
    text = _export_text_encoder(teacher, bundle_dir / "text.onnx", kit, context)
    texts = [t.format(r["text"]) for r in rows for t in teacher.cfg.templates] + list(EXTRA_PROMPTS)
    tokenizer = Tokenizer.from_file(bundle_dir / VOCAB_NAME, context)
    tparity = text_parity(teacher, bundle_dir / "text.onnx", tokenizer, texts)
    text = dataclasses.replace(text, info=text.info | {"parity": tparity})
    _check(tparity, kit, "text encoder", Path(kit.teacher.model))
    if tparity["token_agreement"] < 1.0:
        raise DkitError(f"the device tokenizer disagrees with {kit.teacher.model}'s open_clip tokenizer on "
                        f"{tparity['token_mismatches']} of {len(texts)} prompts (first: "
                        f"{tparity['first_mismatch']!r}); this teacher's tokenizer is not the CLIP BPE one "
                        "the edge reproduces")

    prompts = Prompts.from_dict({
        "file": "prompts.npy", "dim": int(embeddings.shape[1]), "rows": rows, "templates": list(teacher.cfg.templates),
        "ensemble": "each template formatted with the prompt, encoded, normalised, averaged, normalised"})
    texts, prompt_class = ontology_prompts(kit)
    encoder = PromptEncoder.from_files(bundle_dir / "text.onnx", bundle_dir / VOCAB_NAME, context,
                                       teacher.cfg.templates)
    typed = typed_prompt_embeddings(texts, shipped_prompts(prompts.rows, embeddings), encoder)

    def embed(recs: list, ims: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:  # (N, D) student, teacher
        dim = int(embeddings.shape[1])
        s = _run(bundle_dir / "student.onnx", [preprocess(im, spec)[0] for im in ims]) if ims else np.zeros((0, dim))
        return s.astype(np.float32), clip_embed.teacher_embeddings(recs, teacher, run_dir)  # the teacher cache's

    student_fit, teacher_fit = embed(fit, fit_images)
    image_class = (teacher_fit @ teacher.text.T).argmax(1)  # the teacher's closest ontology class
    calibration = calibrate(student_fit, typed, prompt_class, image_class)
    calibration["teacher"] = calibrate(teacher_fit, typed, prompt_class, image_class)
    student_held, teacher_held = embed(held, held_images)
    calibration["agreement"] = score_agreement(student_held, teacher_held, typed, calibration, calibration["teacher"])
    calibration["agreement"]["moderation"] = verdict_agreement_report(
        student_held, teacher_held, moderation_sets(kit, teacher), calibration,
        calibration["teacher"])
    calibration |= {"source": "student", "split": "train", "images": len(fit), "prompts": texts,
                    "prompt": "each ontology prompt alone x the templates, as the device embeds a typed prompt "
                              "(dkit.edge.infer.judge.PromptEncoder)"}
    decode = Decode("embedding", {"output": "(batch, dim)", "normalized": True, "dim": prompts.dim})
    parts = JudgeParts(text=text, tokenizer=TokenizerSpec(VOCAB_NAME, context, "clip-bpe"), prompts=prompts,
                       calibration=Calibration.from_dict(calibration), logit_scale=teacher.logit_scale,
                       teacher_id=teacher.id)
    return Exported(student, spec, decode, list(kit.ontology.names), parts)


# ------------------------------------------------------------------------------------------ encoders


def _export_image_encoder(model, spec: Preprocess, dim: int, path: Path, kit) -> ModelEntry:
    import torch

    size = spec.size[0]
    _onnx_export(model.float().eval(), (torch.zeros(1, 3, size, size),), path, ["images"], ["embedding"],
                 kit.export.opset)
    return ModelEntry(
        "student", path.name, "fp32", info={"opset": kit.export.opset},
        inputs=({"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW"},),
        outputs=({"name": "embedding", "shape": ["batch", dim], "normalized": True},))


def _text_tower(clip):
    """open_clip's encode_text, normalised, as a module: (N, L) int64 -> (N, D)."""
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, tokens):
            return self.clip.encode_text(tokens, normalize=True)

    return TextTower().eval()


def _export_text_encoder(teacher, path: Path, kit, context: int) -> ModelEntry:
    import torch

    tower = _text_tower(teacher.model.float().cpu())
    tokens = teacher.tokenizer(["a photo of a cat.", "a dog"])
    _onnx_export(tower, (tokens,), path, ["tokens"], ["embedding"], kit.export.opset)
    with torch.no_grad():
        dim = int(tower(tokens).shape[1])
    return ModelEntry("text", path.name, "fp32", info={"opset": kit.export.opset},
                      inputs=({"name": "tokens", "shape": ["batch", context], "dtype": "int64"},),
                      outputs=({"name": "embedding", "shape": ["batch", dim], "normalized": True},))


def _onnx_export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    """torch's TorchScript-based exporter, dynamic batch, quiet about what does not concern this graph."""
    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*aten::index.*")  # open_clip's argmax pooling: indices >= 0
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shapes fixed but the batch: expected
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, opset_version=opset, dynamo=False)
    _slim(path)


def _slim(path: Path) -> None:
    onnx = require("onnx", what="exporting to ONNX", extra="export")
    onnxslim = require("onnxslim", what="simplifying the ONNX graph", extra="export")
    slimmed = onnxslim.slim(onnx.load(str(path)))
    part = path.with_name(f".{path.name}.part")
    onnx.save(slimmed, str(part))
    part.replace(path)


def _vocab() -> Path:
    from dkit.export.tokenizer import vocab_file

    return vocab_file()


def _run(path: Path, inputs: list[np.ndarray]) -> np.ndarray:
    """(N, D) outputs of an ONNX model for N single-item inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in inputs]).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def image_parity(model, onnx_path: Path, images: list[np.ndarray], spec: Preprocess) -> dict:
    """ONNX vs PyTorch image encoder on the device's preprocessing of the same images."""
    import torch

    inputs = [preprocess(im, spec)[0] for im in images]  # (1, 3, S, S) each
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(x)).numpy() for x in inputs])
    got = _run(onnx_path, inputs)
    cos = _cosine(ref, got)
    return {"images": len(images), "max_abs_diff": float(np.abs(ref - got).max()), "agreement": float(cos.mean()),
            "min_cosine": float(cos.min())}


def text_parity(teacher, onnx_path: Path, tokenizer: Tokenizer, texts: list[str]) -> dict:
    """Device tokenizer vs open_clip's ids, and ONNX vs open_clip's encode_text embeddings, on `texts`."""
    import torch

    ours = tokenizer(texts)  # (N, 77) int64
    theirs = teacher.tokenizer(texts).numpy()
    mismatch = [t for t, a, b in zip(texts, ours, theirs, strict=True) if not np.array_equal(a, b)]
    with torch.inference_mode():
        device = next(teacher.model.parameters()).device
        ref = teacher.model.encode_text(torch.from_numpy(theirs).to(device), normalize=True).float()
    ref = ref.cpu().numpy()
    got = _run(onnx_path, [theirs[i : i + 1] for i in range(len(texts))])
    cos = _cosine(ref, got)
    return {"prompts": len(texts), "token_agreement": 1 - len(mismatch) / len(texts),
            "token_mismatches": len(mismatch), "first_mismatch": mismatch[0] if mismatch else None,
            "max_abs_diff": float(np.abs(ref - got).max()), "agreement": float(cos.mean()),
            "min_cosine": float(cos.min())}


def _check(parity: dict, kit, what: str, source: Path) -> None:
    e = kit.export
    if parity["max_abs_diff"] > e.parity_atol or parity["agreement"] < e.accuracy_guard:
        raise DkitError(f"ONNX export of the {what} ({source}) is out of tolerance: max abs output difference "
                        f"{parity['max_abs_diff']:.3g} (export.parity_atol {e.parity_atol:g}), mean cosine "
                        f"{parity['agreement']:.4f} (export.accuracy_guard {e.accuracy_guard:g})")
    log.info("%s ONNX parity: max abs diff %.2e, mean cosine %.6f", what, parity["max_abs_diff"], parity["agreement"])


# ------------------------------------------------------------------------------------------ prompts


def _prompt_table(kit, teacher) -> tuple[list[dict], np.ndarray]:
    """Rows (text, role, and the class name for class rows) and their (P, D) teacher embeddings."""
    rows = [{"text": name, "role": "class", "prompts": list(kit.ontology.classes[name])}
            for name in teacher.class_names]
    rows += [{"text": p, "role": "background"} for p in teacher.background_prompts]
    parts = [teacher.text, teacher.background]
    judge = kit.judge
    if judge is not None:
        extra: dict[str, str] = {}
        for role, prompts in (("prompt", ([judge.prompt] if judge.prompt else []) + judge.prompts),
                              ("text", judge.text_prompts), ("unsafe", judge.unsafe_prompts)):
            for p in prompts:
                extra.setdefault(p, role)
        rows += [{"text": p, "role": role} for p, role in extra.items()]
        parts.append(teacher.embed_prompts([[p] for p in extra]))
    return rows, np.concatenate([p for p in parts if len(p)]).astype(np.float32)


# ------------------------------------------------------------------------------------------ calibration


def calibrate(images: np.ndarray, prompts: np.ndarray, prompt_class: np.ndarray | None = None,
              image_class: np.ndarray | None = None) -> dict:
    """The piecewise-linear cosine -> 0-100 curve (ANCHORS) from (N, D) image and (Q, D) prompt embeddings.

    prompt_class (Q,): the class each prompt names (default: each prompt its own class); image_class (N,): each
    image's class (default: the class of its closest prompt). `best`: an image's cosines to its own class's
    prompts; `rest`: to the other classes' prompts (one class: every cosine is both)."""
    if len(images) == 0 or len(prompts) == 0:
        raise DkitError("no images or no classes to calibrate the judge's scores on")
    cos = images @ prompts.T  # (N, Q)
    pc = np.arange(cos.shape[1]) if prompt_class is None else np.asarray(prompt_class)
    if len(np.unique(pc)) > 1:
        ic = pc[cos.argmax(1)] if image_class is None else np.asarray(image_class)
        match = pc[None, :] == ic[:, None]  # (N, Q): the pairs of an image and a prompt of its class
        best, rest = cos[match], cos[~match]
    else:
        best = rest = cos.ravel()
    groups = {"best": best, "rest": rest}
    xs: list[float] = []
    ys: list[float] = []
    for group, q, score in ANCHORS:
        c = float(np.percentile(groups[group], q))
        if not xs or c > xs[-1] + 1e-6:  # a knot that would not increase the cosine is dropped
            xs.append(c)
            ys.append(score)
        elif score == ANCHORS[-1][2]:  # the top knot is kept, just above the last one
            xs.append(xs[-1] + 1e-3)
            ys.append(score)
    if len(xs) == 1:
        xs, ys = [xs[0], xs[0] + 1e-3], [ys[0], 100.0]
    return {"method": "piecewise-linear", "cosine": [round(x, 6) for x in xs], "score": ys,
            "anchors": [list(a) for a in ANCHORS],
            "percentiles": {g: {str(q): round(float(np.percentile(v, q)), 6) for q in PERCENTILES}
                            for g, v in groups.items()}}


def score(cosines: np.ndarray, calibration: dict) -> np.ndarray:
    """0-100 scores of raw cosines through a calibration's curve (the device's Calibration.to_score)."""
    return Calibration.from_dict(calibration).to_score(cosines)


def verdict_agreement_report(student: np.ndarray, teacher: np.ndarray, sets: tuple, s_cal: dict,
                             t_cal: dict) -> dict:
    """Student vs teacher kiosk verdicts over (held-out image, judge prompt) pairs, with the device's moderation rule
    (dkit.edge.infer.moderation) and each one's own score calibration.

    student, teacher: (N, D) embeddings of the held-out images; sets: `moderation_sets(kit, teacher)` (the judge
    prompts, text and unsafe prompts as the bundle ships them, the device's JudgeConfig), the same prompt set
    `dkit eval` uses. `agreement`: all four verdicts (ok, text, no_match, blocked); `moderation_agreement`: the
    content rules alone (blocked, text or neither), the figure eval.json's `moderation_agreement` is."""
    from dkit.distill.students.clip_embed.prompts import moderation_agreement, moderation_verdicts

    prompts, text, unsafe, cfg = sets

    def verdicts(emb: np.ndarray, cal: dict) -> np.ndarray:  # (N, P)
        return moderation_verdicts(emb, prompts, text, unsafe, cfg, score=score(emb @ prompts.T, cal))

    s, t = verdicts(student, s_cal), verdicts(teacher, t_cal)
    same = verdict_agreement(s, t)
    content = moderation_agreement(student, teacher, prompts, text, unsafe, cfg)
    return {"pairs": int(s.size), "split": "val", "agreement": None if same is None else round(same, 4),
            "moderation_agreement": None if content is None else round(content, 4),
            **{who: {v: int((x == v).sum()) for v in VERDICTS} for who, x in (("student", s), ("teacher", t))}}


def score_agreement(student: np.ndarray, teacher: np.ndarray, prompts: np.ndarray, s_cal: dict,
                    t_cal: dict) -> dict:
    """Student vs teacher 0-100 scores over (held-out image, prompt) pairs: (N, D) embeddings of the held-out
    images only (the curves were fitted on training images), (Q, D) the calibration's prompts."""
    a, b = score(student @ prompts.T, s_cal).ravel(), score(teacher @ prompts.T, t_cal).ravel()
    if a.size == 0:
        return {"pairs": 0, "split": "val", "mean_abs_score_diff": None, "spearman": None}
    return {"pairs": int(a.size), "split": "val",
            "mean_abs_score_diff": round(float(np.abs(a - b).mean()), 3),
            "spearman": round(_spearman(a, b), 4)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)
