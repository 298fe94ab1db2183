"""Untrusted image uploads -> RGB arrays, refusing what must not be decoded (numpy + OpenCV only).

    from dkit.edge.upload import decode_upload

    rgb = decode_upload(data, max_pixels=MAX_PIXELS)      # raises UploadError(status, message)

The image size is read from the file header first (PNG, JPEG, GIF, BMP, WebP) and a picture larger than
`max_pixels`, or thinner than 1:`max_aspect`, is refused before anything is decompressed: a 50 kB PNG can
claim 100,000 x 100,000 pixels (a decompression bomb), and a 178-byte PNG of 1 x 50,000 pixels decodes small
but becomes 128 x 6,400,000 once the model's shortest-side resize scales its 1-pixel side up. Anything that
is not one of those formats, or that OpenCV cannot decode completely (truncated, corrupt), is refused with a
message saying which.

Transparency: `decode_image` (every non-JPEG upload, and the device's folder and image sources and
`dkit.read_image`) composites a file with alpha over white (dkit.edge.alpha.over_white, the function training
uses), so a black stroke on a transparent PNG is black on white, as in training, not black on black.

Truncation: OpenCV refuses a cut PNG, GIF, BMP or WebP outright (imdecode returns None), but libjpeg fills the
missing part of a cut JPEG with grey and only prints a warning once an end-of-image marker (FFD9) follows, and
tools that "repair" cut files append exactly that. So a JPEG is checked for a complete decode, not for a trailing
marker: its markers are walked (the first EOI after the scans; bytes after it, such as a phone's motion-photo
trailer, are ignored as the decoder ignores them), every component must reach its final coefficient bits in
some scan (a progressive file cut between two scans), and it is decoded twice, as given and with filler
entropy bytes (and restart markers) inserted before that EOI. A complete JPEG's decoder stops after its last
block and skips the filler, so both decodes are identical; a cut one decodes the filler into its missing blocks,
so they differ, and the upload is refused. The cost is a second decode of JPEGs only (about 2.1x one decode,
measured from 640x640 to 4000x3000, baseline and progressive), and libjpeg prints one "Corrupt JPEG data: N
extraneous bytes before marker 0xd0" line on stderr for that probe of a complete JPEG: the filler's, not the
upload's (it cannot be silenced through OpenCV).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator

import cv2
import numpy as np

from dkit.edge.alpha import exif_orientation, may_have_alpha, orient, over_white

MAX_PIXELS = 6000 * 6000  # a JPEG's, decoded at a reduced scale (REDUCE_TO): a 36-megapixel photo costs ~1/16 of that
MAX_LOSSLESS = 4096 * 2048  # PNG, GIF, BMP, WebP: decoded at full size (a 4K screenshot fits)
REDUCE_TO = 512  # a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), its short side >= this
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
MAX_ASPECT = 8.0  # longer side / shorter side: a 1 x 50,000 strip would be upscaled to 128 x 6.4 million pixels
FORMATS = "PNG, JPEG, GIF, BMP or WebP"

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x00, 0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length (RSTn, SOI, TEM)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # end of entropy-coded data: FF00 is a stuffed byte


def _junk(n: int, seed: int) -> bytes:
    """n pseudo-random bytes without 0xFF (so without a marker), the same on every run."""
    stream = b"".join(hashlib.sha256(b"%d:%d" % (seed, i)).digest() for i in range(-(-n // 32)))
    return stream[:n].replace(b"\xff", b"\xfe")


# Filler for the missing entropy data of a cut JPEG: junk that decodes into the blocks after the cut, then 256
# restart markers in sequence, each followed by different junk, so that a file with restart intervals also gets
# junk decoded into the intervals after the cut, whichever RSTn it expects next (a repeated pattern can decode
# to "nothing new" in every small interval of a refinement scan, and go unnoticed).
_FILLER = _junk(4096, 0) + b"".join(bytes([0xFF, 0xD0 + n % 8]) + _junk(64, n + 1) for n in range(256))


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


def _jpeg_eoi(data: bytes) -> int:
    """Offset of the EOI that ends the JPEG's scans; UploadError(400) when there is none, or when the scans stop
    before every component's coefficients are complete (a progressive JPEG cut between two scans)."""
    try:
        eoi, final = _jpeg_scans(data)
    except (struct.error, ValueError, IndexError) as e:
        raise UploadError(400, f"the JPEG is truncated or corrupt: a marker segment is cut ({e})") from e
    if eoi is None:
        raise UploadError(400, "the JPEG is truncated (no end-of-image marker)")
    unfinished = [c for c, done in final.items() if not done.all()]
    if unfinished:
        raise UploadError(400, "the JPEG is truncated: its scans end before the image is complete (components "
                               f"{unfinished} unfinished), so only part of the image was decoded")
    return eoi


