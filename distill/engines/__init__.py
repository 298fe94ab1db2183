"""Labeling engines, keyed by the kit's `label.engine` (`dkit label --engine`): where the teacher runs.

    records, counts = label_with(kit, "ray", teacher=..., cache=..., root=..., paths=..., staging=..., ...)

- `local` (the default): this process; images decoded in worker processes (dkit.distill.images), the teacher
  in the main process (dkit.distill.label._label_all).
- `ray`: a Ray cluster (dkit.distill.engines.ray_data): Ray Data decodes in tasks and runs the teacher in an actor
  pool; the driver (this process) keeps the one teacher cache and builds the records, so both engines give the
  same labels.jsonl. Needs the `scale` extra (`pip install 'distill-kit[scale]'`).

An engine is a function `(kit, teacher, cache, root, paths, staging, progress, **options) -> (records, counts)`:
one LabelRecord per path in input order, and counts {files, cached, inferred, skipped} (+ engine figures).
"""

from __future__ import annotations

import importlib

from dkit.core.errors import MissingExtraError, UsageError

ENGINES = {
    "local": ("dkit.distill.label:_label_all", None),
    "ray": ("dkit.distill.engines.ray_data:label_all", "scale"),
}


def engine(name: str):
    """The engine function for `name` (a MissingExtraError naming the extra when its library is absent)."""
    try:
        target, extra = ENGINES[name]
    except KeyError as e:
        raise UsageError(f"unknown labeling engine {name!r}; known: {', '.join(ENGINES)}") from e
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if extra is None or not (e.name or "").startswith("ray"):
            raise
        raise MissingExtraError(f"the {name} labeling engine", e.name, extra) from e
    return getattr(module, attr)
