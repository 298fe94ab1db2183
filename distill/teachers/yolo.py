"""YOLO teacher: any Ultralytics detector, its class names mapped onto the kit's ontology.

Each ontology class lists the teacher class names it takes (`person: [person]`, or
`vehicle: [car, truck, bus]`); teacher classes no ontology class names are dropped. Ultralytics' NMS
runs per teacher class, so a car box and a truck box on the same vehicle both survive it; after the
mapping, class-wise NMS runs again on the kit's classes (`teacher.iou`), so one vehicle is one box.
Labeling is
offline, so quality can beat speed: `teacher.augment: true` turns on Ultralytics' test-time
augmentation, and `teacher.imgsz` can be larger than the student's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dkit.core.errors import UsageError, require
from dkit.distill.teachers.base import Decision, Raw, Teacher, class_nms, file_digest, resolve_device

# Predictions are cached down to this confidence and `teacher.conf` is applied in `decide`, so a rerun
# with another threshold recomputes nothing. Class-wise NMS keeps the same boxes above any threshold
# whatever lies below it, so the labels equal a direct predict at `teacher.conf` (the same holds for the second
# NMS on the kit's classes in `decide`).
CACHE_CONF = 0.01


class YoloTeacher(Teacher):
    """An Ultralytics detector whose classes are mapped onto the kit's ontology."""

    def __init__(self, kit, store):
        ultralytics = require("ultralytics", what="the yolo teacher", extra="distill")
        cfg = self.cfg = kit.teacher
        self.random = cfg.is_random
        if self.random:  # the architecture, untrained: tests only
            weights = str(Path(cfg.model).with_suffix(".yaml").name)
            digest = "random-seed0"
        else:
            weights = store.yolo_weights(cfg.model)
            digest = file_digest(weights)
        self.model = _load(ultralytics, weights, seed=0 if self.random else None)
        self.device = resolve_device(cfg.device)
        self.mapping = _map_classes(self.model.names, kit.ontology.classes, by_order=self.random, weights=weights)
        self.num_classes = len(kit.ontology.classes)
        self.infer_conf = min(cfg.conf, CACHE_CONF)
        self.id = f"yolo:{Path(weights).name}@{cfg.imgsz}{'+tta' if cfg.augment else ''}" + (
            " (UNTRAINED)" if self.random else ""
        )
        self.cache_key = (
            f"yolo|{digest}|imgsz={cfg.imgsz}|conf>={self.infer_conf}|iou={cfg.iou}|augment={cfg.augment}"
            f"|max_det={cfg.max_det}"
        )

    def infer(self, images: list[np.ndarray]) -> list[Raw]:
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # Ultralytics takes OpenCV's BGR
        results = self.model.predict(
            bgr, imgsz=self.cfg.imgsz, conf=self.infer_conf, iou=self.cfg.iou, augment=self.cfg.augment,
            max_det=self.cfg.max_det, device=self.device, verbose=False,
        )
        return [
            {
                "boxes": r.boxes.xyxy.cpu().numpy().astype(np.float32),  # (N, 4) xyxy pixels
                "conf": r.boxes.conf.cpu().numpy().astype(np.float32),  # (N,)
                "cls": r.boxes.cls.cpu().numpy().astype(np.int32),  # (N,) teacher class ids
            }
            for r in results
        ]

    def decide(self, raw: Raw, shape: tuple[int, int]) -> Decision:
        cls = self.mapping[raw["cls"]] if len(raw["cls"]) else np.zeros(0, np.int32)
        boxes, conf = raw["boxes"], raw["conf"]
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
        keep = np.flatnonzero((cls >= 0) & (sides >= self.cfg.min_box) & (conf >= self.cfg.conf))
        # several teacher classes may map to one kit class: NMS again on the kit's classes (best first)
        keep = keep[class_nms(boxes[keep], conf[keep], cls[keep], self.cfg.iou)][: self.cfg.max_det]
        cls, conf, boxes = cls[keep], conf[keep], boxes[keep]
        best = np.zeros(self.num_classes, np.float32)
        np.maximum.at(best, cls, conf)
        top = [int(i) for i in np.argsort(-best, kind="stable")[:5] if best[i] > 0]
        return Decision(cls.astype(np.int32), conf, boxes, topk=[(i, float(best[i])) for i in top])


def _map_classes(names: dict[int, str], ontology: dict[str, list[str]], *, by_order: bool, weights: str) -> np.ndarray:
    """Teacher class id -> ontology index (-1: dropped). Each prompt must name a teacher class."""
    mapping = np.full(len(names), -1, np.int32)
    if by_order:  # an untrained model has no meaningful names: class i is ontology class i
        mapping[: min(len(names), len(ontology))] = np.arange(min(len(names), len(ontology)))
        return mapping
    index = {name.lower(): i for i, name in names.items()}
    for o, (cls, prompts) in enumerate(ontology.items()):
        for prompt in prompts:
            t = index.get(prompt.lower())
            if t is None:
                raise UsageError(
                    f"ontology.classes.{cls}: {prompt!r} is not a class of the teacher {Path(weights).name} "
                    f"(its classes: {', '.join(names.values())})"
                )
            if mapping[t] >= 0 and mapping[t] != o:
                raise UsageError(f"ontology: the teacher class {prompt!r} is mapped to two classes")
            mapping[t] = o
    return mapping


def _load(ultralytics, weights: str, seed: int | None):
    """ultralytics.YOLO(weights); with `seed`, its untrained weights drawn from torch's RNG seeded so, in a fork of
    it: the caller's global RNG is left as it was."""
    if seed is None:
        return ultralytics.YOLO(weights, task="detect")
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ultralytics.YOLO(weights, task="detect")
