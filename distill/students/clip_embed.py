"""clip-embed student: a small image encoder trained to reproduce the CLIP teacher's image embeddings.

    summary = train(kit, run_dir, store=ModelStore())     # -> run_dir/student/
    report = evaluate(kit, run_dir, store=ModelStore())   # the eval.json dict, held-out split only

The student is `timm.create_model(kit.student.model, pretrained=False, num_classes=0)` (pooled features)
plus a linear projection to the teacher's embedding dimension, L2-normalised; so on the device any text
prompt is scored by a dot product with the teacher's text embedding of it (shipped in the bundle), the
kiosk judge. It starts from scratch (seeded init): ImageNet weights are not reachable offline.

Targets are the teacher's normalised image embeddings of every labelled image (`labels/labels.jsonl`,
split train or val), read from the teacher cache `dkit label` filled; the teacher is built here only for its
identity and text embeddings, it never sees an image during training.

Loss per image (s, t: student and teacher embeddings; P: the kit's prompt embeddings, ontology classes,
background prompts and judge prompts; k: teacher.logit_scale):

    (1 - cos(s, t))  +  kd_weight * KL(softmax(k t P') || softmax(k s P'))

The cosine term pulls the whole embedding onto the teacher's; the KL term (teacher's prompt distribution as
the target, as in Hinton et al.) weights the directions the device actually scores. kd_weight = 1 by default:
both terms are O(1) at the start and the KL term vanishes as the cosine approaches 1.

Preprocessing is data (`preprocess_spec`) implemented with OpenCV/numpy only (`preprocess`), so the edge
runtime repeats it exactly without torch. Training adds a random resized crop, a horizontal flip and a
little brightness/contrast jitter before the same resize and normalisation; evaluation uses `preprocess`.

Optimiser and schedule: AdamW (no weight decay on norms and biases), linear warm-up (one epoch at most)
then cosine decay to 1% of lr, per step; `student.epochs` epochs of `student.batch` images; early stopping
on the held-out cosine after `student.patience` epochs without improvement. `student.train_args` may set:
lr (2e-3), weight_decay (0.05), kd_weight (1.0), seed (0), workers (decoding processes; 0: one per spare core).

Small sets are decoded once and kept in memory as uint8 images shrunk to the input size; above
MEMORY_BUDGET bytes they are decoded again every epoch by DataLoader workers, so memory stays bounded.

`evaluate` measures on the held-out split: cosine to the teacher's embedding, the Spearman rank correlation
per prompt of prompt scores across images, top-1 class agreement and (judge kits) moderation agreement, each
also for the same architecture untrained (the baseline training must beat); parameters, GFLOPs (torch's
FlopCounterMode: a multiply-add is 2) and the median single-image latency (preprocessing included) of the
student and of the teacher's image tower, on the same first TIMING_IMAGES held-out images.

Writes run_dir/student/: weights/best.pt and weights/last.pt (last.pt: model, optimizer, schedule, epoch,
history: what resume needs), student.json, results.csv, curves.png, train.log, each replaced atomically.
An interrupted run resumes from last.pt with the same results; a finished one is not trained again; other
settings or labels than last.pt's are refused rather than mixed in; `restart=True` clears the folder first.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkit.core.errors import DkitError, UsageError
from dkit.core.files import atomic_write, duration
from dkit.core.records import LabelRecord
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers
from dkit.distill.cache import TeacherCache
from dkit.distill.evaluate import profile, profile_teacher, timed_median
from dkit.distill.images import iter_images, load_image
from dkit.distill.teachers import build_teacher
from dkit.distill.teachers.base import resolve_device
from dkit.edge.manifest import JudgeConfig
from dkit.edge.moderation import agreement as verdict_agreement
from dkit.edge.moderation import moderate
from dkit.edge.preprocess import center_crop, normalize, resize, shortest_side
from dkit.edge.preprocess import preprocess as edge_preprocess

log = logging.getLogger(__name__)

KIND = "clip-embed"
DEFAULT_ARGS = {"lr": 2e-3, "weight_decay": 0.05, "kd_weight": 1.0, "seed": 0, "workers": 0}
MEMORY_BUDGET = 1 << 30  # bytes of decoded training images kept in memory; above it images are decoded per epoch
TIMING_IMAGES = 20  # held-out images timed one by one in evaluate (after WARMUP_PASSES)
WARMUP_PASSES = 3
CURVES_EVERY_S = 30.0  # curves.png is redrawn after an epoch at most this often, and after the last one
_FINGERPRINT = {"student": "student settings", "teacher": "teacher", "prompts": "prompts", "images": "labelled images"}
RESULTS_COLUMNS = ["epoch", "train_loss", "val_cosine", "lr", "seconds"]


# ------------------------------------------------------------------------------------------ preprocessing


def preprocess_spec(kit) -> dict:
    """The student's input transform as data: what the bundle manifest carries to the device."""
    mean, std = _backbone_mean_std(kit.student.model)
    return {
        "resize": "shortest",  # shorter side to `size`, longer side int(long * size / short) (dkit.edge.preprocess)
        "size": kit.student.imgsz,
        "crop": "center",  # size x size at (round((H - size) / 2), round((W - size) / 2))
        "interpolation": "area",  # cv2.INTER_AREA (shrinking and enlarging alike)
        "scale": 1 / 255,  # uint8 -> [0, 1], then (x - mean) / std per channel
        "mean": mean,
        "std": std,
        "layout": "NCHW",
        "channels": "RGB",
        "dtype": "float32",
    }


