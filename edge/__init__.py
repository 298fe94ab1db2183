"""The on-device runtime (`dkit.edge`): loads a bundle, scores frames, serves the kiosk.

The lowest layer. Imports only the standard library, numpy, onnxruntime, opencv and the small server stack, never
torch, open_clip, ultralytics or onnx, and nothing else of dkit: `pip install distill-kit` (no extras) is enough to
run a bundle on a Raspberry Pi or Jetson. .importlinter (run by `make test`) holds it to that.
"""
