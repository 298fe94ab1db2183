"""NCNN int8 from the bundle's fp32 NCNN model, in the format NCNN's own ncnn2table + ncnn2int8 tools write.

    from dkit.export.ncnn_int8 import quantize_ncnn

    quantize_ncnn(param, weights, out_param, out_weights, calibration_inputs)   # (1, 3, H, W) float32 each

Neither tool ships with the PyPI wheels (ncnn, pnnx), the ncnn sdist or Debian, so this is that step in Python,
on the export side only (the device runs the result with NCNN's own int8 kernels; Armv8.2 dot products on a
Raspberry Pi 5). For each Convolution layer:
- weights to int8 per output channel (scale 127 / max |w|), stored behind NCNN's int8 tag (0x000D4B38), then the
  bias, the per-channel weight scales and one bottom-blob scale (`8=2`, int8_scale_term, in the .param);
- the bottom-blob scale from the largest |activation| of that layer's input over the calibration images, read
  blob by blob through NCNN itself (min-max calibration: ncnn2table's simplest method);
- left in float, as the ONNX int8 variant does (dkit.export.variants): the first convolution (raw pixels) and every
  convolution not followed by an activation (the head's box and class logits).
A graph with other weighted layers (InnerProduct, depthwise, ...) is refused with a message: only what is checked
here is written. The result goes through the same accuracy guard as every variant (dkit.export.ncnn).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dkit.core.errors import UsageError

INT8_TAG = 0x000D4B38
WEIGHTED = {"InnerProduct", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "BatchNorm", "Scale",
            "Embed", "MultiHeadAttention", "LayerNorm", "GroupNorm", "InstanceNorm", "PReLU", "MemoryData",
            "Convolution1D", "Convolution3D", "Gemm", "RNN", "LSTM", "GRU"}
ACTIVATIONS = {"Swish", "ReLU", "Sigmoid", "HardSwish", "Mish", "GELU", "SiLU", "Clip", "ELU"}


@dataclass
class Conv:
    line: int  # index in the .param lines
    name: str
    bottom: str
    top: str
    num_output: int
    weights: np.ndarray  # (weight_data_size,) float32
    bias: np.ndarray | None


def read_convs(param: Path, weights: Path) -> tuple[list[str], list[Conv], dict[str, set[str]]]:
    """(.param lines, the Convolution layers with their fp32 weights, blob -> types of the layers reading it)."""
    lines = param.read_text().splitlines()
    raw = weights.read_bytes()
    convs, consumers, off = [], {}, 0
    for i, line in enumerate(lines[2:], 2):
        f = line.split()
        kind, name, n_in, n_out = f[0], f[1], int(f[2]), int(f[3])
        bottoms, tops = f[4:4 + n_in], f[4 + n_in:4 + n_in + n_out]
        params = dict(kv.split("=", 1) for kv in f[4 + n_in + n_out:])
        for b in bottoms:
            consumers.setdefault(b, set()).add(kind)
        if kind in WEIGHTED:
            raise UsageError(f"{param}: NCNN int8 here knows Convolution-only graphs; layer {name} is {kind}")
        if kind != "Convolution":
            continue
        n, size, has_bias = int(params["0"]), int(params["6"]), params.get("5", "0") == "1"
        if params.get("8", "0") != "0" or struct.unpack_from("<I", raw, off)[0] != 0:
            raise UsageError(f"{weights}: layer {name} is not stored as fp32 (quantize the fp32 model)")
        w = np.frombuffer(raw, np.float32, size, off + 4).copy()
        off += 4 + 4 * size
        b = np.frombuffer(raw, np.float32, n, off).copy() if has_bias else None
        off += 4 * n if has_bias else 0
        convs.append(Conv(i, name, bottoms[0], tops[0], n, w, b))
    if off != len(raw):
        raise UsageError(f"{weights}: {len(raw) - off} bytes left after the Convolution weights; not a graph this "
                         "quantizer knows")
    return lines, convs, consumers


def activation_ranges(param: Path, weights: Path, blobs: list[str], inputs: list[np.ndarray]) -> dict[str, float]:
    """Largest |value| of each blob over the calibration inputs, computed by NCNN in fp32. `blobs` in graph order:
    NCNN's extractor computes forward to each one asked for (asking for an earlier one after a later one crashes
    the ncnn 1.0.20261020 wheel)."""
    import ncnn

    from dkit.edge.infer.backends.base import RuntimeConfigError
    from dkit.edge.infer.backends.ncnn_backend import new_net

    try:
        net = new_net(param, weights, "fp32", lightmode=False)  # several blobs are read from one forward pass
    except RuntimeConfigError as e:
        raise UsageError(str(e)) from e
    name = net.input_names()[0]
    amax = dict.fromkeys(blobs, 0.0)
    for x in inputs:
        sample = np.ascontiguousarray(x[0], np.float32)  # kept alive: ncnn.Mat wraps this memory, it does not copy
        with net.create_extractor() as ex:
            ex.input(name, ncnn.Mat(sample))
            for blob in blobs:
                amax[blob] = max(amax[blob], float(np.abs(np.array(ex.extract(blob)[1])).max()))
    return amax


def quantize_ncnn(param: Path, weights: Path, out_param: Path, out_weights: Path, inputs: list[np.ndarray]) -> dict:
    """Write the int8 model; returns how many convolutions were quantized and which were kept in float."""
    lines, convs, consumers = read_convs(param, weights)
    graph_input = lines[2].split()[-1] if lines[2].startswith("Input") else "in0"
    keep = {c.name for c in convs if c.bottom == graph_input or not consumers.get(c.top, set()) & ACTIVATIONS}
    blobs = list(dict.fromkeys(c.bottom for c in convs if c.name not in keep))  # graph order, each once
    amax = activation_ranges(param, weights, blobs, inputs)
    out_lines, out_bin = list(lines), bytearray()
    for c in convs:
        bias = c.bias.tobytes() if c.bias is not None else b""
        if c.name in keep:
            out_bin += struct.pack("<I", 0) + c.weights.tobytes() + bias
            continue
        w = c.weights.reshape(c.num_output, -1)
        scales = (127.0 / np.maximum(np.abs(w).max(axis=1), 1e-12)).astype(np.float32)  # (num_output,)
        q = np.clip(np.round(w * scales[:, None]), -127, 127).astype(np.int8).tobytes()
        q += b"\0" * (-len(q) % 4)  # NCNN reads int8 blobs 4-byte aligned
        bottom = np.float32(127.0 / max(amax[c.bottom], 1e-12))
        out_bin += struct.pack("<I", INT8_TAG) + q + bias + scales.tobytes() + np.array([bottom], np.float32).tobytes()
        out_lines[c.line] += " 8=2"
    out_param.write_text("\n".join(out_lines) + "\n")
    out_weights.write_bytes(bytes(out_bin))
    return {"quantized": len(convs) - len(keep), "float": sorted(keep), "calibration": "min-max",
            "calibration_images": len(inputs)}
