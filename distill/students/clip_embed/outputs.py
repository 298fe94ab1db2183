"""What training writes into run_dir/student/, each file replaced atomically: weights/best.pt and
weights/last.pt (the checkpoint; last.pt adds what resume needs), results.csv, train.log, student.json
and curves.png.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from dkit.core.errors import UsageError
from dkit.core.files import atomic_write
from dkit.distill.students.clip_embed.model import KIND

RESULTS_COLUMNS = ["epoch", "train_loss", "val_cosine", "lr", "seconds"]


def _checkpoint(model, cfg, spec, dim, seed, teacher, epoch, best_cos) -> dict:
    return {
        "kind": KIND, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "backbone": cfg.model, "dim": dim, "seed": seed, "imgsz": cfg.imgsz, "preprocess": spec.to_dict(),
        "epoch": epoch, "val_cosine": best_cos, "teacher": teacher.id, "teacher_cache_key": teacher.cache_key,
        "started_from": "scratch" if cfg.pretrained is None else f"pretrained: {cfg.pretrained}",
    }


def _save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means the same thing to the user
        raise UsageError(f"cannot read {path} ({e}): restart training (dkit train --restart)") from e


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
