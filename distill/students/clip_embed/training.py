"""Training the clip-embed student: `train(kit, run_dir, store=...)` -> run_dir/student/.

Loss per image (s, t: student and teacher embeddings; P: the kit's prompt embeddings, ontology classes,
background prompts and judge prompts; k: teacher.logit_scale):

    (1 - cos(s, t))  +  kd_weight * KL(softmax(k t P') || softmax(k s P'))

Optimiser and schedule: AdamW (no weight decay on norms and biases), linear warm-up (one epoch at most)
then cosine decay to 1% of lr, per step; `student.epochs` epochs of `student.batch` images; early stopping
on the held-out cosine after `student.patience` epochs without improvement. `student.train_args` may set:
lr (2e-3), weight_decay (0.05), kd_weight (1.0), seed (0), workers (decoding processes; 0: one per spare core):
the kind's model, dkit.core.student_kinds.ClipEmbedTrainArgs, checks them when the kit loads.

The training images are the labelled train split plus a kit's unlabeled pool (labels/pool.jsonl,
dkit.distill.pool: the teacher's embeddings of images nobody labelled); the held-out cosine is on the val split.
An interrupted run resumes from last.pt with the same results; a finished one is not trained again; other
settings or labels than last.pt's are refused rather than mixed in; `restart=True` clears the folder first.
A run is a `_Setup` (settings, labels, teacher: fixed before anything is written), a `_Job` (device, data,
model, optimiser: what the epochs run on) and a `_Progress` (history, best epoch: what last.pt carries on).

Data-parallel: launched by torchrun (WORLD_SIZE > 1, RANK, LOCAL_RANK in the environment) each process joins a
process group (gloo on the CPU, nccl on CUDA, where rank r uses cuda:LOCAL_RANK), trains a DistributedDataParallel
copy of the same seeded model on its disjoint shard of the training set with student.batch // WORLD_SIZE images
a step (the global batch stays student.batch), and rank 0 alone measures the held-out cosine (broadcast, so
every rank takes the same best/early-stop decision) and writes every file; student.json records world_size.
One process (no torchrun) trains as it always did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dkit.core.errors import UsageError
from dkit.core.files import duration
from dkit.core.records import LabelRecord
from dkit.core.run import RunDir
from dkit.core.student_kinds import ClipEmbedTrainArgs
from dkit.core.workers import decode_workers
from dkit.distill.images import workers_can_start
from dkit.distill.students.clip_embed.data import (
    _datasets,
    _Images,
    _loader,
    labelled_records,
    pool_records,
    preprocess_spec,
    teacher_embeddings,
)
from dkit.distill.students.clip_embed.model import KIND, EmbedStudent, build_student
from dkit.distill.students.clip_embed.outputs import _checkpoint, _load_state, _save, _write_curves, _write_logs
from dkit.distill.students.clip_embed.prompts import prompt_embeddings
from dkit.distill.teachers import build_teacher
from dkit.distill.teachers.base import resolve_device
from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.manifest import Preprocess

log = logging.getLogger(__name__)

DEFAULT_ARGS = ClipEmbedTrainArgs().model_dump()  # {"lr": 2e-3, "weight_decay": 0.05, "kd_weight": 1.0, ...}
CURVES_EVERY_S = 30.0  # curves.png is redrawn after an epoch at most this often, and after the last one
_FINGERPRINT = {"student": "student settings", "pretrained": "backbone checkpoint (student.pretrained)",
                "teacher": "teacher", "prompts": "prompts", "images": "labelled (or unlabeled-pool) images"}


# ------------------------------------------------------------------------------------------ pieces


def _train_args(kit) -> dict:
    """student.train_args over their defaults (validated when the kit loaded: ClipEmbedTrainArgs), values as
    written (an integer stays one: the dict is part of the run's fingerprint)."""
    return kit.student.args.model_dump()


@dataclasses.dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun launch: world 1, rank 0 without one."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:  # the rank that evaluates, logs and writes files
        return self.rank == 0


def _dist_env() -> _Dist:
    import os

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise UsageError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them): {e}") from e
    return _Dist(world, rank, local) if world > 1 else _Dist()


