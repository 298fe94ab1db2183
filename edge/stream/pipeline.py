"""source(s) -> runtime -> sinks, until the sources end or SIGINT/SIGTERM stops it, then one stats line.

    from dkit.edge.stream.sources import open_source
    from dkit.edge.stream.pipeline import Pipeline, JsonlSink, VideoSink

    pipeline = Pipeline(runtime, [open_source("0"), open_source("rtsp://cam2/stream")],
                        [JsonlSink(sys.stdout), VideoSink("out.mp4"), lambda frame, result: print(result.top)],
                        max_fps=15)
    stats = pipeline.run()          # {"frames": ..., "fps": ..., "p50_ms": ..., "infer_p50_ms": ..., ...}

Each round takes the newest frame of every source that has one (live sources keep only their latest frame,
dkit.edge.stream.sources) and scores them together: one session.run for several cameras when the model has a dynamic
batch. `max_fps` caps the rounds per second (0: as fast as frames come). A source that ends (a file) leaves
the round; the pipeline ends when none is left. A dropped camera does not end it: its source reconnects and
frames resume. Latency is capture -> result, and the stats split it in two (dkit.edge.infer.runtime.Result):
p50_ms / p95_ms / p99_ms are that whole latency; wait_p50_ms / wait_p95_ms the part before processing starts
(a folder's frames wait in the prefetch queue, a camera's in its slot, for the rounds before them);
infer_p50_ms / infer_p95_ms the part in pre-processing + model + post-processing, the figure a benchmark
quotes. Statistics keep a bounded window of each, so memory stays flat however long it runs.

Sinks are plain callables, `sink(frame, result)` once per scored frame (an object with the earlier
`write(frame, result)` works too); one with a `close()` is closed at the end. They are isolated from each other
(as Roboflow's multi_sink): a sink that raises neither stops the others nor the run; its error is logged with the
traceback the first time, then at most every SINK_LOG_S seconds with how many so far, and counted (`sink_errors`
in the stats, per sink in `Pipeline.sink_errors`). Two errors still end the run: RuntimeConfigError (a sink that
can never work here, e.g. a video OpenCV cannot write) and BrokenPipeError (the output pipe was closed). Class and
prompt names come from the Result (Result.classes, Result.prompts), so a sink needs no runtime.

Built-in sinks: JsonlSink (one JSON object per frame: frame id, source, timestamp, latency_ms, wait_ms, infer_ms,
detections / classes / scores), VideoSink (annotated video, written to a temporary file and renamed on close;
the video is the first frame's size, and a frame of another size is scaled to fit, aspect kept, and padded; it
plays at the rate given, a video file's own, or measured from the first frames' capture times for a live source),
WindowSink (a live window; needs an OpenCV build with GUI support and, on Linux, a display: DISPLAY or
WAYLAND_DISPLAY, checked before any window is made, since a GUI OpenCV without one aborts the process). A sink
is any callable `sink(frame, result)` (or an object with `write(frame, result)`), with an optional `close()`. Each
is isolated from the others: its errors are logged and counted and the run goes on, except the errors it names
in its `fatal` attribute (the built-in sinks: OSError, so a run whose --jsonl or --save output cannot be written
stops as it always did), RuntimeConfigError and BrokenPipeError, which end the run."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import cv2
import numpy as np

from dkit.edge.infer.runtime import Result, Runtime, RuntimeConfigError
from dkit.edge.stream.sources import Frame, Source

log = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # latencies kept for the percentiles (the most recent)
POLL_S = 0.05  # how long a round waits for a frame before looking at the sources again
SINK_LOG_S = 10.0  # a failing sink's error is logged at most this often after its first time

Sink = Callable[[Frame, Result], object]  # called once per scored frame; `close()`, when it has one, at the end


class Names(Protocol):
    """What a sink may take its names from when a Result carries none (one made by hand): a Runtime, or anything
    with `classes` and `prompts`."""

    classes: Sequence[str]
    prompts: Sequence[str] | None


def names(result: Result, fallback: Names | None = None) -> tuple[Sequence[str], Sequence[str] | None]:
    """(class names, prompt texts) for `result`: its own (Result.classes, Result.prompts), or, for a Result that
    carries none (made by hand), `fallback`'s."""
    if result.classes or result.prompts is not None or fallback is None:
        return result.classes, result.prompts
    return fallback.classes, fallback.prompts


