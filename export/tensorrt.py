"""TensorRT engines for the bundle, built when the exporting machine has the `tensorrt` package and a GPU.

    from dkit.export.tensorrt import build_engines

    engines = build_engines(kit, bundle_dir, model, spec, variants)   # {"engine_fp16": ModelEntry, ...}

An engine is specific to the GPU model and TensorRT version that built it, so the manifest records both and
the edge uses an engine only on a matching device; everywhere else the ONNX files (and the build command in
the bundle README) are what count. fp16 engines are built from the fp32 ONNX with the FP16 flag; int8 ones
from the int8 QDQ ONNX (explicit quantization, the scales calibrated on the kit's images) with the INT8 flag.
The optimisation profile covers batch 1 to 4 at the student's input size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dkit.core.errors import DkitError
from dkit.edge.bundle.manifest import ModelEntry, Preprocess
from dkit.export.exporters import Built

log = logging.getLogger(__name__)

MAX_BATCH = 4
WORKSPACE = 1 << 30  # bytes of GPU scratch memory the builder may use


def build_engines(kit, bundle_dir: Path, model: ModelEntry, spec: Preprocess,
                  variants: dict[str, Built]) -> dict[str, ModelEntry]:
    """TensorRT engines of the fp32 student `model` (and of the int8 variant when shipped), by role `engine_<p>`."""
    import tensorrt as trt
    import torch

    sources = {"fp16": bundle_dir / model.file}
    if isinstance(variants.get("int8"), ModelEntry):
        sources["int8"] = bundle_dir / variants["int8"].file
    wanted = [p for p in dict.fromkeys(kit.export.precisions) if p in sources] or ["fp16"]
    name = model.inputs[0]["name"]
    h, w = spec.size
    engines = {}
    for precision in wanted:
        out = bundle_dir / f"student-{precision}.engine"
        _build(trt, sources[precision], out, precision, name, (h, w))
        device = torch.cuda.get_device_name(0)
        engines[f"engine_{precision}"] = ModelEntry(
            f"engine_{precision}", out.name, precision, "tensorrt",
            info={"source": sources[precision].name, "tensorrt_version": trt.__version__, "device": device,
                  "batch": [1, MAX_BATCH], "note": "runs only on this GPU model with this TensorRT version"})
        log.info("TensorRT %s engine: %s (%s, TensorRT %s)", precision, out.name, device, trt.__version__)
    return engines


def _build(trt, onnx_path: Path, out: Path, precision: str, name: str, hw: tuple[int, int]) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DkitError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, 3, *hw), (1, 3, *hw), (MAX_BATCH, 3, *hw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DkitError(f"TensorRT could not build a {precision} engine from {onnx_path.name} (see its log above)")
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        part.write_bytes(bytes(serialized))
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
