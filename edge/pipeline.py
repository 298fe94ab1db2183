"""source(s) -> runtime -> sinks, until the sources end or SIGINT/SIGTERM stops it, then one stats line.

    pipeline = Pipeline(runtime, [open_source("0"), open_source("rtsp://cam2/stream")],
                        [JsonlSink(sys.stdout, runtime), VideoSink("out.mp4", runtime)], max_fps=15)
    stats = pipeline.run()          # {"frames": ..., "fps": ..., "p50_ms": ..., "p99_ms": ..., "dropped_stale": ...}

Each round takes the newest frame of every source that has one (live sources keep only their latest frame,
dkit.edge.sources) and scores them together: one session.run for several cameras when the model has a dynamic
batch. `max_fps` caps the rounds per second (0: as fast as frames come). A source that ends (a file) leaves
the round; the pipeline ends when none is left. A dropped camera does not end it: its source reconnects and
frames resume. Latency is capture -> result. Statistics keep a bounded window of latencies, so memory stays
flat however long it runs.

Sinks: JsonlSink (one JSON object per frame: frame id, source, timestamp, latency, detections / classes /
scores), VideoSink (annotated video, written to a temporary file and renamed on close), WindowSink (a live
window; needs an OpenCV build with GUI support), CallbackSink (any function: the kiosk server uses it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import cv2
import numpy as np

from dkit.edge.runtime import Result, Runtime, RuntimeConfigError
from dkit.edge.sources import Frame, Source

log = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # latencies kept for the percentiles (the most recent)
POLL_S = 0.05  # how long a round waits for a frame before looking at the sources again


class Sink(Protocol):
    def write(self, frame: Frame, result: Result) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per scored frame, one per line, flushed at once (pipe it into anything)."""

    def __init__(self, stream: IO[str], runtime: Runtime):
        self.stream, self.classes, self.prompts = stream, runtime.classes, runtime.prompts

    def write(self, frame: Frame, result: Result) -> None:
        doc = {"source": frame.source, **({"name": frame.name} if frame.name else {}),
               **result.to_json(self.classes, self.prompts)}
        self.stream.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class CallbackSink:
    """Calls `fn(frame, result)` for every scored frame; an exception in it is logged, the pipeline goes on."""

    def __init__(self, fn: Callable[[Frame, Result], None]):
        self.fn = fn

    def write(self, frame: Frame, result: Result) -> None:
        try:
            self.fn(frame, result)
        except Exception:
            log.exception("sink callback failed on frame %d of %s", frame.id, frame.source)

    def close(self) -> None:
        pass


class VideoSink:
    """Annotated frames into a video file (the container from the extension: .mp4, .avi, ...), renamed into place
    on close, so an interrupted run never leaves a half-written file under the final name."""

    FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}

    def __init__(self, path: str | os.PathLike, runtime: Runtime, fps: float = 15.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise RuntimeConfigError(f"--save {self.path}: use a .mp4, .avi, .mkv or .mov file name")
        self.part = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.runtime, self.fps = runtime, fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None

    def write(self, frame: Frame, result: Result) -> None:
        image = annotate(frame.rgb, result, self.runtime)  # BGR
        h, w = image.shape[:2]
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.part), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeConfigError(f"--save {self.path}: OpenCV cannot write this kind of video here")
        if (w, h) != self.size:
            image = cv2.resize(image, self.size)
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.part, self.path)


class WindowSink:
    """A live window with the annotated frames (q or Esc closes it and stops the pipeline)."""

    def __init__(self, runtime: Runtime, title: str = "dkit", on_quit: Callable[[], None] | None = None):
        self.runtime, self.title, self.on_quit = runtime, title, on_quit
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise RuntimeConfigError("--show needs an OpenCV build with GUI support (pip install opencv-python "
                                     "instead of opencv-python-headless) and a display; use --save instead") from e

    def write(self, frame: Frame, result: Result) -> None:
        cv2.imshow(self.title, annotate(frame.rgb, result, self.runtime))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27) and self.on_quit is not None:
            self.on_quit()

    def close(self) -> None:
        cv2.destroyWindow(self.title)


