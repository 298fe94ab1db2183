"""`dkit bench runtime` and `dkit bench serve`: the edge's throughput figures, as JSON.

    from dkit.devtools.bench import bench_runtime, bench_serve

    result = bench_runtime("runs/coco128/bundle", "../shared/assets/data/coco128/images/train2017")
    result = bench_serve("runs/quickdraw/bundle", submissions=10_000, concurrency=8)

bench_serve: see its docstring (the kiosk server under concurrent clients on loopback).

bench_runtime: frames/s of the edge runtime against its limit and against Ultralytics, in one run.

On the same decoded images (decoded once, up front, so disk and JPEG decoding are not in the comparison):
- fps_runtime: the whole runtime per frame (pre-processing, session.run, decoding + NMS / top-k / cosine);
- fps_bare: the bare `session.run` loop on the same pre-processed inputs: the limit the runtime approaches;
- fps_ultralytics: `YOLO(model.onnx).predict` on the same ONNX file and images (detectors and classifiers,
  when the distill extra is installed: dkit.distill.bench.ultralytics_predictor; rect=False so it runs the same
  input size as the bundle).
Each of the `repeat` rounds times the runtime and the bare loop frame by frame, interleaved (they share one
onnxruntime session; the order within a frame's pair alternates, so neither always runs on caches the other
warmed): a neighbour's load on a shared machine hits both alike. Ultralytics, which has its own session, then
runs the round's frames in one go (not frame by frame: a session's threads spin briefly after a run, so
switching sessions every frame slows both).
Every ratio is the median of the per-round ratios (runtime_vs_bare, runtime_vs_ultralytics), the fps figures
the medians of the per-round fps. A ratio's spread is its largest per-round value over its smallest: above
`max_spread` (default DEFAULT_MAX_SPREAD) the rounds disagree, `rounds_agree` is false and `warning` says by
how much: the machine's load changed during the run and the ratio is not to be trusted. With one round,
agreement is not measured (`rounds_agree` null).
p50/p99 are the runtime's per-frame latencies over every round.
fps_pipeline and pipeline_p50/p99_ms run the real pipeline (dkit.edge.stream.pipeline) from the folder, decoding
included, with latency from capture to result.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dkit.devtools.serve_process import ServeProcess
from dkit.edge.infer.runtime import Runtime
from dkit.edge.stream.pipeline import Pipeline
from dkit.edge.stream.sources import open_source

DEFAULT_MAX_SPREAD = 1.25  # per-round ratios further apart than this (largest / smallest): the rounds disagree
WARMUP_FRAMES = 2  # untimed calls of each before the first round (session start-up, first allocations)


class BenchError(ValueError):
    """A benchmark that cannot be run as asked: a live source, no images, a setting out of range."""


@dataclass(frozen=True)
class Round:
    """One round's timings: per-frame ms of the runtime and of the bare loop (paired, same frames), and the
    seconds Ultralytics took on the round's frames (None when it is not measured)."""

    runtime_ms: tuple[float, ...]
    bare_ms: tuple[float, ...]
    ultralytics_s: float | None = None

    @property
    def fps_runtime(self) -> float:
        return 1000 * len(self.runtime_ms) / sum(self.runtime_ms)

    @property
    def fps_bare(self) -> float:
        return 1000 * len(self.bare_ms) / sum(self.bare_ms)

    @property
    def fps_ultralytics(self) -> float | None:
        return len(self.runtime_ms) / self.ultralytics_s if self.ultralytics_s is not None else None


