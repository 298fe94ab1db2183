"""Distill Kit: distill a big zero-shot vision teacher into a small model that runs offline on the edge.

One namespace, layered bottom to top (docs/ARCHITECTURE.md; enforced by import-linter, .importlinter):

    dkit.edge     the on-device runtime (repo folder edge/): numpy, onnxruntime, opencv; never torch
    dkit.core     kit YAML contract, run folder, model store, errors, atomic files, version (dkit/core/)
    dkit.distill  teachers, labeling, students, evaluation, metrics (repo folder distill/)
    dkit.export   trained student -> verified bundle (repo folder export/)
    dkit.cli      the `dkit` command (dkit/cli/); dkit.api, the same stages as Python functions

The Python API (docs/PYTHON_API.md) is a few names of this package, each imported on first use:

    import dkit

    kit = dkit.load_kit("kit.yaml", overrides={"student.epochs": 1})
    dkit.label(kit); dkit.train(kit); dkit.evaluate(kit)       # dkit.api: the training side (distill extra)
    bundle = dkit.export_bundle(kit)["bundle"]                 # `dkit export` (export extra)
    rt = dkit.Runtime.load(bundle)                             # dkit.edge.infer.runtime: the device side
    result = rt(dkit.read_image("photo.jpg"))
    dkit.Judge(rt).score(dkit.read_image("drawing.png"), "a cat")   # judge bundles (dkit.edge.infer.judge)

Importing `dkit` imports nothing else, so `dkit.edge` works on a base install, and `dkit.Runtime` and
`dkit.Judge` need nothing but it.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it; imported when the name is first read (PEP 562)
_LAZY = {
    "__version__": "dkit.core.version",
    "DkitError": "dkit.core.errors",
    "load_kit": "dkit.api",
    "label": "dkit.api",
    "train": "dkit.api",
    "evaluate": "dkit.api",
    "export_bundle": "dkit.api",
    "read_image": "dkit.api",
    "Runtime": "dkit.edge.infer.runtime",
    "Judge": "dkit.edge.infer.judge",
}

__all__ = [name for name in _LAZY if name != "__version__"]


def __getattr__(name: str):
    """`dkit.NAME` for the API's names: imported from its module on first use, then kept here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