def _dist_device(device: str, dist: _Dist) -> str:
    """Under torchrun a CUDA device means this rank's GPU, cuda:LOCAL_RANK."""
    if dist.world > 1 and device.startswith("cuda"):
        torch.cuda.set_device(dist.local_rank)
        return f"cuda:{dist.local_rank}"
    return device


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


# ------------------------------------------------------------------------------------------ one run


@dataclasses.dataclass
class _Setup:
    """A run's inputs, fixed before anything is written: settings, labelled images, teacher, fingerprint."""

    kit: object
    run_dir: Path
    args: dict  # student.train_args over DEFAULT_ARGS
    spec: Preprocess  # preprocess_spec
    teacher: object
    train_recs: list[LabelRecord]
    val_recs: list[LabelRecord]
    prompts: np.ndarray  # (P, D) prompt_embeddings
    fingerprint: dict  # what last.pt must match to be resumed (keys: _FINGERPRINT)
    pretrained: Path | None = None  # student.pretrained's file in the model store; None: from scratch
    pool: int = 0  # of train_recs, the unlabeled pool's images (labels/pool.jsonl) after the labelled ones
    dist: _Dist = _Dist()  # the torchrun launch this process is part of (world 1: none)

    @property
    def cfg(self):
        return self.kit.student

    @property
    def out(self) -> Path:
        return RunDir(self.run_dir).student

    @property
    def weights(self) -> Path:
        return self.out / "weights"

    @property
    def seed(self) -> int:
        return self.args["seed"]

    @property
    def dim(self) -> int:
        return int(self.teacher.text.shape[1])

    @property
    def started_from(self) -> str:
        return "scratch" if self.pretrained is None else f"pretrained: {self.pretrained.name}"


@dataclasses.dataclass
class _Job:
    """What the epochs run on: device, datasets and targets, model, optimiser and LR schedule, prompts."""

    device: str
    train_ds: _Images
    val_ds: _Images
    val_t: np.ndarray  # (N, D) the held-out targets
    in_memory: bool
    loader_workers: int
    model: EmbedStudent
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    prompts: torch.Tensor  # (P, D) on the device
    scale: float  # teacher.logit_scale
    net: torch.nn.Module | None = None  # what the steps run: `model` in DistributedDataParallel (None: `model`)

    @property
    def trained(self) -> torch.nn.Module:
        return self.model if self.net is None else self.net


@dataclasses.dataclass
class _Progress:
    """Where the run stands after `done` epochs (what last.pt carries on to a resumed run)."""

    history: list[dict] = dataclasses.field(default_factory=list)
    best_cos: float = -2.0
    best_epoch: int = 0
    bad: int = 0  # epochs since the best one
    done: int = 0
    seconds: float = 0.0


def train(kit, run_dir: Path, *, store, restart: bool = False, progress: bool = True) -> dict:
    """Train the student on run_dir/labels/ into run_dir/student/ (see the package docstring); under torchrun,
    data-parallel in a process group this call joins and leaves."""
    dist = _dist_env()
    if dist.world == 1:
        return _train(kit, run_dir, store, restart, progress, dist)
    import torch.distributed as td

    if kit.student.batch < dist.world:
        raise UsageError(f"student.batch {kit.student.batch} is smaller than the {dist.world} torchrun processes: "
                         f"each needs student.batch // {dist.world} >= 1 images a step")
    joined = not td.is_initialized()
    if joined:
        device = _dist_device(resolve_device(kit.student.device), dist)
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=dist.rank,
                              world_size=dist.world)
    try:
        return _train(kit, run_dir, store, restart, progress, dist)
    finally:
        if joined:
            td.destroy_process_group()


def _train(kit, run_dir, store, restart: bool, progress: bool, dist: _Dist) -> dict:
    start = time.perf_counter()
    setup = dataclasses.replace(_prepare(kit, Path(run_dir), store), dist=dist)
    state = _previous_state(setup, restart)
    _barrier(dist)  # rank 0 has cleared the folder (restart) before any rank goes on
    if state is not None and state["finished"]:
        return _already_trained(setup, state, start)
    if dist.main:
        setup.weights.mkdir(parents=True, exist_ok=True)
    job = _job(setup)
    resumed = state is not None
    run = _resume(setup, job, state) if resumed else _Progress()
    state = _epochs(setup, job, run, _config(setup, job), state, progress)
    return _summary(setup.weights, state, resumed=resumed, already_trained=False, seconds=time.perf_counter() - start)


