"""Student plugins, keyed by the kit's `student.kind`, like the teachers: one per kind declared in
dkit.core.student_kinds (its task, config model and train/evaluate module come from that declaration). A plugin's
module is imported only when asked for, so a missing extra is an error naming it.

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
Each kind's exporter is named by the same declaration (dkit.export.exporters, the layer above).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from dkit.core.errors import MissingExtraError
from dkit.core.student_kinds import KindView, StudentKind, student_kind


@dataclass(frozen=True)
class StudentPlugin:
    """A student kind's training side: its declaration's train/evaluate module, imported when first used."""

    kind: str
    task: str  # what its bundle does on the device: detect | classify | embed
    module: str  # the module with train() and evaluate()
    weights_in_store: bool  # starts from pretrained weights the model store can hold (`dkit fetch` looks)

    @classmethod
    def of(cls, spec: StudentKind) -> StudentPlugin:
        """The plugin of one declared kind (dkit.core.student_kinds.StudentKind)."""
        return cls(spec.key, spec.task, spec.train, weights_in_store=spec.model_file)

    def load(self) -> ModuleType:
        """The plugin module. Raises MissingExtraError naming the `distill` extra when a package it needs is
        missing."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("dkit"):
                raise
            raise MissingExtraError(f"the {self.kind} student", e.name or self.module, "distill") from e

    def train(self, kit, run_dir, **kwargs) -> dict:
        """The module's train(kit, run_dir, **kwargs): the training summary."""
        return self.load().train(kit, run_dir, **kwargs)

    def evaluate(self, kit, run_dir, **kwargs) -> dict:
        """The module's evaluate(kit, run_dir, **kwargs): the eval.json dict."""
        return self.load().evaluate(kit, run_dir, **kwargs)


STUDENTS = KindView(StudentPlugin.of)  # kind -> StudentPlugin, for every declared kind (a live view)


def student_plugin(kit_or_kind) -> StudentPlugin:
    """The plugin of a kit's student (or of a kind). Raises UsageError for an undeclared kind."""
    kind = kit_or_kind if isinstance(kit_or_kind, str) else kit_or_kind.student.kind
    return StudentPlugin.of(student_kind(kind))


def student_module(kit) -> ModuleType:
    """The kit's student plugin module (train, evaluate)."""
    return student_plugin(kit).load()