class JsonlSink:
    """One JSON object per scored frame, one per line, flushed at once (pipe it into anything). Names come from the
    Result; `runtime` (optional) only names a Result made by hand that carries none. An OSError writing the stream
    (a full disk) ends the run: the output is the run's point."""

    fatal = (OSError,)

    def __init__(self, stream: IO[str], runtime: Names | None = None):
        self.stream, self.runtime = stream, runtime

    def __call__(self, frame: Frame, result: Result) -> None:
        """Write the frame's result as one JSON line, flushed."""
        doc = {"source": frame.source, **({"name": frame.name} if frame.name else {}),
               **result.to_json(*names(result, self.runtime))}
        self.stream.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self.stream.flush()

    write = __call__  # the earlier sink protocol's name

    def close(self) -> None:
        """Nothing to do: the stream belongs to the caller."""


class VideoSink:
    """Annotated frames into a video file (the container from the extension: .mp4, .avi, ...), renamed into place
    on close, so an interrupted run never leaves a half-written file under the final name.

    `fps` is the rate the file plays at, which must be the rate the frames were captured at or the recording
    plays too fast or too slow: a number (a video file's own rate), or None to measure it from the capture times
    of the first frames written (live sources: what the camera or stream delivered, after --max-fps and any frame
    dropped while the model was busy). Measuring holds back the first MEASURE_FRAMES frames (or MEASURE_S seconds
    of them); a run that ends sooner uses what it has, or `fallback` for a single frame. `why` says where the
    rate came from; the rate and why are logged when the file is opened. Names come from the Result; `runtime`
    (optional) only names a Result made by hand that carries none. An OSError (the folder cannot be made, the file
    cannot be renamed into place) ends the run."""

    fatal = (OSError,)

    FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}
    MEASURE_FRAMES = 10
    MEASURE_S = 1.0

    def __init__(self, path: str | os.PathLike, runtime: Names | None = None, fps: float | None = 15.0,
                 pad: tuple[int, int, int] = (0, 0, 0), *, why: str = "", fallback: float = 15.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise RuntimeConfigError(f"--save {self.path}: use a .mp4, .avi, .mkv or .mov file name")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise RuntimeConfigError(f"--save {self.path}: the frame rate must be > 0, got {fps}")
        self.part = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.runtime, self.fps, self.pad = runtime, fps, pad  # pad: BGR colour around a letterboxed frame
        self.why = why or ("measured from the frames' capture times" if fps is None else "given")
        self.fallback = fallback
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self._pending: list[tuple[float, np.ndarray]] = []  # (capture time, BGR) while the rate is measured

    def __call__(self, frame: Frame, result: Result) -> None:
        """Draw the result on the frame and append it to the video (the first frames wait while a live source's
        rate is measured)."""
        image = annotate(frame.rgb, result, self.runtime)  # BGR, drawn at the frame's own size: boxes stay put
        if self.writer is None and self.fps is None:
            self._pending.append((frame.timestamp, image))
            span = self._pending[-1][0] - self._pending[0][0]
            if len(self._pending) < self.MEASURE_FRAMES and span < self.MEASURE_S:
                return
            self._flush_pending()
            return
        self._write(image)

    write = __call__  # the earlier sink protocol's name

    def _flush_pending(self) -> None:
        """Decide the measured rate from the held-back frames, open the file and write them."""
        stamps = [t for t, _ in self._pending]
        span = max(stamps) - min(stamps)
        if len(stamps) > 1 and span > 0:
            self.fps = round((len(stamps) - 1) / span, 3)
            self.why = f"{self.why}: {len(stamps)} frames in {span:.3f} s"
        else:
            self.fps = self.fallback
            self.why = f"{len(stamps)} frame(s) are too few to measure a rate: {self.fallback:g} fps"
        pending, self._pending = self._pending, []
        for _, image in pending:
            self._write(image)

    def _write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.part), fourcc, float(self.fps), self.size)
            if not self.writer.isOpened():
                raise RuntimeConfigError(f"--save {self.path}: OpenCV cannot write this kind of video here")
            log.info("recording %s at %g fps (%s)", self.path, self.fps, self.why)
        if (w, h) != self.size:
            image = letterbox_into(image, self.size, self.pad)
        self.writer.write(image)

    def close(self) -> None:
        """Write what waits, close the video and rename it into place (nothing is left under the final name when
        no frame came)."""
        if self._pending:
            self._flush_pending()
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.part, self.path)


