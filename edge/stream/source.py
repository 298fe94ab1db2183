"""What every frame source shares: the Frame it delivers, its counters, its state, the hand-off buffer between its
capture thread and the consumer, and the consumer's side (read, close, iteration). The two policies over it are
dkit.edge.stream.live.LiveSource (camera, stream: newest frame only, reconnects) and
dkit.edge.stream.files.FileSource (video file, folder, image: every frame in order); open_source
(dkit.edge.stream.sources) picks one and starts it.

A source's state (SourceState, `Source.state`) is what its policy switches on:

    live:  CONNECTING --frame--> UP --fails or stalls--> DOWN --frame--> UP ...     reconnects forever
           CONNECTING --fails--> RETRYING --fails--> ... --open_tries used up--> GAVE_UP
           RETRYING --frame--> UP
    file:  UP --end of file or a decoder error--> ENDED
    both:  any --close--> CLOSED, except GAVE_UP; a give-up ending after a close leaves CLOSED, and read raises

A GAVE_UP source stays so after close(): read() keeps raising SourceError.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

logger = logging.getLogger("dkit.edge.stream.sources")  # one logger for every source, as before the split

EVENTS = ("disconnected", "reconnected", "stalled", "corrupt", "eof")


class SourceError(Exception):
    """A source that can never work: no such file, a folder without images, an unknown URL scheme."""


class SourceState(enum.Enum):
    """Where a source is (the module docstring draws the transitions); `Source.state` says it."""

    CONNECTING = "connecting"  # live: the first open, no frame yet
    RETRYING = "retrying"  # live: tries failed and not one frame yet; each counts against open_tries
    UP = "up"  # frames coming: a live source connected, a file being read
    DOWN = "down"  # live: an outage after frames; reopened with backoff, forever
    GAVE_UP = "gave_up"  # live: open_tries used up without a frame; read() raises SourceError
    ENDED = "ended"  # file: end of file (or a decoder error); read() returns None once the queue is drained
    CLOSED = "closed"  # close() was called


class Capture(Protocol):
    """What a capture factory returns: cv2.VideoCapture or anything that reads like it."""

    def read(self) -> tuple[bool, np.ndarray | None]:
        """(ok, BGR frame): ok False at the end of a file or when the device is gone."""

    def release(self) -> None:
        """Let go of the device or file."""


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
        """The counters as a plain dict (for a stats line)."""
        return dataclasses.asdict(self)


_END, _TIMEOUT = object(), object()


@dataclass(frozen=True)
class Captured:
    """A frame as its capture thread hands it to the consumer (read() makes the Frame, with its id)."""

    timestamp: float
    rgb: np.ndarray  # (H, W, 3) uint8 RGB
    name: str | None


class _Buffer:
    """Bounded hand-off from the capture thread to the consumer.

    drop_oldest=True (live): put() never waits, it evicts the oldest item(s) and says how many.
    drop_oldest=False (files): put() waits for room. close() wakes everyone; finish() marks the end.
    """

    def __init__(self, capacity: int, drop_oldest: bool) -> None:
        self._items: deque[Captured] = deque()
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self._cond = threading.Condition(threading.RLock())  # re-entrant: close() may run in a signal handler
        self._closed = False
        self._finished = False

    def put(self, item: Captured) -> int | None:
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


def to_rgb(bgr: object) -> tuple[np.ndarray | None, str]:
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


def release(cap: Capture) -> None:
    """cap.release(), a failure logged rather than raised (a broken driver must not take the capture thread down)."""
    try:
        cap.release()
    except Exception as e:
        logger.warning("release() of a capture failed: %s", e)


class Source(abc.ABC):
    """An iterator of Frame with a capture thread behind it: the consumer's side, shared by both policies (LiveSource,
    FileSource). Build one with dkit.edge.stream.sources.open_source(), which also starts it."""

    live: bool  # the policy: True for LiveSource (newest frame, reconnects), False for FileSource (every frame)

    def __init__(self, spec: str, kind: str, *, capacity: int, state: SourceState,
                 on_event: EventCallback | None) -> None:
        self.spec = spec  # credentials removed
        self.kind = kind
        self._on_event = on_event
        self._stats = SourceStats()
        # stats, state, the live policy's current attempt; re-entrant (as the buffer's): close() runs in a signal
        # handler, on the main thread, which may be inside read() or `stats` holding this lock when SIGINT lands
        self._lock = threading.RLock()
        self._state = state
        self._gave_up_reason: str | None = None  # what read() raises once the state is GAVE_UP
        self._buffer = _Buffer(capacity, drop_oldest=self.live)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_id = 0
        self._last_corrupt_log = 0.0

    # -- public ------------------------------------------------------------------------------------------------------

    def start(self) -> Source:
        """Start the capture thread (open_source does it); returns the source. RuntimeError on a second call."""
        if self._threads:
            raise RuntimeError(f"{self.spec}: already started")
        self._start_thread(self._run)
        return self

    @property
    def state(self) -> SourceState:
        """Where the source is now (SourceState)."""
        with self._lock:
            return self._state

    @property
    def media_fps(self) -> float | None:
        """A video file read in order (live=False): the rate its frames were recorded at (the container's, through
        OpenCV's CAP_PROP_FPS), every frame being delivered. None for cameras, streams, folders and images (a
        live source's rate is what it delivers: measure it from Frame.timestamp)."""
        return None

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
        if not isinstance(item, Captured):
            with self._lock:
                state, reason = self._state, self._gave_up_reason
            if state is SourceState.GAVE_UP or reason is not None:  # given up, also when close() came in between
                raise SourceError(reason)
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
                if self._state is not SourceState.GAVE_UP:
                    self._state = SourceState.CLOSED
                self._closing()
        if first:
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
        return f"Source({self.spec!r}, kind={self.kind!r}, live={self.live})"

    # -- for the policies ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _run(self) -> None:
        """The capture thread's body: read frames into the buffer until the end or close()."""

    @abc.abstractmethod
    def _closing(self) -> None:
        """close() was called (under the lock, once): let the policy's threads know."""

    def _start_thread(self, target: Callable[..., None], *args: object) -> None:
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
