"""Issue #24, the device's findings: transparent images decode as in training (7), `dkit run` never aborts at exit
after Ctrl-C (10), `dkit run --save` records at the source's rate (11)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT

# ------------------------------------------------------------------------------------------ 7: one alpha rule


def _stroke_rgba(size: int = 64) -> np.ndarray:
    """(H, W, 4) uint8 RGBA: a black stroke, anti-aliased (partial alpha at its edges), on a fully transparent
    background whose colour is black, as drawing apps store it."""
    alpha = np.zeros((size, size), np.uint8)
    cv2.line(alpha, (8, 8), (size - 8, size - 12), 255, 5, cv2.LINE_AA)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[:, :, 3] = alpha
    return rgba


def _png_variants() -> dict[str, bytes]:
    """The same transparent drawing as the PNG kinds a user's files come in."""
    from PIL import Image

    rgba = _stroke_rgba()
    out: dict[str, bytes] = {}

    def save(name: str, image: Image.Image, **options) -> None:
        buf = io.BytesIO()
        image.save(buf, "PNG", **options)
        out[name] = buf.getvalue()

    save("rgba8", Image.fromarray(rgba, "RGBA"))
    save("grey+alpha", Image.fromarray(rgba[:, :, [0, 3]], "LA"))
    palette = Image.fromarray(np.where(rgba[:, :, 3] > 127, 1, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 0, 0])  # both entries black; entry 0 transparent (tRNS)
    save("palette+tRNS", palette, transparency=0)
    rgb = np.where(rgba[:, :, 3:] > 127, 0, 7).astype(np.uint8).repeat(3, axis=2)
    save("rgb+tRNS", Image.fromarray(rgb, "RGB"), transparency=(7, 7, 7))
    bgra16 = rgba.astype(np.uint16) * 257  # 16 bits a sample, alpha 0..65535
    ok, buf16 = cv2.imencode(".png", bgra16)
    assert ok
    out["rgba16"] = buf16.tobytes()
    out["grey+alpha16"] = _png_grey_alpha_16(rgba[:, :, 0].astype(np.uint16) * 257,
                                             rgba[:, :, 3].astype(np.uint16) * 256 + 99)  # low byte != high byte
    return out