def letterbox_into(image: np.ndarray, size: tuple[int, int], pad: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """`image` scaled to fit in `size` (width, height), aspect ratio kept, centred on a canvas of colour `pad`."""
    (w, h), (h0, w0) = size, image.shape[:2]
    scale = min(w / w0, h / h0)
    nw, nh = max(1, min(w, round(w0 * scale))), max(1, min(h, round(h0 * scale)))
    inter = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = pad
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=inter)
    return canvas


SHOW_NEEDS = ("needs an OpenCV build with GUI support (pip install opencv-python instead of "
              "opencv-python-headless) and a display; use --save instead")


def window_problem(env: dict[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why a window cannot open here, before OpenCV tries (a GUI OpenCV with no display aborts the process):
    None when it can. On Linux: neither DISPLAY nor WAYLAND_DISPLAY set, or an X DISPLAY where no X server
    answers (unless QT_QPA_PLATFORM names a platform that needs neither, e.g. linuxfb or offscreen). Anywhere:
    a build whose getBuildInformation() says "GUI: NONE" (headless)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    qt = env.get("QT_QPA_PLATFORM", "").split(":")[0]
    if platform.startswith("linux") and qt in ("", "xcb", "wayland") and not env.get("WAYLAND_DISPLAY"):
        display = env.get("DISPLAY")
        if not display:
            return "no display here (DISPLAY and WAYLAND_DISPLAY are not set: a headless device or an SSH session)"
        if not _x_server_answers(display):
            return f"no X server answers at DISPLAY={display}"
    if _gui_backend() == "NONE":
        return f"this OpenCV {cv2.__version__} is a headless build (GUI: NONE)"
    return None


def _x_server_answers(display: str, timeout: float = 1.0) -> bool:
    """True when something listens where the X DISPLAY `display` ("[host]:N[.S]") says; True too when the form is
    not one this knows (then OpenCV decides)."""
    import re
    import socket

    m = re.fullmatch(r"(?:unix)?(.*?):(\d+)(?:\.\d+)?", display)
    if m is None or m.group(1).startswith("/"):  # e.g. a macOS launchd socket path: not ours to judge
        return True
    host, number = m.group(1), int(m.group(2))
    try:
        if host:
            with socket.create_connection((host, 6000 + number), timeout=timeout):
                return True
        for path in (f"\0/tmp/.X11-unix/X{number}", f"/tmp/.X11-unix/X{number}"):  # abstract first, then the file
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                try:
                    sock.connect(path)
                    return True
                except OSError:
                    continue
    except OSError:
        return False
    return False


def check_window() -> None:
    """Raise RuntimeConfigError (one line, the documented "needs an OpenCV build with GUI support") when
    window_problem() finds one; `dkit run --show` calls it before loading the model."""
    problem = window_problem()
    if problem is not None:
        raise RuntimeConfigError(f"--show: {problem}; it {SHOW_NEEDS}")


def _gui_backend() -> str:
    import re

    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.M)
    return m.group(1).upper() if m else "NONE"


class WindowSink:
    """A live window with the annotated frames (q or Esc closes it and stops the pipeline). Raises
    RuntimeConfigError when no window can open here (window_problem), before touching OpenCV's GUI. Names come from
    the Result; `runtime` (optional) only names a Result made by hand that carries none."""

    def __init__(self, runtime: Names | None = None, title: str = "dkit", on_quit: Callable[[], None] | None = None):
        self.runtime, self.title, self.on_quit = runtime, title, on_quit
        check_window()
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise RuntimeConfigError(f"--show {SHOW_NEEDS}") from e

    def __call__(self, frame: Frame, result: Result) -> None:
        """Show the annotated frame; q or Esc calls `on_quit`."""
        cv2.imshow(self.title, annotate(frame.rgb, result, self.runtime))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27) and self.on_quit is not None:
            self.on_quit()

    write = __call__  # the earlier sink protocol's name

    def close(self) -> None:
        """Close the window."""
        cv2.destroyWindow(self.title)


