"""Pre-processing on the device, exactly as the bundle's manifest says (numpy and OpenCV only).

    spec = bundle.manifest["preprocess"]   # {"resize": "letterbox", "size": [320, 320], "pad_value": 114, ...}
    x, meta = preprocess(rgb, spec)        # (1, 3, H, W) float32, and how to map boxes back to the image

`letterbox` reproduces Ultralytics' LetterBox (center, scale up, no stride rounding) pixel for pixel, so
a detector sees on the device what it saw in training (tests/edge/test_preprocess.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
                 "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the input: scale, then padding (left, top), in input pixels."""

    scale: float
    pad_left: int
    pad_top: int
    orig_shape: tuple[int, int]  # (H, W) of the original image

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy boxes in input pixels -> original image pixels, clipped to the image."""
        out = (boxes - [self.pad_left, self.pad_top, self.pad_left, self.pad_top]) / self.scale
        h, w = self.orig_shape
        return np.clip(out, 0, [w, h, w, h]).astype(np.float32)


def letterbox(rgb: np.ndarray, size: tuple[int, int], pad_value: int = 114,
              interpolation: str = "linear") -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8: scaled to fit, centred, padded with `pad_value`."""
    h, w = rgb.shape[:2]
    new_h, new_w = size
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        rgb = cv2.resize(rgb, (unpad_w, unpad_h), interpolation=INTERPOLATION[interpolation])
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return out, Letterbox(r, left, top, (h, w))


def preprocess(rgb: np.ndarray, spec: dict) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 RGB -> (1, 3, H', W') float32 network input, per the manifest's `preprocess` section."""
    if spec.get("resize") != "letterbox":
        raise ValueError(f"preprocess.resize {spec.get('resize')!r} is not supported here (expected 'letterbox')")
    image, box = letterbox(rgb, tuple(spec["size"]), spec.get("pad_value", 114), spec.get("interpolation", "linear"))
    if spec.get("channels", "RGB") == "BGR":
        image = image[..., ::-1]
    x = image.astype(np.float32) * float(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec.get("mean", (0.0, 0.0, 0.0)), np.float32)) / np.asarray(spec.get("std", (1.0, 1.0, 1.0)),
                                                                                      np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), box  # (1, 3, H, W)
