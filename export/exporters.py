"""Exporters, keyed by the kit's `student.kind` like the student plugins (dkit.distill.students): each turns that
kind's trained student into model files in the bundle folder and the manifest pieces that describe them. Which
function exports a kind is part of its declaration (dkit.core.student_kinds.StudentKind.exporter).

    exported = exporter_for(kit)(kit, run, bundle_dir, store)     # -> Exported(model, preprocess, decode, classes)

What an exporter gives back is typed, in the manifest's own sections (dkit.edge.bundle.manifest): the fp32 student's
`ModelEntry`, its `Preprocess` and `Decode`, the class names in output order, and for a judge its `JudgeParts` (text
encoder, tokenizer, `Prompts`, `Calibration`). A model the export measured and did not ship is a `Refused`.
A module is imported only when its kind is exported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dkit.core.errors import UsageError
from dkit.core.run import RunDir
from dkit.core.student_kinds import KindView
from dkit.edge.bundle.manifest import Calibration, Decode, ModelEntry, Preprocess, Prompts, TokenizerSpec


@dataclass(frozen=True)
class Refused:
    """A model the export measured and did not ship: `model` as measured (its report in `info`), `reason` why, e.g.
    `Refused(entry, "mAP50 against fp32 0.512 is below export.accuracy_guard 0.9: not shipped")`. The manifest
    lists the reason under `refused_variants`."""

    model: ModelEntry
    reason: str

    @property
    def role(self) -> str:
        """The `models` key it would have had (student_int8, student_ncnn_fp16, ...)."""
        return self.model.role

    def to_dict(self) -> dict[str, Any]:
        """The measured entry as JSON with its `refused` reason (what `dkit export` summarises)."""
        return self.model.to_dict() | {"refused": self.reason}


Built = ModelEntry | Refused  # a further model of the bundle (a variant, an NCNN model, an engine): shipped or refused


@dataclass(frozen=True)
class JudgeParts:
    """A judge (clip-embed) bundle's further sections: the teacher's text encoder, its tokenizer, the prompt table,
    the score calibration, the teacher's logit scale and id."""

    text: ModelEntry
    tokenizer: TokenizerSpec
    prompts: Prompts
    calibration: Calibration
    logit_scale: float
    teacher_id: str


@dataclass(frozen=True)
class Exported:
    """What an exporter wrote: the fp32 student's model entry (role `student`), how its input is prepared and its
    output read, the class names in output order, and a judge's further parts (None for YOLO students)."""

    model: ModelEntry
    preprocess: Preprocess
    decode: Decode
    classes: list[str]
    judge: JudgeParts | None = None


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
