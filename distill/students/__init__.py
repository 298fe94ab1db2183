"""Student plugins, keyed by the kit's `student.kind`; a plugin module is imported only when asked for.

Every student module provides two functions:

    train(kit, run_dir, *, store, restart=False, progress=True) -> dict
        trains on run_dir/labels/ (and the teacher cache) into run_dir/student/, resuming an
        interrupted run unless `restart`; returns a summary (weights path, epochs, resumed, ...)
    evaluate(kit, run_dir, *, store, ground_truth=None) -> dict
        measures the student against the teacher on the held-out split: the eval.json contract
        (see dkit.distill.evaluate)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dkit.core.errors import MissingExtraError, UsageError

STUDENTS = {
    "yolo-detect": "dkit.distill.students.yolo",
    "yolo-cls": "dkit.distill.students.yolo",
    "clip-embed": "dkit.distill.students.clip_embed",
}


def student_module(kit) -> ModuleType:
    try:
        name = STUDENTS[kit.student.kind]
    except KeyError as e:
        raise UsageError(f"unknown student kind {kit.student.kind!r}; known: {', '.join(STUDENTS)}") from e
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("distill"):
            raise
        raise MissingExtraError(f"the {kit.student.kind} student", e.name or name, "distill") from e
