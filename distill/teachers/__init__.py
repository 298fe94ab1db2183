"""Teacher plugins, keyed by the kit's `teacher.kind`; a plugin module is imported only when asked for.

    teacher = build_teacher(kit, ModelStore())
    raws = teacher.infer([rgb, ...])          # expensive, cached by the labeler (see dkit.distill.cache)
    decision = teacher.decide(raws[0], (h, w))  # cheap: thresholds, abstain rule, ontology mapping
"""

from __future__ import annotations

from dkit.core.errors import UsageError, require
from dkit.distill.teachers.base import Decision, Teacher

TEACHERS = {
    "clip": "dkit.distill.teachers.clip:ClipTeacher",
    "yolo": "dkit.distill.teachers.yolo:YoloTeacher",
}

# What each kind loads from the model store (`dkit fetch` resolves it without building the teacher).
WEIGHTS = {
    "clip": lambda cfg, store: store.clip_checkpoint(cfg.model, cfg.pretrained) or "untrained (random)",
    "yolo": lambda cfg, store: "untrained (random)" if cfg.is_random else store.yolo_weights(cfg.model),
}

__all__ = ["TEACHERS", "WEIGHTS", "Decision", "Teacher", "build_teacher", "teacher_weights"]


def teacher_weights(kit, store):
    """The kit's teacher weights file in the model store (a NotInStoreError naming where to put it when missing)."""
    try:
        return WEIGHTS[kit.teacher.kind](kit.teacher, store)
    except KeyError as e:
        raise UsageError(f"unknown teacher kind {kit.teacher.kind!r}; known: {', '.join(TEACHERS)}") from e


def build_teacher(kit, store) -> Teacher:
    """The kit's teacher, built and ready (weights from the model store)."""
    try:
        target = TEACHERS[kit.teacher.kind]
    except KeyError as e:
        raise UsageError(f"unknown teacher kind {kit.teacher.kind!r}; known: {', '.join(TEACHERS)}") from e
    module_name, _, attr = target.partition(":")
    module = require(module_name, what=f"the {kit.teacher.kind} teacher", extra="distill")
    return getattr(module, attr)(kit, store)
