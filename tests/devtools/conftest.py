"""The device tools' tests run on the edge tests' bundles (tests/edge/conftest.py): the same session fixtures."""

from tests.edge.conftest import detect_bundle, kiosk_server, yolo_onnx  # noqa: F401 - fixtures, found by name
