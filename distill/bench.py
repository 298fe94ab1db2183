"""`dkit bench label`: labeling images/s of the whole pipeline against the bare teacher, in one run.

    dkit bench label datasets/coco128/kit.yaml --data ../shared/assets/data/coco128/images/train2017

prints JSON: `ips_label` (the full `dkit label`: scan, decode in workers, teacher, cache, data set,
report, into a fresh run folder, so nothing comes from the cache) and `ips_bare` (the teacher's
`infer` alone on the same images, already decoded in memory, same batch size). Their ratio is the
pipeline's efficiency; the teacher is built once and warmed up before either is timed. The two are
timed in alternating rounds (`--repeat`, default 3) and the best round of each is kept, so a busy
neighbour on a shared machine slows both alike instead of tilting the ratio.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from dkit.core.workers import decode_workers
from dkit.distill.images import load_image, scan
from dkit.distill.label import label_images, resolve_images
from dkit.distill.teachers import build_teacher


def bench_label(kit, *, store, repeat: int = 3) -> dict:
    root = resolve_images(kit, store)
    teacher = build_teacher(kit, store)
    images = [li.rgb for li in (load_image(p, root) for p in scan(root)) if li.ok]  # (H, W, 3) RGB, untimed
    batch = kit.teacher.batch
    for i in range(0, min(len(images), max(4 * batch, 8)), batch):  # warm-up: allocations, lazy init
        teacher.infer(images[i : i + batch])

    bare, full = [], []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            teacher.infer(images[i : i + batch])
        bare.append(len(images) / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory(prefix="dkit-bench-") as tmp:
            result = label_images(kit, Path(tmp), store=store, teacher=teacher, progress=False)
        full.append(result.counts["files"] / result.seconds)
    ips_label, ips_bare = max(full), max(bare)
    return {
        "benchmark": "label",
        "kit": kit.name,
        "teacher": teacher.id,
        "images": len(images),
        "batch": batch,
        "workers": decode_workers(kit.data.workers),
        "rounds": len(bare),
        "ips_label": round(ips_label, 3),
        "ips_bare": round(ips_bare, 3),
        "ratio": round(ips_label / ips_bare, 3),
        "ips_label_rounds": [round(v, 3) for v in full],
        "ips_bare_rounds": [round(v, 3) for v in bare],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
    }


def ultralytics_predictor(model_file, task: str, imgsz, conf: float, iou: float, max_det: int, rect: bool = False):
    """predict(rgb) with Ultralytics' YOLO on an exported ONNX file, warmed up: `dkit bench runtime`'s reference
    (rect=False: the square input the bundle runs; True: Ultralytics' default, minimal padding)."""
    import logging

    import numpy as np
    from ultralytics import YOLO

    logging.getLogger("ultralytics").setLevel(logging.WARNING)  # its INFO lines go to stdout, where the JSON goes
    model = YOLO(str(model_file), task=task)

    def predict(rgb):
        return model.predict(np.ascontiguousarray(rgb[..., ::-1]), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                             rect=rect, verbose=False, device="cpu")

    for _ in range(2):
        predict(np.full((480, 640, 3), 114, np.uint8))
    return predict


class UltralyticsReference:
    """`dkit bench runtime --matrix`'s reference row: YOLO(fp32 onnx).predict with its defaults, timed in the same
    round-robin as the runtime's configurations (dkit.devtools.bench_matrix)."""

    def __init__(self, model_file, task: str, imgsz, conf: float, iou: float, max_det: int):
        self.predict = ultralytics_predictor(model_file, task, imgsz, conf, iou, max_det, rect=True)
        self.rounds: list[float] = []
        self.latencies: list[float] = []

    def round(self, frames) -> None:
        import time

        start = time.perf_counter()
        for rgb in frames:
            t = time.perf_counter()
            self.predict(rgb)
            self.latencies.append((time.perf_counter() - t) * 1000)
        self.rounds.append(len(frames) / (time.perf_counter() - start))

    def summary(self) -> dict:
        import numpy as np

        lat = np.asarray(self.latencies)
        return {"backend": "ultralytics predict", "precision": "fp32", "letterbox": "default (rect)",
                "device": "onnxruntime CPU", "fps": round(max(self.rounds), 2), "fps_bare": None,
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "agreement": None, "spread": round(min(self.rounds) / max(self.rounds), 3),
                "noisy": min(self.rounds) / max(self.rounds) < 0.8}
