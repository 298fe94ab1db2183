"""The file policy (video file, image folder, single image): every frame in order, decoded ahead into a bounded queue.

The reader thread decodes up to `prefetch` frames ahead and waits when the queue is full; the end of the file (or a
decoder error, logged and kept in the stats) ends it: the state goes UP -> ENDED (dkit.edge.stream.source.SourceState)
and the consumer sees the end once the queue is drained. open_source (dkit.edge.stream.sources) builds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from dkit.edge.images.decode import decode_image
from dkit.edge.stream.source import (
    Capture,
    Captured,
    CaptureFactory,
    EventCallback,
    Source,
    SourceError,
    SourceState,
    logger,
    release,
    to_rgb,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class FileSource(Source):
    """Every frame of `frames` ((BGR or None, file name) pairs), in order, then the end; `cap` (a video's capture) is
    released when they are read. Build it with open_source()."""

    live = False

    def __init__(self, spec: str, kind: str, frames: Iterator[tuple[object, str | None]], cap: Capture | None, *,
                 prefetch: int, on_event: EventCallback | None, media_fps: float | None = None) -> None:
        super().__init__(spec, kind, capacity=prefetch, state=SourceState.UP, on_event=on_event)
        self._frames = frames
        self._cap = cap
        self._media_fps = media_fps

    @property
    def media_fps(self) -> float | None:
        """A video file's own frame rate (the container's, through OpenCV's CAP_PROP_FPS), every frame being
        delivered; None for folders and images, and for a video whose container gives none."""
        return self._media_fps

    def _closing(self) -> None:
        """Nothing more to tell: the reader thread stops at the closed buffer or at its next frame."""

    def _run(self) -> None:
        """Read every frame into the queue, in order; then the end (ENDED, "eof") unless closed first."""
        detail = "end of file"
        try:
            for bgr, name in self._frames:
                if self._stop.is_set():
                    break
                with self._lock:
                    self._stats.read += 1
                rgb, why = to_rgb(bgr)
                if rgb is None:
                    self._corrupt(f"skipping {name}: unreadable image" if name else f"skipping frame: {why}", True)
                    continue
                if self._buffer.put(Captured(time.time(), rgb, name)) is None:
                    break
        except Exception as e:  # a decoder error ends the file; the consumer sees a clean end and stats say why
            detail = f"stopped by {type(e).__name__}: {e}"
            with self._lock:
                self._stats.last_error = detail
            logger.error("%s: %s", self.spec, detail)
        finally:
            if self._cap is not None:
                release(self._cap)
            with self._lock:
                ended = self._state is SourceState.UP  # not CLOSED
                if ended:
                    self._state = SourceState.ENDED
            self._buffer.finish()
        if ended:
            self._emit("eof", detail, logging.INFO)


def media_fps(cap: Capture) -> float | None:
    """A video file's own frame rate (OpenCV's CAP_PROP_FPS, from the container), or None when it gives none."""
    get = getattr(cap, "get", None)
    try:
        fps = float(get(cv2.CAP_PROP_FPS)) if get is not None else 0.0
    except (cv2.error, TypeError, ValueError):
        return None
    return fps if 0 < fps <= 1000 else None


def decode(path: Path) -> np.ndarray | None:
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


def images(target: str, kind: str, name: str) -> Iterator[tuple[np.ndarray | None, str]]:
    """The image files of a folder (by name) or the one image, decoded lazily: (bgr or None, file name)."""
    path = Path(target)
    if kind == "image":
        if decode(path) is None:
            raise SourceError(f"{name}: cannot read or decode this image")
        paths = [path]
    else:
        paths = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                       key=lambda p: p.name)
        if not paths:
            raise SourceError(f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return ((decode(p), p.name) for p in paths)


def open_now(factory: CaptureFactory, target: str, name: str, kind: str) -> Capture:
    """Open a non-live capture before returning, so that a video OpenCV cannot read fails at once."""
    try:
        cap = factory(target)
    except Exception as e:
        raise SourceError(f"{name}: cannot open this {kind} ({type(e).__name__}: {e})") from e
    is_opened = getattr(cap, "isOpened", None)
    if is_opened is not None and not is_opened():
        release(cap)
        raise SourceError(f"{name}: cannot open this {kind} (OpenCV could not open or decode it)")
    return cap


def video_frames(cap: Capture) -> Iterator[tuple[object, None]]:
    """Frames of an open video until read() says there are no more."""
    while True:
        ok, bgr = cap.read()
        if not ok:
            return
        yield bgr, None
