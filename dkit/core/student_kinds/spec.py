"""The declaration of one student kind (`StudentKind`), and the base of its `student.train_args` model.

A kind is declared once, here in the contract layer, as data: the key a kit names in `student.kind`, the task of
its bundle, the pydantic model its `student.train_args` are validated against when the kit loads, the traits the
kit's cross-checks ask about, and the dotted paths of its implementations (train/evaluate in dkit.distill, the
exporter and an NCNN converter in dkit.export), which those layers import only when the kind is used. So
`dkit.core` never imports the training or export stack, and a kind's heavy imports stay inside its plugin.

    from dkit.core.student_kinds import NonNegative, StudentKind, TrainArgs, register_student_kind

    class TinyArgs(TrainArgs):
        lr: NonNegative = 1e-3

    register_student_kind(StudentKind(
        key="tiny-cls", task="classify", config=TinyArgs, name="tiny",
        train="my_pkg.student", exporter="my_pkg.export:export_tiny"))
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict
from pydantic_core import PydanticCustomError

TASKS = ("detect", "classify", "embed")  # what a bundle does on the device (dkit.edge.bundle.manifest.TASKS)
TEACHER_KINDS = ("clip", "yolo")  # dkit.core.kit.TeacherSection.kind
MULTI_GPU = ("device-list", "torchrun", "none")
_KEY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")  # yolo-detect, clip-embed
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class StudentKindError(ValueError):
    """A student-kind declaration that cannot be registered: a malformed one, or a key declared twice."""


def _non_negative(value: Any) -> int | float:
    """A finite number >= 0, kept as written (an integer stays an integer: it is part of a run's fingerprint)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PydanticCustomError("non_negative_number", "a number >= 0")
    return value


NonNegative = Annotated[float, PlainValidator(_non_negative)]  # a train_args number: int or float as written
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]


class TrainArgs(BaseModel):
    """Base of a kind's `student.train_args` model: frozen, strict (640 is an integer, "640" is not), and an
    unknown key is refused unless the model says otherwise (`model_config = ConfigDict(extra="allow")`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclasses.dataclass(frozen=True)
class StudentKind:
    """One student kind: everything the kit, training and export ask about it, declared once.

    Args:
        key: the kit's `student.kind` value (lower-case words joined by '-': yolo-detect).
        task: what its bundle does on the device: detect | classify | embed (an embed bundle is a kiosk judge:
            the kit may carry a `judge:` section). The labels it trains on are boxes for detect, one class per
            image otherwise (`Kit.task`).
        config: the pydantic model (a `TrainArgs`) `student.train_args` is validated against when the kit loads.
        train: the module with `train(kit, run_dir, *, store, restart, progress)` and
            `evaluate(kit, run_dir, *, store, ground_truth)` (dkit.distill.students), imported when used.
        exporter: "module:function" turning the trained student into bundle files (dkit.export.exporters).
        ncnn: "module:function" converting the trained student to NCNN (dkit.export.ncnn); None: no NCNN model,
            the bundle's formats are ONNX only.
        name: what messages call a student of this kind ("a YOLO student"); the key when empty.
        teachers: the teacher kinds whose labels it can learn from.
        model_file: True when `student.model` names a weights file (from the model store by name, `dkit fetch`
            looks for it, or a path relative to the kit) that holds its pretrained weights, so `student.pretrained`
            is refused; False when `student.model` is an architecture name and `student.pretrained` may name a
            backbone checkpoint in the model store.
        imgsz_multiple: `student.imgsz` must be a multiple of this (a YOLO network's stride: 32).
        multi_gpu: how it trains on several GPUs: "device-list" (`student.device: [0, 1]`, the trainer's own),
            "torchrun" (one device a process, launched with torchrun) or "none".
        unlabeled_pool: it learns from images nobody labelled too (`data.unlabeled`, dkit.distill.pool).
    Raises:
        StudentKindError: a field that is malformed (the message names it).
    """

    key: str
    task: Literal["detect", "classify", "embed"]
    config: type[TrainArgs]
    train: str
    exporter: str
    ncnn: str | None = None
    name: str = ""
    teachers: tuple[str, ...] = TEACHER_KINDS
    model_file: bool = False
    imgsz_multiple: int = 1
    multi_gpu: Literal["device-list", "torchrun", "none"] = "none"
    unlabeled_pool: bool = False

    def __post_init__(self) -> None:
        problems = [
            (not isinstance(self.key, str) or not _KEY.match(self.key), "key", "lower-case words joined by '-'"),
            (self.task not in TASKS, "task", "one of " + ", ".join(TASKS)),
            (not (isinstance(self.config, type) and issubclass(self.config, TrainArgs)), "config",
             "a TrainArgs subclass (a pydantic model)"),
            (not _is_module(self.train), "train", "a dotted module path"),
            (not _is_target(self.exporter), "exporter", "'module:function'"),
            (self.ncnn is not None and not _is_target(self.ncnn), "ncnn", "'module:function' or None"),
            (not self.teachers or not set(self.teachers) <= set(TEACHER_KINDS), "teachers",
             "a non-empty tuple of " + ", ".join(TEACHER_KINDS)),
            (not isinstance(self.imgsz_multiple, int) or self.imgsz_multiple < 1, "imgsz_multiple", "an integer >= 1"),
            (self.multi_gpu not in MULTI_GPU, "multi_gpu", "one of " + ", ".join(MULTI_GPU)),
        ]
        for bad, field, expected in problems:
            if bad:
                raise StudentKindError(f"student kind {self.key!r}: {field}: expected {expected}, got "
                                       f"{getattr(self, field)!r}")
        if not self.name:
            object.__setattr__(self, "name", self.key)

    @property
    def formats(self) -> tuple[str, ...]:
        """The model formats its bundle can carry (`export.backends`): onnx always, ncnn when it has a converter."""
        return ("onnx", "ncnn") if self.ncnn else ("onnx",)

    @property
    def label_task(self) -> Literal["detect", "classify"]:
        """What its training labels are: boxes (detect) or one class per image (classify; embed students too)."""
        return "detect" if self.task == "detect" else "classify"


def _is_module(path: object) -> bool:
    return isinstance(path, str) and bool(_MODULE.match(path))


def _is_target(path: object) -> bool:
    module, sep, name = path.partition(":") if isinstance(path, str) else ("", "", "")
    return bool(sep) and _is_module(module) and name.isidentifier()
