"""Pre-processing on the device, exactly as the bundle's manifest says (numpy and OpenCV only).

    from dkit.edge.infer.preprocess import preprocess

    spec = bundle.manifest.preprocess       # a dkit.edge.bundle.manifest.Preprocess (or its dict form, as
    # checkpoints keep it)
    x, meta = preprocess(rgb, spec)        # (1, 3, H, W) float32, and how to map boxes back to the image

Two resize modes, each reproducing the training side's transform:
- `letterbox` (detectors): Ultralytics' LetterBox geometry (center, scale up; `preprocess.letterbox` square:
  always the full size, or minimal: padded to a multiple of `stride` only, as `YOLO(onnx).predict` does for a
  dynamic model), resized with
  OpenCV's bit-exact bilinear (`INTER_LINEAR_EXACT`) for `linear`: the same pixels on x86 and aarch64.
  OpenCV's `INTER_LINEAR`, which Ultralytics uses, is SIMD fixed point and differs by platform (its aarch64
  wheel's HAL gave other values on 22 of 24 photos, up to 2 levels of 255, which moved detector boxes by up to
  2.8 px: `make test-arm64`); the exact one differs from it by at most a level or two on x86.
- `shortest` + `crop: center` (classifiers, embedding students): the shorter side to `size`, the longer
  side `int(size * long / short)`, then the centred `size` x `size` crop at `round((H - size) / 2)`:
  torchvision's Resize(int) + CenterCrop geometry. Interpolation `pil-bilinear` is Pillow's antialiased
  bilinear resampling re-implemented in numpy (Pillow's coefficients and 22-bit fixed point, horizontal
  pass then vertical), so an Ultralytics classifier sees on the device exactly what torchvision gives it;
  `area`, `linear` (bit-exact), `cubic`, `nearest` are OpenCV's (`area` differs between x86 and aarch64 by one
  level on about 0.01% of the values of some photos; judge cosines stay within 1e-7).
tests/edge/test_preprocess.py compares each with the library it replaces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from dkit.edge.bundle.manifest import Preprocess, as_preprocess

INTERPOLATION = {"linear": cv2.INTER_LINEAR_EXACT, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
                 "nearest": cv2.INTER_NEAREST}
PIL_BILINEAR = "pil-bilinear"
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images (libImaging/Resample.c)


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the input: resized to `resized` (H, W), then padded (left, top) in input pixels
    (a negative pad is a crop)."""

    scale: float  # the resize ratio asked for; each axis's actual gain is resized / orig_shape (rounded sides)
    pad_left: int
    pad_top: int
    orig_shape: tuple[int, int]  # (H, W) of the original image
    resized: tuple[int, int] | None = None  # (H, W) after the resize, before padding; None: orig_shape * scale

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy boxes in input pixels -> original image pixels, clipped to the image (per-axis gains, as
        Ultralytics' scale_boxes)."""
        h, w = self.orig_shape
        rh, rw = self.resized if self.resized is not None else (h * self.scale, w * self.scale)
        gain = np.array([rw / w, rh / h, rw / w, rh / h])
        out = (boxes - [self.pad_left, self.pad_top, self.pad_left, self.pad_top]) / gain
        return np.clip(out, 0, [w, h, w, h]).astype(np.float32)


def letterbox(rgb: np.ndarray, size: tuple[int, int], pad_value: int = 114,
              interpolation: str = "linear", stride: int = 0) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8: scaled to fit, centred, padded with `pad_value`.

    With `stride` (the minimal letterbox, Ultralytics' `LetterBox(auto=True)`), each side is padded only up to
    the next multiple of `stride`: a 16:9 frame at 320 becomes 320 x 192 instead of 320 x 320."""
    h, w = rgb.shape[:2]
    new_h, new_w = size
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if stride:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (unpad_w, unpad_h):
        rgb = resize(rgb, (unpad_h, unpad_w), interpolation)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(rgb, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return out, Letterbox(r, left, top, (h, w), (unpad_h, unpad_w))


def shortest_side(rgb: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with min(h, w) == size, the longer side int(size * long / short)."""
    h, w = rgb.shape[:2]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return rgb if (new_h, new_w) == (h, w) else resize(rgb, (new_h, new_w), interpolation)


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centred size x size window (torchvision's CenterCrop offsets; the image is at least that big)."""
    h, w = rgb.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return rgb[top : top + size, left : left + size]


def resize(rgb: np.ndarray, shape: tuple[int, int], interpolation: str) -> np.ndarray:
    """(H, W, C) uint8 -> (shape[0], shape[1], C) uint8 with the named interpolation."""
    if interpolation == PIL_BILINEAR:
        return pil_bilinear(rgb, shape)
    if interpolation not in INTERPOLATION:
        raise ValueError(f"preprocess.interpolation {interpolation!r} is not one of "
                         f"{', '.join([PIL_BILINEAR, *INTERPOLATION])}")
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=INTERPOLATION[interpolation])


def pil_bilinear(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pillow's `Image.resize(..., BILINEAR)` of a uint8 image, bit for bit (as of Pillow 13).

    Two passes; Pillow runs the vertical one first when the height shrinks by more than twice what the
    width does, and since each pass rounds to uint8, the order matters to the last bit."""
    out = np.ascontiguousarray(rgb)
    h, w = out.shape[:2]
    passes = [(1, w, shape[1]), (0, h, shape[0])]
    if h - shape[0] > 0 and h - shape[0] > (w - shape[1]) * 2:
        passes.reverse()
    for axis, size_in, size_out in passes:
        if size_in != size_out:
            out = _convolve(out, *_pil_coefficients(size_in, size_out), axis=axis)
    return out


@lru_cache(maxsize=64)
def _pil_coefficients(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index (O,), fixed-point weights (O, K)) of Pillow's antialiased triangle filter."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    first = np.zeros(size_out, np.int64)
    weights = np.zeros((size_out, ksize), np.int64)
    for xx in range(size_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) cast truncates toward zero
        xmax = min(int(center + support + 0.5), size_in) - xmin
        x = np.arange(xmax, dtype=np.float64)
        k = np.maximum(1.0 - np.abs((x + xmin - center + 0.5) / filterscale), 0.0)
        total = k.sum()
        if total != 0.0:
            k = k / total
        fixed = k * (1 << _PRECISION_BITS)
        weights[xx, :xmax] = np.where(fixed < 0, fixed - 0.5, fixed + 0.5).astype(np.int64)  # trunc toward zero
        first[xx] = xmin
    return first, weights


def _convolve(img: np.ndarray, first: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """One resampling pass along `axis` (0 rows, 1 columns) of an (H, W, C) uint8 image, tap by tap."""
    rows = np.ascontiguousarray(img if axis == 0 else img.transpose(1, 0, 2))  # the resampled axis first
    acc = np.full((len(first), *rows.shape[1:]), 1 << (_PRECISION_BITS - 1), np.int32)  # 255 * 2**22 fits
    term = np.empty_like(acc)
    for k in range(taps.shape[1]):
        weight = taps[:, k].astype(np.int32)  # (O,)
        if weight.any():
            index = np.minimum(first + k, len(rows) - 1)  # a clamped tap always has weight 0
            np.multiply(rows[index], weight[:, None, None], out=term)
            acc += term
    out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return out if axis == 0 else np.ascontiguousarray(out.transpose(1, 0, 2))


def preprocess(rgb: np.ndarray, spec: Preprocess | Mapping) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 RGB -> (1, 3, H', W') float32 network input, per the manifest's `preprocess` section.

    The second value maps boxes back to the image (identity-free for a letterbox; for `shortest` it
    records the resize scale and the crop offset as negative padding)."""
    spec = as_preprocess(spec)
    if spec.resize == "letterbox":
        stride = spec.stride if spec.letterbox == "minimal" else 0
        image, box = letterbox(rgb, spec.size, spec.pad_value, spec.interpolation, stride)
    else:  # shortest (the only other mode Preprocess accepts), centre crop
        size = spec.size[0]
        h, w = rgb.shape[:2]
        resized = shortest_side(rgb, size, spec.interpolation)
        image = center_crop(resized, size)
        rh, rw = resized.shape[:2]
        box = Letterbox(rh / h, -int(round((rw - size) / 2.0)), -int(round((rh - size) / 2.0)), (h, w), (rh, rw))
    return normalize(image, spec)[None], box  # (1, 3, H, W)


def normalize(image: np.ndarray, spec: Preprocess | Mapping) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: channel order, x * scale, then (x - mean) / std per channel.

    Written straight into the planar output (no float HWC copy), and the mean/std steps skipped when they are
    0 and 1: the same float32 operations per element, about five times faster than the straightforward way."""
    spec = as_preprocess(spec)
    if spec.channels == "BGR":
        image = image[..., ::-1]
    chw = image.transpose(2, 0, 1)  # a view
    out = np.empty(chw.shape, np.float32)
    scale = spec.scale
    divisor = round(1 / scale) if scale > 0 else 0
    if divisor and abs(1 / scale - divisor) < 1e-6:
        np.divide(chw, np.float32(divisor), out=out)  # x / 255, as torchvision and Ultralytics do, to the bit
    else:
        np.multiply(chw, np.float32(scale), out=out)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    if mean.any():
        out -= mean[:, None, None]
    if (std != 1).any():
        out /= std[:, None, None]
    return out  # (3, H, W)
