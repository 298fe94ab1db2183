"""Untrusted image uploads -> RGB arrays, refusing what must not be decoded (numpy + OpenCV only).

    rgb = decode_upload(data, max_pixels=MAX_PIXELS)      # raises UploadError(status, message)

The image size is read from the file header first (PNG, JPEG, GIF, BMP, WebP) and a picture larger than
`max_pixels`, or thinner than 1:`max_aspect`, is refused before anything is decompressed: a 50 kB PNG can
claim 100,000 x 100,000 pixels (a decompression bomb), and a 178-byte PNG of 1 x 50,000 pixels decodes small
but becomes 128 x 6,400,000 once the model's shortest-side resize scales its 1-pixel side up. Anything that
is not one of those formats, or that OpenCV cannot decode completely (truncated, corrupt), is refused with a
message saying which.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

MAX_PIXELS = 6000 * 6000
MAX_ASPECT = 8.0  # longer side / shorter side: a 1 x 50,000 strip would be upscaled to 128 x 6.4 million pixels
FORMATS = "PNG, JPEG, GIF, BMP or WebP"


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header; UploadError(400) when it is not a known image."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "png", w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return "gif", w, h
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return "bmp", abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ("webp", *_webp_size(data))
        if data[:3] == b"\xff\xd8\xff":
            return ("jpeg", *_jpeg_size(data))
    except (struct.error, IndexError) as e:
        raise UploadError(400, f"the image header is truncated ({e})") from e
    raise UploadError(400, f"not an image: expected {FORMATS}")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(data[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise UploadError(400, "unsupported WebP variant")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):  # SOFn
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    raise UploadError(400, "the JPEG has no frame header (truncated?)")


def decode_upload(data: bytes, *, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded image, or UploadError(400) saying why not."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    kind, w, h = image_size(data)
    if w <= 0 or h <= 0:
        raise UploadError(400, f"the {kind.upper()} header says {w}x{h} pixels")
    if w * h > max_pixels:
        raise UploadError(400, f"the {kind.upper()} is {w}x{h} pixels ({w * h:,}); at most {max_pixels:,} are "
                               "accepted (a decompression bomb?)")
    if max(w, h) > max_aspect * min(w, h):
        raise UploadError(400, f"the {kind.upper()} is {w}x{h} pixels; at most {max_aspect:g}:1 (long side to "
                               "short side) is accepted")
    if kind == "jpeg" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise UploadError(400, "the JPEG is truncated (no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation (phones)
    upright = {(h, w), (w, h)} if kind in ("jpeg", "webp") else {(h, w)}  # EXIF rotations 5-8 swap the sides
    if bgr is None or bgr.shape[:2] not in upright:
        raise UploadError(400, f"the {kind.upper()} is corrupt or truncated: it cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
