"""YOLO students (`yolo-detect`, `yolo-cls`): Ultralytics training on the teacher's labels, and evaluation.

    from dkit.distill.students.yolo import train, evaluate

    summary = train(kit, run_dir, store=store)       # run_dir/labels/ -> run_dir/student/
    result = evaluate(kit, run_dir, store=store, ground_truth=Path(".../labels"))

Training starts from pretrained weights when the model store has them (`student.model: yolov8n.pt`),
from the architecture (`yolov8n.yaml`) otherwise, and says which. An interrupted run resumes from
`student/weights/last.pt`; a finished one is not trained again unless `restart`. Ultralytics' own
plots are off (they download a font); `student/curves.png` is drawn from its results.csv instead.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from dkit.core.errors import NotInStoreError, UsageError, require
from dkit.core.files import atomic_write, read_json, write_json
from dkit.core.logfile import PlainFormatter
from dkit.core.run import RunDir
from dkit.core.workers import decode_workers
from dkit.distill.evaluate import profile, profile_teacher, timed_median

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ training


def train(kit, run_dir: Path, *, store, restart: bool = False, progress: bool = True) -> dict:
    ultralytics = require("ultralytics", what=f"the {kit.student.kind} student", extra="distill")
    run = RunDir(run_dir)
    labels = run.labels
    if not (labels / "data.yaml").is_file():
        raise UsageError(f"no labels in {labels}: run `dkit label` first")
    out, last = run.student, run.last_weights
    if restart and out.exists():
        shutil.rmtree(out)
    state = _checkpoint_state(last, kit.student.epochs)
    if state == "finished":
        log.info("the student in %s is already trained (--restart trains it again)", out)
        return _summary(kit, out, started_from=read_json(out / "student.json").get("started_from"),
                        resumed=False, already_trained=True, seconds=0.0)

    start = time.perf_counter()
    task = kit.task  # detect | classify: yolo-detect, yolo-cls
    data = str(labels / "data.yaml") if task == "detect" else str(labels)
    file_log = _attach_log(out / "train.log", ultralytics)
    level = log.level
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))  # epoch lines reach train.log whatever the console shows
    try:
        if state == "resumable":
            log.info("resuming the interrupted training from %s", last)
            started_from = read_json(out / "student.json").get("started_from", "unknown")
            model = ultralytics.YOLO(str(last))
            model.add_callback("on_fit_epoch_end", _EpochLog())
            model.train(resume=True, plots=False, verbose=progress)
        else:
            weights, started_from = _starting_weights(kit, store)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "student.json", _resolved(kit, started_from, weights))
            s = kit.student
            args = {
                "data": data, "imgsz": s.imgsz, "epochs": s.epochs, "batch": s.batch, "patience": s.patience,
                "project": str(run_dir.resolve()), "name": "student", "exist_ok": True, "plots": False,
                "seed": kit.data.seed, "deterministic": True, "verbose": progress,
                "workers": decode_workers(kit.data.workers),
                **({} if s.device == "auto" else {"device": s.device}),  # a list: Ultralytics' own DDP
                **s.train_args,
            }
            model = ultralytics.YOLO(weights, task=task)
            model.add_callback("on_fit_epoch_end", _EpochLog())
            model.train(**args)
    finally:
        log.setLevel(level)
        for logger in (logging.getLogger("ultralytics"), log):
            logger.removeHandler(file_log)
        file_log.close()
    _plot_curves(out / "results.csv", out / "curves.png")
    return _summary(kit, out, started_from=started_from, resumed=state == "resumable", already_trained=False,
                    seconds=time.perf_counter() - start)


class _EpochLog:
    """One line per epoch with the loss, the held-out metric and an ETA for the whole run."""

    def __init__(self):
        self.start, self.first, self.ended = time.perf_counter(), None, False

    def __call__(self, trainer) -> None:
        try:
            self._log(trainer)
        except Exception:  # noqa: BLE001 - a progress line must never stop a long training run
            log.debug("epoch progress line failed", exc_info=True)

    def _log(self, trainer) -> None:
        metrics = trainer.metrics or {}
        name = "mAP50" if "metrics/mAP50(B)" in metrics else "top-1"
        metric = metrics.get("metrics/mAP50(B)", metrics.get("metrics/accuracy_top1"))
        shown = "?" if metric is None else f"{metric:.4f}"
        done = trainer.epoch + 1
        if self.ended:  # after the last epoch: Ultralytics' final validation of best.pt (its epoch counter + 1)
            how = (f"{validator_note(int(trainer.args.imgsz))}; eval.md shows both" if name == "mAP50"
                   else "Ultralytics' validator on the held-out class folders, as `dkit eval`'s top1_agreement")
            log.info("student trained: best.pt on the held-out images, %s %s against the teacher's labels (these "
                     "images also chose best.pt; %s)", name, shown, how)
            return
        self.ended = bool(getattr(trainer, "stop", False))  # set before this call on the last epoch run
        self.first = trainer.epoch if self.first is None else self.first  # a resumed run starts later
        per_epoch = (time.perf_counter() - self.start) / max(1, done - self.first)
        tloss = getattr(trainer, "tloss", None)  # a tensor of loss parts, or a dict of them (Ultralytics 8.4)
        parts = tloss.values() if isinstance(tloss, dict) else [] if tloss is None else tloss.reshape(-1)
        loss = float(sum(float(v) for v in parts)) if tloss is not None else float("nan")
        left = round(max(0.0, per_epoch * (trainer.epochs - done)))
        after = f"about {left // 60}m{left % 60:02d}s left"
        if self.ended:
            after = "early stop (no better held-out fitness for student.patience epochs)" if done < trainer.epochs \
                else "the last epoch"
        log.info("student epoch %d/%d: loss %.4f, held-out %s %s, %s", done, trainer.epochs, loss, name, shown, after)


def _checkpoint_state(last: Path, epochs: int) -> str:
    """'none', 'resumable' (interrupted: optimizer state kept) or 'finished' (Ultralytics strips the optimizer)."""
    if not last.is_file():
        return "none"
    import torch

    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a half-written checkpoint from a kill mid-save
        raise UsageError(f"cannot read {last} ({e}); train again with --restart") from e
    if ckpt.get("optimizer") is None:
        return "finished"
    total = int((ckpt.get("train_args") or {}).get("epochs", epochs))
    return "resumable" if 0 < ckpt.get("epoch", -1) + 1 < total else "finished"


def _starting_weights(kit, store) -> tuple[str, str]:
    """(what YOLO() loads, 'pretrained: <file>' or 'scratch: <architecture>')."""
    model = kit.student.model
    if model.endswith((".yaml", ".yml")):
        log.info("training %s from scratch (an architecture file, no weights)", model)
        return model, f"scratch: {model}"
    try:
        weights = store.yolo_weights(model)
    except NotInStoreError as e:
        scratch = Path(model).with_suffix(".yaml").name
        log.warning("no pretrained weights for the student (%s); training %s from scratch", e, scratch)
        return scratch, f"scratch: {scratch}"
    log.info("training the student from pretrained weights %s", weights)
    return weights, f"pretrained: {Path(weights).name}"


def _resolved(kit, started_from: str, weights: str) -> dict:
    return {"kit": kit.name, "student": asdict(kit.student), "started_from": started_from, "weights_in": weights,
            "labels": "labels/", "data_seed": kit.data.seed}


def _summary(kit, out: Path, *, started_from, resumed: bool, already_trained: bool, seconds: float) -> dict:
    rows = _read_results(out / "results.csv")
    best = out / "weights" / "best.pt"
    if not best.is_file():
        raise UsageError(f"training ended without {best}; see {out / 'train.log'}")
    return {"weights": str(best), "epochs": len(rows), "resumed": resumed, "already_trained": already_trained,
            "started_from": started_from, "seconds": round(seconds, 1), "curves": str(out / "curves.png")}


def _read_results(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k.strip(): float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def _plot_curves(results: Path, png: Path) -> None:
    """Loss and metric curves per epoch from Ultralytics' results.csv (its own plots are off: font download)."""
    rows = _read_results(results)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    losses = [k for k in rows[0] if k.startswith(("train/", "val/")) and "loss" in k]
    metrics = [k for k in rows[0] if k.startswith("metrics/")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in losses:
        axes[0].plot(epochs, [r[k] for r in rows], label=k)
    for k in metrics:
        axes[1].plot(epochs, [r[k] for r in rows], label=k.removeprefix("metrics/"))
    for ax, title in zip(axes, ("loss", "held-out metrics"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(png, buf.getvalue())


def _attach_log(path: Path, ultralytics) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(PlainFormatter("%(asctime)s %(message)s"))  # no colour codes in the file
    for logger in (logging.getLogger("ultralytics"), log):  # Ultralytics' lines and our epoch lines
        logger.addHandler(handler)
    return handler


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(kit, run_dir: Path, *, store, ground_truth: Path | None = None) -> dict:
    """Student vs teacher on the held-out split: the eval.json contract (see dkit.distill.evaluate)."""
    ultralytics = require("ultralytics", what=f"the {kit.student.kind} student", extra="distill")
    run = RunDir(run_dir)
    best = run.trained_weights()
    records = [r for r in run.records() if r.split == "val"]
    if not records:
        raise UsageError(f"no held-out images in {run.labels} (data.val)")
    from dkit.distill.teachers import build_teacher

    student = ultralytics.YOLO(str(best))
    # The teacher that labelled the images (its weights, size and test-time augmentation, as in its id), scored as
    # a model: a low confidence floor and no box-size filter for mAP (what `yolo val` does), like the student.
    t_cfg = replace(kit.teacher, conf=0.001, min_box=0.0)
    teacher = build_teacher(replace(kit, teacher=t_cfg), store)
    from dkit.distill.images import load_image

    images = [load_image(Path(r.source), Path(r.source).parent) for r in records]
    rgbs = [li.rgb for li in images]
    s = kit.student

    def student_predict(rgb):
        return student.predict(np.ascontiguousarray(rgb[..., ::-1]), imgsz=s.imgsz, conf=0.001, max_det=300,
                               verbose=False, device="cpu" if s.device == "auto" else s.single_device)[0]

    def teacher_predict(rgb):
        return teacher.infer([rgb])[0]

    s_ms, s_out = timed_median(student_predict, rgbs)
    t_ms, t_out = timed_median(teacher_predict, rgbs)
    s_params, s_gflops = profile(student.model, (1, 3, s.imgsz, s.imgsz))
    t_params, t_gflops = profile_teacher(teacher, kit.teacher.imgsz)
    result = {
        "task": kit.task, "split": "val", "images": len(records),
        "kit": kit.name, "random_teacher": teacher.random,
        "ground_truth": None if ground_truth is None else str(ground_truth),
        "student": {"kind": s.kind, "weights": str(best), "imgsz": s.imgsz, "params": s_params,
                    "gflops": s_gflops, "ms_per_image": s_ms},
        "teacher": {"id": teacher.id, "imgsz": kit.teacher.imgsz, "augment": kit.teacher.augment, "params": t_params,
                    "gflops": t_gflops, "ms_per_image": t_ms},
    }
    if kit.task == "detect":
        _detection_metrics(result, kit, run, records, s_out, t_out, teacher, ground_truth)
        validator = _validator_map50(student, kit, run)
        result["student"]["validator_map50_vs_teacher"] = validator
        result.setdefault("notes", {})["validator"] = (
            f"Against the teacher's labels: map50_vs_teacher {result['student']['map50_vs_teacher']:.4f}, "
            f"Ultralytics' validator {validator:.4f} (validator_map50_vs_teacher). {validator_note(s.imgsz)}.")
    else:
        _classification_metrics(result, kit, records, s_out, ground_truth)
    result["ratios"] = {"speed": round(t_ms / s_ms, 3) if s_ms else None}
    if result["student"].get("map50") is not None and result["teacher"].get("map50"):
        result["ratios"]["map50"] = round(result["student"]["map50"] / result["teacher"]["map50"], 3)
    return result


def _detection_metrics(result, kit, run: RunDir, records, s_out, t_out, teacher, ground_truth) -> None:
    from dkit.distill.quality import detection_quality

    names = kit.ontology.names

    def as_record(rec, boxes, conf, cls, image_key):  # the record with a model's boxes as its labels
        labels = tuple({"class_id": int(c), "confidence": float(p), "box": [float(v) for v in b]}
                       for b, p, c in zip(boxes, conf, cls, strict=True))
        return dataclasses.replace(rec, image=getattr(rec, image_key), labels=labels)

    ids = _kit_class_ids(s_out[0].names, names) if s_out else np.zeros(0, np.int64)  # student index -> kit index
    s_boxes = [(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), ids[r.boxes.cls.cpu().numpy().astype(int)])
               for r in s_out]
    # against the teacher's labels as written (the data set's label files: the student's training target)
    vs_teacher = detection_quality([as_record(rec, *b, "dataset_image") for rec, b in zip(records, s_boxes,
                                                                                            strict=True)],
                                   run.labels / "labels" / "val", names)
    result["student"] |= {"map50_vs_teacher": vs_teacher["map50"], "map50_95_vs_teacher": vs_teacher["map50_95"]}
    result["student"] |= {"map50": None, "map50_95": None}
    result["teacher"] |= {"map50": None, "map50_95": None}
    if ground_truth is not None:
        gt = Path(ground_truth)
        q = detection_quality([as_record(rec, *b, "image") for rec, b in zip(records, s_boxes, strict=True)],
                              gt, names)
        result["student"] |= {"map50": q["map50"], "map50_95": q["map50_95"]}
        t_records = []
        for rec, raw in zip(records, t_out, strict=True):
            d = teacher.decide(raw, (rec.height, rec.width))
            t_records.append(as_record(rec, d.boxes, d.confidences, d.class_ids, "image"))
        tq = detection_quality(t_records, gt, names)
        result["teacher"] |= {"map50": tq["map50"], "map50_95": tq["map50_95"]}


def validator_note(imgsz: int) -> str:
    """What `dkit train`'s closing mAP50 is, and how it differs from `dkit eval`'s map50_vs_teacher."""
    padded = math.ceil(imgsz / 32 + 0.5) * 32  # Ultralytics' rect batch shape for a square image (pad 0.5 stride)
    return ("Ultralytics' validator (`dkit train`'s closing figure) keeps every class above conf 0.001 for each box "
            "(multi-label NMS) and feeds the held-out images in rectangular batches of 2 x student.batch, each "
            f"letterboxed to one shape with half a stride of extra padding (a square image at {imgsz} px is fed "
            f"{padded} x {padded}); `dkit eval`'s map50_vs_teacher keeps one class per box and feeds one image at a "
            f"time letterboxed to the nearest stride ({imgsz} x {imgsz} for a square one), as Ultralytics' predict "
            "and the device do. Same weights, labels, conf 0.001, iou 0.7, max_det 300 and mAP arithmetic")


def _validator_map50(student, kit, run: RunDir) -> float:
    """mAP50 against the teacher's held-out labels from Ultralytics' own validator, exactly as `dkit train` ends
    (its final validation of best.pt: batches of 2 x student.batch, rectangular): the figure train.log shows."""
    import tempfile

    s = kit.student
    with tempfile.TemporaryDirectory(prefix="dkit-val-") as tmp:
        metrics = student.val(data=str(run.labels / "data.yaml"), split="val", imgsz=s.imgsz, batch=2 * s.batch,
                              conf=0.001, iou=0.7, max_det=300, plots=False, verbose=False, project=tmp, name="val",
                              workers=0, device="cpu" if s.device == "auto" else s.single_device)
    return round(float(metrics.box.map50), 4)


def _classification_metrics(result, kit, records, s_out, ground_truth) -> None:
    # An Ultralytics classifier trained from class folders numbers its classes alphabetically, whatever the
    # ontology's order: a prediction is the model's own name for its index (as the exported bundle uses it).
    ids = _kit_class_ids(s_out[0].names, kit.ontology.names)  # the model's class index -> the ontology's
    predicted = [kit.ontology.names[ids[int(r.probs.top1)]] for r in s_out]
    teacher = [r.labels[0]["class"] for r in records]
    result["student"]["top1_agreement"] = float(np.mean([p == t for p, t in zip(predicted, teacher, strict=True)]))
    result["student"]["accuracy"] = None
    if ground_truth is not None:
        truth = _read_class_truth(Path(ground_truth))
        pairs = [(p, truth[Path(r.image).name]) for p, r in zip(predicted, records, strict=True)
                 if Path(r.image).name in truth]
        if not pairs:
            raise UsageError(f"--ground-truth {ground_truth}: none of the held-out images is listed")
        result["student"]["accuracy"] = float(np.mean([p == t for p, t in pairs]))


def _kit_class_ids(model_names, kit_names: list[str]) -> np.ndarray:
    """(the model's classes,) the ontology index of each class index of a YOLO student, matched by name: the
    student's numbering is its own (alphabetical for a classifier trained from class folders), never assumed."""
    names = [model_names[i] for i in range(len(model_names))] if isinstance(model_names, dict) else list(model_names)
    missing = [n for n in names if n not in kit_names]
    if missing:
        raise UsageError(f"the student's classes {missing} are not in the kit's ontology ({', '.join(kit_names)}): "
                         "it was trained on other labels; train it again (dkit train --restart)")
    return np.array([kit_names.index(n) for n in names], dtype=np.int64)


def _read_class_truth(path: Path) -> dict[str, str]:
    """file name -> class from a CSV with a `file` column and a `class` or `class_name` column."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    key = "class" if rows and "class" in rows[0] else "class_name"
    if not rows or "file" not in rows[0] or key not in rows[0]:
        raise UsageError(f"{path}: expected a CSV with columns file and class (or class_name)")
    return {Path(r["file"]).name: r[key] for r in rows}