def bench_runtime(bundle: str | os.PathLike, source: str | os.PathLike, *, images: int = 64, repeat: int = 3,
                  threads: int | None = None, precision: str = "fp32", reference=None,
                  max_spread: float = DEFAULT_MAX_SPREAD) -> dict:
    """`reference(model_file, task, imgsz, conf, iou, max_det)` -> a predict(rgb) function of the library the
    runtime replaces (Ultralytics: dkit.distill.bench.ultralytics_predictor); None leaves fps_ultralytics out.
    Raises BenchError for a live source, an empty folder, `images` or `repeat` below 1, `max_spread` below 1."""
    _check_settings(images, repeat, max_spread)
    with Runtime.load(bundle, threads=threads, precision=precision) as rt:
        frames = load_frames(source, images)
        inputs = [rt.preprocess(rgb)[0] for rgb in frames]
        ultra = _reference_predictor(rt, reference)
        warm_up(rt, rt.infer, frames, inputs, ultra)
        rounds = [measure_round(rt, rt.infer, frames, inputs, ultra) for _ in range(repeat)]
        piped = Pipeline(rt, [open_source(str(source))], [], max_frames=len(frames)).run()
        return {
            "bundle": str(bundle), "task": rt.task, "model": rt.model_file.name, "provider": rt.provider,
            "input": list(inputs[0].shape), "images": len(frames), "repeat": repeat,
            **summarize(rounds, max_spread),
            "fps_pipeline": piped["fps"], "pipeline_p50_ms": piped["p50_ms"], "pipeline_p99_ms": piped["p99_ms"],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": threads or 0},
        }


def _check_settings(images: int, repeat: int, max_spread: float) -> None:
    """BenchError naming the first setting out of range."""
    if images < 1:
        raise BenchError(f"--images {images}: give at least 1")
    if repeat < 1:
        raise BenchError(f"--repeat {repeat}: give at least 1 round")
    if not max_spread >= 1:
        raise BenchError(f"--max-spread {max_spread}: a largest-over-smallest ratio, at least 1")


def _reference_predictor(rt: Runtime, reference) -> Callable | None:
    """Ultralytics' predict on the runtime's model file and settings, or None (no reference, or a task it lacks)."""
    if reference is None or rt.task not in ("detect", "classify"):
        return None
    size = rt.spec.size  # (H, W); a classifier's square side alone, as Ultralytics takes it
    return reference(rt.model_file, rt.task, size[0] if rt.task == "classify" else list(size), rt.conf, rt.iou,
                     rt.max_det)


def warm_up(score: Callable, bare: Callable, frames: Sequence, inputs: Sequence, ultra: Callable | None = None,
            count: int = WARMUP_FRAMES) -> None:
    """Untimed calls of each on the first `count` frames, so that no round pays for start-up."""
    for rgb, x in list(zip(frames, inputs, strict=True))[:count]:
        score(rgb)
        bare(x)
        if ultra is not None:
            ultra(rgb)


def measure_round(score: Callable, bare: Callable, frames: Sequence, inputs: Sequence,
                  ultra: Callable | None = None, *, clock: Callable[[], float] = time.perf_counter) -> Round:
    """One round: `score(frame)` and `bare(input)` timed frame by frame, interleaved, the pair's order alternating
    (runtime, bare; bare, runtime; ...); then `ultra(frame)` over every frame, timed as one block."""
    runtime_ms: list[float] = []
    bare_ms: list[float] = []
    for i, (rgb, x) in enumerate(zip(frames, inputs, strict=True)):
        pair = [(score, rgb, runtime_ms), (bare, x, bare_ms)]
        for fn, arg, times in pair if i % 2 == 0 else pair[::-1]:
            start = clock()
            fn(arg)
            times.append((clock() - start) * 1000)
    ultra_s = None
    if ultra is not None:
        start = clock()
        for rgb in frames:
            ultra(rgb)
        ultra_s = clock() - start
    return Round(tuple(runtime_ms), tuple(bare_ms), ultra_s)


