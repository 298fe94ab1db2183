"""Teachers, labeling, students and evaluation: the training side of the kit.

May import `export` and `edge`. Heavy dependencies (torch, open_clip, ultralytics) are imported
inside the plugin that needs them, so importing this package is cheap; using a teacher or student
needs the `distill` extra: pip install 'distill-kit[distill]'.
"""
