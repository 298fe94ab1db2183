"""Exporters, keyed by the kit's `student.kind` like the student plugins (dkit.distill.students): each turns that
kind's trained student into model files in the bundle folder and the manifest pieces that describe them.

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


@dataclass(frozen=True)
class Exported:
    entry: dict[str, Any]
    classes: list[str]
    parts: dict[str, Any] = field(default_factory=dict)


class Exporter(Protocol):
    def __call__(self, kit, run: RunDir, bundle_dir: Path, store) -> Exported: ...


EXPORTERS = {
    "yolo-detect": "dkit.export.yolo:export_yolo_detect",
    "yolo-cls": "dkit.export.yolo:export_yolo_cls",
    "clip-embed": "dkit.export.judge:export_clip_embed",
}


def exporter_for(kit) -> Exporter:
    try:
        module, name = EXPORTERS[kit.student.kind].split(":")
    except KeyError as e:
        raise UsageError(f"no exporter for student kind {kit.student.kind!r}; known: {', '.join(EXPORTERS)}") from e
    return getattr(importlib.import_module(module), name)
