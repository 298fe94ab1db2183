"""Turns a trained student into a bundle: ONNX (fp16/int8, TensorRT where available) plus manifest.json.

May import `edge` (to verify the bundle it wrote with the code that will run it). Needs the
`export` extra: pip install 'distill-kit[export]'.
"""
