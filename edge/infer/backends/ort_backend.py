"""The onnxruntime backend: the bundle's ONNX model on the best execution provider available.

    from dkit.edge.infer.backends.ort_backend import load

    backend = load(bundle, entry, providers=["cuda"], threads=2)

Execution providers: the first available of TensorRT > CUDA > OpenVINO > CoreML > CPU, unless `providers` names
them (full names or short ones: tensorrt, cuda, openvino, coreml, cpu); the choice is logged. TensorRT engines
are cached under $DKIT_HOME/trt-cache/<model sha256 prefix> (built on first use, specific to this device).
`threads` sets onnxruntime's intra-op threads (0: its default).
"""

from __future__ import annotations

import logging

import numpy as np

from dkit.edge.bundle.home import dkit_home
from dkit.edge.infer.backends.base import Backend, RuntimeConfigError

log = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                  "CoreMLExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
               "cuda": "CUDAExecutionProvider", "openvino": "OpenVINOExecutionProvider",
               "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """The providers to ask onnxruntime for, best first (CPU always last as the fallback)."""
    if requested:
        names = [SHORT_NAMES.get(p.lower(), p) for p in requested]
        missing = [p for p in names if p not in available]
        if missing:
            raise RuntimeConfigError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime (available: "
                f"{', '.join(available)}); install onnxruntime-gpu / onnxruntime-openvino for those, or leave "
                "--providers out to pick automatically")
        return names + (["CPUExecutionProvider"] if "CPUExecutionProvider" not in names else [])
    return [p for p in PROVIDER_ORDER if p in available] or ["CPUExecutionProvider"]


def session_options(threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return options


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_file, sha256: str, *, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self.options = session_options(threads)
        self.wanted = choose_providers(providers or None, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_file), sess_options=self.options,
                                            providers=[_with_options(p, sha256) for p in self.wanted])
        self.providers = self.session.get_providers()
        self.device = self.providers[0]
        self.file = str(model_file)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.dynamic_batch = not isinstance(inp.shape[0], int)
        # TensorRT builds an engine per input shape: keep it on one (square) shape unless told otherwise
        self.dynamic_shape = (not all(isinstance(d, int) for d in inp.shape[2:])
                              and self.device != "TensorrtExecutionProvider")

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def load(bundle, entry, *, providers: list[str] | None = None, threads: int = 0) -> OrtBackend:
    if entry.format != "onnx":
        raise RuntimeConfigError(f"{bundle.source}: model {entry.file} is {entry.format}, not ONNX")
    backend = OrtBackend(bundle.path(entry.file), bundle.manifest.files.get(entry.file, ""), providers=providers,
                         threads=threads)
    log.info("%s: %s on %s (asked for %s)", bundle.source, entry.file, backend.device, ", ".join(backend.wanted))
    return backend


def open_file(model_file, precision: str, *, threads: int = 0) -> OrtBackend:
    """onnxruntime's CPU provider on one ONNX file outside a bundle (the export's fp32 reference)."""
    return OrtBackend(model_file, "", providers=["cpu"], threads=threads)


def _with_options(provider: str, sha256: str) -> str | tuple[str, dict]:
    if provider != "TensorrtExecutionProvider":
        return provider
    cache = dkit_home() / "trt-cache" / (sha256[:16] or "unhashed")
    cache.mkdir(parents=True, exist_ok=True)
    return provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": True}