def _barrier(dist: _Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()


def _prepare(kit, run_dir: Path, store) -> _Setup:
    """Check the settings and the labels, build the teacher (for its identity and text embeddings only)."""
    args = _train_args(kit)
    records = labelled_records(run_dir)
    train_recs = [r for r in records if r.split == "train"]
    val_recs = [r for r in records if r.split == "val"]
    if not train_recs or not val_recs:
        raise UsageError(f"{run_dir / 'labels'} has {len(train_recs)} training and {len(val_recs)} held-out "
                         "images: a student needs both (label at least two images)")
    pool = pool_records(run_dir, val_recs)
    if pool:
        log.info("training on %d labelled and %d unlabeled-pool images, %d held out", len(train_recs), len(pool),
                 len(val_recs))
    teacher = build_teacher(kit, store)
    if teacher.random:
        log.warning("training on an UNTRAINED teacher's embeddings (%s): the student is meaningless", teacher.id)
    spec = preprocess_spec(kit)
    prompts = prompt_embeddings(kit, teacher)
    pretrained = None if kit.student.pretrained is None else store.backbone_checkpoint(kit.student.pretrained)
    student = {k: v for k, v in dataclasses.asdict(kit.student).items() if k != "pretrained"}  # its own key
    fingerprint = {
        "student": student | {"train_args": args, "device": None},
        # the file's content, not only its name (None: from scratch, as runs made before student.pretrained)
        "pretrained": None if pretrained is None else {"file": pretrained.name, "sha256": sha256_file(pretrained)},
        "teacher": teacher.cache_key,
        "prompts": _digest(prompts.round(5).tolist()),
        "images": _digest([(r.sha256, r.split) for r in records + pool]),
    }
    return _Setup(kit, run_dir, args, spec, teacher, train_recs + pool, val_recs, prompts, fingerprint, pretrained,
                  len(pool))


def _previous_state(setup: _Setup, restart: bool) -> dict | None:
    """last.pt of an earlier run of the same settings and labels (refused if other); None: start afresh."""
    last = setup.weights / "last.pt"
    if restart:
        if setup.dist.main:
            shutil.rmtree(setup.out, ignore_errors=True)
        return None
    if not last.is_file():
        return None
    state = _load_state(last)
    fingerprint = setup.fingerprint
    changed = [_FINGERPRINT[k] for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k]]
    if changed:
        raise UsageError(f"{setup.out} holds a run made with other {' and '.join(changed)}: restart training "
                         "(dkit train --restart) or choose another --out")
    return state


def _already_trained(setup: _Setup, state: dict, start: float) -> dict:
    if setup.dist.main:
        _write_logs(setup.out, state["history"], state["config"], state)  # in case a kill came between the files
        _write_curves(setup.out / "curves.png", state["history"], setup.kit.name)
        log.info("%s: already trained (%d epochs, best val cosine %.4f at epoch %d)", setup.out, state["epoch"],
                 state["best_cosine"], state["best_epoch"])
    return _summary(setup.weights, state, resumed=False, already_trained=True, seconds=time.perf_counter() - start)


