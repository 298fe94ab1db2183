"""A bundle, loaded and ready to score frames: a Model (dkit.edge.infer.model: an inference backend plus the manifest's
pre- and post-processing) whose backend and precision may be chosen for this device.

    from dkit.edge.infer.runtime import Runtime

    with Runtime.load("runs/coco128/bundle") as rt:      # verified first (dkit.edge.bundle); or a bundle.tar.gz
        result = rt(rgb)                                 # (H, W, 3) uint8 RGB -> Result
        results = rt.batch([rgb1, rgb2])                 # several cameras in one run when the model allows
        rt.provider                                      # e.g. "CUDAExecutionProvider": what really runs it
    Runtime.load(path, backend="auto", precision="auto") # the fastest of the bundle's models here
    (dkit.edge.infer.select)

Backends (dkit.edge.infer.backends): `onnxruntime` (the default here; `dkit run` defaults to auto), `openvino`, `ncnn`.
onnxruntime's execution providers: the first available of TensorRT > CUDA > OpenVINO > CoreML > CPU, unless
`providers` names them (full names or short ones: tensorrt, cuda, openvino, coreml, cpu); TensorRT engines are
cached under $DKIT_HOME/trt-cache. `threads` sets the backend's threads (0: its default). `precision` picks the
bundle's fp32, fp16 or int8 model. `letterbox` (detectors) overrides the manifest's mode: square or minimal
(stride-aligned padding; used only where the backend takes any input size). The backend is warmed up when
built, so the first frame is not slow. A reduced-precision model forced with backend and precision that the
export checked on another CPU architecture is checked here first (dkit.edge.infer.device_check; `verify=False` skips
it); a failing check is a warning, and auto leaves such a model out.

Per task (manifest `task`):
- detect: letterbox, YOLOv8 decode + class-wise NMS in numpy (dkit.edge.infer.postprocess), boxes in image pixels.
- classify: shortest-side resize + centre crop, probabilities, top-k.
- embed: the L2-normalised embedding and its cosine to every prompt the bundle ships (prompts.npy), each also
  as a 0-100 score through the bundle's calibration.
Thresholds come from the manifest and may be overridden (`conf`, `iou`, `max_det`, `top_k`).
"""

from __future__ import annotations

import logging
import os
import platform

from dkit.edge.bundle import Bundle, open_bundle
from dkit.edge.infer.backends import BACKENDS
from dkit.edge.infer.backends.base import RuntimeConfigError
from dkit.edge.infer.backends.ort_backend import PROVIDER_ORDER, SHORT_NAMES, choose_providers
from dkit.edge.infer.device_check import needs_check
from dkit.edge.infer.model import WARMUP_RUNS, Model, checked_letterbox, model_entry
from dkit.edge.infer.result import Result
from dkit.edge.infer.select import Choice, checked_here, choose, verified

log = logging.getLogger(__name__)

__all__ = ["PROVIDER_ORDER", "SHORT_NAMES", "WARMUP_RUNS", "Result", "Runtime", "RuntimeConfigError",
           "choose_providers"]


class Runtime(Model):
    """A verified bundle ready to score frames: its backend (onnxruntime, OpenVINO or NCNN), the manifest's pre- and
    post-processing and thresholds. Call it on an (H, W, 3) uint8 RGB frame for a Result, or `batch` several; close
    it (or use `with`) to release the model and the bundle. `Runtime.load(path)` opens and verifies a bundle folder or
    .tar.gz; the module docstring lists every option. `backend` and `precision` may be "auto" (the fastest of the
    bundle's models that passes its checks here: dkit.edge.infer.select); `choice` says what was picked and why.

        with Runtime.load("runs/coco128/bundle", backend="auto") as rt:
            print(rt(rgb).detections)
    """

    def __init__(self, bundle: Bundle, *, backend: str = "onnxruntime", providers: list[str] | None = None,
                 threads: int | None = None, precision: str = "fp32", letterbox: str | None = None,
                 conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                 top_k: int | None = None, warmup: int = WARMUP_RUNS, remeasure: bool = False, verify: bool = True):
        letterbox = checked_letterbox(bundle, letterbox)
        self.remeasure = remeasure
        self._bind(bundle, threads, providers)
        if providers and backend in ("auto", "onnxruntime"):  # onnxruntime's providers: auto keeps onnxruntime
            import onnxruntime as ort

            choose_providers(providers, ort.get_available_providers())  # an unavailable one: the error, now
            backend = "onnxruntime"
        self.choice = self._choose(backend, precision, letterbox)
        self.precision = self.choice.precision
        model = model_entry(bundle, self.precision, self.choice.backend)
        self.check = None  # dkit.edge.infer.device_check.Outcome of a forced model checked on this device
        if self.choice.reason == "as asked" and verify:
            self._warn_unchecked(model)
        self._open(self.choice.backend, model, letterbox, conf, iou, max_det, top_k, warmup)

    def _warn_unchecked(self, model) -> None:
        """A model forced with backend and precision: warn when the export refused it or never checked it on that
        backend, and run the on-device check (cached per device) when it was checked on another CPU architecture."""
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
        if "auto" not in (backend, precision):
            if backend not in BACKENDS:
                raise RuntimeConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}, auto")
            return Choice(backend, precision, reason="as asked")
        picked = choose(self.bundle, backend=backend, precision=precision, providers=self.providers,
                        threads=self.threads, remeasure=self.remeasure, letterbox=letterbox)
        log.info("%s: backend/precision %s", self.bundle.source, picked.describe())
        return picked

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

