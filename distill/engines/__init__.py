"""Labeling engines, keyed by the kit's `label.engine` (`dkit label --engine`): where the teacher runs.

    from dkit.distill.engines import engine

    records, counts = engine("ray")(kit, teacher, cache, root, paths, staging, progress, store=store)

- `local` (the default): this process; images decoded in worker processes (dkit.distill.images), the teacher
  in the main process (dkit.distill.label._label_all).
- `ray`: a Ray cluster (dkit.distill.engines.ray_data): Ray Data decodes in tasks and runs the teacher in an actor
  pool; the driver (this process) keeps the one teacher cache and builds the records, so both engines give the
  same labels.jsonl. Needs the `scale` extra (`pip install '.[scale]'` in a checkout).

An engine is a function `(kit, teacher, cache, root, paths, staging, progress, **options) -> (records, counts)`:
one LabelRecord per path in input order, and counts {files, cached, inferred, skipped} (+ engine figures).
"""

from __future__ import annotations

import importlib

from dkit.core.errors import UsageError, require

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
    module = (importlib.import_module(module_name) if extra is None
              else require(module_name, what=f"the {name} labeling engine", extra=extra))
    return getattr(module, attr)
