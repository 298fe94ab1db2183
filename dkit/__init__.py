"""Distill Kit: distill a big zero-shot vision teacher into a small model that runs offline on the edge.

One namespace, layered bottom to top (docs/ARCHITECTURE.md; enforced by import-linter, .importlinter):

    dkit.edge     the on-device runtime (repo folder edge/): numpy, onnxruntime, opencv; never torch
    dkit.core     kit YAML contract, run folder, model store, errors, atomic files, version (dkit/core/)
    dkit.distill  teachers, labeling, students, evaluation, metrics (repo folder distill/)
    dkit.export   trained student -> verified bundle (repo folder export/)
    dkit.cli      the `dkit` command (dkit/cli/)

Importing `dkit` imports nothing else, so `dkit.edge` works on a base install.
"""
