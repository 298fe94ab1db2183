"""The run folder, RUN_DIR (default runs/<kit name>/): where every stage reads and writes, named in one place.

    from dkit.core.run import RunDir

    run = RunDir(kit.run_dir(args.out))
    run.labels / run.labels_jsonl / run.records()      # dkit label's output; records(): LabelRecord objects
    run.cache_db                                       # the content-keyed teacher cache (cache/teacher.sqlite)
    run.student / run.student_weights / run.last_weights
    run.eval_json, run.bundle, run.archive
    run.log_file("train")                              # logs/train.log: everything `dkit train` logged

    RUN_DIR/
      labels/          data set (data.yaml, images/, labels/ or class folders), labels.jsonl, report.html,
                       pool.jsonl (the unlabeled pool's images, clip-embed kits with data.unlabeled)
      pool/            the pool's rendered drawings and video frames
      cache/           teacher.sqlite: teacher outputs by image content
      student/         weights/best.pt, weights/last.pt, student.json, curves.png, train.log
      eval.json, eval.md
      bundle/, bundle.tar.gz
      logs/            label.log, train.log, eval.log, export.log: each stage's full log (the libraries' lines
                       included), appended run after run
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dkit.core.errors import UsageError
from dkit.core.records import LabelRecord


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder, e.g. `RunDir("runs/coco128").labels_jsonl`; `root` becomes a Path on
    construction. Nothing is created or checked until a method reads (records, trained_weights)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # labels
    @property
    def labels(self) -> Path:
        """labels/: the labelled data set, labels.jsonl, pool.jsonl, report.html, split.json."""
        return self.root / "labels"

    @property
    def labels_jsonl(self) -> Path:
        """labels/labels.jsonl: one LabelRecord per image (`dkit label`)."""
        return self.labels / "labels.jsonl"

    @property
    def cache_db(self) -> Path:
        """cache/teacher.sqlite: the teacher's answers, keyed by image and teacher (a rerun reuses them)."""
        return self.root / "cache" / "teacher.sqlite"

    def records(self) -> list[LabelRecord]:
        """Every line of labels.jsonl; a UsageError saying to run `dkit label` when there are none."""
        path = self.labels_jsonl
        if not path.is_file():
            raise UsageError(f"no labels in {self.labels}: run `dkit label` first")
        with open(path, encoding="utf-8") as f:
            return [LabelRecord.from_dict(json.loads(line), f"{path}:{n}") for n, line in enumerate(f, 1)
                    if line.strip()]

    @property
    def pool_jsonl(self) -> Path:
        """labels/pool.jsonl: the unlabeled pool's LabelRecords (split "pool")."""
        return self.labels / "pool.jsonl"

    def pool_records(self) -> list[LabelRecord]:
        """The unlabeled pool's images (split "pool", data.unlabeled) `dkit label` ran the teacher on; [] if none."""
        path = self.pool_jsonl
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as f:
            return [LabelRecord.from_dict(json.loads(line), f"{path}:{n}") for n, line in enumerate(f, 1)
                    if line.strip()]

    def usable_records(self) -> list[LabelRecord]:
        """Labelled images with a split (train or val), in file order."""
        return [r for r in self.records() if r.is_usable]

    # student
    @property
    def student(self) -> Path:
        """student/: the trained student (`dkit train`)."""
        return self.root / "student"

    @property
    def student_weights(self) -> Path:
        """student/weights/best.pt: the best epoch's weights."""
        return self.student / "weights" / "best.pt"

    @property
    def last_weights(self) -> Path:
        """student/weights/last.pt: the last epoch's weights (a resume starts there)."""
        return self.student / "weights" / "last.pt"

    def trained_weights(self) -> Path:
        """best.pt, or a UsageError saying to run `dkit train` first."""
        if not self.student_weights.is_file():
            raise UsageError(f"no trained student in {self.student}: run `dkit train` first")
        return self.student_weights

    # evaluation and export
    @property
    def eval_json(self) -> Path:
        """eval.json: `dkit eval`'s figures."""
        return self.root / "eval.json"

    @property
    def eval_md(self) -> Path:
        """eval.md: `dkit eval`'s report."""
        return self.root / "eval.md"

    @property
    def bundle(self) -> Path:
        """bundle/: the exported bundle (`dkit export`)."""
        return self.root / "bundle"

    @property
    def archive(self) -> Path:
        """bundle.tar.gz: the bundle as one file to copy to the device."""
        return self.root / "bundle.tar.gz"

    # logs
    def log_file(self, stage: str) -> Path:
        """logs/STAGE.log: the full log of a stage's runs, e.g. `RunDir("runs/toy").log_file("label")` ->
        runs/toy/logs/label.log (dkit.core.logfile.LogFile writes it)."""
        return self.root / "logs" / f"{stage}.log"