def summarize(rounds: Sequence[Round], max_spread: float = DEFAULT_MAX_SPREAD) -> dict:
    """The JSON figures of `rounds`: median fps and ratios, each ratio's per-round values and spread, whether
    the rounds agree (null with one round) and, when they do not, a warning saying by how much."""
    if not rounds:
        raise BenchError("no rounds to summarize")
    ratios = round_ratios(rounds)
    with_ultra = "runtime_vs_ultralytics" in ratios
    spreads = {name: max(values) / min(values) for name, values in ratios.items()}
    disagree = {name: s for name, s in spreads.items() if s > max_spread}
    lat = np.concatenate([r.runtime_ms for r in rounds])
    out = {"fps_runtime": _median([r.fps_runtime for r in rounds], 2),
           "fps_bare": _median([r.fps_bare for r in rounds], 2),
           "fps_ultralytics": _median([r.fps_ultralytics for r in rounds], 2) if with_ultra else None,
           "runtime_vs_bare": None, "runtime_vs_ultralytics": None}
    for name, values in ratios.items():
        out.update({name: _median(values, 3), f"{name}_rounds": [round(v, 3) for v in values],
                    f"{name}_spread": round(spreads[name], 3)})
    out.update({"max_spread": max_spread, "rounds_agree": None if len(rounds) < 2 else not disagree,
                "warning": _disagreement(disagree, ratios, max_spread) if disagree else None,
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)})
    return out


def round_ratios(rounds: Sequence[Round]) -> dict[str, list[float]]:
    """Per-round runtime_vs_bare (and runtime_vs_ultralytics when every round measured it): fps over fps."""
    ratios = {"runtime_vs_bare": [r.fps_runtime / r.fps_bare for r in rounds]}
    if all(r.ultralytics_s is not None for r in rounds):
        ratios["runtime_vs_ultralytics"] = [r.fps_runtime / r.fps_ultralytics for r in rounds]
    return ratios


def _median(values: Sequence[float], digits: int) -> float:
    return round(statistics.median(values), digits)


def _disagreement(disagree: dict[str, float], ratios: dict[str, list[float]], max_spread: float) -> str:
    """'rounds disagree: runtime_vs_bare 0.884-2.33 across 5 rounds (spread 2.64x > 1.25x); ...'."""
    parts = [f"{name} {min(ratios[name]):.3g}-{max(ratios[name]):.3g} across {len(ratios[name])} rounds "
             f"(spread {spread:.2f}x > {max_spread:g}x)" for name, spread in disagree.items()]
    return (f"rounds disagree: {'; '.join(parts)}: the machine's load changed during the run, so "
            f"{' and '.join(disagree)} {'is' if len(disagree) == 1 else 'are'} unreliable; rerun on a quieter machine")


def load_frames(source: str | os.PathLike, count: int) -> list[np.ndarray]:
    """The first `count` frames of a folder, decoded. BenchError for a live source or a folder without images."""
    with open_source(str(source)) as src:
        if src.live:
            raise BenchError(f"--source {source}: give a folder of images (a benchmark needs the same frames each "
                             "round)")
        frames = []
        for frame in src:
            frames.append(frame.rgb)
            if len(frames) == count:
                break
    if not frames:
        raise BenchError(f"--source {source}: no images in it")
    return frames


# ------------------------------------------------------------------------------------------ dkit bench serve


