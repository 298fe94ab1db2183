"""The OpenVINO backend: OpenVINO reads the bundle's ONNX file itself (no conversion step, no second file).

    from dkit.edge.infer.backends.openvino_backend import load

    backend = load(bundle, entry, threads=2)     # pip install openvino (the openvino extra)

Compiled for OpenVINO's CPU plugin with the LATENCY hint (one frame at a time, as a camera delivers them). The
fp32 model keeps fp32 arithmetic (`INFERENCE_PRECISION_HINT f32`): OpenVINO would otherwise run f16 on Arm
CPUs and bf16 on CPUs with AMX, which is a different model from the one the bundle verified; the fp16 and int8
variants run as exported (QDQ int8 becomes OpenVINO's own int8 kernels). Dynamic batch and spatial axes stay
dynamic, so the minimal letterbox works.
"""

from __future__ import annotations

import logging

import numpy as np

from dkit.edge.infer.backends.base import Backend, RuntimeConfigError

log = logging.getLogger(__name__)
DEVICE = "CPU"


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model_file, precision: str, *, threads: int = 0):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_file))
        config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = core.compile_model(model, DEVICE, config)
        self.request = self.compiled.create_infer_request()
        shape = model.input(0).get_partial_shape()
        self.dynamic_batch = shape[0].is_dynamic
        self.dynamic_shape = any(shape[i].is_dynamic for i in range(2, len(shape)))
        self.device = f"openvino {DEVICE}"
        self.file = str(model_file)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return np.asarray(self.request.get_output_tensor(0).data, np.float32).copy()


def load(bundle, entry, *, providers: list[str] | None = None, threads: int = 0) -> OpenVinoBackend:
    if entry.format != "onnx":
        raise RuntimeConfigError(f"{bundle.source}: model {entry.file} is {entry.format}; OpenVINO reads the ONNX "
                                 "models")
    backend = OpenVinoBackend(bundle.path(entry.file), entry.precision, threads=threads)
    log.info("%s: %s on %s", bundle.source, entry.file, backend.device)
    return backend


def open_file(model_file, precision: str, *, threads: int = 0) -> OpenVinoBackend:
    """OpenVINO on one ONNX file outside a bundle (the export checks its variants with it)."""
    return OpenVinoBackend(model_file, precision, threads=threads)
