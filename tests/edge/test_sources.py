"""Frame sources: live policy (latest frame, reconnects) on a scripted synthetic camera, file policy on real files.

The synthetic camera is a real capture object (read()/release()/isOpened()) handed to open_source() through
`capture_factory`; everything between it and the consumer is the production code.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import tracemalloc
import weakref
from collections import Counter, deque
from pathlib import Path

import cv2
import numpy as np
import pytest

from dkit.edge.sources import MAX_STUCK_READERS, Frame, SourceError, open_source

FRAME_HW = (24, 32)
FAST = {"stall_timeout": 0.2, "backoff": (0.02, 0.08), "jitter": 0.0}  # short enough for tests


def make_bgr(counter: int, hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    """A BGR frame: blue everywhere, the counter in the first 4 pixels of row 0 (big-endian, all channels)."""
    bgr = np.zeros((*hw, 3), np.uint8)
    bgr[..., 0] = 200
    bgr[0, :4, :] = np.frombuffer(counter.to_bytes(4, "big"), np.uint8)[:, None]
    return bgr


def counter_of(frame: Frame) -> int:
    return int.from_bytes(frame.rgb[0, :4, 0].tobytes(), "big")


class FakeCapture:
    def __init__(self, camera: SyntheticCamera, opened: bool) -> None:
        self.camera, self.opened, self.released = camera, opened, threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoCapture's name)
        return self.opened

    def read(self) -> tuple[bool, object]:
        return self.camera.next_read()

    def release(self) -> None:
        self.released.set()


class SyntheticCamera:
    """A scripted camera shared by every capture the factory opens, so the script runs on across reconnects.

    Steps: ("frames", n) n good frames | ("stall", s) one read blocks s seconds (or until `unstick`) |
    ("fail", k) read returns (False, None), then k opens fail | ("raise", k) read raises, then k opens raise |
    ("corrupt", obj) read returns (True, obj). After the script: good frames forever, one per `period` s.
    """

    def __init__(self, steps: list[tuple[str, object]] = (), period: float = 0.0,
                 hw: tuple[int, int] = FRAME_HW) -> None:
        self.steps = deque([list(s) for s in steps])
        self.period, self.hw = period, hw
        self.lock = threading.Lock()
        self.counter = 0  # good frames made so far (the last one's counter)
        self.exhausted_at: int | None = None if self.steps else 0  # counter when the script ran out
        self.failing_opens, self.raising = 0, False
        self.captures: list[FakeCapture] = []
        self.open_times: list[float] = []
        self.unstick = threading.Event()

    def __call__(self, spec: str) -> FakeCapture:
        with self.lock:
            self.open_times.append(time.monotonic())
            opened = self.failing_opens == 0
            if not opened:
                self.failing_opens -= 1
                if self.raising:
                    raise OSError("synthetic camera: device busy")
            self.captures.append(FakeCapture(self, opened))
            return self.captures[-1]

    def _good(self) -> tuple[bool, np.ndarray]:
        self.counter += 1
        return True, make_bgr(self.counter, self.hw)

    def next_read(self) -> tuple[bool, object]:
        with self.lock:
            step = self.steps[0] if self.steps else ["frames", 1]
            kind, arg = step
            if kind == "frames":
                step[1] -= 1
                if step[1] <= 0 and self.steps:
                    self.steps.popleft()
                result = self._good()
            else:
                self.steps.popleft()
            if not self.steps and self.exhausted_at is None:
                self.exhausted_at = self.counter
        if kind == "frames":
            if self.period:
                time.sleep(self.period)
            return result
        if kind == "stall":
            self.unstick.wait(arg)
            with self.lock:
                return self._good()
        if kind == "corrupt":
            return True, arg
        with self.lock:
            self.failing_opens, self.raising = arg, kind == "raise"
        if kind == "raise":
            raise OSError("synthetic camera: read error")
        return False, None


def corrupt_frames() -> list[tuple[str, object]]:
    bad = [None, np.zeros((*FRAME_HW, 4), np.uint8), np.zeros(FRAME_HW, np.uint8), np.zeros((*FRAME_HW, 1), np.uint8),
           np.zeros((0, 0, 3), np.uint8), np.zeros((*FRAME_HW, 3), np.float32)]
    return [("corrupt", b) for b in bad]


# (case, script, stats expected, events expected, opens expected)
FAULTS = [
    ("stall", [("frames", 5), ("stall", 5.0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"stalled": 1, "disconnected": 1, "reconnected": 1}, 2),
    ("read returns False", [("frames", 5), ("fail", 0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 2),
    ("read raises", [("frames", 5), ("raise", 0), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 2),
    ("reopen fails 3 times", [("frames", 5), ("fail", 3), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 5),
    ("reopen raises 2 times", [("frames", 5), ("raise", 2), ("frames", 5)],
     {"disconnects": 1, "reconnects": 1, "corrupt": 0}, {"disconnected": 1, "reconnected": 1}, 4),
    ("corrupt frames", [("frames", 5), *corrupt_frames(), ("frames", 5)],
     {"disconnects": 0, "reconnects": 0, "corrupt": 6}, {"corrupt": 6}, 1),
    ("all of it", [("frames", 5), ("stall", 5.0), ("frames", 5), ("fail", 3), ("frames", 5), *corrupt_frames(),
                   ("raise", 1), ("frames", 5)],
     {"disconnects": 3, "reconnects": 3, "corrupt": 6},
     {"stalled": 1, "disconnected": 3, "reconnected": 3, "corrupt": 6}, 8),
]


@pytest.mark.parametrize("case, script, want_stats, want_events, want_opens", FAULTS, ids=[f[0] for f in FAULTS])
def test_live_source_recovers_from_faults(case, script, want_stats, want_events, want_opens):
    camera = SyntheticCamera(script, period=0.002)
    events: list[tuple[str, str]] = []
    source = open_source("0", capture_factory=camera, on_event=lambda k, d: events.append((k, d)), **FAST)
    assert source.live and source.kind == "camera"
    frames, after = [], 0
    deadline = time.monotonic() + 10
    while after < 5:  # five frames from after the script: the pipeline came back on its own
        frame = source.read(timeout=3)
        assert frame is not None and time.monotonic() < deadline
        frames.append(frame)
        after += camera.exhausted_at is not None and counter_of(frame) > camera.exhausted_at
    camera.unstick.set()
    source.close()

    assert [f.id for f in frames] == list(range(len(frames)))  # ids keep counting across reconnects
    counters = [counter_of(f) for f in frames]
    assert all(b > a for a, b in zip(counters, counters[1:], strict=False)), counters
    assert all(f.rgb.shape == (*FRAME_HW, 3) and f.rgb.dtype == np.uint8 for f in frames)  # corrupt never delivered
    assert frames[-1].rgb[5, 5].tolist() == [0, 0, 200]  # BGR blue came out as RGB blue
    stats = source.stats
    assert {k: getattr(stats, k) for k in want_stats} == want_stats
    assert stats.delivered == len(frames)
    assert Counter(k for k, _ in events) == Counter(want_events)
    assert len(camera.open_times) == want_opens
    if want_stats["disconnects"]:
        assert stats.last_error
    for cap in camera.captures:  # every capture released, the one that was stuck in read() included
        assert cap.released.wait(2), f"capture {camera.captures.index(cap)} of {len(camera.captures)} not released"


def test_backoff_grows_to_its_max_and_resets_after_recovery():
    camera = SyntheticCamera([("frames", 3), ("fail", 4), ("frames", 3), ("fail", 0), ("frames", 3)], period=0.002)
    source = open_source("0", capture_factory=camera, stall_timeout=2.0, backoff=(0.05, 0.12), jitter=0.0)
    while camera.exhausted_at is None or len(camera.open_times) < 7:
        assert source.read(timeout=3) is not None
    source.close()
    gaps = np.diff(camera.open_times)  # open, [fail 4 times], ok, [fail once], ok
    want = [0.05, 0.10, 0.12, 0.12, 0.12, 0.05]
    assert len(gaps) == len(want)
    assert all(w * 0.9 <= g < w + 0.5 for g, w in zip(gaps, want, strict=True)), gaps
    assert source.stats.reconnects == 2 and source.stats.disconnects == 2


@pytest.mark.parametrize("consumer_delay", [0.01, 0.03])
def test_slow_consumer_gets_the_newest_frame(consumer_delay):
    camera = SyntheticCamera(period=0.001)  # ~1000 fps
    with open_source("0", capture_factory=camera, **FAST) as source:
        assert source.read(timeout=2) is not None
        previous, latencies = -1, []
        for _ in range(20):
            time.sleep(consumer_delay)  # "inference"
            frame = source.read(timeout=2)
            latencies.append(time.time() - frame.timestamp)
            made = camera.counter
            assert counter_of(frame) >= previous + 1
            assert counter_of(frame) >= made - 5, "an old frame was delivered while newer ones existed"
            previous = counter_of(frame)
    assert all(c.released.is_set() for c in camera.captures)  # close() waited for the release
    stats = source.stats
    assert stats.dropped_stale >= stats.delivered  # ~10-30 camera frames per consumer frame
    assert 0 <= stats.read - stats.delivered - stats.dropped_stale - stats.corrupt <= 2  # the slot, one in flight
    assert max(latencies) < 0.2, latencies  # a FIFO would have grown to 20 * consumer_delay


@pytest.mark.parametrize("live", [True, False])
def test_memory_stays_bounded_over_a_long_run(live):
    n, hw = 20_000, (60, 80)
    frame_bytes = hw[0] * hw[1] * 3
    camera = SyntheticCamera([("frames", n), ("fail", 0)] if not live else [], hw=hw)
    refs: list[weakref.ref] = []
    tracemalloc.start()
    try:
        source = open_source("0", live=live, capture_factory=camera, prefetch=4, **FAST)
        baseline = None
        counters = []
        while (frame := source.read(timeout=5)) is not None:
            counters.append(counter_of(frame))
            refs.append(weakref.ref(frame.rgb))
            if len(counters) == 200:
                baseline = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            if len(counters) % 500 == 0:
                refs = [r for r in refs if r() is not None]
                stats = source.stats
                if not live:
                    assert stats.read - stats.delivered <= 4 + 2  # the reader waits on the bounded queue
                time.sleep(0.001)  # slow-ish consumer
            if live and camera.counter > n + 10:  # (the camera counts a frame before the source does)
                break
        del frame
        peak = tracemalloc.get_traced_memory()[1]
        source.close()
    finally:
        tracemalloc.stop()
    gc.collect()
    stats = source.stats
    assert stats.read >= n
    if live:
        assert stats.dropped_stale > 0 and stats.delivered < stats.read
    else:
        assert counters == list(range(1, n + 1)) and stats.dropped_stale == 0  # every frame, in order
    assert sum(r() is not None for r in refs) == 0  # the source keeps no delivered frame alive
    assert peak - baseline < 64 * frame_bytes, f"peak grew by {(peak - baseline) / frame_bytes:.0f} frames"
    assert threading.active_count() < 10


@pytest.mark.parametrize("live", [True, False])
def test_close_from_another_thread_unblocks_a_waiting_reader(live):
    camera = SyntheticCamera([("frames", 1), ("stall", 30.0)])
    source = open_source("0", live=live, capture_factory=camera, stall_timeout=30.0)
    assert source.read(timeout=2) is not None
    closer = threading.Timer(0.3, source.close)
    closer.start()
    start = time.monotonic()
    assert source.read() is None  # waits for a frame that never comes, until close()
    assert time.monotonic() - start < 1.3
    assert source.read() is None and list(source) == []
    camera.unstick.set()  # the driver's read() returns at last: the capture thread releases and exits
    assert camera.captures[0].released.wait(2)
    closer.join(3)
    source.close()  # idempotent


def test_close_from_a_signal_handler_unblocks_the_main_thread():
    camera = SyntheticCamera([("frames", 1), ("stall", 30.0)])
    source = open_source("0", capture_factory=camera, stall_timeout=30.0)
    previous = signal.signal(signal.SIGUSR1, lambda *_: source.close(timeout=0))  # as a CLI does for SIGINT
    try:
        assert source.read(timeout=2) is not None
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        start = time.monotonic()
        assert source.read() is None
        assert time.monotonic() - start < 1.3
    finally:
        signal.signal(signal.SIGUSR1, previous)
        camera.unstick.set()
    assert camera.captures[0].released.wait(2)


def test_a_camera_stuck_in_read_is_abandoned_with_a_bounded_number_of_threads():
    camera = SyntheticCamera([("stall", 30.0)] * 50)
    events: list[str] = []
    source = open_source("0", capture_factory=camera, stall_timeout=0.1, backoff=(0.01, 0.02),
                         on_event=lambda k, d: events.append(k))
    with pytest.raises(TimeoutError, match="no frame within"):
        source.read(timeout=1.2)
    alive = [t for t in threading.enumerate() if t.name == "dkit-source-camera"]
    assert len(alive) <= MAX_STUCK_READERS + 1  # abandoned readers + the supervisor
    assert events.count("stalled") >= MAX_STUCK_READERS and events.count("disconnected") == 1
    camera.unstick.set()
    source.close()
    assert all(c.released.wait(2) for c in camera.captures)


def test_unreachable_stream_with_the_real_opencv_capture_keeps_retrying(caplog):
    events: list[str] = []
    source = open_source("rtsp://127.0.0.1:9/none", stall_timeout=1.0, backoff=(0.05, 0.2),
                         on_event=lambda k, d: events.append(k))  # nothing listens on port 9: refused at once
    with pytest.raises(TimeoutError):
        source.read(timeout=1.0)
    start = time.monotonic()
    source.close()
    assert time.monotonic() - start < 1.0
    assert events == ["disconnected"] and source.stats.last_error.startswith("open failed")


# ---- real files --------------------------------------------------------------------------------------------------


def write_image(path: Path, rgb: tuple[int, int, int], hw: tuple[int, int] = (40, 56)) -> Path:
    assert cv2.imwrite(str(path), np.full((*hw, 3), rgb[::-1], np.uint8))
    return path


COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (90, 90, 90), "mix": (200, 60, 20)}


def build_folder(tmp_path: Path) -> tuple[Path, list[tuple[str, tuple[int, int, int]]]]:
    folder = tmp_path / "shots"
    folder.mkdir()
    files = [("a_red.png", "red"), ("b_green.jpg", "green"), ("c_blue.BMP", "blue"), ("e_gray.tiff", "gray"),
             ("f_mix.webp", "mix"), ("g_red.jpeg", "red")]
    for name, color in files:
        write_image(folder / name, COLORS[color])
    (folder / "d_corrupt.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder, [(name, COLORS[color]) for name, color in files]


def build_image(tmp_path: Path) -> tuple[Path, list[tuple[str, tuple[int, int, int]]]]:
    return write_image(tmp_path / "red.png", COLORS["red"]), [("red.png", COLORS["red"])]


def build_video(tmp_path: Path) -> tuple[Path, list[tuple[None, tuple[int, int, int]]]]:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    colors = [(40 + 15 * i, 0, 0) for i in range(12)]  # ever redder: order is visible in the pixels
    for rgb in colors:
        writer.write(np.full((48, 64, 3), rgb[::-1], np.uint8))
    writer.release()
    return path, [(None, c) for c in colors]


@pytest.mark.parametrize("build, kind, corrupt", [(build_folder, "folder", 1), (build_image, "image", 0),
                                                  (build_video, "video", 0)])
def test_file_sources_deliver_every_frame_in_order_then_end(tmp_path, caplog, build, kind, corrupt):
    path, want = build(tmp_path)
    events: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="dkit.edge.sources"):
        with open_source(str(path), on_event=lambda k, d: events.append((k, d))) as source:
            assert not source.live and source.kind == kind
            frames = list(source)
            assert source.read() is None  # stays ended
    assert [f.id for f in frames] == list(range(len(want)))
    assert [f.name for f in frames] == [name for name, _ in want]
    for frame, (_, rgb) in zip(frames, want, strict=True):
        assert frame.rgb.dtype == np.uint8 and frame.rgb.shape[2] == 3
        assert np.abs(frame.rgb.reshape(-1, 3).mean(0) - rgb).max() < 12, (frame.name, frame.rgb[0, 0], rgb)
    stats = source.stats
    assert (stats.delivered, stats.corrupt, stats.dropped_stale) == (len(want), corrupt, 0)
    assert [k for k, _ in events] == ["corrupt"] * corrupt + ["eof"]
    if corrupt:
        assert "d_corrupt.png" in events[0][1]
        assert any("d_corrupt.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_video_opened_live_loops_like_a_camera(tmp_path):
    path, want = build_video(tmp_path)
    with open_source(path, live=True, **FAST) as source:
        assert source.live and source.kind == "video"
        frames = [source.read(timeout=2) for _ in range(3 * len(want))]  # more than the file holds
    assert [f.id for f in frames] == list(range(3 * len(want)))
    assert source.stats.reconnects >= 1


def test_pure_red_image_reads_back_as_rgb(tmp_path):
    path = write_image(tmp_path / "red.jpg", (255, 0, 0))
    with open_source(path) as source:  # a Path works as well as a str
        frame = source.read(timeout=2)
    assert frame.rgb[10, 10].tolist() == pytest.approx([255, 0, 0], abs=3)


ERRORS = [
    ("missing file", lambda p: str(p / "nope.mp4"), "no such file"),
    ("empty folder", lambda p: str(p), "no images"),
    ("unknown scheme", lambda p: "ftp://cams.local/front", "unknown scheme 'ftp'"),
    ("undecodable image", lambda p: str(_write(p / "broken.jpg", b"garbage")), "cannot read or decode"),
    ("undecodable video", lambda p: str(_write(p / "broken.avi", b"garbage" * 100)), "cannot open"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, make_spec, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_a_source_that_can_never_work_raises_source_error_naming_it(tmp_path, case, make_spec, message):
    (tmp_path / "readme.txt").write_text("no images here")
    spec = make_spec(tmp_path)
    with pytest.raises(SourceError, match=message) as err:
        open_source(spec)
    assert spec in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"stall_timeout": 0}, "stall_timeout"),
    ({"backoff": (0.0, 1.0)}, "backoff"),
    ({"backoff": (2.0, 1.0)}, "backoff"),
    ({"jitter": 2.0}, "jitter"),
    ({"prefetch": 0}, "prefetch"),
])
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        open_source("0", capture_factory=SyntheticCamera(), **kwargs)


def test_stream_credentials_never_reach_frames_logs_or_errors(caplog):
    camera = SyntheticCamera([("frames", 2), ("fail", 0)], period=0.002)
    with caplog.at_level(logging.INFO, logger="dkit.edge.sources"):
        with open_source("rtsp://admin:hunter2@10.0.0.7/live", capture_factory=camera, **FAST) as source:
            assert source.kind == "stream" and source.live
            frames = [source.read(timeout=3) for _ in range(4)]
    assert {f.source for f in frames} == {"rtsp://***@10.0.0.7/live"}
    assert caplog.records and not any("hunter2" in r.getMessage() for r in caplog.records)
    with pytest.raises(SourceError) as err:
        open_source("gopher://admin:hunter2@host/x")
    assert "hunter2" not in str(err.value)


def test_a_real_http_stream_that_goes_down_comes_back(tmp_path):
    """OpenCV's own capture reading a video over HTTP from a loopback server that stops, then starts again."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    hits: list[float] = []  # when each GET arrived

    class Quiet(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(time.time())
            super().do_GET()

        def log_message(self, *args):
            pass

    build_video(tmp_path)
    clip = next(tmp_path.glob("*.avi"))
    handler = functools.partial(Quiet, directory=str(tmp_path))

    def serve(port: int) -> ThreadingHTTPServer:
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = serve(0)
    port = server.server_address[1]
    events: list[str] = []
    with open_source(f"http://127.0.0.1:{port}/{clip.name}", stall_timeout=2.0, backoff=(0.1, 0.3),
                     on_event=lambda kind, detail: events.append(kind)) as source:
        assert source.live and source.kind == "stream"
        first = source.read(timeout=20)
        assert first is not None and first.rgb.shape[2] == 3
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + 20
        while "disconnected" not in events and time.monotonic() < deadline:
            try:
                source.read(timeout=0.2)
            except TimeoutError:
                pass
        assert "disconnected" in events
        down_at = time.time()
        time.sleep(0.5)  # a few failed reopens while the server is down
        assert not [t for t in hits if t > down_at]  # nothing served while it was down
        server = serve(port)
        try:
            frame = None
            while not [t for t in hits if t > down_at] or frame is None or frame.timestamp < min(
                    t for t in hits if t > down_at):
                frame = source.read(timeout=20)  # frames from the restarted server
                assert frame is not None
            assert "reconnected" in events and source.stats.reconnects >= 1 and frame.id > first.id
        finally:
            server.shutdown()
            server.server_close()
