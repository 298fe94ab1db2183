"""dkit.edge.images.decode's truncation check on real images: every complete JPEG is accepted exactly as cv2.imdecode
decodes it (baseline, progressive, restart markers, EXIF-rotated, trailer bytes after the end), and a cut one is
refused with 400 whether or not an end-of-image marker was appended after the cut, from one decode; cut
PNG/GIF/BMP/WebP too. The decode work a file may ask for: scans counted from the markers (a scan bomb refused before
any decode), JPEGs of several scans bounded in pixels and pixels x scans, animated images as their first frame.

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

from dkit.edge.images import decode as upload
from dkit.edge.images.decode import UploadError, decode_upload
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
    """The 400 message decode_upload gives, or None when it accepts the bytes; the same in both of its ways of
    telling a cut JPEG (one decode reading libjpeg's warning on fd 2, or two decodes with the filler probe)."""
    messages = []
    for watch in (True, False):
        try:
            decode_upload(data, watch_stderr=watch)
            messages.append(None)
        except UploadError as e:
            assert e.status == 400, e.message
            messages.append(e.message)
    assert (messages[0] is None) == (messages[1] is None), messages
    return messages[0]


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


def _counted(monkeypatch) -> list[int]:
    calls = []
    imdecode = upload.cv2.imdecode
    monkeypatch.setattr(upload.cv2, "imdecode", lambda *a: calls.append(1) or imdecode(*a))
    return calls


def test_a_jpeg_costs_one_decode_and_a_cut_one_is_refused_from_it(real, monkeypatch):
    """Watching fd 2 (as the kiosk's decoder processes do): one imdecode per upload, JPEG or not; a cut JPEG (an end
    marker appended) is refused from libjpeg's first warning of that one decode, no second decode needed. Without
    it (the default: a process with other threads), a JPEG costs two decodes, the filler probe's."""
    calls = _counted(monkeypatch)
    decode_upload(pil_jpeg(real[0], progressive=True), watch_stderr=True)
    assert len(calls) == 1
    decode_upload(cv2.imencode(".png", real[0])[1].tobytes(), watch_stderr=True)
    assert len(calls) == 2
    for encoding in ("baseline", "restart markers"):
        data = ENCODINGS[encoding](real[1])
        with pytest.raises(UploadError, match="only part of the image was decoded"):
            decode_upload(data[: len(data) // 2] + EOI, watch_stderr=True)
    assert len(calls) == 4
    decode_upload(pil_jpeg(real[0], progressive=True))
    assert len(calls) == 6


def test_a_first_warning_that_is_not_a_cut_is_decided_by_the_filler_probe(real, monkeypatch):
    """libjpeg prints only its first warning: when that is another one (here an unknown JFIF revision, 2.01), a
    truncation after it stays unsaid, so the filler probe decides with a second decode: the complete file is
    accepted as OpenCV decodes it, the cut one refused."""
    data = pil_jpeg(real[2])
    at = data.index(b"JFIF\x00") + 5
    data = data[:at] + b"\x02" + data[at + 1 :]
    assert upload._decode_watched(data, cv2.IMREAD_COLOR)[1] == b"Warning: unknown JFIF revision number 2.01"
    expected = as_cv2_decodes(data)
    calls = _counted(monkeypatch)
    assert np.array_equal(decode_upload(data, watch_stderr=True), expected) and len(calls) == 2
    with pytest.raises(UploadError, match="only part of the image was decoded"):
        decode_upload(data[: len(data) // 2] + EOI, watch_stderr=True)


# ------------------------------------------------------------------------------------------ decode work


def scan_bomb(w: int, h: int, scans: int) -> bytes:
    """A grey progressive JPEG whose last scan is repeated until it has `scans` scans (valid, and decodable)."""
    ok, jpg = cv2.imencode(".jpg", np.full((h, w), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    data = jpg.tobytes()
    last, eoi = data.rindex(b"\xff\xda"), data.rindex(EOI)
    return data[:eoi] + data[last:eoi] * (scans - data.count(b"\xff\xda")) + EOI


def test_scans_are_counted_from_the_markers(real):
    assert upload.jpeg_scans(pil_jpeg(real[0])).scans == 1
    progressive = upload.jpeg_scans(pil_jpeg(real[0], progressive=True))
    assert progressive.progressive and progressive.scans == 10  # libjpeg's progression: 10 scans in colour ...
    assert upload.jpeg_scans(pil_jpeg(np.ascontiguousarray(real[0][..., 1]), progressive=True)).scans == 6  # 6 grey
    assert upload.jpeg_scans(scan_bomb(64, 64, 777)).scans == 777
    assert upload.jpeg_scans(scan_bomb(64, 64, 777), max_scans=100).scans == 777  # counted to the end


def test_a_scan_bomb_is_refused_from_its_markers_before_any_decode(monkeypatch):
    """The audit's bomb (6000x6000 grey, one scan repeated to 2,000: 259 kB, minutes of decoding) is refused from
    its markers with its count and the limit; a small file of 150 scans passes when the limit allows it."""
    calls = _counted(monkeypatch)
    bomb = scan_bomb(6000, 6000, 2000)
    assert len(bomb) < 300_000
    with pytest.raises(UploadError, match=r"progressive JPEG has 2,000 scans; at most 100 are accepted"):
        decode_upload(bomb)
    small = scan_bomb(640, 480, 150)
    with pytest.raises(UploadError, match=r"has 150 scans; at most 100"):
        decode_upload(small)
    assert calls == []
    assert np.array_equal(decode_upload(small, max_scans=200), as_cv2_decodes(small))


def test_a_jpeg_of_several_scans_is_bounded_in_pixels_and_in_pixels_times_scans(monkeypatch):
    """A progressive JPEG keeps its whole coefficient buffer whatever the output scale, so it gets its own pixel
    bound (MAX_MULTISCAN), and its scans x pixels are bounded (MAX_SCAN_WORK); a baseline JPEG of the same size is
    still decoded at a reduced scale."""
    from dkit.edge.images.decode import MAX_MULTISCAN, MAX_SCAN_WORK

    grey = np.full((3100, 4100), 200, np.uint8)
    progressive = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    baseline = cv2.imencode(".jpg", grey)[1].tobytes()
    many = scan_bomb(3000, 3000, 20)
    calls = _counted(monkeypatch)
    with pytest.raises(UploadError, match=rf"4100x3100 pixels \(12,710,000\); at most {MAX_MULTISCAN:,} are accepted "
                                          r"for a JPEG of several scans"):
        decode_upload(progressive)
    with pytest.raises(UploadError, match=rf"3000x3000 pixels in 20 scans \(180,000,000 pixel-scans to decode\); "
                                          rf"at most {MAX_SCAN_WORK:,}"):
        decode_upload(many)
    assert calls == []
    assert decode_upload(baseline, watch_stderr=True).shape == (775, 1025, 3) and len(calls) == 1  # 1/4 scale


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animated_gif_or_webp_is_decoded_as_its_first_frame(fmt):
    """OpenCV decodes the first frame only, so a frame count costs nothing to bound (see dkit.edge.images.decode)."""
    from PIL import Image

    frames = [Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    rgb = decode_upload(buf.getvalue())
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] > 200).all() and (rgb[..., 2] < 50).all()


@pytest.mark.parametrize("w, h, scale", [(4000, 3000, 4), (4001, 3001, 4), (1100, 900, 1), (6000, 6000, 8)])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_a_large_png_is_refused(w, h, scale):
    """Memory: a big photo is decoded by libjpeg at 1/2-1/8 scale (short side >= 512), not at full size; a lossless
    image is bounded at MAX_LOSSLESS pixels (it has no cheap reduced decode)."""
    from dkit.edge.images.decode import MAX_LOSSLESS, jpeg_scale

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
