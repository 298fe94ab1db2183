"""Reduced-precision variants of an exported detector, each measured against its fp32 original.

    from dkit.export.variants import make_variant

    built = make_variant("int8", fp32_onnx, bundle_dir, kit, held_out, calibration, spec)   # ModelEntry | Refused

- `fp16`: onnxruntime's float16 converter (inputs and outputs stay float32, so the device code is the
  same); for GPUs and NPUs, CPUs mostly run it slower.
- `int8`: onnxruntime's static quantization (QDQ, per-channel weights) of the convolutions (the first one, and a
  YOLO detection head's linear output convolutions, stay float: `float_convs`), calibrated on the kit's own
  training images through the device's preprocessing; `export.int8_format` s8s8 (default: onnxruntime's first
  choice, what its Arm dot-product kernels and TensorRT run) or u8s8 (faster on x86 AVX2 CPUs without VNNI,
  where s8s8 is slower than fp32). `dkit run --precision auto` never picks a variant slower than fp32 there.

Each variant carries its agreement with fp32 on held-out images (`vs_fp32.agreement`, and which metric it
is), by task: a detector's mAP50 against the fp32 model's detections (Ultralytics' matching,
dkit.distill.metrics); a classifier's top-1 agreement; an embedding model's mean cosine to the fp32 embedding.
And the median ms/image of both on this machine, in the same run. A variant whose agreement is below
`export.accuracy_guard` is refused, not shipped.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np

from dkit.core.errors import require
from dkit.edge.bundle.manifest import ModelEntry, Preprocess, model_role
from dkit.edge.infer.preprocess import preprocess
from dkit.export.exporters import Built, Refused

log = logging.getLogger(__name__)


def make_variant(precision: str, fp32: Path, bundle_dir: Path, kit, held_out: list[np.ndarray],
                 calibration: list[np.ndarray], spec: Preprocess, task: str = "detect") -> Built:
    """Write student-<precision>.onnx into bundle_dir; return its model entry (`models.student_<precision>`), or a
    Refused (the file removed) when its agreement with fp32 is below export.accuracy_guard."""
    onnx = require("onnx", what=f"the {precision} variant", extra="export")
    out = bundle_dir / f"student-{precision}.onnx"
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    elif precision == "int8":
        _quantize_int8(fp32, out, calibration, spec, kit.export.int8_format, task)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    agreement = compare(fp32, out, held_out, spec, kit, task)
    info = {"vs_fp32": agreement, "checked_on": platform.machine(),
            **({"int8_format": kit.export.int8_format} if precision == "int8" else {})}
    entry = ModelEntry(model_role(precision), out.name, precision, info=info)
    if agreement["agreement"] < kit.export.accuracy_guard:
        out.unlink()
        refused = Refused(entry, f"{agreement['metric']} against fp32 {agreement['agreement']:.3f} is below "
                                 f"export.accuracy_guard {kit.export.accuracy_guard:g}: not shipped")
        log.warning("%s variant refused: %s", precision, refused.reason)
        return refused
    checks = backend_checks(fp32, out, precision, held_out, spec, kit, task, agreement)
    return ModelEntry(entry.role, entry.file, precision, info=info | {"backends": checks})


def backend_checks(fp32: Path, variant: Path, precision: str, images: list[np.ndarray], spec: Preprocess, kit,
                   task: str, ort_agreement: dict) -> dict:
    """The variant through every other ONNX-reading backend installed here (OpenVINO), against onnxruntime's fp32
    outputs: {backend: {"agreement": ..., "refused": why?}}. A backend below the guard is refused for this model:
    `dkit run --backend auto` never runs it there (measured: OpenVINO 2026.4 on this project's QDQ int8 detector
    gives boxes hundreds of pixels off, mAP50 0.0, where onnxruntime keeps 0.963). A backend missing here is
    absent from the result, and auto then leaves it out for this model too (dkit.edge.infer.select)."""
    from dkit.edge.infer.backends import BACKENDS, open_onnx_file
    from dkit.edge.infer.backends.base import short_reason

    checks = {"onnxruntime": {"agreement": round(ort_agreement["agreement"], 4)}}
    others = [b for b, p in BACKENDS.items() if p.format == "onnx" and b != "onnxruntime" and p.importable()]
    if not others:
        return checks
    inputs = [preprocess(rgb, spec)[0] for rgb in images]
    ref_be = open_onnx_file("onnxruntime", fp32, "fp32")  # the reference is fp32 on the CPU, as compare()'s
    ref = [ref_be.run(x) for x in inputs]
    for name in others:
        try:
            be = open_onnx_file(name, variant, precision)
            got = output_agreement(ref, [be.run(x) for x in inputs], kit, task)
        except Exception as e:  # noqa: BLE001 - an optional backend that cannot run the model is refused there
            # one line (a native library's text can be dozens: OpenVINO's C++ exception chain); all of it at debug
            # level and in the manifest's report (`error`)
            checks[name] = {"agreement": 0.0, "refused": f"{name}: does not run it ({short_reason(e)})",
                            "error": str(e)[:4000]}
            log.warning("%s %s variant refused on %s", precision, variant.name, checks[name]["refused"])
            log.debug("%s on %s, the full error:\n%s", variant.name, name, e)
            continue
        doc = {"agreement": round(got["agreement"], 4)}
        if got["agreement"] < kit.export.accuracy_guard:
            doc["refused"] = (f"{name}: {got['metric']} against fp32 {got['agreement']:.3f} is below "
                              f"export.accuracy_guard {kit.export.accuracy_guard:g}")
            log.warning("%s %s variant refused on %s", precision, variant.name, doc["refused"])
        checks[name] = doc
    return checks


def _quantize_int8(fp32: Path, out: Path, images: list[np.ndarray], spec: Preprocess, fmt: str = "s8s8",
                   task: str = "detect") -> None:
    """Static QDQ int8 of the convolutions of `fp32` into `out`, calibrated on `images`; left in float: the first
    convolution (raw pixels) of every model, and for a detector (task `detect`: a YOLO detection head) the head's
    linear convolutions (`float_convs`)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: preprocess(rgb, spec)[0]} for rgb in images])

        def get_next(self):
            return next(self.items, None)

    prepared = out.with_name(f".{out.stem}-prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # Measured on the coco128 student (mAP50 against fp32): everything quantized 0.26 (the head concatenates
        # box coordinates, 0..imgsz, with class scores, 0..1, under one scale); convolutions only 0.94; the
        # linear convolutions (logits, box distributions) left in float, 0.94; and also the first convolution
        # (3 channels of raw pixels: little compute, much error) in float, 0.956, and faster (17.4 vs 24.1 ms).
        # MinMax, Entropy and Percentile calibration measured 0.94, 0.94 and 0.92 there: MinMax is kept.
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if fmt == "s8s8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=float_convs(prepared, task))
    finally:
        prepared.unlink(missing_ok=True)


def float_convs(model_path: Path, task: str) -> list[str]:
    """The Conv nodes int8 leaves in float: the input convolution of every model; and, for a detector (`detect`,
    a YOLO detection head, where the rule was measured), the linear convolutions, which are the head's box and class
    outputs and its DFL. Elsewhere a convolution without an activation after it is an ordinary layer (a ResNet
    block's last convolution and its shortcut feed an Add, a MobileNet's projection is linear by design): keeping
    those in float left 12 of a ResNet-18 encoder's 20 convolutions unquantized, so there they are quantized."""
    head = set(linear_convs(model_path)) if task == "detect" else set()
    return sorted(head | set(input_convs(model_path)))


def linear_convs(model_path: Path) -> list[str]:
    """Names of the Conv nodes not followed by an activation (Sigmoid: SiLU is exported as x * sigmoid(x)); in a
    YOLO detector these are its detection head's output convolutions (`float_convs` applies it there only)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    return [n.name for n in graph.node if n.op_type == "Conv"
            and not {"Sigmoid", "Relu", "HardSwish", "HardSigmoid"} & set(consumers.get(n.output[0], []))]


METRICS = {"detect": "mAP50", "classify": "top-1 agreement", "embed": "mean cosine"}


def input_convs(model_path: Path) -> list[str]:
    """Names of the Conv nodes that read a graph input directly (the first layer: raw pixels)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def compare(fp32: Path, variant: Path, images: list[np.ndarray], spec: Preprocess, kit,
            task: str = "detect") -> dict:
    """The variant's agreement with fp32 (METRICS[task]) and the median ms/image of each, on the same images."""
    import onnxruntime as ort

    inputs = [preprocess(rgb, spec)[0] for rgb in images]  # (1, 3, H, W) each
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # an idle session's threads would
    # otherwise spin on the cores the other one is timed on
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, variant)]
    name = sessions[0].get_inputs()[0].name
    outs: list[list[np.ndarray]] = [[], []]
    times: list[list[float]] = [[], []]
    for session in sessions:
        session.run(None, {name: inputs[0]})  # warm-up
    for x in inputs:  # interleaved, image by image: both see the same machine load
        for k, session in enumerate(sessions):
            start = time.perf_counter()
            outs[k].append(session.run(None, {name: x})[0])
            times[k].append((time.perf_counter() - start) * 1000)
    (ref, got), (ms_ref, ms_got) = outs, (float(np.median(t)) for t in times)
    return output_agreement(ref, got, kit, task) | {
        "ms_per_image_fp32": round(ms_ref, 2), "ms_per_image": round(ms_got, 2),
        "speedup_vs_fp32": round(ms_ref / ms_got, 3) if ms_got else None}


