"""Frame sources for the device: camera, RTSP/HTTP stream, video file, image folder, single image.

    from dkit.edge.stream.sources import open_source

    with open_source("0") as source:                 # camera 0; also "rtsp://cam/stream", "clip.mp4", "shots/", "a.jpg"
        for frame in source:                         # Frame(id, timestamp, rgb (H, W, 3) uint8 RGB, source, name)
            handle(frame.rgb)
        print(source.stats.as_dict())                # read, delivered, dropped_stale, corrupt, reconnects, ...

Two policies, picked by `live` (default: camera and stream are live, files are not): LiveSource
(dkit.edge.stream.live) and FileSource (dkit.edge.stream.files), over the buffer and consumer's side they share
(dkit.edge.stream.source). `source.state` (SourceState) says where one is: CONNECTING, RETRYING, UP, DOWN,
GAVE_UP (live), UP, ENDED (files), CLOSED; dkit.edge.stream.source draws the transitions.

- LIVE: a capture thread keeps only the latest frame in a slot of one; a newer frame replaces an unread
  one (counted as `dropped_stale`), so a slow consumer always gets the newest frame and latency never
  grows. A camera or stream that fails to open, fails to read or sends no good frame for `stall_timeout`
  seconds is dropped and reopened with exponential backoff (`backoff=(initial, max)` seconds, plus up to
  `jitter` of the delay at random); the consumer just waits and frames resume, no restart needed.
  That is for a source that has worked: one that never delivers a frame (no such camera index, a wrong URL)
  is given `open_tries` tries (default 3; 0: try forever), one warning line each, then read() raises
  SourceError naming it. OpenCV's and FFmpeg's own messages about failed opens are silenced (set
  OPENCV_LOG_LEVEL or OPENCV_FFMPEG_LOGLEVEL to see them).
  A read() stuck inside OpenCV cannot be interrupted: that capture thread is abandoned (it releases its
  capture when the read returns) and a fresh one is started, at most MAX_STUCK_READERS at a time.
  A video file opened with live=True plays like a camera, in a loop (end of file = reconnect).
- FILE (video file, folder, single image): every frame is delivered in order; the reader thread decodes
  ahead into a bounded queue of `prefetch` frames and waits when it is full; end of file ends iteration.

Frames that are not (H, W, 3) uint8 (None, empty, wrong shape or dtype) and unreadable image files are
counted as `corrupt` and skipped. `on_event(kind, detail)` hears "disconnected", "reconnected", "stalled",
"corrupt" and "eof" (from the capture threads; every event is also logged). `close()` may be called from
any thread or a signal handler; it wakes a consumer waiting in read() at once, then waits up to `timeout`
seconds for the capture threads to release their captures (pass 0 in a signal handler: the handler runs on
the thread it interrupted, so a wait there delays the reader too):

    signal.signal(signal.SIGINT, lambda *_: source.close(timeout=0))

then call close() again on the main thread before the program ends: it waits for the threads, so none is inside
OpenCV when the interpreter shuts down (that aborts the process); `running` says whether one is still alive.
Image files are decoded with dkit.edge.images.decode.decode_image: transparency composited over white, as in training.

Credentials in a stream URL (rtsp://user:pass@host) never reach logs, errors or `Frame.source`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import cv2

from dkit.edge.stream.files import IMAGE_EXTENSIONS, FileSource, decode, images, media_fps, open_now, video_frames
from dkit.edge.stream.live import MAX_STUCK_READERS, LiveSource
from dkit.edge.stream.source import (
    EVENTS,
    BackoffWait,
    Capture,
    CaptureFactory,
    Clock,
    EventCallback,
    Frame,
    Source,
    SourceError,
    SourceState,
    SourceStats,
)

__all__ = ["EVENTS", "IMAGE_EXTENSIONS", "MAX_STUCK_READERS", "STREAM_SCHEMES", "BackoffWait", "Capture",
           "CaptureFactory", "Clock", "EventCallback", "FileSource", "Frame", "LiveSource", "Source", "SourceError",
           "SourceState", "SourceStats", "open_source"]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "rtp", "srt")
_decode = decode  # tools/arm64 decode test images as the device does


def _redact(spec: str) -> str:
    """rtsp://user:secret@host/x -> rtsp://***@host/x"""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1***@", spec)


def _classify(spec: str, name: str) -> tuple[str, str]:
    """spec -> (kind, target): camera, stream, video, folder or image."""
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source spec: expected a camera index ('0'), a stream URL, a video, a folder or image")
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "camera", spec
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        if scheme in STREAM_SCHEMES:
            return "stream", spec
        if scheme != "file":
            raise SourceError(f"{name}: unknown scheme {scheme!r}; expected a camera index ('0'), "
                              f"{', '.join(s + '://' for s in STREAM_SCHEMES)}, a video file, a folder or an image")
        spec = spec.split("://", 1)[1]
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", str(path)
    if path.is_file():
        return ("image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"), str(path)
    raise SourceError(f"{name}: no such file or folder")


