"""Turns a trained student into a bundle: ONNX (fp16/int8, TensorRT where available) plus manifest.json
(`dkit.export`).

Layer: above `dkit.distill` (it loads the trained student and the teacher through their plugins), `dkit.core` and
`dkit.edge` (it verifies what it wrote with the code that will run it on the device). Needs the `export` extra:
pip install '.[export]' in a checkout (distill-kit is not on PyPI).
"""