def output_agreement(ref: list[np.ndarray], got: list[np.ndarray], kit, task: str) -> dict:
    """How far outputs `got` agree with `ref` (the same inputs, in order), by METRICS[task]."""
    result = {"images": len(ref), "metric": METRICS[task]}
    if task == "detect":
        result |= _detection_agreement(ref, got, kit)
        result["agreement"] = result["map50_vs_fp32"]
    elif task == "classify":
        top_ref, top_got = (np.concatenate([o.argmax(-1) for o in outs]) for outs in (ref, got))
        result["agreement"] = float(np.mean(top_ref == top_got))
    else:
        a, b = np.concatenate(ref), np.concatenate(got)  # (N, D)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        result |= {"agreement": float(cos.mean()), "min_cosine": float(cos.min())}
    result["max_abs_diff"] = float(max(np.abs(r - g).max() for r, g in zip(ref, got, strict=True)))
    return result


def _detection_agreement(ref: list[np.ndarray], got: list[np.ndarray], kit) -> dict:
    """mAP50 (and mAP50-95) of the variant's detections against the fp32 detections a device would keep."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    from dkit.distill.metrics import detection_map

    def nms(raw: np.ndarray) -> np.ndarray:  # (N, 6) xyxy conf cls
        return non_max_suppression(torch.from_numpy(raw), conf_thres=0.001, iou_thres=kit.edge.iou,
                                   max_det=kit.edge.max_det)[0].numpy()

    pairs = []
    for g, r in zip(map(nms, got), map(nms, ref), strict=True):
        keep = r[r[:, 4] >= kit.edge.conf]  # the reference: what fp32 keeps at the device's threshold
        pairs.append((g[:, :4], g[:, 4], g[:, 5], keep[:, :4], keep[:, 5]))  # the variant ranked by confidence
    score = detection_map(pairs, kit.ontology.names)
    return {"map50_vs_fp32": score["map50"], "map50_95_vs_fp32": score["map50_95"]}
