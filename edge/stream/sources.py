"""Frame sources for the device: camera, RTSP/HTTP stream, video file, image folder, single image.

    from dkit.edge.stream.sources import open_source

    with open_source("0") as source:                 # camera 0; also "rtsp://cam/stream", "clip.mp4", "shots/", "a.jpg"
        for frame in source:                         # Frame(id, timestamp, rgb (H, W, 3) uint8 RGB, source, name)
            handle(frame.rgb)
        print(source.stats.as_dict())                # read, delivered, dropped_stale, corrupt, reconnects, ...

Two policies, picked by `live` (default: camera and stream are live, files are not):

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

import dataclasses
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from dkit.edge.images.decode import decode_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "rtp", "srt")
MAX_STUCK_READERS = 3  # abandoned capture threads still blocked in read(); no new one starts beyond this
EVENTS = ("disconnected", "reconnected", "stalled", "corrupt", "eof")


class SourceError(Exception):
    """A source that can never work: no such file, a folder without images, an unknown URL scheme."""


class Capture(Protocol):
    """What a capture factory returns: cv2.VideoCapture or anything that reads like it."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[str], Capture]
EventCallback = Callable[[str, str], None]
Clock = Callable[[], float]
BackoffWait = Callable[[threading.Event, float], object]


@dataclass(frozen=True)
class Frame:
    """One delivered frame. `id` counts delivered frames of its source: 0, 1, 2, ..."""

    id: int
    timestamp: float  # time.time() when it was captured
    rgb: np.ndarray  # (H, W, 3) uint8, RGB order
    source: str  # the source spec, credentials removed
    name: str | None = None  # file name, for folder and image sources

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"Frame.rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")


@dataclass
class SourceStats:
    """Counters of one source. `read` counts frames the capture returned (corrupt ones included)."""

    read: int = 0
    delivered: int = 0
    dropped_stale: int = 0  # replaced in the latest-frame slot before anyone read them
    corrupt: int = 0
    reconnects: int = 0  # outages recovered from
    disconnects: int = 0  # outages (the first failed open included)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_END, _TIMEOUT = object(), object()


@dataclass(frozen=True)
class _Captured:
    timestamp: float
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    name: str | None


class _Buffer:
    """Bounded hand-off from the capture thread to the consumer.

    drop_oldest=True (live): put() never waits, it evicts the oldest item(s) and says how many.
    drop_oldest=False (files): put() waits for room. close() wakes everyone; finish() marks the end.
    """

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        self._items: deque[_Captured] = deque()
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self._cond = threading.Condition(threading.RLock())  # re-entrant: close() may run in a signal handler
        self._closed = False
        self._finished = False

    def put(self, item: _Captured) -> int | None:
        """Add `item`; returns how many stale items it replaced, or None when the buffer is closed."""
        with self._cond:
            dropped = 0
            while len(self._items) >= self._capacity and not self._closed:
                if not self._drop_oldest:
                    self._cond.wait()
                    continue
                self._items.popleft()
                dropped += 1
            if self._closed:
                return None
            self._items.append(item)
            if len(self._items) == 1:  # the consumer may be waiting for it
                self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None) -> object:
        """The oldest item, _END (finished and drained, or closed) or _TIMEOUT."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return _END
                if self._items:
                    if len(self._items) == self._capacity and not self._drop_oldest:  # the producer may wait
                        self._cond.notify_all()
                    return self._items.popleft()
                if self._finished:
                    return _END
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return _TIMEOUT
                    self._cond.wait(remaining)

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _to_rgb(bgr: object) -> tuple[np.ndarray | None, str]:
    """OpenCV BGR frame -> ((H, W, 3) uint8 RGB copy, ""), or (None, why it is corrupt)."""
    if bgr is None:
        return None, "no image (None)"
    if not isinstance(bgr, np.ndarray):
        return None, f"not an array ({type(bgr).__name__})"
    if bgr.size == 0:
        return None, f"empty image {bgr.shape}"
    if bgr.dtype != np.uint8:
        return None, f"dtype {bgr.dtype}, expected uint8"
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        return None, f"shape {bgr.shape}, expected (H, W, 3)"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ""


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


def _release(cap: Capture) -> None:
    try:
        cap.release()
    except Exception as e:  # a broken driver must not take the capture thread down
        logger.warning("release() of a capture failed: %s", e)


def _decode(path: Path) -> np.ndarray | None:
    """Image file -> (H, W, 3) uint8 BGR, transparency over white as in training (dkit.edge.images.decode.decode_image),
    or None when it cannot be read or decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode(fromfile) also works with non-ASCII paths
    except OSError:
        return None
    try:
        return decode_image(data)
    except cv2.error:
        return None


