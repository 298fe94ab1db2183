"""The NCNN backend: Tencent's NCNN runs the bundle's NCNN model (`.param` + `.bin`, converted by pnnx at export).

    from dkit.edge.infer.backends.ncnn_backend import load

    backend = load(bundle, bundle.manifest.model("fp32", "ncnn"), threads=4)   # pip install ncnn (the ncnn extra)

NCNN is the fastest CPU runtime on Arm boards (Ultralytics' Raspberry Pi 5 figures: about 2x onnxruntime; on
x86 it is the slowest of the three, which `--backend auto` measures). A detector's NCNN model ends at the head's
raw convolutions (entry `head`: its strides and reg_max) and its decoding runs here in numpy, so it takes any
stride-aligned input (the minimal letterbox); other models take their one input size. One image per extract (a
batch is a loop).
Precision: the fp32 model runs with NCNN's fp16/bf16 storage and arithmetic switched off, so it computes what
the ONNX model computes; the fp16 model (fp16 weights) switches fp16 storage and arithmetic on, which NCNN uses
where the CPU has it (Armv8.2+, as on a Raspberry Pi 5) and emulates by storage alone elsewhere.
"""

from __future__ import annotations

import logging

import numpy as np

from dkit.edge.infer.backends.base import Backend, RuntimeConfigError

log = logging.getLogger(__name__)


def new_net(param_file, bin_file, precision: str, *, threads: int = 0, lightmode: bool = True):
    """An ncnn.Net loaded with the options for `precision`: fp32 with fp16/bf16 off (what the ONNX model
    computes), fp16 with NCNN's fp16 storage and arithmetic, int8 with its int8 kernels; CPU only. `lightmode`
    False keeps every intermediate blob (reading several from one forward pass, as int8 calibration does)."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    half = precision == "fp16"
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
        setattr(opt, flag, half)
    opt.use_bf16_storage = False
    opt.use_int8_inference = precision == "int8"
    opt.lightmode = lightmode
    if threads:
        opt.num_threads = threads
    if net.load_param(str(param_file)) != 0 or net.load_model(str(bin_file)) != 0:
        raise RuntimeConfigError(f"ncnn could not load {param_file} / {bin_file}")
    return net


class NcnnBackend(Backend):
    name = "ncnn"
    dynamic_batch = False

    def __init__(self, param_file, bin_file, precision: str, *, threads: int = 0, head: dict | None = None):
        import ncnn

        # head: a detector exported without its decoding ({"type": "yolov8-raw", "strides": [...], "reg_max": 16}):
        # every level's raw map is extracted and decoded here (dkit.edge.infer.yolo_head), and any input size works
        self.head = dict(head) if head else None
        self.dynamic_shape = self.head is not None

        self.ncnn = ncnn
        self.net = new_net(param_file, bin_file, precision, threads=threads)
        opt, half = self.net.opt, precision == "fp16"
        self.input_name = self.net.input_names()[0]
        self.output_names = sorted(self.net.output_names(), key=lambda n: (len(n), n))  # pnnx: out0, out1, ...
        self.output_name = self.output_names[0]
        self.device = f"ncnn CPU, {opt.num_threads} threads{', fp16' if half else ''}"
        self.file = str(param_file)

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape[2] * x.shape[3] % 4:
            # ncnn.Mat wraps the array with each channel aligned to 16 bytes: H x W must be a multiple of 4 floats
            raise RuntimeConfigError(f"ncnn: input {x.shape[2]}x{x.shape[3]} is not a multiple of 4 pixels")
        outs = []
        batch = np.ascontiguousarray(x, np.float32)  # held for the loop: ncnn.Mat wraps this memory, it does not copy
        for sample in batch:  # (3, H, W)
            with self.net.create_extractor() as ex:
                ex.input(self.input_name, self.ncnn.Mat(sample))
                maps = []
                for name in self.output_names if self.head else [self.output_name]:
                    ret, out = ex.extract(name)
                    if ret != 0:
                        raise RuntimeError(f"ncnn extract of {name} failed ({ret})")
                    maps.append(np.array(out, np.float32))
            if self.head:
                from dkit.edge.infer.yolo_head import decode_head

                outs.append(decode_head(maps, self.head["strides"], int(self.head.get("reg_max", 16))))
            else:
                outs.append(maps[0])
        return np.stack(outs)  # (N, ...) as the ONNX model's first output


def load(bundle, entry, *, providers: list[str] | None = None, threads: int = 0) -> NcnnBackend:
    if entry.format != "ncnn" or not entry.weights:
        raise RuntimeConfigError(f"{bundle.source}: model {entry.file} is not an NCNN model")
    backend = NcnnBackend(bundle.path(entry.file), bundle.path(entry.weights), entry.precision, threads=threads,
                          head=entry.info.get("head"))
    log.info("%s: %s on %s", bundle.source, entry.file, backend.device)
    return backend