def _job(setup: _Setup) -> _Job:
    """Targets from the teacher cache, the decoded images, the untrained (or pretrained) student, its optimiser."""
    cfg, teacher, dist = setup.cfg, setup.teacher, setup.dist
    device = _dist_device(resolve_device(cfg.device), dist)
    train_t = teacher_embeddings(setup.train_recs, teacher, setup.run_dir)
    val_t = teacher_embeddings(setup.val_recs, teacher, setup.run_dir)
    workers = decode_workers(setup.args["workers"] or setup.kit.data.workers)
    train_ds, val_ds, in_memory = _datasets(setup.train_recs, setup.val_recs, train_t, val_t, setup.spec,
                                            setup.seed, workers)
    steps = len(_loader(train_ds, cfg.batch // dist.world, workers=0, rank=dist.rank, world=dist.world))
    if setup.pretrained is not None and dist.main:
        log.info("the backbone %s starts from %s", cfg.model, setup.pretrained)
    model = build_student(cfg.model, setup.dim, setup.seed, checkpoint=setup.pretrained).to(device)
    net = None
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.startswith("cuda") else None)
        if dist.main:
            log.info("data-parallel over %d processes: %d images a step each (%d in all)", dist.world,
                     cfg.batch // dist.world, cfg.batch // dist.world * dist.world)
    optimizer, scheduler = _optimizer(model, setup.args, steps, steps * cfg.epochs)
    # DataLoader workers re-import the main module like decoding workers: in-process for a script without a guard
    loader_workers = 0 if in_memory or not workers_can_start() else workers
    return _Job(device, train_ds, val_ds, val_t, in_memory, loader_workers, model, optimizer,
                scheduler, torch.from_numpy(setup.prompts).to(device), float(teacher.logit_scale), net)


def _optimizer(model, args: dict, steps: int, total_steps: int):
    """AdamW without weight decay on norms and biases; per step, warm-up (one epoch at most) then cosine."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, min(steps, total_steps // 10)))
    return optimizer, scheduler


def _resume(setup: _Setup, job: _Job, state: dict) -> _Progress:
    """Model, optimiser and schedule as last.pt left them; the progress it recorded."""
    job.model.load_state_dict(state["model"])  # data-parallel: every rank reads the same last.pt
    job.optimizer.load_state_dict(state["optimizer"])
    job.scheduler.load_state_dict(state["scheduler"])
    log.info("resuming %s after epoch %d/%d", setup.out, state["epoch"], setup.cfg.epochs)
    return _Progress(history=state["history"], best_cos=state["best_cosine"], best_epoch=state["best_epoch"],
                     bad=state["bad_epochs"], done=state["epoch"], seconds=state["seconds"])


def _config(setup: _Setup, job: _Job) -> dict:
    """student.json's settings part (also kept in last.pt)."""
    cfg, args, teacher, prompts = setup.cfg, setup.args, setup.teacher, len(setup.prompts)
    return {
        "kind": KIND, "student": dataclasses.asdict(cfg), "train_args": args,
        "teacher": {"id": teacher.id, "cache_key": teacher.cache_key, "random": teacher.random,
                    "logit_scale": job.scale},
        "backbone": cfg.model, "embedding_dim": setup.dim, "preprocess": setup.spec.to_dict(),
        "started_from": setup.started_from,
        "pretrained": None if setup.pretrained is None else {**setup.fingerprint["pretrained"],
                                                             "path": str(setup.pretrained)},
        "images": {"train": len(setup.train_recs) - setup.pool, "pool": setup.pool, "val": len(setup.val_recs),
                   "in_memory": job.in_memory},
        "prompts": prompts, "device": job.device, "world_size": setup.dist.world,
        "loss": f"(1 - cos) + {args['kd_weight']} * KL(teacher || student) over {prompts} prompts",
    }


# ------------------------------------------------------------------------------------------ epochs


def _epochs(setup: _Setup, job: _Job, run: _Progress, config: dict, state: dict | None, progress: bool) -> dict:
    """The epochs after run.done, up to the last or an early stop; returns the last state saved to last.pt."""
    drawn = time.perf_counter()
    for epoch in range(run.done + 1, setup.cfg.epochs + 1):
        state, line = _epoch(setup, job, run, config, epoch, progress)
        if setup.dist.main and (state["finished"] or time.perf_counter() - drawn >= CURVES_EVERY_S):
            _write_curves(setup.out / "curves.png", run.history, setup.kit.name)
            drawn = time.perf_counter()
        if setup.dist.main:
            log.info(line)
        if state["stopped_early"] and setup.dist.main:
            log.info("early stop: no better val cosine for %d epochs", setup.cfg.patience)
        if state["stopped_early"]:
            break
    return state


def _epoch(setup: _Setup, job: _Job, run: _Progress, config: dict, epoch: int, progress: bool) -> tuple[dict, str]:
    """Train one epoch, measure the held-out cosine; best.pt when it is the best yet, then last.pt and the logs."""
    cfg = setup.cfg
    t0 = time.perf_counter()
    loss = _train_epoch(setup, job, epoch, progress)
    val_cos = _val_cosine(setup, job)
    lr = job.optimizer.param_groups[0]["lr"]
    elapsed = time.perf_counter() - t0
    run.seconds += elapsed
    if val_cos > run.best_cos:
        run.best_cos, run.best_epoch, run.bad = val_cos, epoch, 0
        if setup.dist.main:
            _save(setup.weights / "best.pt", _checkpoint(job.model, cfg, setup.spec, setup.dim, setup.seed,
                                                     setup.teacher, epoch, run.best_cos))
    else:
        run.bad += 1
    stopped = run.bad >= cfg.patience and epoch < cfg.epochs
    eta = elapsed * (cfg.epochs - epoch) if not stopped else 0.0
    line = (f"epoch {epoch}/{cfg.epochs}  loss {loss:.4f}  val cosine {val_cos:.4f} "
            f"(best {run.best_cos:.4f} @ {run.best_epoch})  lr {lr:.2e}  {elapsed:.1f}s  ETA {duration(eta)}")
    run.history.append({"epoch": epoch, "train_loss": round(loss, 6), "val_cosine": round(val_cos, 6),
                        "lr": lr, "seconds": round(elapsed, 3), "log": line})
    state = _state(setup, job, run, config, epoch, stopped)
    if setup.dist.main:
        _save(setup.weights / "last.pt", state)
        _write_logs(setup.out, run.history, config, state)
    return state, line


def _val_cosine(setup: _Setup, job: _Job) -> float:
    """The mean held-out cosine to the teacher; data-parallel, rank 0's (its model's buffers), sent to every rank
    so that all take the same best-epoch and early-stop decisions."""
    cos = [0.0]
    if setup.dist.main:
        val_emb = _embed(job.model, _loader(job.val_ds, setup.cfg.batch, workers=job.loader_workers), job.device)
        cos = [float(np.mean(np.sum(val_emb * job.val_t, axis=1)))]
    if setup.dist.world > 1:
        import torch.distributed as td

        td.broadcast_object_list(cos, src=0, device=torch.device(job.device) if job.device.startswith("cuda")
                                 else None)
    return cos[0]


def _train_epoch(setup: _Setup, job: _Job, epoch: int, progress: bool) -> float:
    """One pass over the training views (with a progress bar unless `progress` is False): the mean loss."""
    from tqdm.auto import tqdm

    cfg, dist = setup.cfg, setup.dist
    loader = _loader(job.train_ds, cfg.batch // dist.world, workers=job.loader_workers, epoch=epoch,
                     seed=setup.seed, rank=dist.rank, world=dist.world)
    bar = tqdm(total=len(loader.sampler), unit="img", desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
               disable=None if progress and dist.main else True, dynamic_ncols=True)
    try:
        loss = _run_epoch(job.trained, loader, job.optimizer, job.scheduler, job.prompts, job.scale,
                          setup.args["kd_weight"], job.device, bar)
    finally:
        bar.close()
    if dist.world > 1:  # the shards are of one length: the mean over all ranks is the mean over the set
        import torch.distributed as td

        mean = torch.tensor([loss], dtype=torch.float64, device=job.device)
        td.all_reduce(mean)
        loss = float(mean.item()) / dist.world
    return loss


def _state(setup: _Setup, job: _Job, run: _Progress, config: dict, epoch: int, stopped: bool) -> dict:
    """last.pt: the checkpoint plus optimiser, schedule, fingerprint and progress (what resume needs)."""
    return {
        **_checkpoint(job.model, setup.cfg, setup.spec, setup.dim, setup.seed, setup.teacher, epoch, run.best_cos),
        "optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(),
        "fingerprint": setup.fingerprint, "history": run.history, "best_cosine": run.best_cos,
        "best_epoch": run.best_epoch, "bad_epochs": run.bad, "finished": stopped or epoch == setup.cfg.epochs,
        "stopped_early": stopped, "seconds": run.seconds, "config": config,
    }


def _summary(weights: Path, state: dict, *, resumed: bool, already_trained: bool, seconds: float) -> dict:
    return {
        "weights": str(weights / "best.pt"), "epochs": int(state["epoch"]), "best_epoch": int(state["best_epoch"]),
        "resumed": resumed, "already_trained": already_trained,
        "started_from": state.get("config", {}).get("started_from", "scratch"),
        "val_cosine": float(state["best_cosine"]), "seconds": round(seconds, 3),
    }