class Source:
    """An iterator of Frame with a capture thread behind it. Build it with open_source()."""

    def __init__(self, spec: str, kind: str, target: str, *, live: bool, stall_timeout: float,
                 backoff: tuple[float, float], jitter: float, prefetch: int, factory: CaptureFactory,
                 on_event: EventCallback | None, clock: Clock = time.monotonic,
                 backoff_wait: BackoffWait = threading.Event.wait, open_tries: int = 3) -> None:
        self.spec = spec  # credentials removed
        self.kind = kind
        self._live = live
        self._target = target
        self._stall_timeout = stall_timeout
        self._backoff = backoff
        self._jitter = jitter
        self._factory = factory
        self._on_event = on_event
        self._clock = clock  # the stall watch's clock
        self._backoff_wait = backoff_wait  # (stop event, seconds): one back-off delay, ended early by close()
        self._open_tries = open_tries  # tries for a live source that never delivered a frame (0: forever)
        self._gave_up: str | None = None  # why a live source that never worked was given up (read() raises it)
        self._stats = SourceStats()
        # stats, generation, connection state; re-entrant (as the buffer's): close() runs in a signal handler, on
        # the main thread, which may be inside read() or `stats` holding this lock when SIGINT lands
        self._lock = threading.RLock()
        self._buffer = _Buffer(1 if live else prefetch, drop_oldest=live)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a capture thread failed, or close()
        self._threads: list[threading.Thread] = []
        self._next_id = 0
        self._gen = 0  # live: the capture thread of this generation is the current one
        self._failure: str | None = None
        self._progress = 0.0  # monotonic time of the last good frame (or of the current open)
        self._up: bool | None = None  # None: first connection not made yet
        self._up_gen = -1
        self._random = random.Random()
        self._last_corrupt_log = 0.0
        self._media_fps: float | None = None  # a video file's own rate (open_source sets it)

    # -- public ------------------------------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True: latest-frame policy with reconnects. False: every frame in order, ends at end of file."""
        return self._live

    @property
    def media_fps(self) -> float | None:
        """A video file read in order (live=False): the rate its frames were recorded at (the container's, through
        OpenCV's CAP_PROP_FPS), every frame being delivered. None for cameras, streams, folders and images (a
        live source's rate is what it delivers: measure it from Frame.timestamp)."""
        return self._media_fps

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    @property
    def closed(self) -> bool:
        """True once close() was called (its threads may still be ending: see `running`)."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """True while any of this source's capture threads is alive (before close(), or one still inside a
        driver's read() after it)."""
        return any(t.is_alive() for t in self._threads)

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame (live: the newest one); None at the end or once closed.

        Waits at most `timeout` seconds (None: until a frame, the end or close()), then raises TimeoutError.
        Raises SourceError for a live source given up after `open_tries` tries without a frame.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        item = self._buffer.get(timeout)
        if item is _TIMEOUT:
            raise TimeoutError(f"{self.spec}: no frame within {timeout} s")
        if not isinstance(item, _Captured):
            if self._gave_up is not None:
                raise SourceError(self._gave_up)
            return None
        with self._lock:
            frame_id, self._next_id = self._next_id, self._next_id + 1
            self._stats.delivered += 1
        return Frame(frame_id, item.timestamp, item.rgb, self.spec, item.name)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the capture thread(s) and release the capture; wakes a waiting read(). Idempotent, any thread.

        Waits up to `timeout` s for the threads to end and release their captures (0: do not wait, as in a signal
        handler); a thread stuck inside a driver's read() releases its capture when that read returns. A later
        close() waits again, so `close(timeout=0)` in a signal handler followed by `close()` on the main thread
        still joins the threads: a capture thread must not be inside OpenCV when the interpreter shuts down (a
        daemon thread coming back from native code then is ended by a forced unwind that aborts the process:
        "terminate called without an active exception"). `running` says whether any is still alive.
        """
        with self._lock:
            first = not self._stop.is_set()
            if first:
                self._stop.set()
                self._gen += 1  # every capture thread is now stale
        if first:
            self._wake.set()
            self._buffer.close()
        if timeout <= 0:
            return
        deadline = time.monotonic() + timeout
        while True:  # again until none is left: the supervisor may have started one as close() began
            stuck = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if not stuck or time.monotonic() >= deadline:
                break
            for thread in stuck:
                thread.join(max(0.0, deadline - time.monotonic()))
        if stuck:
            logger.warning("%s: %d capture thread(s) still blocked in read(); they release on return",
                           self.spec, len(stuck))

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        frame = self.read()
        if frame is None:
            raise StopIteration
        return frame

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Source({self.spec!r}, kind={self.kind!r}, live={self._live})"

    # -- shared ------------------------------------------------------------------------------------------------------

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=f"dkit-source-{self.kind}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _emit(self, kind: str, detail: str, level: int = logging.INFO) -> None:
        logger.log(level, "%s: %s: %s", self.spec, kind, detail)
        if self._on_event is not None:
            try:
                self._on_event(kind, detail)
            except Exception:
                logger.exception("%s: on_event(%r) raised", self.spec, kind)

    def _corrupt(self, detail: str, always_log: bool) -> None:
        with self._lock:
            self._stats.corrupt += 1
        now = time.monotonic()
        loud = always_log or now - self._last_corrupt_log > 5.0  # a broken camera must not flood the log
        if loud:
            self._last_corrupt_log = now
        self._emit("corrupt", detail, logging.WARNING if loud else logging.DEBUG)

    # -- file policy: every frame, in order ----------------------------------------------------------------------------

    def _run_file(self, frames: Iterator[tuple[object, str | None]], cap: Capture | None) -> None:
        detail = "end of file"
        try:
            for bgr, name in frames:
                if self._stop.is_set():
                    break
                with self._lock:
                    self._stats.read += 1
                rgb, why = _to_rgb(bgr)
                if rgb is None:
                    self._corrupt(f"skipping {name}: unreadable image" if name else f"skipping frame: {why}", True)
                    continue
                if self._buffer.put(_Captured(time.time(), rgb, name)) is None:
                    break
        except Exception as e:  # a decoder error ends the file; the consumer sees a clean end and stats say why
            detail = f"stopped by {type(e).__name__}: {e}"
            with self._lock:
                self._stats.last_error = detail
            logger.error("%s: %s", self.spec, detail)
        finally:
            if cap is not None:
                _release(cap)
            self._buffer.finish()
        if not self._stop.is_set():
            self._emit("eof", detail)

    # -- live policy: latest frame, reconnect with backoff ----------------------------------------------------------

    def _supervise(self) -> None:
        """Start a capture thread; when it fails or stalls, abandon it, back off and start another."""
        initial, longest = self._backoff
        delay, tries = initial, 0
        while True:
            with self._lock:
                if self._stop.is_set():
                    break
                self._gen += 1
                gen, self._failure, self._progress = self._gen, None, self._clock()
            self._wake.clear()
            stuck = sum(t.is_alive() for t in self._threads if t is not threading.current_thread())
            if stuck >= MAX_STUCK_READERS:
                reason, stalled = f"{stuck} capture threads still blocked in read()", False
            else:
                self._start(self._capture, gen)
                reason, stalled = self._watch(gen)
            with self._lock:
                if self._stop.is_set():
                    break
                self._gen += 1  # the old capture thread stops delivering now
                was_up, self._up = self._up, False
                self._stats.last_error = reason
                if was_up is not False:
                    self._stats.disconnects += 1
                if self._up_gen == gen:
                    delay = initial  # it worked for a while: start the backoff over
                never = self._up_gen < 0  # not one good frame yet, from any try
            tries += 1
            if stalled:
                self._emit("stalled", reason, logging.WARNING)
            if was_up is not False:
                self._emit("disconnected", reason, logging.DEBUG if never else logging.WARNING)
            elif not never:
                logger.info("%s: reconnect failed (%s); next try in %.2f s", self.spec, reason, delay)
            if never and self._give_up(tries, reason, delay):
                break
            self._backoff_wait(self._stop, delay * (1.0 + self._jitter * self._random.random()))
            delay = min(delay * 2.0, longest)

    def _give_up(self, tries: int, reason: str, delay: float) -> bool:
        """A source that never delivered a frame failed its try number `tries`: log it; True (and the consumer
        woken, to raise SourceError) once that was the last of `open_tries`."""
        of = f" of {self._open_tries}" if self._open_tries else ""
        if not self._open_tries or tries < self._open_tries:
            logger.warning("%s: try %d%s failed (%s); next try in %.2f s", self.spec, tries, of, reason, delay)
            return False
        hint = {"camera": "check the index (ls /dev/video*)",
                "stream": "check the URL and that the stream is up"}.get(self.kind, "check that OpenCV can read it")
        counted = f"{tries} {'try' if tries == 1 else 'tries'}"
        self._gave_up = (f"{self.kind} {self.spec}: no frame after {counted} ({reason}); {hint}, or give it more "
                         "tries with --open-tries N (0: forever)")
        self._buffer.finish()
        return True

    def _watch(self, gen: int) -> tuple[str, bool]:
        """Wait until the capture thread of `gen` fails or stalls, or close(): (reason, stalled)."""
        while not self._stop.is_set():
            with self._lock:
                failure, idle = self._failure, self._clock() - self._progress
            if failure is not None:
                return failure, False
            if idle >= self._stall_timeout:
                return f"no frame for {idle:.1f} s (stall_timeout={self._stall_timeout} s)", True
            self._wake.wait(self._stall_timeout - idle)
            self._wake.clear()  # safe: the failure itself is re-checked above under the lock
        return "closed", False

    def _fail(self, gen: int, reason: str) -> None:
        with self._lock:
            if gen != self._gen:
                return  # an abandoned capture thread: nobody waits for it
            self._failure = reason
        self._wake.set()

    def _capture(self, gen: int) -> None:
        """One connection: open, then read until a read fails or this generation is abandoned."""
        try:
            cap = self._factory(self._target)
            is_opened = getattr(cap, "isOpened", None)
            if is_opened is not None and not is_opened():
                _release(cap)
                self._fail(gen, "open failed")
                return
        except Exception as e:
            self._fail(gen, f"open failed: {type(e).__name__}: {e}")
            return
        try:
            while self._gen == gen and not self._stop.is_set():
                try:
                    ok, bgr = cap.read()
                except Exception as e:
                    self._fail(gen, f"read raised {type(e).__name__}: {e}")
                    return
                timestamp = time.time()
                if self._gen != gen:
                    return
                if not ok:
                    self._fail(gen, "read failed (end of stream or device gone)")
                    return
                with self._lock:
                    self._stats.read += 1
                rgb, why = _to_rgb(bgr)
                if rgb is None:
                    self._corrupt(f"skipping frame: {why}", False)
                    continue
                if not self._connected(gen):
                    return
                dropped = self._buffer.put(_Captured(timestamp, rgb, None))
                if dropped:
                    with self._lock:
                        self._stats.dropped_stale += dropped
        finally:
            _release(cap)

    def _connected(self, gen: int) -> bool:
        """A good frame arrived: progress for the stall watch, the end of an outage if there was one.
        False when this capture thread was abandoned meanwhile (its frame must not be delivered)."""
        with self._lock:
            if gen != self._gen:
                return False
            self._progress = self._clock()
            if self._up_gen == gen:
                return True
            self._up_gen, was_up, self._up = gen, self._up, True
            if was_up is False:
                self._stats.reconnects += 1
        if was_up is False:
            self._emit("reconnected", f"frames again (reconnect #{self.stats.reconnects})", logging.WARNING)
        else:
            logger.info("%s: connected", self.spec)
        return True


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
    source = Source(name, kind, target, live=live, stall_timeout=stall_timeout, backoff=backoff, jitter=jitter,
                    prefetch=prefetch, factory=factory, on_event=on_event, clock=clock, backoff_wait=backoff_wait,
                    open_tries=open_tries)
    if live:
        source._start(source._supervise)
    elif kind in ("folder", "image"):
        source._start(source._run_file, _images(target, kind, name), None)
    else:
        cap = _open_now(factory, target, name, kind)
        source._media_fps = _media_fps(cap)
        source._start(source._run_file, _video_frames(cap), cap)
    return source


def _media_fps(cap: Capture) -> float | None:
    """A video file's own frame rate (OpenCV's CAP_PROP_FPS, from the container), or None when it gives none."""
    get = getattr(cap, "get", None)
    try:
        fps = float(get(cv2.CAP_PROP_FPS)) if get is not None else 0.0
    except (cv2.error, TypeError, ValueError):
        return None
    return fps if 0 < fps <= 1000 else None


def _images(target: str, kind: str, name: str) -> Iterator[tuple[np.ndarray | None, str]]:
    """The image files of a folder (by name) or the one image, decoded lazily: (bgr or None, file name)."""
    path = Path(target)
    if kind == "image":
        if _decode(path) is None:
            raise SourceError(f"{name}: cannot read or decode this image")
        paths = [path]
    else:
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                       key=lambda p: p.name)
        if not paths:
            raise SourceError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return ((_decode(p), p.name) for p in paths)


def _open_now(factory: CaptureFactory, target: str, name: str, kind: str) -> Capture:
    """Open a non-live capture before returning, so that a video OpenCV cannot read fails at once."""
    try:
        cap = factory(target)
    except Exception as e:
        raise SourceError(f"{name}: cannot open this {kind} ({type(e).__name__}: {e})") from e
    is_opened = getattr(cap, "isOpened", None)
    if is_opened is not None and not is_opened():
        _release(cap)
        raise SourceError(f"{name}: cannot open this {kind} (OpenCV could not open or decode it)")
    return cap


def _video_frames(cap: Capture) -> Iterator[tuple[object, None]]:
    """Frames of an open video until read() says there are no more."""
    while True:
        ok, bgr = cap.read()
        if not ok:
            return
        yield bgr, None