def _png_grey_alpha_16(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    """A PNG of colour type 4 (grey + alpha), 16 bits a sample, written by hand (Pillow and OpenCV write none)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    h, w = grey.shape
    rows = np.stack([grey, alpha], axis=-1).astype(">u2")
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["rgba8", "grey+alpha", "palette+tRNS", "rgb+tRNS", "rgba16", "grey+alpha16"])
def test_finding7_transparent_png_decodes_black_on_white_on_device_and_in_training(kind, tmp_path):
    """A black stroke on a transparent PNG: every device decoder (kiosk upload, folder and image sources, the Python
    API's read_image) gives black on white, and exactly the pixels training's decoder gives."""
    import dkit
    from dkit.distill.images import load_image
    from dkit.edge.images.decode import decode_upload
    from dkit.edge.kiosk.uploads import decode as kiosk_decode
    from dkit.edge.stream.sources import open_source

    data = _png_variants()[kind]
    path = tmp_path / "drawing.png"
    path.write_bytes(data)

    training = load_image(path, tmp_path)
    assert training.ok, training.skipped
    assert "alpha dropped" in training.normalised
    with open_source(str(tmp_path)) as folder, open_source(str(path)) as image:
        device = {"kiosk upload": kiosk_decode(data), "upload": decode_upload(data),
                  "read_image": dkit.read_image(path), "folder source": next(folder).rgb,
                  "image source": next(image).rgb}

    stroke = _stroke_rgba()[:, :, 3] == 255
    background = _stroke_rgba()[:, :, 3] == 0
    assert (training.rgb[background] == 255).all() and (training.rgb[stroke] == 0).all()  # black on white
    for where, rgb in device.items():
        assert rgb.shape == training.rgb.shape and rgb.dtype == np.uint8, where
        assert np.array_equal(rgb, training.rgb), f"{where}: {np.count_nonzero(rgb != training.rgb)} values differ"


def test_finding7_alpha_rule_is_one_function_exact_at_every_level():
    """over_white is the composite over white, rounded: every (colour, alpha) pair of 8 bits, against the float
    formula; the channel order is kept; 16-bit keeps the high byte first."""
    from dkit.edge.images.alpha import over_white

    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    image = np.stack([c, 255 - c, c // 2, a], axis=-1).astype(np.uint8)  # (256, 256, 4)
    want = np.round((image[:, :, :3] * (a[:, :, None] / 255.0)) + 255.0 * (1 - a[:, :, None] / 255.0))
    assert np.array_equal(over_white(image), want.astype(np.uint8))
    assert np.array_equal(over_white(image.astype(np.uint16) * 256 + 100), over_white(image))
    with pytest.raises(ValueError, match="over_white takes"):
        over_white(np.zeros((2, 2, 2), np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_finding7_transparent_file_with_exif_orientation_is_upright_as_in_training(fmt, tmp_path):
    """IMREAD_UNCHANGED (the alpha path) ignores the EXIF orientation that OpenCV's colour decode and training
    apply: a transparent PNG or WebP with orientation 2-8 came out mirrored or turned on the device, the same file
    upright in training. Every orientation now gives training's pixels, in decode_image and the kiosk upload."""
    from PIL import Image

    from dkit.distill.images import load_image
    from dkit.edge.images.decode import decode_image, decode_upload

    rgba = np.random.default_rng(1).integers(0, 256, (24, 40, 4)).astype(np.uint8)  # not square: 5-8 swap sides
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        path.write_bytes(buf.getvalue())
        training = load_image(path, tmp_path)
        assert training.ok and "alpha dropped" in training.normalised, training.skipped
        assert ("EXIF rotation" in training.normalised) == (orientation > 1)
        for where, rgb in (("decode_image", decode_image(buf.getvalue())[:, :, ::-1]),
                           ("upload", decode_upload(buf.getvalue()))):
            assert rgb.shape == training.rgb.shape and np.array_equal(rgb, training.rgb), (orientation, where)


def test_finding7_alpha_decode_memory_stays_bounded_for_a_16_bit_upload(monkeypatch):
    """A kiosk upload with alpha costs the decoded BGRA and the result, not whole-image temporaries: a 16-bit RGBA PNG
    of a few kB at the lossless pixel limit's shape peaked at 24 bytes a pixel (8 for the decode, then a 16-bit
    shifted copy, an 8-bit copy, alpha and the widened colour); composited a block of rows at a time it stays under
    16 (8 decoded + 3 out + the blocks' few MB: 13.5 here). The block boundaries change no pixel."""
    import tracemalloc

    from dkit.edge.images import alpha
    from dkit.edge.images.decode import decode_upload

    w, h = 2048, 1024
    rgba = np.zeros((h, w, 4), np.uint16)
    rgba[:, :, 3] = 30000
    data = cv2.imencode(".png", rgba)[1].tobytes()
    tracemalloc.start()
    try:
        rgb = decode_upload(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.shape == (h, w, 3)
    assert peak < w * h * 16, f"{peak / (w * h):.1f} bytes a pixel"

    image = np.random.default_rng(0).integers(0, 65536, (37, 23, 4)).astype(np.uint16)
    whole = alpha.over_white(image)
    monkeypatch.setattr(alpha, "BLOCK_PIXELS", 50)  # blocks of 2 rows, the last one short
    assert np.array_equal(alpha.over_white(image), whole)

def test_finding7_opaque_files_decode_as_before(tmp_path):
    """Files without transparency keep OpenCV's colour decode (EXIF orientation included): a JPEG and an opaque
    PNG give what IMREAD_COLOR gives."""
    from dkit.edge.images.decode import decode_image

    photo = next((ROOT.parent / "shared" / "assets" / "data" / "coco128" / "images" / "train2017").glob("*.jpg"),
                 None)
    data = [cv2.imencode(".png", np.arange(48 * 3, dtype=np.uint8).reshape(4, 4, 9)[:, :, :3])[1].tobytes()]
    if photo is not None:
        data.append(photo.read_bytes())
    for blob in data:
        assert np.array_equal(decode_image(blob), cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR))


# ------------------------------------------------------------------------------------------ 11: recording rate

COCO = ROOT.parent / "shared" / "assets" / "data" / "coco128" / "images" / "train2017"


def _video(path: Path, fps: float, frames: int) -> Path:
    """A real video file written with cv2.VideoWriter: `frames` coco128 photos at `fps`."""
    photos = sorted(COCO.glob("*.jpg"))[:frames]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened()
    for photo in photos:
        writer.write(cv2.resize(cv2.imread(str(photo)), (320, 240)))
    writer.release()
    return path


def _fps_and_frames(path: Path) -> tuple[float, int]:
    cap = cv2.VideoCapture(str(path))
    try:
        fps, count = cap.get(cv2.CAP_PROP_FPS), 0
        while cap.read()[0]:
            count += 1
        return fps, count
    finally:
        cap.release()


def test_finding11_dkit_run_save_records_a_video_at_its_own_rate(detect_bundle, tmp_path):
    """`dkit run --save` on a 10 fps video: the recording is 10 fps with every frame (not 15 fps, 1.5x too fast),
    and the log says which rate and why; --max-fps slows the run but drops no frame of a file, so it stays 10."""
    video = _video(tmp_path / "ten.avi", 10.0, 12)
    assert _fps_and_frames(video) == (10.0, 12)
    for extra in ((), ("--max-fps", "40")):
        out = tmp_path / f"out{len(extra)}.mp4"
        run = subprocess.run([sys.executable, "-m", "dkit", "run", str(detect_bundle), "--source", str(video),
                              "--save", str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert _fps_and_frames(out) == (10.0, 12), extra
        assert f"recording {out} at 10 fps (the video's own rate (CAP_PROP_FPS" in run.stderr


def test_finding11_live_recording_rate_is_measured_from_capture_times(tmp_path):
    """A live source has no file rate: the sink holds back its first frames and takes the rate from their capture
    timestamps (12.5 fps here, injected), then writes every frame at it."""
    from dkit.edge.infer.runtime import Result
    from dkit.edge.stream.pipeline import VideoSink
    from dkit.edge.stream.sources import Frame

    class Runtime:  # what annotate() reads
        classes, prompts = ["x"], None

    sink = VideoSink(tmp_path / "live.avi", Runtime(), fps=None)
    rgb = np.zeros((48, 64, 3), np.uint8)
    for i in range(30):
        stamp = 1000.0 + i / 12.5
        sink.write(Frame(i, stamp, rgb, "0"), Result(i, stamp, 1.0, "classify", top=[(0, 1.0)]))
    sink.close()
    assert sink.fps == pytest.approx(12.5) and "10 frames" in sink.why
    fps, count = _fps_and_frames(tmp_path / "live.avi")
    assert fps == pytest.approx(12.5, abs=0.01) and count == 30


# ------------------------------------------------------------------------------------------ 10: Ctrl-C at exit

# `dkit run` with interpreter shutdown held open until the source's capture threads are gone (at most 20 s). That
# widens the race of finding 10 from "1 run in 10 under load" to every run: a capture thread still inside OpenCV
# (here decoding a large image) when the interpreter shuts down comes back from native code during the shutdown,
# is ended by a forced unwind through OpenCV's C++ frames, and the process aborts ("terminate called without an
# active exception", exit -6). Fixed, `dkit run` joins its capture threads before it returns, so the hold finds
# none and the exit is 0.
HOLD_SHUTDOWN_OPEN = """
import sys, threading, time
from dkit.cli.main import main

class HoldShutdownOpen:
    def __init__(self):
        self.enumerate, self.sleep, self.clock = threading.enumerate, time.sleep, time.monotonic
    def __del__(self):  # runs while the interpreter shuts down (module globals cleared)
        end = self.clock() + 20
        while self.clock() < end and any(t.name.startswith("dkit-source") for t in self.enumerate()):
            self.sleep(0.005)

hold = HoldShutdownOpen()
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def large_images(tmp_path_factory) -> Path:
    """Four 4000 x 4000 JPEGs (a coco128 photo enlarged): each decode takes a few hundred ms, so the folder
    source's reader is inside cv2.imdecode almost all the time."""
    photo = next(COCO.glob("*.jpg"), None)
    if photo is None:
        pytest.skip(f"real test assets not found at {COCO}")
    folder = tmp_path_factory.mktemp("large")
    big = cv2.resize(cv2.imread(str(photo)), (4000, 4000), interpolation=cv2.INTER_LINEAR)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.jpg"), big)
    return folder


def test_finding10_dkit_run_joins_capture_threads_before_exit_after_ctrl_c(detect_bundle, large_images):
    """Ctrl-C while the reader is inside OpenCV: exit 0 with the stats line, never an abort at shutdown (the race
    made certain: see HOLD_SHUTDOWN_OPEN)."""
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_SHUTDOWN_OPEN, "run", str(detect_bundle), "--source",
                                 str(large_images), "--jsonl"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # one frame scored; the reader is decoding the next
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "terminate called" not in err, err[-2000:]
        assert json.loads(first)["frame"] == 0
        stats = json.loads(err.split("dkit: stats ", 1)[1].splitlines()[0])
        assert stats["stopped"] and stats["frames"] >= 1


class _SlowCapture:
    """A video whose read() is busy until the test sets `release`."""

    def __init__(self, release):
        self.release_event = release

    def isOpened(self):
        return True

    def read(self):
        self.release_event.wait(30)
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self):
        pass


def test_finding10_close_after_a_signal_handlers_close_still_joins(tmp_path):
    """close(timeout=0) (a signal handler) then close(): the second one waits for the reader, which had only been
    told to stop; `running` says when it is gone."""
    import threading

    from dkit.edge.stream.sources import open_source

    release = threading.Event()

    (tmp_path / "v.avi").write_bytes(b"x")
    source = open_source(str(tmp_path / "v.avi"), capture_factory=lambda _: _SlowCapture(release))
    source.close(timeout=0)
    assert source.closed and source.running  # told to stop, still inside read()
    threading.Timer(0.2, release.set).start()
    source.close(timeout=30)
    assert not source.running


def test_finding10_ctrl_c_while_the_main_thread_holds_the_sources_lock_does_not_deadlock(tmp_path):
    """The SIGINT handler (Pipeline.stop -> Source.close(timeout=0)) runs on the main thread between two bytecodes,
    possibly inside read()'s or `stats`' bookkeeping, which holds the source's lock: with a plain Lock the handler
    waited for a lock its own thread held, and `dkit run` hung on Ctrl-C (or SIGTERM) instead of stopping. Run here
    on a helper thread standing in for the main one, so that a regression fails instead of hanging the suite."""
    import threading

    from dkit.edge.stream.sources import open_source

    release = threading.Event()

    (tmp_path / "v.avi").write_bytes(b"x")
    source = open_source(str(tmp_path / "v.avi"), capture_factory=lambda _: _SlowCapture(release))
    done = threading.Event()

    def main_thread():
        with source._lock:  # inside read()'s frame-id bookkeeping when the signal lands
            source.close(timeout=0)  # the handler, on the same thread
        done.set()

    threading.Thread(target=main_thread, daemon=True).start()
    try:
        assert done.wait(10), "close() in a signal handler waited for the lock its own thread holds"
        assert source.closed
    finally:
        release.set()
        source.close(timeout=30)
    assert not source.running


def test_finding7_alpha_header_walk_is_bounded_whatever_the_upload(monkeypatch):
    """The alpha path reads a PNG's chunk headers in Python (tRNS, eXIf): a crafted 4 MiB upload of 12-byte chunks
    before its pixels made that walk 350,000 steps (0.4 s, ten times OpenCV's decode of the file) for each of the
    two readers; they now stop after MAX_PNG_CHUNKS chunks, counted here, and the upload decodes as usual."""
    import struct
    import zlib

    from dkit.edge.images import alpha
    from dkit.edge.images.decode import decode_upload

    def chunk(kind: bytes, payload: bytes = b"") -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = b"".join(b"\0" + bytes(8 * 4) for _ in range(8))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 6, 0, 0, 0))
           + chunk(b"abCd") * 350_000 + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND"))
    steps = []
    walk = alpha._png_chunks

    def counted(m):
        for item in walk(m):
            steps.append(item)
            yield item

    monkeypatch.setattr(alpha, "_png_chunks", counted)
    rgb = decode_upload(png)
    assert rgb.shape == (8, 8, 3) and (rgb == 255).all()  # transparent black: white
    assert 0 < len(steps) <= 2 * alpha.MAX_PNG_CHUNKS
