"""A bundle, loaded and ready to score frames: an inference backend plus the manifest's pre- and post-processing.

    from dkit.edge.runtime import Runtime

    with Runtime.load("runs/coco128/bundle") as rt:      # verified first (dkit.edge.bundle); or a bundle.tar.gz
        result = rt(rgb)                                 # (H, W, 3) uint8 RGB -> Result
        results = rt.batch([rgb1, rgb2])                 # several cameras in one run when the model allows
        rt.provider                                      # e.g. "CUDAExecutionProvider": what really runs it
    Runtime.load(path, backend="auto", precision="auto") # the fastest of the bundle's models here (dkit.edge.select)

Backends (dkit.edge.backends): `onnxruntime` (the default here; `dkit run` defaults to auto), `openvino`, `ncnn`.
onnxruntime's execution providers: the first available of TensorRT > CUDA > OpenVINO > CoreML > CPU, unless
`providers` names them (full names or short ones: tensorrt, cuda, openvino, coreml, cpu); TensorRT engines are
cached under $DKIT_HOME/trt-cache. `threads` sets the backend's threads (0: its default). `precision` picks the
bundle's fp32, fp16 or int8 model. `letterbox` (detectors) overrides the manifest's mode: square or minimal
(stride-aligned padding; used only where the backend takes any input size). The backend is warmed up when
built, so the first frame is not slow. A reduced-precision model forced with backend and precision that the
export checked on another CPU architecture is checked here first (dkit.edge.device_check; `verify=False` skips
it); a failing check is a warning, and auto leaves such a model out.

Per task (manifest `task`):
- detect: letterbox, YOLOv8 decode + class-wise NMS in numpy (dkit.edge.postprocess), boxes in image pixels.
- classify: shortest-side resize + centre crop, probabilities, top-k.
- embed: the L2-normalised embedding and its cosine to every prompt the bundle ships (prompts.npy), each also
  as a 0-100 score through the bundle's calibration.
Thresholds come from the manifest and may be overridden (`conf`, `iou`, `max_det`, `top_k`).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dkit.edge.backends import BACKENDS, Backend, load_backend
from dkit.edge.backends.base import RuntimeConfigError
from dkit.edge.backends.ort_backend import PROVIDER_ORDER, SHORT_NAMES, choose_providers
from dkit.edge.bundle import Bundle, open_bundle
from dkit.edge.manifest import LETTERBOX_MODES
from dkit.edge.postprocess import Detections, cosine_scores, decode_yolo, topk
from dkit.edge.preprocess import Letterbox, preprocess
from dkit.edge.select import verified

log = logging.getLogger(__name__)

WARMUP_RUNS = 2
__all__ = ["PROVIDER_ORDER", "SHORT_NAMES", "Result", "Runtime", "RuntimeConfigError", "choose_providers"]


@dataclass
class Result:
    """What one frame produced. Exactly one of detections / top / scores is set, by task.

    Timing (latency_ms == wait_ms + infer_ms; infer_ms is timed with time.perf_counter, wait_ms on the capture clock):
    latency_ms is capture -> result; wait_ms is capture (or, for files, decode) -> the start of processing: time
    spent in a camera's slot or a folder's prefetch queue and waiting for the previous round; infer_ms is
    pre-processing + model + post-processing of the batch the frame was scored in.
    """

    frame_id: int
    timestamp: float  # when the frame was captured (time.time())
    latency_ms: float  # capture -> result, or pre-processing start -> result when the capture time is unknown
    task: str
    detections: Detections | None = None  # detect: boxes in image pixels
    top: list[tuple[int, float]] | None = None  # classify: (class index, probability), best first
    embedding: np.ndarray | None = None  # embed: (D,) normalised
    cosine: np.ndarray | None = None  # embed: (P,) to the bundle's prompts
    scores: np.ndarray | None = None  # embed: (P,) 0-100 through the calibration
    extra: dict[str, Any] = field(default_factory=dict)
    wait_ms: float | None = None  # capture -> start of processing (0 when the capture time is unknown)
    infer_ms: float | None = None  # pre-processing + model + post-processing of its batch

    def to_json(self, classes: list[str], prompts: list[str] | None = None) -> dict[str, Any]:
        """The result as `dkit run` prints it (one JSON line per frame): frame id, time, latencies, and the
        detections, top classes or prompt scores, class names from `classes` (the runtime's), prompt texts from
        `prompts`; rounded for reading."""
        doc: dict[str, Any] = {"frame": self.frame_id, "ts": round(self.timestamp, 6),
                               "latency_ms": round(self.latency_ms, 3),
                               **({} if self.wait_ms is None else {"wait_ms": round(self.wait_ms, 3)}),
                               **({} if self.infer_ms is None else {"infer_ms": round(self.infer_ms, 3)}),
                               **self.extra}
        if self.detections is not None:
            d = self.detections
            doc["detections"] = [
                {"class": classes[int(c)] if 0 <= int(c) < len(classes) else str(int(c)), "class_id": int(c),
                 "conf": round(float(p), 4), "box": [round(float(v), 1) for v in b]}
                for b, p, c in zip(d.xyxy, d.confidence, d.class_id, strict=True)]
        if self.top is not None:
            doc["top"] = [{"class": classes[i] if i < len(classes) else str(i), "class_id": i, "prob": round(p, 4)}
                          for i, p in self.top]
        if self.scores is not None and prompts is not None:
            doc["scores"] = {t: round(float(s), 1) for t, s in zip(prompts, self.scores, strict=True)}
        return doc


class Runtime:
    """A verified bundle ready to score frames: its backend (onnxruntime, OpenVINO or NCNN), the manifest's pre- and
    post-processing and thresholds. Call it on an (H, W, 3) uint8 RGB frame for a Result, or `batch` several; close
    it (or use `with`) to release the model. `Runtime.load(path)` opens and verifies a bundle folder or .tar.gz; the
    module docstring lists every option.

        with Runtime.load("runs/coco128/bundle", backend="auto") as rt:
            print(rt(rgb).detections)
    """

    def __init__(self, bundle: Bundle, *, backend: str = "onnxruntime", providers: list[str] | None = None,
                 threads: int | None = None, precision: str = "fp32", letterbox: str | None = None,
                 conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                 top_k: int | None = None, warmup: int = WARMUP_RUNS, remeasure: bool = False, verify: bool = True):
        if letterbox is not None and letterbox not in LETTERBOX_MODES:
            raise RuntimeConfigError(f"--letterbox {letterbox!r} is not one of {', '.join(LETTERBOX_MODES)}")
        if letterbox is not None and bundle.manifest.preprocess.resize != "letterbox":
            log.warning("%s: --letterbox applies to detectors; this %s bundle resizes by its shortest side",
                        bundle.source, bundle.manifest.task)
            letterbox = None
        self.bundle = bundle
        self.remeasure = remeasure
        m = self.manifest = bundle.manifest  # a dkit.edge.manifest.Manifest: typed, validated when opened
        self.task = m.task
        self.classes: list[str] = list(m.classes)
        self.threads = m.runtime.threads if threads is None else threads
        self.providers = providers or list(m.runtime.providers) or None
        if providers and backend in ("auto", "onnxruntime"):  # onnxruntime's providers: auto keeps onnxruntime
            import onnxruntime as ort

            choose_providers(providers, ort.get_available_providers())  # an unavailable one: the error, now
            backend = "onnxruntime"
        self.choice = self._choose(backend, precision, letterbox)
        self.precision = self.choice.precision
        fmt = BACKENDS[self.choice.backend].format
        model = m.model(self.precision, fmt)
        if model is None:
            has = "; ".join(f"{f} {', '.join(m.precisions(f))}" for f in m.formats())
            hint = ""
            if fmt == "ncnn":
                hint = (" (export it with export.backends: [onnx, ncnn] for NCNN)" if "ncnn" not in m.formats()
                        else " (NCNN int8 is exported for detectors with int8 in export.precisions)")
            raise RuntimeConfigError(f"{bundle.source}: no {self.precision} {fmt} model in this bundle "
                                     f"(it has: {has}){hint}")
        self.check = None  # dkit.edge.device_check.Outcome of a forced model checked on this device
        if self.choice.reason == "as asked" and verify:
            self._warn_unchecked(model)
        self.model_file = bundle.path(model.file)
        self.conf = m.thresholds.conf if conf is None else conf
        self.iou = m.thresholds.iou if iou is None else iou
        self.max_det = m.thresholds.max_det if max_det is None else max_det
        self.top_k = m.thresholds.top_k if top_k is None else top_k

        self.backend: Backend = load_backend(self.choice.backend, bundle, model, providers=self.providers,
                                             threads=self.threads)
        try:
            self._ready(letterbox, warmup)
        except BaseException:
            self.backend.close()
            raise

    def _ready(self, letterbox: str | None, warmup: int) -> None:
        m = self.manifest
        self.provider = self.backend.device
        self.dynamic_batch = self.backend.dynamic_batch
        self.spec = self._letterbox(m.preprocess, letterbox)
        self.prompts: list[str] | None = None
        if self.task == "embed":
            table = np.load(self.bundle.path(m.prompts.file), allow_pickle=False)  # (P, D)
            self.prompt_embeddings = table.astype(np.float32)
            self.prompts = m.prompts.texts()
            self.calibration = m.calibration
        for _ in range(warmup):
            self.infer(preprocess(np.zeros((64, 64, 3), np.uint8) + 114, self.spec)[0])

    def _warn_unchecked(self, model) -> None:
        """A model forced with backend and precision: warn when the export refused it or never checked it on that
        backend, and run the on-device check (cached per device) when it was checked on another CPU architecture."""
        from dkit.edge.device_check import needs_check
        from dkit.edge.select import checked_here

        b, src = self.choice.backend, self.bundle.source
        if not verified(model, b):
            refused = dict(model.info.get("backends") or {}).get(b, {}).get("refused", "no record")
            log.warning("%s: %s was not checked against fp32 on %s when exported (or failed the check there: %s); "
                        "its results may be wrong", src, model.file, b, refused)
        elif needs_check(model):
            try:
                self.check = checked_here(self.bundle, b, model.precision, self.providers, self.threads or 0)
            except RuntimeConfigError as e:  # the check raises nothing else for a bad reference or a failing run
                log.warning("%s: %s was checked on %s, not on this %s, and cannot be checked here (%s); its results "
                            "may be wrong", src, model.file, model.info.get("checked_on", "another CPU"),
                            platform.machine(), e)
                return
            (log.info if self.check.passed else log.warning)(
                "%s: %s on %s, checked on this %s: %s%s", src, model.file, b, platform.machine(),
                self.check.describe(), "" if self.check.passed else "; its results may be wrong")

    def _choose(self, backend: str, precision: str, letterbox: str | None):
        from dkit.edge.select import Choice, choose

        if "auto" not in (backend, precision):
            if backend not in BACKENDS:
                raise RuntimeConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}, auto")
            return Choice(backend, precision, reason="as asked")
        picked = choose(self.bundle, backend=backend, precision=precision, providers=self.providers,
                        threads=self.threads, remeasure=self.remeasure, letterbox=letterbox)
        log.info("%s: backend/precision %s", self.bundle.source, picked.describe())
        return picked

    def _letterbox(self, spec, letterbox: str | None):
        """The manifest's preprocessing, with the letterbox mode asked for (a model of fixed input size, or a
        backend that keeps one shape, stays square)."""
        if spec.resize != "letterbox":
            return spec
        mode = letterbox or spec.letterbox
        if mode == "minimal" and not self.backend.dynamic_shape:
            log.info("%s: square letterbox (%s takes one input shape)", self.bundle.source, self.backend.device)
            mode = "square"
        return spec if mode == spec.letterbox else replace(spec, letterbox=mode)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> Runtime:
        """Open and verify the bundle at `path` (a folder or .tar.gz: dkit.edge.bundle.open_bundle), then build the
        runtime with `kwargs` (the constructor's options); the bundle is closed again if that fails."""
        bundle = open_bundle(path)
        try:
            return cls(bundle, **kwargs)
        except BaseException:
            bundle.close()
            raise

    def close(self) -> None:
        """Release the backend and the bundle (a .tar.gz bundle's extracted folder)."""
        self.backend.close()
        self.bundle.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ stages

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(H, W, 3) uint8 RGB -> the model's (1, 3, H, W) float32 input and the letterbox that maps boxes back."""
        return preprocess(rgb, self.spec)  # (1, 3, H, W)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The backend on a preprocessed (N, 3, H, W) batch: the model's first output, undecoded."""
        return self.backend.run(x)  # (N, 3, H, W) -> the model's first output

    def postprocess(self, raw: np.ndarray, boxes: list[Letterbox], frame_ids: list[int], timestamps: list[float],
                    started: float, clock_started: float | None = None) -> list[Result]:
        """Model output -> one Result per frame, timed from `started` (time.time() before pre-processing: the
        capture clock, for wait_ms) and `clock_started` (time.perf_counter() then, for infer_ms; an NTP step
        cannot bend it; None: from `started`)."""
        results = self._results(raw, boxes, frame_ids, timestamps, [0.0] * len(frame_ids))
        infer_s = time.perf_counter() - clock_started if clock_started is not None else time.time() - started
        return _timed(results, started, infer_s * 1000)

    def _results(self, raw: np.ndarray, boxes: list[Letterbox], frame_ids: list[int], timestamps: list[float],
                 latency: list[float]) -> list[Result]:
        if self.task == "detect":
            dets = decode_yolo(raw, self.conf, self.iou, self.max_det)
            return [Result(f, t, ms, "detect", detections=d.scaled(b))
                    for d, b, f, t, ms in zip(dets, boxes, frame_ids, timestamps, latency, strict=True)]
        if self.task == "classify":
            idx, val = topk(raw, min(self.top_k, raw.shape[-1]))
            return [Result(f, t, ms, "classify", top=[(int(i), float(v)) for i, v in zip(ii, vv, strict=True)])
                    for ii, vv, f, t, ms in zip(idx, val, frame_ids, timestamps, latency, strict=True)]
        cos = cosine_scores(raw, self.prompt_embeddings)  # (N, P)
        scores = self.calibration.to_score(cos)
        return [Result(f, t, ms, "embed", embedding=e, cosine=c, scores=s)
                for e, c, s, f, t, ms in zip(raw, cos, scores, frame_ids, timestamps, latency, strict=True)]

    # ------------------------------------------------------------------------------------------ whole frames

    def __call__(self, rgb: np.ndarray, frame_id: int = 0, timestamp: float = 0.0) -> Result:
        """Score one (H, W, 3) uint8 RGB frame (`timestamp`: its capture time, time.time(), for the latency)."""
        return self.batch([rgb], [frame_id], [timestamp])[0]

    def batch(self, frames: list[np.ndarray], frame_ids: list[int] | None = None,
              timestamps: list[float] | None = None) -> list[Result]:
        """Score several frames (one session.run when the model has a dynamic batch)."""
        started, clock_started = time.time(), time.perf_counter()
        ids = frame_ids if frame_ids is not None else list(range(len(frames)))
        stamps = timestamps if timestamps is not None else [0.0] * len(frames)
        pre = [self.preprocess(rgb) for rgb in frames]
        if self.dynamic_batch and len(pre) > 1 and len({x.shape for x, _ in pre}) == 1:
            raw = self.infer(np.concatenate([x for x, _ in pre]))
        else:
            raw = np.concatenate([self.infer(x) for x, _ in pre])
        return self.postprocess(raw, [b for _, b in pre], ids, stamps, started, clock_started)


def _timed(results: list[Result], started: float, infer: float) -> list[Result]:
    """Set wait_ms (capture -> `started`, never below 0), infer_ms (`infer`) and latency_ms = wait_ms + infer_ms."""
    for r in results:
        r.wait_ms = max(0.0, (started - r.timestamp) * 1000) if r.timestamp else 0.0
        r.infer_ms = infer
        r.latency_ms = r.wait_ms + infer
    return results