def annotate(rgb: np.ndarray, result: Result, runtime: Runtime) -> np.ndarray:
    """(H, W, 3) BGR copy of the frame with the result drawn on it: boxes, top classes or best prompt scores."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    lines: list[str] = []
    if result.detections is not None:
        d = result.detections
        for box, conf, cls in zip(d.xyxy, d.confidence, d.class_id, strict=True):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            color = _color(int(cls))
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 2)
            label = f"{runtime.classes[int(cls)] if int(cls) < len(runtime.classes) else cls} {conf:.2f}"
            cv2.putText(image, label, (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    elif result.top is not None:
        lines = [f"{runtime.classes[i] if i < len(runtime.classes) else i} {p:.2f}" for i, p in result.top[:3]]
    elif result.scores is not None and runtime.prompts is not None:
        best = np.argsort(-result.scores)[:3]
        lines = [f"{runtime.prompts[i]}: {result.scores[i]:.0f}" for i in best]
    for n, text in enumerate(lines):
        cv2.putText(image, text, (8, 22 + 22 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(image, f"{result.latency_ms:.0f} ms", (8, image.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (0, 255, 255), 1, cv2.LINE_AA)
    return image


def _color(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(i)
    return tuple(int(v) for v in rng.integers(64, 256, 3))  # type: ignore[return-value]


class Pipeline:
    def __init__(self, runtime: Runtime, sources: list[Source], sinks: list[Sink], *, max_fps: float = 0.0,
                 max_frames: int = 0):
        if not sources:
            raise RuntimeConfigError("no source to read frames from")
        self.runtime, self.sources, self.sinks = runtime, list(sources), list(sinks)
        self.max_fps, self.max_frames = max_fps, max_frames
        self.stopped = threading.Event()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.frames = 0
        self.rounds = 0
        self.started = 0.0

    def stop(self, *_args) -> None:
        """Stop after the current round; safe from a signal handler or another thread."""
        self.stopped.set()
        for source in self.sources:
            source.close(timeout=0)

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the pipeline gracefully (main thread only)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.stop)

    def run(self) -> dict:
        self.started = time.perf_counter()
        active = list(self.sources)
        next_round = time.perf_counter()
        try:
            while active and not self.stopped.is_set():
                frames = self._gather(active)
                if not frames:
                    continue
                results = self.runtime.batch([f.rgb for f in frames], [f.id for f in frames],
                                             [f.timestamp for f in frames])
                for frame, result in zip(frames, results, strict=True):
                    self.latencies.append(result.latency_ms)
                    for sink in self.sinks:
                        sink.write(frame, result)
                self.frames += len(frames)
                self.rounds += 1
                if self.max_frames and self.frames >= self.max_frames:
                    break
                if self.max_fps:
                    next_round += 1.0 / self.max_fps
                    delay = next_round - time.perf_counter()
                    if delay > 0:
                        self.stopped.wait(delay)
                    else:
                        next_round = time.perf_counter()
        except BrokenPipeError:
            log.info("the output pipe was closed: stopping")
        finally:
            for sink in self.sinks:
                sink.close()
            for source in self.sources:
                source.close()
        return self.stats()

    def _gather(self, active: list[Source]) -> list[Frame]:
        """The newest frame of each active source that has one; waits up to POLL_S when none has."""
        frames: list[Frame] = []
        for source in list(active):
            try:
                # files are read in order, never stale: wait for them; a live source gives what it has now
                wait = not source.live or (not frames and source is active[-1])
                frame = source.read(timeout=POLL_S if wait else 0.0)
            except TimeoutError:
                continue
            if frame is None:  # ended (end of a file) or closed
                active.remove(source)
            else:
                frames.append(frame)
        return frames

    def stats(self) -> dict:
        seconds = time.perf_counter() - self.started if self.started else 0.0
        lat = np.asarray(self.latencies, np.float64)
        totals = {"read": 0, "dropped_stale": 0, "corrupt": 0, "reconnects": 0, "disconnects": 0}
        for source in self.sources:
            s = source.stats.as_dict()
            for key in totals:
                totals[key] += int(s.get(key, 0))
        return {"frames": self.frames, "seconds": round(seconds, 3),
                "fps": round(self.frames / seconds, 2) if seconds else 0.0,
                "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                **totals, "provider": self.runtime.provider, "stopped": self.stopped.is_set()}
