"""Teachers, labeling, students, evaluation and metrics: the training side of the kit (`dkit.distill`).

Layer: above `dkit.core` and `dkit.edge`, below `dkit.export` (it never imports export or the CLI; .importlinter).
Heavy dependencies (torch, open_clip, ultralytics) are imported inside the plugin that needs them, so importing
this package is cheap; using a teacher or student needs the `distill` extra: pip install '.[distill]' in a checkout.
"""
