"""Student kinds, each declared once (`StudentKind`), in a registry every layer derives from.

The kit's list of kinds (`student.kind`), its cross-checks (teacher, image size, devices, pool, judge) and the
validation of `student.train_args`, the student plugins (`dkit.distill.students.STUDENTS`), the exporters
(`dkit.export.exporters.EXPORTERS`) and the NCNN kinds (`dkit.export.ncnn`) are all read from here. Adding a kind
is one declaration registered with `register_student_kind`, pointing at its train/evaluate module and its
exporter (a built-in kind: a module beside yolo.py, listed in BUILT_IN).

    from dkit.core.student_kinds import student_kind, student_kinds

    spec = student_kind("yolo-cls")          # StudentKind(key='yolo-cls', task='classify', ...)
    spec.config.model_validate({"mosaic": 0.5})
    list(student_kinds())                    # ['yolo-detect', 'yolo-cls', 'clip-embed']
"""

from __future__ import annotations

from dkit.core.student_kinds.clip_embed import CLIP_EMBED, ClipEmbedTrainArgs
from dkit.core.student_kinds.registry import KindView, register_student_kind, student_kind, student_kinds
from dkit.core.student_kinds.spec import (
    NonNegative,
    NonNegativeInt,
    StudentKind,
    StudentKindError,
    TrainArgs,
)
from dkit.core.student_kinds.yolo import YOLO_CLS, YOLO_DETECT, YoloTrainArgs

BUILT_IN = (YOLO_DETECT, YOLO_CLS, CLIP_EMBED)
for _kind in BUILT_IN:
    register_student_kind(_kind)

__all__ = [
    "BUILT_IN", "ClipEmbedTrainArgs", "KindView", "NonNegative", "NonNegativeInt", "StudentKind", "StudentKindError",
    "TrainArgs", "YoloTrainArgs", "register_student_kind", "student_kind", "student_kinds",
]
