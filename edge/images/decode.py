"""Untrusted image uploads -> RGB arrays, refusing what must not be decoded (numpy + OpenCV only).

    from dkit.edge.images.decode import decode_upload

    rgb = decode_upload(data, max_pixels=MAX_PIXELS)      # raises UploadError(status, message)

The image size is read from the file header first (PNG, JPEG, GIF, BMP, WebP) and a picture larger than
`max_pixels`, or thinner than 1:`max_aspect`, is refused before anything is decompressed: a 50 kB PNG can
claim 100,000 x 100,000 pixels (a decompression bomb), and a 178-byte PNG of 1 x 50,000 pixels decodes small
but becomes 128 x 6,400,000 once the model's shortest-side resize scales its 1-pixel side up. Anything that
is not one of those formats, or that OpenCV cannot decode completely (truncated, corrupt), is refused with a
message saying which.

Transparency: `decode_image` (every non-JPEG upload, and the device's folder and image sources and
`dkit.read_image`) composites a file with alpha over white (dkit.edge.images.alpha.over_white, the function training
uses), so a black stroke on a transparent PNG is black on white, as in training, not black on black.

Decode work: a JPEG's markers are walked before anything is decoded, and a JPEG of more than `max_scans` scans
(KioskConfig.max_scans, 100 by default; libjpeg-turbo's own tools cap scans for the same reason) is refused: every
scan is another pass of the decoder over the blocks it covers, so one tiny scan repeated 2,000 times in a 259 kB
6000x6000 progressive JPEG cost the audit about 2 minutes of CPU. A JPEG of several scans (progressive, or
sequential with one scan per component) is also held whole in memory while it is decoded, as coefficients (up to 6
bytes a pixel, whatever the reduced scale of the output), so it is bounded apart: at most MAX_MULTISCAN pixels, and
at most MAX_SCAN_WORK pixels x scans (the blocks every scan may visit). An animated GIF or WebP costs no more than
its first frame: OpenCV's imdecode decodes the first frame only (measured with OpenCV 5.1: 2,000 frames of 1024x1024
decode in 107 ms for a GIF and 43 ms for a WebP against 88 and 35 ms for one frame; the rest is only parsed), so
frames are not counted. What no header can tell (a file that passes these checks and still decodes slowly) is
bounded by the caller: the kiosk decodes every upload in a worker process killed past its time budget
(dkit.edge.kiosk.decoder).

Truncation: OpenCV refuses a cut PNG, GIF, BMP or WebP outright (imdecode returns None), but libjpeg fills the
missing part of a cut JPEG with grey and only prints a warning once an end-of-image marker (FFD9) follows, and tools
that "repair" cut files append exactly that. So a JPEG is checked for a complete decode, not for a trailing marker:
its markers are walked (the first EOI after the scans; bytes after it, such as a phone's motion-photo trailer, are
ignored as the decoder ignores them), every component must reach its final coefficient bits in some scan (a
progressive file cut between two scans), and it is decoded ONCE with libjpeg's first warning read: libjpeg prints it
on fd 2 (its default output_message, which OpenCV keeps), so fd 2 is pointed at an in-memory file (memfd) around that
imdecode (`_decode_watched`). A decoder that runs out of entropy data before its last block says so ("Corrupt JPEG
data: premature end of data segment" when it meets the appended marker, "Premature end of JPEG file", or "Corrupt
JPEG data: found marker 0xd9 instead of RSTn" for a file cut before a restart marker), and such an upload is
refused; a complete JPEG decodes without a warning (checked on 23 real pictures, 16 COCO-128 images and 7 photos, x
7 encodings, over 30,000 cuts at 7 fractions, at every scan and at restart markers and stuffed bytes: every cut that
passes the marker walk printed one of the three, no complete file printed anything). libjpeg prints only the FIRST
warning of a decode, so when that is another one (a JFIF revision it does not know, extraneous bytes before a
marker, an inconsistent progression) it may hide a truncation; then, and only then, the file is decoded a second
time with filler entropy bytes (and restart markers) inserted before its EOI, the probe this module used for every
JPEG before: a complete JPEG's decoder stops after its last block and skips the filler, so both decodes are
identical; a cut one decodes the filler into its missing blocks, and the upload is refused. fd 2 is the process's,
so reading it is for a process that decodes and does nothing else: `decode_upload(..., watch_stderr=True)`, which the
kiosk's single-threaded decoder processes (dkit.edge.kiosk.decoder) pass. By default (any other caller, a process
with other threads) fd 2 is left alone and every JPEG gets the two decodes: as given and with the filler.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import threading

import cv2
import numpy as np

from dkit.edge.images.alpha import exif_orientation, may_have_alpha, orient, over_white
from dkit.edge.images.header import (  # noqa: F401 - the bounds are also read from here (KioskConfig, the benches)
    MAX_MULTISCAN,
    MAX_SCAN_WORK,
    MAX_SCANS,
    UploadError,
    image_size,
    jpeg_eoi,
    jpeg_scans,
)

MAX_PIXELS = 6000 * 6000  # a JPEG's, decoded at a reduced scale (REDUCE_TO): a 36-megapixel photo costs ~1/16 of that
MAX_LOSSLESS = 4096 * 2048  # PNG, GIF, BMP, WebP: decoded at full size (a 4K screenshot fits)
REDUCE_TO = 512  # a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), its short side >= this
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}
MAX_ASPECT = 8.0  # longer side / shorter side: a 1 x 50,000 strip would be upscaled to 128 x 6.4 million pixels

# libjpeg's first warning when the entropy data stops before the last block: JWRN_HIT_MARKER, JWRN_JPEG_EOF and
# JWRN_MUST_RESYNC (a cut just before a restart marker)
_CUT_WARNINGS = (b"Corrupt JPEG data: premature end of data segment", b"Premature end of JPEG file",
                 b"Corrupt JPEG data: found marker 0x")
_LIBJPEG_WARNING = re.compile(rb"(Corrupt JPEG data|Premature end of JPEG|Warning: |Inconsistent progression|"
                              rb"Unknown Adobe|Invalid SOS|Application transferred)")
_WATCH = threading.Lock()  # fd 2 is the process's: one watched decode at a time


def _junk(n: int, seed: int) -> bytes:
    """n pseudo-random bytes without 0xFF (so without a marker), the same on every run."""
    stream = b"".join(hashlib.sha256(b"%d:%d" % (seed, i)).digest() for i in range(-(-n // 32)))
    return stream[:n].replace(b"\xff", b"\xfe")


# Filler for the missing entropy data of a cut JPEG: junk that decodes into the blocks after the cut, then 256
# restart markers in sequence, each followed by different junk, so that a file with restart intervals also gets
# junk decoded into the intervals after the cut, whichever RSTn it expects next (a repeated pattern can decode
# to "nothing new" in every small interval of a refinement scan, and go unnoticed).
_FILLER = _junk(4096, 0) + b"".join(bytes([0xFF, 0xD0 + n % 8]) + _junk(64, n + 1) for n in range(256))


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


def _decode_watched(data: bytes, flag: int) -> tuple[np.ndarray | None, bytes]:
    """(imdecode's BGR or None, libjpeg's first warning line or b""), fd 2 pointed at an in-memory file meanwhile
    (memfd on Linux, else a temporary file: libjpeg prints the first warning of a decode there, and OpenCV gives no
    other way to it). Anything else written to fd 2 in that time (another thread's) is written back to it
    afterwards, and when nothing read as libjpeg's, its first line is returned as the warning: unknown, so the caller
    decodes again to decide. When fd 2 cannot be redirected (no file, no descriptor: OSError), the warning is
    b"unknown" too, and the caller's second decode decides."""
    with _WATCH:
        try:
            sink = _stderr_sink()
        except OSError:
            return _decode(data, flag), b"unknown"
        with sink:
            if sys.stderr is not None:
                sys.stderr.flush()
            try:
                saved = os.dup(2)
            except OSError:
                return _decode(data, flag), b"unknown"
            try:
                os.dup2(sink.fileno(), 2)
                bgr = _decode(data, flag)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            caught = sink.read()
    lines = caught.splitlines(keepends=True)
    ours = next((i for i, line in enumerate(lines) if _LIBJPEG_WARNING.match(line)), None)
    if ours is None:  # nothing, or only what someone else wrote: taken as an unknown warning (the probe decides)
        warning = lines[0].strip() if lines else b""
    else:
        warning = lines.pop(ours).strip()
    if lines:
        os.write(2, b"".join(lines))
    return bgr, warning


def _stderr_sink():
    """A file for fd 2 during a watched decode: in memory where the system has memfd (Linux: no disk, so a full or
    read-only TMPDIR changes nothing), else a temporary file. OSError when neither can be made."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("dkit-libjpeg", os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


def _decode_complete_jpeg(data: bytes, eoi: int, scale: int = 1, watch_stderr: bool = False) -> np.ndarray | None:
    """The JPEG decoded as given (at 1/`scale`), refused (UploadError 400) when its data ended before the last block.
    With `watch_stderr`: decoded once, refused when libjpeg's first warning says so; when the first warning is another
    one, or without `watch_stderr`, decided by a second decode with filler before the EOI at `eoi` (refused when the
    filler changes the pixels)."""
    flag = _REDUCED[scale]
    if watch_stderr:
        bgr, warning = _decode_watched(data, flag)
    else:
        bgr, warning = _decode(data, flag), b"unknown"
    if bgr is None or not warning:
        return bgr
    if not warning.startswith(_CUT_WARNINGS):
        # A cut between a data byte 0xFF and its stuffed 0x00 leaves a lone FF that would make the filler a marker.
        probe = _decode(data[:eoi].rstrip(b"\xff") + _FILLER + b"\xff\xd9", flag)  # (H, W, 3), as bgr if complete
        if probe is not None and np.array_equal(bgr, probe):
            return bgr
    raise UploadError(400, "the JPEG is truncated (its data ends before the last block, then an end-of-image "
                           "marker): only part of the image was decoded")


def decode_upload(data: bytes, *, max_pixels: int = MAX_PIXELS, max_aspect: float = MAX_ASPECT,
                  max_lossless: int = MAX_LOSSLESS, max_scans: int = MAX_SCANS, max_multiscan: int = MAX_MULTISCAN,
                  max_scan_work: int = MAX_SCAN_WORK, watch_stderr: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded image, or UploadError(400) saying why not. A JPEG larger than needed is
    decoded at a reduced scale (jpeg_scale): the judge sees 224 pixels and the thumbnail 256, so a 12-megapixel
    phone photo arrives as 1000 x 750, and its decode costs 1/16 of the memory (1/16 of the output only for a JPEG
    of several scans, hence its own bounds: `max_scans`, `max_multiscan` pixels, `max_scan_work` pixels x scans).
    `watch_stderr`: decode a JPEG once, reading libjpeg's warning from fd 2 (only in a process that does nothing else,
    as the kiosk's decoder processes; see the module docstring); else twice (the filler probe)."""
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
    if kind == "jpeg":
        eoi = jpeg_eoi(data, w, h, max_scans=max_scans, max_multiscan=max_multiscan, max_scan_work=max_scan_work)
        bgr = _decode_complete_jpeg(data, eoi, k, watch_stderr)
    else:
        bgr = decode_image(data)  # a cut PNG/GIF/BMP/WebP: None
    h, w = -(-h // k), -(-w // k)  # (H, W) after libjpeg's reduction: rounded up
    upright = {(h, w), (w, h)} if kind in ("jpeg", "webp", "png") else {(h, w)}  # EXIF rotations 5-8 swap the sides
    if bgr is None or bgr.shape[:2] not in upright:
        raise UploadError(400, f"the {kind.upper()} is corrupt or truncated: it cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second full-size copy
