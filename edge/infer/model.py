"""One of a bundle's models on one backend, with the manifest's pre- and post-processing: frames in, Results out.

    from dkit.edge.infer.model import Model

    with Model(bundle, "onnxruntime", "int8") as m:       # exactly that model; no choosing, no device check
        result = m(rgb)                                   # (H, W, 3) uint8 RGB -> Result

The runtime (dkit.edge.infer.runtime.Runtime) is a Model whose backend and precision may be chosen for the device
(auto) and whose forced reduced-precision model is checked here first; the device check (dkit.edge.infer.device_check)
runs a Model on the check images, so checking never builds a Runtime (which could check again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from dkit.edge.bundle import Bundle
from dkit.edge.bundle.manifest import LETTERBOX_MODES, ModelEntry
from dkit.edge.infer.backends import BACKENDS, Backend, load_backend
from dkit.edge.infer.backends.base import RuntimeConfigError
from dkit.edge.infer.postprocess import cosine_scores, decode_yolo, topk
from dkit.edge.infer.preprocess import Letterbox, preprocess
from dkit.edge.infer.result import Result, timed

log = logging.getLogger(__name__)

WARMUP_RUNS = 2


def checked_letterbox(bundle: Bundle, letterbox: str | None) -> str | None:
    """`letterbox` (square, minimal or None) checked: RuntimeConfigError for another word; None, with a warning, for a
    bundle that does not letterbox (a classifier or judge resizes by its shortest side)."""
    if letterbox is not None and letterbox not in LETTERBOX_MODES:
        raise RuntimeConfigError(f"--letterbox {letterbox!r} is not one of {', '.join(LETTERBOX_MODES)}")
    if letterbox is not None and bundle.manifest.preprocess.resize != "letterbox":
        log.warning("%s: --letterbox applies to detectors; this %s bundle resizes by its shortest side",
                    bundle.source, bundle.manifest.task)
        return None
    return letterbox


def model_entry(bundle: Bundle, precision: str, backend: str) -> ModelEntry:
    """The bundle's `precision` model in the format `backend` reads; RuntimeConfigError naming what the bundle has
    when there is none."""
    m = bundle.manifest
    fmt = BACKENDS[backend].format
    model = m.model(precision, fmt)
    if model is None:
        has = "; ".join(f"{f} {', '.join(m.precisions(f))}" for f in m.formats())
        hint = ""
        if fmt == "ncnn":
            hint = (" (export it with export.backends: [onnx, ncnn] for NCNN)" if "ncnn" not in m.formats()
                    else " (NCNN int8 is exported for detectors with int8 in export.precisions)")
        raise RuntimeConfigError(f"{bundle.source}: no {precision} {fmt} model in this bundle (it has: {has}){hint}")
    return model


class Model:
    """A bundle's `precision` model on `backend` (onnxruntime, openvino or ncnn), ready to score frames: call it on an
    (H, W, 3) uint8 RGB frame for a Result, or `batch` several; close it (or use `with`) to release the backend. The
    bundle stays the caller's. Options as dkit.edge.infer.runtime.Runtime's (no auto, no device check).

        model = Model(bundle, "openvino", "int8", warmup=0)
        print(model(rgb).top)
    """

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", precision: str = "fp32", *,
                 providers: list[str] | None = None, threads: int | None = None, letterbox: str | None = None,
                 conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                 top_k: int | None = None, warmup: int = WARMUP_RUNS):
        if backend not in BACKENDS:
            raise RuntimeConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
        letterbox = checked_letterbox(bundle, letterbox)
        self._bind(bundle, threads, providers)
        self.precision = precision
        self._open(backend, model_entry(bundle, precision, backend), letterbox, conf, iou, max_det, top_k, warmup)

    def _bind(self, bundle: Bundle, threads: int | None, providers: list[str] | None) -> None:
        """The bundle, its manifest and the backend's threads and providers (by default the manifest's runtime
        hints)."""
        self.bundle = bundle
        m = self.manifest = bundle.manifest  # a dkit.edge.bundle.manifest.Manifest: typed, validated when opened
        self.task = m.task
        self.classes: list[str] = list(m.classes)
        self._class_names = tuple(self.classes)  # shared by every Result (Result.classes): a reference, not a copy
        self.threads = m.runtime.threads if threads is None else threads
        self.providers = providers or list(m.runtime.providers) or None

    def _open(self, backend: str, model: ModelEntry, letterbox: str | None, conf: float | None, iou: float | None,
              max_det: int | None, top_k: int | None, warmup: int) -> None:
        """Load `model` on `backend`, set the thresholds (the manifest's unless given) and warm it up."""
        m = self.manifest
        self.model_file = self.bundle.path(model.file)
        self.conf = m.thresholds.conf if conf is None else conf
        self.iou = m.thresholds.iou if iou is None else iou
        self.max_det = m.thresholds.max_det if max_det is None else max_det
        self.top_k = m.thresholds.top_k if top_k is None else top_k
        self.backend: Backend = load_backend(backend, self.bundle, model, providers=self.providers,
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
        self._prompt_names = None if self.prompts is None else tuple(self.prompts)  # Result.prompts, shared
        for _ in range(warmup):
            self.infer(preprocess(np.zeros((64, 64, 3), np.uint8) + 114, self.spec)[0])

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

    def close(self) -> None:
        """Release the backend (the bundle is the caller's)."""
        self.backend.close()

    def __enter__(self):
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
        return timed(results, started, infer_s * 1000)

    def _results(self, raw: np.ndarray, boxes: list[Letterbox], frame_ids: list[int], timestamps: list[float],
                 latency: list[float]) -> list[Result]:
        names = {"classes": self._class_names, "prompts": self._prompt_names}  # the same tuples in every Result
        if self.task == "detect":
            dets = decode_yolo(raw, self.conf, self.iou, self.max_det)
            return [Result(f, t, ms, "detect", detections=d.scaled(b), **names)
                    for d, b, f, t, ms in zip(dets, boxes, frame_ids, timestamps, latency, strict=True)]
        if self.task == "classify":
            idx, val = topk(raw, min(self.top_k, raw.shape[-1]))
            return [Result(f, t, ms, "classify", top=[(int(i), float(v)) for i, v in zip(ii, vv, strict=True)],
                           **names)
                    for ii, vv, f, t, ms in zip(idx, val, frame_ids, timestamps, latency, strict=True)]
        cos = cosine_scores(raw, self.prompt_embeddings)  # (N, P)
        scores = self.calibration.to_score(cos)
        return [Result(f, t, ms, "embed", embedding=e, cosine=c, scores=s, **names)
                for e, c, s, f, t, ms in zip(raw, cos, scores, frame_ids, timestamps, latency, strict=True)]

    # ------------------------------------------------------------------------------------------ whole frames

    def __call__(self, rgb: np.ndarray, frame_id: int = 0, timestamp: float = 0.0) -> Result:
        """Score one (H, W, 3) uint8 RGB frame (`timestamp`: its capture time, time.time(), for the latency)."""
        return self.batch([rgb], [frame_id], [timestamp])[0]

    def batch(self, frames: list[np.ndarray], frame_ids: list[int] | None = None,
              timestamps: list[float] | None = None) -> list[Result]:
        """Score several frames (one backend run when the model has a dynamic batch)."""
        started, clock_started = time.time(), time.perf_counter()
        ids = frame_ids if frame_ids is not None else list(range(len(frames)))
        stamps = timestamps if timestamps is not None else [0.0] * len(frames)
        pre = [self.preprocess(rgb) for rgb in frames]
        if self.dynamic_batch and len(pre) > 1 and len({x.shape for x, _ in pre}) == 1:
            raw = self.infer(np.concatenate([x for x, _ in pre]))
        else:
            raw = np.concatenate([self.infer(x) for x, _ in pre])
        return self.postprocess(raw, [b for _, b in pre], ids, stamps, started, clock_started)