FFMPEG_QUIET = "8"  # AV_LOG_FATAL: FFmpeg's "Connection refused" / "Cannot open video device" lines are ours to say
_quiet_lock = threading.Lock()
_quiet_count = 0  # live opens in progress with OpenCV's log silenced
_quiet_saved: int | None = None


class _QuietOpenCV:
    """OpenCV's log silenced while a live capture opens (its WARN/ERROR flood for a camera index that is not there),
    restored when the last concurrent open ends; left alone when the user set OPENCV_LOG_LEVEL. Also sets FFmpeg's
    log level through OPENCV_FFMPEG_LOGLEVEL (read by OpenCV once per process) unless the user set it."""

    def __enter__(self) -> None:
        global _quiet_count, _quiet_saved
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
        self.active = "OPENCV_LOG_LEVEL" not in os.environ
        if self.active:
            with _quiet_lock:
                if _quiet_count == 0:
                    _quiet_saved = cv2.utils.logging.getLogLevel()
                    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
                _quiet_count += 1

    def __exit__(self, *exc: object) -> None:
        global _quiet_count
        if self.active:
            with _quiet_lock:
                _quiet_count -= 1
                if _quiet_count == 0 and _quiet_saved is not None:
                    cv2.utils.logging.setLogLevel(_quiet_saved)


def _default_factory(kind: str, stall_timeout: float) -> CaptureFactory:
    """cv2.VideoCapture for `kind`: an int index for cameras, FFmpeg with open/read timeouts for streams."""

    def factory(target: str) -> Capture:
        if kind == "camera":
            with _QuietOpenCV():
                cap = cv2.VideoCapture(int(target) if target.isdigit() else target)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the driver allows it: no queue of old frames
            return cap
        if kind == "stream":
            ms = int(stall_timeout * 800)  # give up inside the driver before the stall watch abandons the thread
            with _QuietOpenCV():
                return cv2.VideoCapture(target, cv2.CAP_FFMPEG,
                                        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        return cv2.VideoCapture(target)

    return factory


def open_source(spec: str | int | Path, *, live: bool | None = None, stall_timeout: float = 5.0,
                backoff: tuple[float, float] = (0.5, 10.0), jitter: float = 0.1, prefetch: int = 4,
                capture_factory: CaptureFactory | None = None, on_event: EventCallback | None = None,
                clock: Clock = time.monotonic, backoff_wait: BackoffWait = threading.Event.wait,
                open_tries: int = 3) -> Source:
    """Open a camera index ("0", "/dev/video0"), stream URL (rtsp://, http(s)://, ...), video file, image folder
    or image, and start reading it. See the module docstring for the two policies and the arguments.

    `capture_factory(spec) -> Capture` replaces cv2.VideoCapture (camera, stream, video; a capture whose
    isOpened() is False counts as a failed open). Raises SourceError for a source that can never work.
    `open_tries` (live): tries (opens, or opens that stalled or failed before a frame) a source that never
    delivered a frame gets before read() raises SourceError; 0: try forever. A source that has delivered frames
    reconnects forever.

    Hooks for tests (live policy only; the defaults are the real thing): `clock() -> seconds` is the monotonic
    clock the stall watch measures `stall_timeout` with (default time.monotonic; the watch still sleeps in real
    time, at most `stall_timeout` at a go, between looks at it); `backoff_wait(stop, seconds)` waits out one
    back-off delay before a reconnect, `stop` being the threading.Event that close() sets (default
    threading.Event.wait, which returns at once on close()).
    """
    spec = str(spec)
    name = _redact(spec)
    if stall_timeout <= 0:
        raise ValueError(f"stall_timeout must be > 0 s, got {stall_timeout}")
    if len(backoff) != 2 or not 0 < backoff[0] <= backoff[1]:
        raise ValueError(f"backoff must be (initial, max) seconds with 0 < initial <= max, got {backoff}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be a fraction of the delay in [0, 1], got {jitter}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1 frame, got {prefetch}")
    if open_tries < 0:
        raise ValueError(f"open_tries must be >= 0 (0: forever), got {open_tries}")
    kind, target = _classify(spec, name)
    if live is None:
        live = kind in ("camera", "stream")
    if live and kind in ("folder", "image"):
        raise ValueError(f"{name}: live=True needs a camera, stream or video file, not an image {kind}")
    factory = capture_factory or _default_factory(kind, stall_timeout)
    if live:
        return LiveSource(name, kind, target, stall_timeout=stall_timeout, backoff=backoff, jitter=jitter,
                          factory=factory, on_event=on_event, clock=clock, backoff_wait=backoff_wait,
                          open_tries=open_tries).start()
    if kind in ("folder", "image"):
        return FileSource(name, kind, images(target, kind, name), None, prefetch=prefetch, on_event=on_event).start()
    cap = open_now(factory, target, name, kind)
    return FileSource(name, kind, video_frames(cap), cap, prefetch=prefetch, on_event=on_event,
                      media_fps=media_fps(cap)).start()
