"""`dkit bench runtime`: frames/s of the edge runtime against its limit and against Ultralytics, in one run.

    result = bench_runtime("runs/coco128/bundle", "../shared/assets/data/coco128/images/train2017")

On the same decoded images (decoded once, up front, so disk and JPEG decoding are not in the comparison):
- fps_runtime: the whole runtime per frame (pre-processing, session.run, decoding + NMS / top-k / cosine);
- fps_bare: the bare `session.run` loop on the same pre-processed inputs: the limit the runtime approaches;
- fps_ultralytics: `YOLO(model.onnx).predict` on the same ONNX file and images (detectors and classifiers,
  when ultralytics is installed; rect=False so it runs the same input size as the bundle).
Rounds alternate between the three, `repeat` times, and each keeps its best round: the machines are shared
and noisy, and the ratios come from one run. p50/p99 are the runtime's per-frame latencies over every round.
fps_pipeline and pipeline_p50/p99_ms run the real pipeline (edge.pipeline) from the folder, decoding
included, with latency from capture to result.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from edge.pipeline import Pipeline
from edge.runtime import Runtime
from edge.sources import open_source


def bench_runtime(bundle: str | os.PathLike, source: str | os.PathLike, *, images: int = 64, repeat: int = 3,
                  threads: int | None = None, precision: str = "fp32") -> dict:
    with open_source(str(source)) as src:
        if src.live:
            raise ValueError(f"--source {source}: give a folder of images (a benchmark needs the same frames each "
                             "round)")
        frames = []
        for frame in src:
            frames.append(frame.rgb)
            if len(frames) == images:
                break
    with Runtime.load(bundle, threads=threads, precision=precision) as rt:
        inputs = [rt.preprocess(rgb)[0] for rgb in frames]
        ultra = _ultralytics_predictor(rt)
        best = {"runtime": 0.0, "bare": 0.0, "ultralytics": 0.0}
        latencies: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            for rgb in frames:
                t = time.perf_counter()
                rt(rgb)
                latencies.append((time.perf_counter() - t) * 1000)
            best["runtime"] = max(best["runtime"], len(frames) / (time.perf_counter() - start))
            start = time.perf_counter()
            for x in inputs:
                rt.session.run(None, {rt.input_name: x})
            best["bare"] = max(best["bare"], len(frames) / (time.perf_counter() - start))
            if ultra is not None:
                start = time.perf_counter()
                for rgb in frames:
                    ultra(rgb)
                best["ultralytics"] = max(best["ultralytics"], len(frames) / (time.perf_counter() - start))
        pipeline = Pipeline(rt, [open_source(str(source))], [], max_frames=len(frames))
        piped = pipeline.run()
        lat = np.asarray(latencies)
        return {
            "bundle": str(bundle), "task": rt.task, "model": rt.model_file.name, "provider": rt.provider,
            "input": list(inputs[0].shape), "images": len(frames), "repeat": repeat,
            "fps_runtime": round(best["runtime"], 2), "fps_bare": round(best["bare"], 2),
            "fps_ultralytics": round(best["ultralytics"], 2) if ultra is not None else None,
            "runtime_vs_bare": round(best["runtime"] / best["bare"], 3),
            "runtime_vs_ultralytics": round(best["runtime"] / best["ultralytics"], 3) if ultra is not None else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "fps_pipeline": piped["fps"], "pipeline_p50_ms": piped["p50_ms"], "pipeline_p99_ms": piped["p99_ms"],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": threads or 0},
        }


def _ultralytics_predictor(rt: Runtime):
    """A function predicting one RGB frame with Ultralytics on the bundle's ONNX, warmed up; None without it."""
    if rt.task not in ("detect", "classify"):
        return None
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    logging.getLogger("ultralytics").setLevel(logging.WARNING)  # its INFO lines go to stdout, where the JSON goes
    size = rt.spec["size"]
    imgsz = size if isinstance(size, int) else list(size)
    model = YOLO(str(Path(rt.model_file)), task=rt.task)

    def predict(rgb: np.ndarray):
        return model.predict(np.ascontiguousarray(rgb[..., ::-1]), imgsz=imgsz, conf=rt.conf, iou=rt.iou,
                             max_det=rt.max_det, rect=False, verbose=False, device="cpu")

    for _ in range(2):
        predict(np.full((480, 640, 3), 114, np.uint8))
    return predict
