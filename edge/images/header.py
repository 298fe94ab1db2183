"""Image headers, read and bounded before anything is decoded (numpy only; no OpenCV, no decode).

    from dkit.edge.images.header import image_size, jpeg_scans

    kind, w, h = image_size(data)         # ("png" | "jpeg" | "gif" | "bmp" | "webp", width, height), or
    # UploadError(400)
    scans = jpeg_scans(data)              # a JPEG's markers walked: its EOI, scan count, progressive, final bits

The kiosk's upload decoder (dkit.edge.images.decode), the device check's images (dkit.edge.infer.device_check) and
the attack bench read sizes through it, so a picture is refused for its claimed size before a byte is decompressed.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

MAX_SCANS = 100  # scans of one JPEG (KioskConfig.max_scans): each is another pass over the image's blocks
MAX_MULTISCAN = 4096 * 3072  # pixels of a JPEG of several scans (a 12 MP phone photo): held whole as coefficients,
# up to 6 bytes a pixel (76 MB)
MAX_SCAN_WORK = MAX_MULTISCAN * 12  # pixels x scans of such a JPEG: a progressive photo has 6-10 scans
FORMATS = "PNG, JPEG, GIF, BMP or WebP"
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x00, 0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length (RSTn, SOI, TEM)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # end of entropy-coded data: FF00 is a stuffed byte


class UploadError(Exception):
    """An image refused, with the HTTP status the kiosk answers (400: not an image, too large, cut) and a message
    for the person who sent it."""

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


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(marker, offset of its FF, payload) for each JPEG marker after SOI, up to and including EOI; a scan's
    entropy-coded data (with its RSTn markers) is skipped. struct.error when a segment's length is cut."""
    i = 2
    while (i := data.find(b"\xff", i)) != -1 and i + 1 < len(data):
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE or marker == _EOI:
            yield marker, i, b""
            if marker == _EOI:
                return
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        yield marker, i, data[i + 4 : i + 2 + length]
        i += 2 + length
        if marker == _SOS:
            found = _NEXT_MARKER.search(data, i)
            if found is None:
                return
            i = found.start()


def _jpeg_size(data: bytes) -> tuple[int, int]:
    for marker, _, payload in _jpeg_segments(data):
        if marker in _SOF:
            h, w = struct.unpack(">HH", payload[1:5])
            return w, h
    raise UploadError(400, "the JPEG has no frame header (truncated?)")


class JpegScans(NamedTuple):
    """What the marker walk of a JPEG found (`jpeg_scans`)."""

    eoi: int | None  # offset of the EOI that ends the scans, None when there is none
    scans: int  # SOS markers before it
    progressive: bool  # a progressive frame (SOF2, 6, 10, 14)
    final: dict[int, np.ndarray]  # component id -> (64,) bool "coefficient k has its final bits" (first scans only)


def jpeg_scans(data: bytes, max_scans: int | None = None) -> JpegScans:
    """The JPEG's frame header and every scan header, walked without decoding anything; beyond `max_scans` scans
    they are only counted. ValueError / IndexError / struct.error when a header is cut."""
    final, progressive, scans = {}, False, 0
    for marker, at, payload in _jpeg_segments(data):
        if marker in _SOF:
            progressive = marker in _PROGRESSIVE
            final = {c: np.zeros(64, bool) for c in payload[6 : 6 + 3 * payload[5] : 3]}
        elif marker == _SOS:
            scans += 1
            if max_scans is not None and scans > max_scans:
                continue
            n = payload[0]
            ss, se, a = payload[1 + 2 * n : 4 + 2 * n]
            for c in (c for c in payload[1 : 1 + 2 * n : 2] if c in final):
                if not progressive:  # a sequential (or lossless) scan carries its components whole
                    final[c][:] = True
                elif (a & 0x0F) == 0:  # Al == 0: coefficients Ss..Se are final after this scan
                    final[c][ss : se + 1] = True
        elif marker == _EOI:
            return JpegScans(at, scans, progressive, final)
    return JpegScans(None, scans, progressive, final)


def jpeg_eoi(data: bytes, w: int, h: int, *, max_scans: int = MAX_SCANS, max_multiscan: int = MAX_MULTISCAN,
              max_scan_work: int = MAX_SCAN_WORK) -> int:
    """Offset of the EOI that ends the JPEG's scans; UploadError(400) when the decode would be unbounded work (too
    many scans; a JPEG of several scans too large or with too many scans for its size), when there is no EOI, or
    when the scans stop before every component's coefficients are complete (a progressive JPEG cut between two
    scans)."""
    try:
        found = jpeg_scans(data, max_scans)
    except (struct.error, ValueError, IndexError) as e:
        raise UploadError(400, f"the JPEG is truncated or corrupt: a marker segment is cut ({e})") from e
    _check_scans(found, w, h, max_scans, max_multiscan, max_scan_work)
    if found.eoi is None:
        raise UploadError(400, "the JPEG is truncated (no end-of-image marker)")
    unfinished = [c for c, done in found.final.items() if not done.all()]
    if unfinished:
        raise UploadError(400, "the JPEG is truncated: its scans end before the image is complete (components "
                               f"{unfinished} unfinished), so only part of the image was decoded")
    return found.eoi


def _check_scans(found: JpegScans, w: int, h: int, max_scans: int, max_multiscan: int, max_scan_work: int) -> None:
    """UploadError(400) naming the file's figures when its scans would make the decoder work without end."""
    kind = "progressive JPEG" if found.progressive else "JPEG"
    if found.scans > max_scans:
        raise UploadError(400, f"the {kind} has {found.scans:,} scans; at most {max_scans:,} are accepted (every "
                               "scan is another pass of the decoder over the image)")
    if not (found.progressive or found.scans > 1):
        return
    if w * h > max_multiscan:
        raise UploadError(400, f"the {kind} of {found.scans} scans is {w}x{h} pixels ({w * h:,}); at most "
                               f"{max_multiscan:,} are accepted for a JPEG of several scans (its decoder holds every "
                               "coefficient in memory)")
    if w * h * found.scans > max_scan_work:
        raise UploadError(400, f"the {kind} is {w}x{h} pixels in {found.scans} scans ({w * h * found.scans:,} "
                               f"pixel-scans to decode); at most {max_scan_work:,} are accepted")
