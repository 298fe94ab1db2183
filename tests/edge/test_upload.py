"""dkit.edge.upload's truncation check on real images: every complete JPEG is accepted exactly as cv2.imdecode
decodes it (baseline, progressive, restart markers, EXIF-rotated, trailer bytes after the end), and a cut one is
refused with 400 whether or not an end-of-image marker was appended after the cut; cut PNG/GIF/BMP/WebP too.

Run: .venv/bin/pytest tests/edge/test_upload.py   (skips without ../shared/assets)
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import cv2
import numpy as np
import pytest

from dkit.edge import upload
from dkit.edge.upload import UploadError, decode_upload
from tests.conftest import ASSETS

COCO = ASSETS / "data" / "coco128" / "images" / "train2017"
PHOTOS = ASSETS / "data" / "photos"
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
EOI = b"\xff\xd9"


@pytest.fixture(scope="module")
def real() -> list[np.ndarray]:
    """Four real pictures as (H, W, 3) RGB: three COCO-128 images and a photo."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    paths = sorted(COCO.glob("*.jpg"))[5:100:40] + [PHOTOS / "pets.jpg"]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def pil_jpeg(rgb: np.ndarray, **options) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=options.pop("quality", 90), **options)
    return buf.getvalue()


def cv2_jpeg(rgb: np.ndarray, *params: int) -> bytes:
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return jpg.tobytes()


