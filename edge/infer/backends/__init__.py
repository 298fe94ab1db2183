"""Inference backends of the edge runtime: a small interface and a keyed registry (like the teachers).

    from dkit.edge.infer.backends import BACKENDS, load_backend
    backend = load_backend("openvino", bundle, entry, threads=0)   # entry: a dkit.edge.bundle.manifest.ModelEntry
    raw = backend.run(x)                                            # (N, 3, H, W) float32 -> first output

| key | library (extra) | reads | notes |
|---|---|---|---|
| onnxruntime | onnxruntime (base install) | the bundle's ONNX files | providers TensorRT > CUDA > ... > CPU |
| openvino | openvino (`distill-kit[openvino]`) | the same ONNX files, read directly | Intel CPUs/iGPUs and Arm CPUs |
| ncnn | ncnn (`distill-kit[ncnn]`) | the bundle's NCNN model (`student_ncnn`: .param + .bin) | fastest on Arm boards |

Each plugin's library is imported only when that backend is asked for; `available()` says which import here.
`dkit.edge.infer.select` picks among them (`--backend auto`). A backend that cannot read a bundle (no NCNN model in
it) says so with a RuntimeConfigError naming what to export.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dkit.edge.infer.backends.base import Backend, RuntimeConfigError

__all__ = ["BACKENDS", "Backend", "RuntimeConfigError", "BackendPlugin", "available", "load_backend", "open_onnx_file"]


@dataclass(frozen=True)
class BackendPlugin:
    """A registry entry: where the backend lives, what it reads and which extra installs its library."""

    name: str
    module: str  # dkit.edge.infer.backends.<module>: `load(bundle, entry, **options) -> Backend` (ONNX readers also
    #             `open_file(model_file, precision, threads=0)`, a model outside a bundle)
    library: str  # the import name of the library it needs
    extra: str  # the pip extra that installs it ("" for the base install)
    format: str  # the model-entry format it reads: onnx | ncnn

    def importable(self) -> bool:
        try:
            importlib.import_module(self.library)
        except ImportError:
            return False
        except Exception:  # noqa: BLE001 - a broken install (missing .so) is "not available", not a crash
            return False
        return True


BACKENDS: dict[str, BackendPlugin] = {
    "onnxruntime": BackendPlugin("onnxruntime", "ort_backend", "onnxruntime", "", "onnx"),
    "openvino": BackendPlugin("openvino", "openvino_backend", "openvino", "openvino", "onnx"),
    "ncnn": BackendPlugin("ncnn", "ncnn_backend", "ncnn", "ncnn", "ncnn"),
}


def plugin(name: str) -> BackendPlugin:
    if name not in BACKENDS:
        raise RuntimeConfigError(f"--backend {name!r} is not one of {', '.join(BACKENDS)} (or auto)")
    return BACKENDS[name]


def available() -> list[str]:
    """The backends whose library imports here, in registry order."""
    return [name for name, p in BACKENDS.items() if p.importable()]


def load_backend(name: str, bundle, entry, **options) -> Backend:
    """Backend `name` running model entry `entry` of `bundle` (options: threads, providers)."""
    p = plugin(name)
    if not p.importable():
        from dkit.edge.infer.extras import install_hint

        hint = install_hint(p.extra) if p.extra else "pip install onnxruntime"
        raise RuntimeConfigError(f"backend {name}: the {p.library} package is not installed here ({hint})")
    module = importlib.import_module(f"dkit.edge.infer.backends.{p.module}")
    return module.load(bundle, entry, **options)


def open_onnx_file(name: str, model_file, precision: str, *, threads: int = 0) -> Backend:
    """Backend `name` on one ONNX file outside a bundle (dkit.export checks each variant on every ONNX reader)."""
    p = plugin(name)
    if p.format != "onnx":
        raise RuntimeConfigError(f"backend {name} reads {p.format} models, not an ONNX file")
    return importlib.import_module(f"dkit.edge.infer.backends.{p.module}").open_file(
        model_file, precision, threads=threads)
