"""Exporters, keyed by the kit's `student.kind` like the student plugins (dkit.distill.students): each turns that
kind's trained student into model files in the bundle folder and the manifest pieces that describe them. Which
function exports a kind is part of its declaration (dkit.core.student_kinds.StudentKind.exporter).

    exported = exporter_for(kit)(kit, run, bundle_dir, store)     # -> Exported(entry, classes, parts)

`entry` is the fp32 student's model entry with its `preprocess` (and `decode`); `classes` the class names in output
order; `parts` the judge's extra sections (text encoder, tokenizer, prompts, calibration, ...), empty for YOLO.
A module is imported only when its kind is exported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dkit.core.errors import UsageError
from dkit.core.run import RunDir
from dkit.core.student_kinds import KindView


@dataclass(frozen=True)
class Exported:
    entry: dict[str, Any]
    classes: list[str]
    parts: dict[str, Any] = field(default_factory=dict)


class Exporter(Protocol):
    def __call__(self, kit, run: RunDir, bundle_dir: Path, store) -> Exported: ...


EXPORTERS = KindView(lambda kind: kind.exporter)  # kind -> "module:function", for every declared kind (a live view)


def exporter_for(kit) -> Exporter:
    """The exporter of the kit's student kind. Raises UsageError for a kind that has none."""
    try:
        target = EXPORTERS[kit.student.kind]
    except KeyError as e:
        raise UsageError(f"no exporter for student kind {kit.student.kind!r}; known: {', '.join(EXPORTERS)}") from e
    return resolve(target)


def resolve(target: str):
    """The function a declaration names as "module:function" (StudentKind.exporter, .ncnn), imported now."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