def bench_serve(bundle: str | os.PathLike, *, submissions: int = 10_000, concurrency: int = 8,
                source: str | os.PathLike | None = None, port: int = 0, threads: int = 1) -> dict:
    """Sustained scored submissions/s of `dkit serve` on loopback: `concurrency` clients with keep-alive
    connections post `submissions` drawings in all; p50/p99 latency per submission and the server's resident
    memory before and after. The server runs in its own process, as on a kiosk, with a fresh database."""
    images = _bench_images(source)
    work = tempfile.mkdtemp(prefix="dkit-bench-serve-")
    server = _start_server(bundle, port, Path(work) / "kiosk.sqlite", threads)
    try:
        server.wait_up(timeout=180.0)
        port = server.port
        rss_before = _rss_mb(server.proc.pid)
        tally = _Tally()
        seconds = _run_clients(port, images, submissions, concurrency, tally)
        rss_after = _rss_mb(server.proc.pid)
    finally:
        server.close(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    lat = np.asarray(tally.latencies)
    return {
        "bundle": str(bundle), "submissions": submissions, "concurrency": concurrency, "ok": len(tally.latencies),
        "errors": len(tally.errors), "first_error": tally.errors[0] if tally.errors else None,
        "verdicts": tally.verdicts,
        "seconds": round(seconds, 2), "rps": round(len(tally.latencies) / seconds, 2) if seconds else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "rss_mb_before": rss_before, "rss_mb_after": rss_after, "images": len(images),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def _start_server(bundle: str | os.PathLike, port: int, db: Path, threads: int) -> ServeProcess:
    """`dkit serve` in its own process, quiet (its stderr kept for wait_up's error message). The per-client rate
    limit and the near-duplicate refusal are off (the bench's clients are one address sending the same few images:
    it measures capacity); the work queue, retention and quota stay as configured."""
    return ServeProcess(bundle, ["--db", str(db), "--threads", str(threads), "-q", "--set", "submit_rate=0",
                                 "--set", "dup_bits=-1"], port=port, log=db.with_name("serve.stderr"))


class _Tally:
    """What the clients saw, under one lock: latencies of the scored submissions, verdict counts, errors."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.verdicts: dict[str, int] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def response(self, status: int, doc, ms: float) -> None:
        with self.lock:
            if status == 200:
                self.latencies.append(ms)
                self.verdicts[doc["verdict"]] = self.verdicts.get(doc["verdict"], 0) + 1
            else:
                self.errors.append(f"{status}: {doc}")

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def _run_clients(port: int, images: list[bytes], submissions: int, concurrency: int, tally: _Tally) -> float:
    """`concurrency` client threads sharing `submissions` posts; the wall-clock seconds they took."""
    counter = iter(range(submissions))
    start = time.perf_counter()
    workers = [threading.Thread(target=_client, args=(k, port, images, counter, tally)) for k in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def _client(k: int, port: int, images: list[bytes], counter, tally: _Tally) -> None:
    """One keep-alive client: posts drawings while `counter` lasts, reconnecting after a failed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    boundary = uuid.uuid4().hex
    for i in counter:
        body = _submission_body(boundary, f"bench {k}", images[i % len(images)])
        start = time.perf_counter()
        try:
            conn.request("POST", "/api/submissions", body=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            res = conn.getresponse()
            doc = json.loads(res.read())
            tally.response(res.status, doc, (time.perf_counter() - start) * 1000)
        except (OSError, http.client.HTTPException, ValueError) as e:
            tally.error(repr(e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def _submission_body(boundary: str, name: str, png: bytes) -> bytes:
    """The multipart/form-data body the kiosk page posts: a player name and a PNG drawing."""
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()


def _bench_images(source: str | os.PathLike | None, count: int = 64) -> list[bytes]:
    """PNG bytes: the images of `source` (a folder), or seeded random-stroke doodles like a kiosk canvas."""
    import cv2

    out: list[bytes] = []
    if source is not None:
        with open_source(str(source)) as src:
            for frame in src:
                out.append(cv2.imencode(".png", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
                if len(out) == count:
                    break
        return out
    rng = np.random.default_rng(0)
    for _ in range(count):
        canvas = np.full((512, 512, 3), 255, np.uint8)
        for _ in range(int(rng.integers(3, 12))):
            pts = np.cumsum(rng.integers(-40, 41, (int(rng.integers(3, 20)), 2)), axis=0) + rng.integers(100, 412, 2)
            cv2.polylines(canvas, [pts.astype(np.int32)], False, (20, 20, 20), int(rng.integers(3, 14)), cv2.LINE_AA)
        out.append(cv2.imencode(".png", canvas)[1].tobytes())
    return out


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