def annotate(rgb: np.ndarray, result: Result, runtime: Names | None = None) -> np.ndarray:
    """(H, W, 3) BGR copy of the frame with the result drawn on it: boxes, top classes or best prompt scores, named
    by the Result's own names (`runtime`'s for a Result made by hand that carries none; a class without a name shows
    its index)."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    classes, prompts = names(result, runtime)
    lines: list[str] = []
    if result.detections is not None:
        d = result.detections
        for box, conf, cls in zip(d.xyxy, d.confidence, d.class_id, strict=True):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            color = _color(int(cls))
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 2)
            label = f"{classes[int(cls)] if int(cls) < len(classes) else cls} {conf:.2f}"
            cv2.putText(image, label, (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    elif result.top is not None:
        lines = [f"{classes[i] if i < len(classes) else i} {p:.2f}" for i, p in result.top[:3]]
    elif result.scores is not None and prompts is not None:
        best = np.argsort(-result.scores)[:3]
        lines = [f"{prompts[i]}: {result.scores[i]:.0f}" for i in best]
    for n, text in enumerate(lines):
        cv2.putText(image, text, (8, 22 + 22 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(image, f"{result.latency_ms:.0f} ms", (8, image.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (0, 255, 255), 1, cv2.LINE_AA)
    return image


def _color(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(i)
    return tuple(int(v) for v in rng.integers(64, 256, 3))  # type: ignore[return-value]


@dataclass
class _SinkHealth:
    """One sink's errors in a pipeline: how many, and when the last was logged."""

    name: str
    errors: int = 0
    logged_at: float | None = None


def _sink_name(sink: object) -> str:
    """A sink's name for the log: a function's qualified name (or a wrapper's `fn`'s), else its class's."""
    fn = getattr(sink, "fn", sink)
    return getattr(fn, "__qualname__", None) or type(sink).__name__