def _backbone_mean_std(name: str) -> tuple[list[float], list[float]]:
    """timm's normalisation for the backbone (ImageNet's for almost all), so pretrained weights would fit."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = cfg.mean if cfg is not None and cfg.mean else (0.485, 0.456, 0.406)
    std = cfg.std if cfg is not None and cfg.std else (0.229, 0.224, 0.225)
    return [float(v) for v in mean], [float(v) for v in std]


def resize_shortest(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with min(h, w) == spec["size"]: the device's resize (dkit.edge.preprocess)."""
    return shortest_side(rgb, spec["size"], spec["interpolation"])


def preprocess(rgb: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, S, S) float32: the exact transform the device repeats (dkit.edge.preprocess)."""
    return edge_preprocess(rgb, spec)[0][0]


def _augment(small: np.ndarray, spec: dict, rng: np.random.Generator) -> np.ndarray:
    """Training view of an image already shrunk by resize_shortest: random resized crop, flip, jitter."""
    size = spec["size"]
    h, w = small.shape[:2]
    for _ in range(10):  # torchvision's RandomResizedCrop, mild: the target is the uncropped image's embedding
        area = h * w * rng.uniform(0.5, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        ch = cw = min(h, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = resize(small[top : top + ch, left : left + cw], (size, size), spec["interpolation"])
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    x = crop.astype(np.float32)
    x = (x - x.mean()) * rng.uniform(0.9, 1.1) + x.mean() * rng.uniform(0.9, 1.1)  # contrast, brightness
    return normalize(np.clip(x + 0.5, 0, 255).astype(np.uint8), spec)


# ------------------------------------------------------------------------------------------ model


class EmbedStudent(nn.Module):
    """timm backbone (pooled features) -> linear -> L2-normalised (N, dim) embedding."""

    def __init__(self, backbone: str, dim: int):
        import timm

        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.proj = nn.Linear(features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, dim)
        return F.normalize(self.proj(self.backbone(x)), dim=-1)


def build_student(backbone: str, dim: int, seed: int = 0) -> EmbedStudent:
    """The untrained student, the same weights for the same seed (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbedStudent(backbone, dim)


def load_student(weights: Path) -> tuple[EmbedStudent, dict]:
    """(model in eval mode on the CPU, checkpoint dict) from best.pt or last.pt."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_student(ckpt["backbone"], ckpt["dim"], ckpt.get("seed", 0))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


# ------------------------------------------------------------------------------------------ data


def labelled_records(run_dir: Path) -> list[LabelRecord]:
    """Labelled images with a split (train or val), in file order."""
    return RunDir(run_dir).usable_records()


def teacher_embeddings(records: list[LabelRecord], teacher, run_dir: Path) -> np.ndarray:
    """(N, D) the teacher's normalised embeddings of the records' images, from the teacher cache."""
    out = []
    with TeacherCache(RunDir(run_dir).cache_db) as cache:
        for rec in records:
            raw = cache.get(teacher.cache_key, rec.sha256)
            if raw is None or "embedding" not in raw:
                raise UsageError(f"the teacher cache has no embedding of {rec.image} for {teacher.id}: "
                                 "the labels were made by another teacher; run dkit label again")
            out.append(raw["embedding"].astype(np.float32))
    emb = np.stack(out) if out else np.zeros((0, teacher.text.shape[1]), np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def decode_record(rec: LabelRecord) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a record's source image, as the teacher saw it."""
    src = Path(rec.source)
    return _checked(load_image(src, src.parent), rec)


def _checked(li, rec: LabelRecord) -> np.ndarray:
    if not li.ok:
        raise DkitError(f"{rec.source}: {li.skipped} (it was readable when labelled: run dkit label again)")
    if li.sha256 != rec.sha256:
        raise DkitError(f"{rec.source} changed since it was labelled: run dkit label again")
    return li.rgb


def iter_decoded(records: list[LabelRecord], workers: int) -> Iterator[np.ndarray]:
    """The records' images in order, decoded in `workers` processes (in this one for a few images)."""
    if not records:
        return
    paths = [Path(r.source) for r in records]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    workers = 0 if len(records) < 64 else workers  # a process pool costs more than it saves on a few images
    for li, rec in zip(iter_images(paths, root, workers=workers), records, strict=True):
        yield _checked(li, rec)


class _Images(torch.utils.data.Dataset):
    """(input (3, S, S), target (D,)) pairs: augmented views for training, `preprocess` for validation.

    `memory`: the images, already shrunk (train) or shrunk and cropped (val), as uint8; None: decode per item.
    """

    def __init__(self, records: list[dict], targets: np.ndarray, spec: dict, *, train: bool, seed: int,
                 memory: list[np.ndarray] | None):
        self.records, self.targets, self.spec, self.train, self.seed = records, targets, spec, train, seed
        self.memory, self.epoch = memory, 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memory is not None:
            small = self.memory[i]
        else:
            small = _shrink(decode_record(self.records[i]), self.spec, self.train)
        if self.train:  # the same view for the same (seed, epoch, image), whichever worker makes it
            x = _augment(small, self.spec, np.random.default_rng((self.seed, self.epoch, i)))
        else:
            x = normalize(small, self.spec)
        return torch.from_numpy(x), torch.from_numpy(self.targets[i])


def _shrink(rgb: np.ndarray, spec: dict, train: bool) -> np.ndarray:
    small = resize_shortest(rgb, spec)
    return np.ascontiguousarray(small if train else center_crop(small, spec["size"]))


def _datasets(train_recs, val_recs, train_t, val_t, spec, seed, workers) -> tuple[_Images, _Images, bool]:
    size = spec["size"]
    estimate = (len(train_recs) * 1.5 + len(val_recs)) * size * size * 3  # train keeps the aspect ratio
    in_memory = estimate <= MEMORY_BUDGET
    train_mem = val_mem = None
    if in_memory:
        train_mem = [_shrink(rgb, spec, True) for rgb in iter_decoded(train_recs, workers)]
        val_mem = [_shrink(rgb, spec, False) for rgb in iter_decoded(val_recs, workers)]
    else:
        log.info("%d images at %d px exceed the %d MiB memory budget: decoding them every epoch",
                 len(train_recs) + len(val_recs), size, MEMORY_BUDGET >> 20)
    return (_Images(train_recs, train_t, spec, train=True, seed=seed, memory=train_mem),
            _Images(val_recs, val_t, spec, train=False, seed=seed, memory=val_mem), in_memory)


def _loader(ds: _Images, batch: int, *, workers: int, epoch: int = 0, seed: int = 0) -> torch.utils.data.DataLoader:
    ds.epoch = epoch
    sampler = None
    if ds.train:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        sampler = torch.utils.data.RandomSampler(ds, generator=generator)
    drop_last = ds.train and len(ds) > batch  # no batch of one in train mode (BatchNorm)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       drop_last=drop_last)


# ------------------------------------------------------------------------------------------ prompts


def _judge_prompts(kit) -> list[str]:
    judge = kit.judge
    if judge is None:
        return []
    prompts = ([judge.prompt] if judge.prompt else []) + judge.prompts + judge.text_prompts + judge.unsafe_prompts
    return list(dict.fromkeys(prompts))


def prompt_embeddings(kit, teacher) -> np.ndarray:
    """(P, D) what the device scores: ontology classes, background prompts, then the judge's prompts."""
    parts = [teacher.text, teacher.background]
    judge = _judge_prompts(kit)
    if judge:
        parts.append(teacher.embed_prompts([[p] for p in judge]))
    return np.concatenate([p for p in parts if len(p)], axis=0).astype(np.float32)


def moderation_agreement(student: np.ndarray, teacher: np.ndarray, prompts: np.ndarray, text: np.ndarray,
                         unsafe: np.ndarray, cfg: JudgeConfig) -> float | None:
    """Share of (image, prompt) pairs whose moderation verdict (dkit.edge.moderation, the device's rule with the
    kit's margins: blocked, text or neither) is the same for student and teacher.

    student, teacher: (N, D) normalised image embeddings; prompts: (P, D); text: (T, D) and unsafe: (U, D)
    moderation prompts. None when there is nothing to compare (no images, prompts or moderation prompts).
    """
    if not len(student) or not len(prompts) or not len(text) + len(unsafe):
        return None

    def verdicts(emb: np.ndarray) -> np.ndarray:  # (N, P)
        return moderate(emb @ prompts.T, (emb @ text.T)[:, None, :], (emb @ unsafe.T)[:, None, :], cfg)

    return verdict_agreement(verdicts(student), verdicts(teacher))


def _moderation_sets(kit, teacher) -> tuple[np.ndarray, np.ndarray, np.ndarray, JudgeConfig] | None:
    judge = kit.judge
    if judge is None:
        return None
    prompts = teacher.embed_prompts([[p] for p in judge.prompts]) if judge.prompts else teacher.text
    text, unsafe = (teacher.embed_prompts([[p] for p in texts]) if texts else np.zeros((0, prompts.shape[1]))
                    for texts in (judge.text_prompts, judge.unsafe_prompts))
    return prompts, text, unsafe, JudgeConfig.from_dict(dataclasses.asdict(judge))


# ------------------------------------------------------------------------------------------ training


def _train_args(kit) -> dict:
    unknown = sorted(set(kit.student.train_args) - set(DEFAULT_ARGS))
    if unknown:
        raise UsageError(f"student.train_args: unknown key(s) {', '.join(unknown)} for a {KIND} student; "
                         f"the keys are: {', '.join(DEFAULT_ARGS)}")
    args = {**DEFAULT_ARGS, **kit.student.train_args}
    for key, default in DEFAULT_ARGS.items():
        value = args[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                isinstance(default, int) and not isinstance(value, int)):
            kind = "an integer >= 0" if isinstance(default, int) else "a number >= 0"
            raise UsageError(f"student.train_args.{key}: expected {kind}, got {value!r}")
    return args


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _lr_lambda(total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _loss(s: torch.Tensor, t: torch.Tensor, prompts: torch.Tensor, scale: float, kd_weight: float) -> torch.Tensor:
    """s, t: (B, D) normalised student/teacher embeddings; prompts: (P, D)."""
    loss = (1 - (s * t).sum(dim=1)).mean()
    if kd_weight > 0 and prompts.shape[0] > 1:
        log_s = F.log_softmax(scale * s @ prompts.T, dim=1)  # (B, P)
        log_t = F.log_softmax(scale * t @ prompts.T, dim=1)
        loss = loss + kd_weight * F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return loss


def _run_epoch(model, loader, optimizer, scheduler, prompts, scale, kd_weight, device, bar) -> float:
    model.train()
    total, seen = 0.0, 0
    for x, t in loader:
        x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
        loss = _loss(model(x), t, prompts, scale, kd_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(x)
        seen += len(x)
        bar.update(len(x))
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / max(1, seen)


@torch.inference_mode()
def _embed(model, loader, device) -> np.ndarray:
    model.eval()
    return np.concatenate([model(x.to(device)).float().cpu().numpy() for x, _ in loader], axis=0)


def train(kit, run_dir: Path, *, store, restart: bool = False, progress: bool = True) -> dict:
    """Train the student on run_dir/labels/ into run_dir/student/ (see the module docstring)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "student"
    weights = out / "weights"
    args = _train_args(kit)
    records = labelled_records(run_dir)
    train_recs = [r for r in records if r.split == "train"]
    val_recs = [r for r in records if r.split == "val"]
    if not train_recs or not val_recs:
        raise UsageError(f"{run_dir / 'labels'} has {len(train_recs)} training and {len(val_recs)} held-out "
                         "images: a student needs both (label at least two images)")
    teacher = build_teacher(kit, store)
    if teacher.random:
        log.warning("training on an UNTRAINED teacher's embeddings (%s): the student is meaningless", teacher.id)
    cfg, spec, seed = kit.student, preprocess_spec(kit), args["seed"]
    prompts_np = prompt_embeddings(kit, teacher)
    dim = int(teacher.text.shape[1])
    fingerprint = {
        "student": dataclasses.asdict(cfg) | {"train_args": args, "device": None},
        "teacher": teacher.cache_key,
        "prompts": _digest(prompts_np.round(5).tolist()),
        "images": _digest([(r.sha256, r.split) for r in records]),
    }

    state = None
    if restart:
        shutil.rmtree(out, ignore_errors=True)
    elif (weights / "last.pt").is_file():
        state = _load_state(weights / "last.pt")
        changed = [_FINGERPRINT[k] for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k]]
        if changed:
            raise UsageError(f"{out} holds a run made with other {' and '.join(changed)}: restart training "
                             "(dkit train --restart) or choose another --out")
        if state["finished"]:
            _write_logs(out, state["history"], state["config"], state)  # in case a kill came between the files
            _write_curves(out / "curves.png", state["history"], kit.name)
            log.info("%s: already trained (%d epochs, best val cosine %.4f at epoch %d)", out, state["epoch"],
                     state["best_cosine"], state["best_epoch"])
            return _summary(weights, state, resumed=False, already_trained=True, seconds=time.perf_counter() - start)
    weights.mkdir(parents=True, exist_ok=True)

    device = resolve_device(cfg.device)
    train_t, val_t = teacher_embeddings(train_recs, teacher, run_dir), teacher_embeddings(val_recs, teacher, run_dir)
    workers = decode_workers(args["workers"] or kit.data.workers)
    train_ds, val_ds, in_memory = _datasets(train_recs, val_recs, train_t, val_t, spec, seed, workers)
    loader_workers = 0 if in_memory else workers
    steps = len(_loader(train_ds, cfg.batch, workers=0))
    total_steps = steps * cfg.epochs

    model = build_student(cfg.model, dim, seed).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, min(steps, total_steps // 10)))
    prompts = torch.from_numpy(prompts_np).to(device)
    scale = float(teacher.logit_scale)

    history: list[dict] = []
    best_cos, best_epoch, bad, done, seconds = -2.0, 0, 0, 0, 0.0
    resumed = state is not None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, done, seconds = state["history"], state["epoch"], state["seconds"]
        best_cos, best_epoch, bad = state["best_cosine"], state["best_epoch"], state["bad_epochs"]
        log.info("resuming %s after epoch %d/%d", out, done, cfg.epochs)

    config = {
        "kind": KIND, "student": dataclasses.asdict(cfg), "train_args": args,
        "teacher": {"id": teacher.id, "cache_key": teacher.cache_key, "random": teacher.random,
                    "logit_scale": scale},
        "backbone": cfg.model, "embedding_dim": dim, "preprocess": spec, "started_from": "scratch",
        "images": {"train": len(train_recs), "val": len(val_recs), "in_memory": in_memory},
        "prompts": len(prompts_np), "device": device,
        "loss": f"(1 - cos) + {args['kd_weight']} * KL(teacher || student) over {len(prompts_np)} prompts",
    }
    stopped, drawn = False, time.perf_counter()
    for epoch in range(done + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        bar = tqdm(total=len(train_ds), unit="img", desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=None if progress else True, dynamic_ncols=True)
        try:
            loader = _loader(train_ds, cfg.batch, workers=loader_workers, epoch=epoch, seed=seed)
            loss = _run_epoch(model, loader, optimizer, scheduler, prompts, scale, args["kd_weight"], device, bar)
        finally:
            bar.close()
        val_emb = _embed(model, _loader(val_ds, cfg.batch, workers=loader_workers), device)
        val_cos = float(np.mean(np.sum(val_emb * val_t, axis=1)))
        lr = optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - t0
        seconds += elapsed
        if val_cos > best_cos:
            best_cos, best_epoch, bad = val_cos, epoch, 0
            _save(weights / "best.pt", _checkpoint(model, cfg, spec, dim, seed, teacher, epoch, best_cos))
        else:
            bad += 1
        stopped = bad >= cfg.patience and epoch < cfg.epochs
        eta = elapsed * (cfg.epochs - epoch) if not stopped else 0.0
        line = (f"epoch {epoch}/{cfg.epochs}  loss {loss:.4f}  val cosine {val_cos:.4f} "
                f"(best {best_cos:.4f} @ {best_epoch})  lr {lr:.2e}  {elapsed:.1f}s  ETA {duration(eta)}")
        history.append({"epoch": epoch, "train_loss": round(loss, 6), "val_cosine": round(val_cos, 6),
                        "lr": lr, "seconds": round(elapsed, 3), "log": line})
        finished = stopped or epoch == cfg.epochs
        state = {
            **_checkpoint(model, cfg, spec, dim, seed, teacher, epoch, best_cos),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "fingerprint": fingerprint,
            "history": history, "best_cosine": best_cos, "best_epoch": best_epoch, "bad_epochs": bad,
            "finished": finished, "stopped_early": stopped, "seconds": seconds, "config": config,
        }
        _save(weights / "last.pt", state)
        _write_logs(out, history, config, state)
        if finished or time.perf_counter() - drawn >= CURVES_EVERY_S:
            _write_curves(out / "curves.png", history, kit.name)
            drawn = time.perf_counter()
        log.info(line)
        if stopped:
            log.info("early stop: no better val cosine for %d epochs", cfg.patience)
            break
    return _summary(weights, state, resumed=resumed, already_trained=False, seconds=time.perf_counter() - start)


def _checkpoint(model, cfg, spec, dim, seed, teacher, epoch, best_cos) -> dict:
    return {
        "kind": KIND, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": cfg.model, "dim": dim, "seed": seed, "imgsz": cfg.imgsz, "preprocess": spec,
        "epoch": epoch, "val_cosine": best_cos, "teacher": teacher.id, "teacher_cache_key": teacher.cache_key,
        "started_from": "scratch",
    }


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means the same thing to the user
        raise UsageError(f"cannot read {path} ({e}): restart training (dkit train --restart)") from e


def _summary(weights: Path, state: dict, *, resumed: bool, already_trained: bool, seconds: float) -> dict:
    return {
        "weights": str(weights / "best.pt"), "epochs": int(state["epoch"]), "best_epoch": int(state["best_epoch"]),
        "resumed": resumed, "already_trained": already_trained, "started_from": "scratch",
        "val_cosine": float(state["best_cosine"]), "seconds": round(seconds, 3),
    }


# ------------------------------------------------------------------------------------------ files


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _write_logs(out: Path, history: list[dict], config: dict, state: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out / "results.csv", buf.getvalue().encode())
    atomic_write(out / "train.log", "".join(row["log"] + "\n" for row in history).encode())
    summary = {**config, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_cosine": state["best_cosine"], "finished": state["finished"],
               "stopped_early": state["stopped_early"], "seconds": round(state["seconds"], 3)}
    atomic_write(out / "student.json", (json.dumps(summary, indent=2) + "\n").encode())


def _write_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss and held-out cosine per epoch (matplotlib's Agg canvas; the global backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_cos = fig.subplots(1, 2)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax_cos.plot(epochs, [row["val_cosine"] for row in history], marker="o", color="tab:green")
    ax_cos.set(xlabel="epoch", ylabel="cosine to teacher", title="held-out cosine")
    for ax in (ax_loss, ax_cos):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: {KIND} student")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(kit, run_dir: Path, *, store, ground_truth: Path | None = None) -> dict:
    """The student against the teacher (and against its own untrained init) on the held-out images."""
    from scipy.stats import spearmanr

    run_dir = Path(run_dir)
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
    spec, seed = ckpt["preprocess"], int(ckpt.get("seed", 0))
    device = resolve_device(kit.student.device)
    model = model.to(device)
    baseline = build_student(ckpt["backbone"], ckpt["dim"], seed).eval().to(device)
    teacher_emb = teacher_embeddings(val_recs, teacher, run_dir)  # (N, D)

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
    student_emb, baseline_emb = np.concatenate(student_emb), np.concatenate(baseline_emb)

    prompts = prompt_embeddings(kit, teacher)

    def agreement(emb: np.ndarray) -> dict:
        cos = np.sum(emb * teacher_emb, axis=1)
        s_scores, t_scores = emb @ prompts.T, teacher_emb @ prompts.T  # (N, P)
        with warnings.catch_warnings():  # a constant column (one image, a degenerate student) has no rank order
            warnings.simplefilter("ignore")
            rhos = [spearmanr(s_scores[:, p], t_scores[:, p]).statistic for p in range(prompts.shape[0])]
        rhos = [float(r) for r in rhos if r is not None and np.isfinite(r)]
        top1 = np.argmax(emb @ teacher.text.T, axis=1) == np.argmax(teacher_emb @ teacher.text.T, axis=1)
        return {"cosine_mean": round(float(np.mean(cos)), 5),
                "spearman_mean": round(float(np.mean(rhos)), 5) if rhos else None,
                "top1_agreement": round(float(np.mean(top1)), 5)}

    moderation = None
    sets = _moderation_sets(kit, teacher)
    if sets is not None:
        moderation = moderation_agreement(student_emb, teacher_emb, *sets)
        moderation = None if moderation is None else round(moderation, 5)

    size = int(spec["size"])

    def student_forward(rgb: np.ndarray) -> np.ndarray:  # what the device does per frame: preprocess + model
        return model(torch.from_numpy(preprocess(rgb, spec))[None].to(device)).cpu().numpy()

    s_params, s_gflops = profile(model, (1, 3, size, size))
    t_params, t_gflops = profile_teacher(teacher, kit.teacher.imgsz)
    with torch.inference_mode():
        s_ms, _ = timed_median(student_forward, timed, warmup=WARMUP_PASSES)
        t_ms, _ = timed_median(lambda rgb: teacher.embed_images([rgb]), timed, warmup=WARMUP_PASSES)
    return {
        "task": "embed", "split": "val", "images": len(val_recs), "kit": kit.name, "random_teacher": teacher.random,
        "student": {
            "kind": KIND, "weights": str(best), "params": s_params, "gflops": round(s_gflops, 4),
            "ms_per_image": s_ms, "device": device,
            **agreement(student_emb), "moderation_agreement": moderation,
        },
        "teacher": {
            "id": teacher.id, "params": t_params, "gflops": round(t_gflops, 4), "ms_per_image": t_ms,
            "device": teacher.device,
        },
        "baseline": agreement(baseline_emb),
    }
