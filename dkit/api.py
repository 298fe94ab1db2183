"""The Python API: the `dkit` commands as functions, for a script or a notebook (docs/PYTHON_API.md).

    import dkit

    kit = dkit.load_kit("kit.yaml", overrides={"student.epochs": 1})   # validated like `--set`
    dkit.label(kit)                   # dkit label:  runs/<kit name>/labels/
    dkit.train(kit)                   # dkit train:  runs/<kit name>/student/
    dkit.evaluate(kit)                # dkit eval:   runs/<kit name>/eval.json and eval.md
    result = dkit.export_bundle(kit)  # dkit export: runs/<kit name>/bundle/
    with dkit.Runtime.load(result["bundle"]) as rt:                     # the device side (dkit.edge)
        print(rt(dkit.read_image("photo.jpg")).to_json())

Each function is the CLI's stage (dkit.cli.stages) without the printing: it takes the kit and the run folder
(`run_dir`, default `runs/<kit name>/` under the current directory, as `--out`), and returns what the stage
produced. The training side (label, train, evaluate, export) needs the `distill` and `export` extras; a missing
one is a MissingExtraError naming it. Nothing is imported until a function runs, so `import dkit` stays
edge-only. Errors are `dkit.DkitError`s (dkit.core.errors), the ones the CLI prints on one line.

This module is a front end beside dkit.cli: it imports the layers below it only inside its functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def load_kit(path: PathLike, *, data: PathLike | None = None,
             overrides: Mapping[str, Any] | Iterable[str] = ()):
    """The kit file at `path`, validated, as a frozen `dkit.core.kit.Kit`.

    `data` replaces `data.images` (like `--data`). `overrides` are `--set` values: a mapping of key paths to
    values (`{"student.epochs": 1, "export.precisions": ["fp32"]}`) or "KEY.PATH=VALUE" strings; either way
    they are validated like the file (KitError naming the key)."""
    from dkit.core.kit import load_kit as load

    return load(path, data=data, overrides=_as_set_items(overrides))


def _as_set_items(overrides: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """`--set` strings; a mapping's values as JSON, which YAML reads back unchanged ("yes" stays a string)."""
    if isinstance(overrides, str):
        from dkit.core.errors import UsageError

        raise UsageError(f"overrides: a mapping ({{'student.epochs': 1}}) or a list of 'KEY.PATH=VALUE' strings, "
                        f"not one string ({overrides!r})")
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    return list(overrides)


def label(kit, run_dir: PathLike | None = None, *, ground_truth: PathLike | None = None, report: bool = True,
          progress: bool = False, store=None):
    """`dkit label`: the teacher labels the kit's images into RUN_DIR/labels/ (data set, labels.jsonl,
    report.html unless `report=False`). Returns a `LabelResult` (labels_dir, records, counts, seconds, quality)."""
    stage = _stage("dkit.distill.label", "dkit label", "distill")
    return stage.label_images(kit, _run(kit, run_dir), store=_store(store), progress=progress, report=report,
                              ground_truth=Path(ground_truth) if ground_truth is not None else None)


def train(kit, run_dir: PathLike | None = None, *, restart: bool = False, progress: bool = False,
          store=None) -> dict:
    """`dkit train`: train the kit's student on RUN_DIR/labels/ into RUN_DIR/student/ (resumes an interrupted
    run unless `restart`). Returns the summary: weights, epochs, started_from, resumed, already_trained, seconds."""
    plugin = _stage("dkit.distill.students", "dkit train", "distill").student_plugin(kit)
    return plugin.train(kit, _run(kit, run_dir), store=_store(store), restart=restart, progress=progress)


def evaluate(kit, run_dir: PathLike | None = None, *, ground_truth: PathLike | None = None, store=None) -> dict:
    """`dkit eval`: the student against the teacher that labelled the held-out images, written to
    RUN_DIR/eval.json and eval.md. Returns the eval.json contract (dkit.distill.evaluate) as a dict."""
    write_eval = _stage("dkit.distill.evaluate", "dkit eval", "distill").write_eval
    from dkit.distill.students import student_plugin

    run = _run(kit, run_dir)
    result = student_plugin(kit).evaluate(kit, run, store=_store(store),
                                          ground_truth=Path(ground_truth) if ground_truth is not None else None)
    write_eval(run, result)
    return result


def export_bundle(kit, run_dir: PathLike | None = None, *, store=None) -> dict:
    """`dkit export`: the trained student as a verified bundle in RUN_DIR/bundle/ (and bundle.tar.gz unless
    `export.archive: false`). Returns the report: bundle, archive, task, parity, variants, calibration."""
    stage = _stage("dkit.export.bundle", "dkit export", "export")
    return stage.export_bundle(kit, _run(kit, run_dir), store=_store(store))


def read_image(path: PathLike):
    """The image file at `path` as (H, W, 3) uint8 RGB, what `Runtime` and `Judge.score` take (OpenCV, as the
    device decodes, transparency composited over white as in training: dkit.edge.images.decode.decode_image; no Pillow
    needed). Raises UsageError when the file cannot be read or decoded."""
    import numpy as np

    from dkit.core.errors import UsageError
    from dkit.edge.images.decode import decode_image

    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode(fromfile) also reads non-ASCII paths
    except OSError as e:
        raise UsageError(f"cannot read image {path}: {e.strerror or e}") from e
    bgr = decode_image(data)
    if bgr is None:
        raise UsageError(f"not a readable image: {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _stage(module: str, what: str, extra: str):
    """The stage module, or MissingExtraError naming the extra (as the CLI imports it)."""
    from dkit.cli.common import import_stage

    return import_stage(module, what=what, extra=extra)


def _run(kit, run_dir: PathLike | None) -> Path:
    return kit.run_dir(run_dir)


def _store(store):
    """The model store to use: the one given, else $DKIT_HOME's (as the CLI does)."""
    from dkit.core.store import ModelStore

    return store if store is not None else ModelStore()