class Pipeline:
    """Sources -> runtime -> sinks in rounds (the module docstring says how), until every source ends, `max_frames`
    frames are scored or `stop()` is called; `run()` returns the stats (frames, fps, latency percentiles, source
    counters, sink errors). RuntimeConfigError without a source. Each sink is isolated from the others (the module
    docstring says how); `sink_errors` counts each one's errors.
    """

    def __init__(self, runtime: Runtime, sources: list[Source], sinks: list[Sink], *, max_fps: float = 0.0,
                 max_frames: int = 0):
        if not sources:
            raise RuntimeConfigError("no source to read frames from")
        self.runtime, self.sources, self.sinks = runtime, list(sources), list(sinks)
        self.max_fps, self.max_frames = max_fps, max_frames
        self.stopped = threading.Event()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)  # capture -> result
        self.waits: deque[float] = deque(maxlen=LATENCY_WINDOW)  # capture -> start of processing
        self.infers: deque[float] = deque(maxlen=LATENCY_WINDOW)  # pre-processing + model + post-processing
        self.frames = 0
        self.rounds = 0
        self.started = 0.0
        self._health: dict[int, _SinkHealth] = {}  # id(sink) -> its errors, for the sinks that failed

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
        """Score rounds until the sources end or the pipeline is stopped; the sinks are closed and the sources too;
        returns `stats()`."""
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
                    self._timing(result)
                    self._deliver(frame, result)
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
            try:
                self._close_sinks()
            finally:
                for source in self.sources:
                    source.close()
        return self.stats()

    @property
    def sink_errors(self) -> dict[str, int]:
        """Errors so far of each sink that raised, by its name (a function's, else its class's; "#2", "#3" after
        a name that repeats)."""
        return {health.name: health.errors for health in self._health.values()}

    def _deliver(self, frame: Frame, result: Result) -> None:
        """Hand one scored frame to every sink, each isolated from the others (Roboflow's multi_sink): an error is
        logged (rate-limited) and counted, and the next sink gets the frame; RuntimeConfigError, BrokenPipeError
        and the errors a sink names in its `fatal` attribute end the run (a sink that cannot work here; the output
        pipe closed; the built-in sinks' output cannot be written)."""
        for sink in self.sinks:
            try:
                (sink if callable(sink) else sink.write)(frame, result)
            except (RuntimeConfigError, BrokenPipeError):
                raise
            except Exception as e:
                if isinstance(e, getattr(sink, "fatal", ())):
                    raise
                self._sink_failed(sink, f"on frame {frame.id} of {frame.source}", e)

    def _close_sinks(self) -> None:
        """Close every sink that has a close(), each isolated as in _deliver; the first RuntimeConfigError,
        BrokenPipeError or error of the sink's `fatal` is raised once all are closed."""
        fatal: Exception | None = None
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is None:
                continue
            try:
                close()
            except (RuntimeConfigError, BrokenPipeError) as e:
                fatal = fatal or e
            except Exception as e:
                if isinstance(e, getattr(sink, "fatal", ())):
                    fatal = fatal or e
                    continue
                self._sink_failed(sink, "on close", e)
        if fatal is not None:
            raise fatal

    def _sink_failed(self, sink: object, where: str, error: Exception) -> None:
        """Count a sink's error; log it with its traceback the first time, then at most every SINK_LOG_S s."""
        health = self._health.get(id(sink))
        if health is None:
            name = _sink_name(sink)
            taken = {h.name for h in self._health.values()}
            n = 1
            while name in taken:
                n += 1
                name = f"{_sink_name(sink)} #{n}"
            health = self._health[id(sink)] = _SinkHealth(name)
        health.errors += 1
        now = time.monotonic()
        if health.logged_at is None:
            log.error("sink %s failed %s: %s: %s (the other sinks and the run go on; logged again at most every "
                      "%g s)", health.name, where, type(error).__name__, error, SINK_LOG_S, exc_info=error)
        elif now - health.logged_at >= SINK_LOG_S:
            log.error("sink %s failed %s: %s: %s (%d errors so far)", health.name, where, type(error).__name__,
                      error, health.errors)
        else:
            return
        health.logged_at = now

    def _timing(self, result: Result) -> None:
        self.latencies.append(result.latency_ms)
        if getattr(result, "wait_ms", None) is not None:
            self.waits.append(result.wait_ms)
        if getattr(result, "infer_ms", None) is not None:
            self.infers.append(result.infer_ms)

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
        """Frames, seconds, fps, the latency percentiles (whole, wait, infer), the sources' counters and the sinks'
        errors (sink_errors: all sinks together) so far."""
        seconds = time.perf_counter() - self.started if self.started else 0.0
        totals = {"read": 0, "dropped_stale": 0, "corrupt": 0, "reconnects": 0, "disconnects": 0}
        for source in self.sources:
            s = source.stats.as_dict()
            for key in totals:
                totals[key] += int(s.get(key, 0))
        return {"frames": self.frames, "seconds": round(seconds, 3),
                "fps": round(self.frames / seconds, 2) if seconds else 0.0,
                "p50_ms": _pct(self.latencies, 50), "p95_ms": _pct(self.latencies, 95),
                "p99_ms": _pct(self.latencies, 99),
                "wait_p50_ms": _pct(self.waits, 50), "wait_p95_ms": _pct(self.waits, 95),
                "infer_p50_ms": _pct(self.infers, 50), "infer_p95_ms": _pct(self.infers, 95),
                **totals, "provider": self.runtime.provider, "stopped": self.stopped.is_set(),
                "sink_errors": sum(health.errors for health in self._health.values())}


def _pct(values: deque[float], q: float) -> float | None:
    """The q-th percentile of `values`, in ms rounded to 0.01; None when there are none."""
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 2) if values else None
