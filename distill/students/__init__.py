"""Student plugins, keyed by the kit's `student.kind`, like the teachers; a plugin's module is imported only when
asked for, so a missing extra is an error naming it.

    plugin = student_plugin(kit)          # StudentPlugin: kind, task, weights_in_store, module path
    plugin.train(kit, run_dir, store=store, restart=False, progress=True) -> dict
    plugin.evaluate(kit, run_dir, store=store, ground_truth=None) -> dict     # the eval.json contract

Every plugin module provides:
    train(kit, run_dir, *, store, restart=False, progress=True) -> dict
        trains on run_dir/labels/ (and the teacher cache) into run_dir/student/, resuming an
        interrupted run unless `restart`; returns a summary (weights path, epochs, resumed, ...)
    evaluate(kit, run_dir, *, store, ground_truth=None) -> dict
        measures the student against the teacher that labelled the images, on the held-out split: the
        eval.json contract (see dkit.distill.evaluate)
Each kind's exporter is the matching entry of dkit.export.exporters (the layer above).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from dkit.core.errors import MissingExtraError, UsageError


@dataclass(frozen=True)
class StudentPlugin:
    kind: str
    task: str  # what its bundle does on the device: detect | classify | embed
    module: str  # the module with train() and evaluate()
    weights_in_store: bool  # starts from pretrained weights the model store can hold (`dkit fetch` looks)

    def load(self) -> ModuleType:
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("dkit"):
                raise
            raise MissingExtraError(f"the {self.kind} student", e.name or self.module, "distill") from e

    def train(self, kit, run_dir, **kwargs) -> dict:
        return self.load().train(kit, run_dir, **kwargs)

    def evaluate(self, kit, run_dir, **kwargs) -> dict:
        return self.load().evaluate(kit, run_dir, **kwargs)


STUDENTS = {p.kind: p for p in (
    StudentPlugin("yolo-detect", "detect", "dkit.distill.students.yolo", weights_in_store=True),
    StudentPlugin("yolo-cls", "classify", "dkit.distill.students.yolo", weights_in_store=True),
    StudentPlugin("clip-embed", "embed", "dkit.distill.students.clip_embed", weights_in_store=False),
)}


def student_plugin(kit_or_kind) -> StudentPlugin:
    kind = kit_or_kind if isinstance(kit_or_kind, str) else kit_or_kind.student.kind
    try:
        return STUDENTS[kind]
    except KeyError as e:
        raise UsageError(f"unknown student kind {kind!r}; known: {', '.join(STUDENTS)}") from e


def student_module(kit) -> ModuleType:
    """The kit's student plugin module (train, evaluate)."""
    return student_plugin(kit).load()