ENCODINGS = {
    "baseline": lambda rgb: pil_jpeg(rgb),
    "progressive": lambda rgb: pil_jpeg(rgb, progressive=True),
    "restart markers": lambda rgb: cv2_jpeg(rgb, cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
    "progressive, restart markers": lambda rgb: cv2_jpeg(rgb, cv2.IMWRITE_JPEG_PROGRESSIVE, 1,
                                                         cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
}


def as_cv2_decodes(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def refusal(data: bytes) -> str | None:
    """The 400 message decode_upload gives, or None when it accepts the bytes."""
    try:
        decode_upload(data)
    except UploadError as e:
        assert e.status == 400, e.message
        return e.message
    return None


# ------------------------------------------------------------------------------------------ complete files


def test_every_real_jpeg_is_accepted_exactly_as_opencv_decodes_it(assets):
    paths = sorted((assets / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
    assert len(paths) == 128
    for path in [*paths, *sorted((assets / "data" / "photos").glob("*.jpg"))]:
        data = path.read_bytes()
        assert np.array_equal(decode_upload(data), as_cv2_decodes(data)), path.name


@pytest.mark.parametrize("encoding", [*ENCODINGS, "4:4:4 optimized", "grey progressive", "quality 30"])
def test_complete_reencodings_are_accepted(real, encoding):
    encode = ENCODINGS.get(encoding) or {
        "4:4:4 optimized": lambda rgb: pil_jpeg(rgb, subsampling=0, optimize=True),
        "grey progressive": lambda rgb: pil_jpeg(np.ascontiguousarray(rgb[..., 1]), progressive=True),
        "quality 30": lambda rgb: pil_jpeg(rgb, quality=30),
    }[encoding]
    for rgb in real:
        data = encode(rgb)
        assert np.array_equal(decode_upload(data), as_cv2_decodes(data))


def test_a_progressive_phone_photo_with_exif_rotation_is_upright(real):
    """EXIF orientation 6 (portrait shots) is still applied; the sides swap, and it is not taken for a cut file."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    h, w = real[0].shape[:2]
    data = pil_jpeg(real[0], progressive=True, exif=exif.tobytes())
    rgb = decode_upload(data)
    assert rgb.shape == (w, h, 3) and np.array_equal(rgb, as_cv2_decodes(data))


def test_bytes_after_the_end_marker_are_ignored_like_the_decoder_does(real):
    """A phone's motion-photo video or maker trailer after EOI (and zero padding) is not a truncation."""
    data = pil_jpeg(real[1])
    for trailer in (b"\0" * 100, b"ftypmp42" + bytes(range(256)) * 20, EOI + b"junk"):
        assert np.array_equal(decode_upload(data + trailer), as_cv2_decodes(data))


# ------------------------------------------------------------------------------------------ cut files


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_cut_jpeg_is_refused_with_or_without_an_end_marker_appended(real, encoding):
    accepted, messages = [], set()
    for n, rgb in enumerate(real):
        data = ENCODINGS[encoding](rgb)
        for fraction in FRACTIONS:
            cut = data[: int(len(data) * fraction)]
            for tail in (b"", EOI):
                message = refusal(cut + tail)
                if message is None:
                    accepted.append((n, fraction, tail))
                else:
                    messages.add(message)
                    assert "truncated" in message, message
    assert not accepted, f"cut {encoding} JPEGs accepted (image, fraction, tail): {accepted}"
    assert any("only part of the image was decoded" in m for m in messages), messages  # the FFD9-appended ones


def _markers(data: bytes, pattern: bytes, count: int) -> list[int]:
    found = [m.start() for m in re.finditer(pattern, data)]
    return found[1 :: max(1, len(found) // count)]


def test_cuts_at_the_hard_places_are_refused(real):
    """Right before or after a restart marker, between two progressive scans, and between a data byte FF and its
    stuffed 00: where a plain "decode it with filler" probe would see no difference."""
    restart = cv2_jpeg(real[2], cv2.IMWRITE_JPEG_RST_INTERVAL, 1)
    progressive = pil_jpeg(real[2], progressive=True)
    baseline = pil_jpeg(real[3])
    cuts = [(restart, at + skip) for at in _markers(restart, rb"\xff[\xd0-\xd7]", 10) for skip in (0, 2)]
    cuts += [(progressive, at) for at in _markers(progressive, rb"\xff\xda", 20)]  # every scan after the first
    cuts += [(baseline, at + 1) for at in _markers(baseline, rb"\xff\x00", 20)]  # keeps the FF, drops its 00
    accepted = [(len(data), at) for data, at in cuts if refusal(data[:at] + EOI) is None]
    assert len(cuts) > 40 and not accepted, accepted
    between_scans = refusal(progressive[: _markers(progressive, rb"\xff\xda", 20)[-1]] + EOI)
    assert "scans end before the image is complete" in between_scans


def test_a_cut_header_is_refused_clearly(real):
    data = pil_jpeg(real[0])
    sos = data.index(b"\xff\xda")
    assert "truncated" in refusal(data[: sos + 5] + EOI)  # inside the scan header
    assert "truncated" in refusal(data[:sos] + EOI)  # the tables, no scan at all


# ------------------------------------------------------------------------------------------ other formats


def _png_chunks(png: bytes) -> list[tuple[int, bytes]]:
    at, chunks = 8, []
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        chunks.append((at, png[at + 4 : at + 8]))
        at += 12 + length
    return chunks


def test_a_cut_png_is_refused(real):
    png = cv2.imencode(".png", real[0])[1].tobytes()
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    idat = [at for at, kind in _png_chunks(png) if kind == b"IDAT"]
    cuts = [png[: int(len(png) * f)] + tail for f in FRACTIONS for tail in (b"", iend)]
    cuts.append(png[: idat[len(idat) // 2]] + iend)  # whole chunks only, a well-formed file with half the data
    for cut in cuts:
        assert "PNG is corrupt or truncated" in refusal(cut)


@pytest.mark.parametrize("fmt", ["gif", "bmp", "webp", "lossless webp"])
def test_other_cut_formats_are_refused(real, fmt):
    from PIL import Image

    if fmt == "gif":
        buf = io.BytesIO()
        Image.fromarray(real[0]).save(buf, "GIF")
        data, trailer = buf.getvalue(), b"\x00\x3b"  # block terminator + GIF trailer after the cut
    else:
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if fmt == "lossless webp" else 80] if "webp" in fmt else []
        data, trailer = cv2.imencode(".webp" if "webp" in fmt else ".bmp", real[0], params)[1].tobytes(), b""
    assert decode_upload(data).shape == real[0].shape
    for fraction in FRACTIONS:
        message = refusal(data[: int(len(data) * fraction)] + trailer)
        assert message is not None and "corrupt or truncated" in message, (fraction, message)


# ------------------------------------------------------------------------------------------ cost


def test_a_jpeg_costs_two_decodes_and_other_formats_one(real, monkeypatch):
    calls = []
    imdecode = upload.cv2.imdecode
    monkeypatch.setattr(upload.cv2, "imdecode", lambda *a: calls.append(1) or imdecode(*a))
    decode_upload(pil_jpeg(real[0], progressive=True))
    assert len(calls) == 2
    decode_upload(cv2.imencode(".png", real[0])[1].tobytes())
    assert len(calls) == 3


@pytest.mark.parametrize("w, h, scale", [(4000, 3000, 4), (4001, 3001, 4), (1100, 900, 1), (6000, 6000, 8)])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_a_large_png_is_refused(w, h, scale):
    """Memory: a big photo is decoded by libjpeg at 1/2-1/8 scale (short side >= 512), not at full size; a lossless
    image is bounded at MAX_LOSSLESS pixels (it has no cheap reduced decode)."""
    from dkit.edge.upload import MAX_LOSSLESS, jpeg_scale

    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8), (w, h))
    ok, jpeg = cv2.imencode(".jpg", img)
    assert jpeg_scale(w, h) == scale
    rgb = decode_upload(jpeg.tobytes())
    assert rgb.shape == (-(-h // scale), -(-w // scale), 3) and min(rgb.shape[:2]) >= min(512, h)
    if w * h > MAX_LOSSLESS:
        ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        with pytest.raises(UploadError, match="at most"):
            decode_upload(png.tobytes())
