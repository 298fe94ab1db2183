"""The on-device runtime: loads a bundle, scores frames, serves the kiosk.

Imports only the standard library, numpy, onnxruntime, opencv and the small server stack, never
torch, open_clip, ultralytics or onnx: `pip install distill-kit` (no extras) is enough to run a
bundle on a Raspberry Pi or Jetson. tests/edge/test_layering.py holds it to that.
"""