def _jpeg_scans(data: bytes) -> tuple[int | None, dict[int, np.ndarray]]:
    """(offset of the EOI or None, component id -> (64,) bool "coefficient k has its final bits") from the frame
    header and every scan header. ValueError / IndexError / struct.error when a header is cut."""
    final, progressive = {}, False
    for marker, at, payload in _jpeg_segments(data):
        if marker in _SOF:
            progressive = marker in _PROGRESSIVE
            final = {c: np.zeros(64, bool) for c in payload[6 : 6 + 3 * payload[5] : 3]}
        elif marker == _SOS:
            n = payload[0]
            ss, se, a = payload[1 + 2 * n : 4 + 2 * n]
            for c in (c for c in payload[1 : 1 + 2 * n : 2] if c in final):
                if not progressive:  # a sequential (or lossless) scan carries its components whole
                    final[c][:] = True
                elif (a & 0x0F) == 0:  # Al == 0: coefficients Ss..Se are final after this scan
                    final[c][ss : se + 1] = True
        elif marker == _EOI:
            return at, final
    return None, final


def _decode(data: bytes, flag: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR, EXIF orientation applied (phones), or None when OpenCV cannot decode it."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), flag)


def decode_image(data: bytes | np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR of an image file's bytes as the device decodes every file (the folder and image
    sources, `dkit.read_image`, the kiosk's non-JPEG uploads): transparency composited over white (over_white,
    the rule training applies), else OpenCV's colour decode with EXIF orientation. None when OpenCV cannot decode
    it. No size limit here: the caller bounds what it accepts (decode_upload does, from the header)."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    if not buf.size:
        return None
    if not may_have_alpha(buf):
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # BGRA (8 or 16 bit) when the file has alpha
    if image is None:
        return None
    if image.ndim == 2:  # grey (a grey tRNS is not applied by OpenCV): as IMREAD_COLOR would give it
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    # upright as the colour decode (and training) makes it: IMREAD_UNCHANGED ignores the EXIF orientation
    return np.ascontiguousarray(over_white(orient(image, exif_orientation(buf))))


def jpeg_scale(w: int, h: int, short_side: int = REDUCE_TO) -> int:
    """The largest libjpeg reduction (1, 2, 4 or 8) that keeps the short side at least `short_side` pixels."""
    return next(k for k in (8, 4, 2, 1) if k == 1 or -(-min(w, h) // k) >= short_side)


def _decode_complete_jpeg(data: bytes, scale: int = 1) -> np.ndarray | None:
    """The JPEG decoded as given (at 1/`scale`), refused (UploadError 400) when filler before its EOI changes the
    pixels."""
    eoi = _jpeg_eoi(data)
    flag = _REDUCED[scale]
    bgr = _decode(data, flag)
    if bgr is None:
        return None
    # A cut between a data byte 0xFF and its stuffed 0x00 leaves a lone FF that would make the filler a marker.
    probe = _decode(data[:eoi].rstrip(b"\xff") + _FILLER + b"\xff\xd9", flag)  # (H, W, 3), as bgr when complete
    if probe is None or not np.array_equal(bgr, probe):
        raise UploadError(400, "the JPEG is truncated (its data ends before the last block, then an end-of-image "
                               "marker): only part of the image was decoded")
    return bgr


def decode_upload(data: bytes, *, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT,
                  max_lossless: int = MAX_LOSSLESS) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded image, or UploadError(400) saying why not. A JPEG larger than needed is
    decoded at a reduced scale (jpeg_scale): the judge sees 224 pixels and the thumbnail 256, so a 12-megapixel
    phone photo arrives as 1000 x 750, and its decode costs 1/16 of the memory."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    kind, w, h = image_size(data)
    if w <= 0 or h <= 0:
        raise UploadError(400, f"the {kind.upper()} header says {w}x{h} pixels")
    most = max_pixels if kind == "jpeg" else min(max_pixels, max_lossless)
    if w * h > most:
        raise UploadError(400, f"the {kind.upper()} is {w}x{h} pixels ({w * h:,}); at most {most:,} are "
                               "accepted (a decompression bomb?)")
    if max(w, h) > max_aspect * min(w, h):
        raise UploadError(400, f"the {kind.upper()} is {w}x{h} pixels; at most {max_aspect:g}:1 (long side to "
                               "short side) is accepted")
    k = jpeg_scale(w, h) if kind == "jpeg" else 1
    bgr = _decode_complete_jpeg(data, k) if kind == "jpeg" else decode_image(data)  # cut PNG/GIF/BMP/WebP: None
    h, w = -(-h // k), -(-w // k)  # (H, W) after libjpeg's reduction: rounded up
    upright = {(h, w), (w, h)} if kind in ("jpeg", "webp", "png") else {(h, w)}  # EXIF rotations 5-8 swap the sides
    if bgr is None or bgr.shape[:2] not in upright:
        raise UploadError(400, f"the {kind.upper()} is corrupt or truncated: it cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second full-size copy
