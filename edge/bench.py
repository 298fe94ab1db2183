"""`dkit bench runtime` and `dkit bench serve`: the edge's throughput figures, as JSON.

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
Rounds alternate between the three, `repeat` times, and each keeps its best round: the machines are shared
and noisy, and the ratios come from one run. (Not frame by frame: each library has its own onnxruntime
session, whose threads spin briefly after a run, so switching sessions every frame slows all of them.)
p50/p99 are the runtime's per-frame latencies over every round.
fps_pipeline and pipeline_p50/p99_ms run the real pipeline (dkit.edge.pipeline) from the folder, decoding
included, with latency from capture to result.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from dkit.edge.pipeline import Pipeline
from dkit.edge.runtime import Runtime
from dkit.edge.sources import open_source


def bench_runtime(bundle: str | os.PathLike, source: str | os.PathLike, *, images: int = 64, repeat: int = 3,
                  threads: int | None = None, precision: str = "fp32", reference=None) -> dict:
    """`reference(model_file, task, imgsz, conf, iou, max_det)` -> a predict(rgb) function of the library the
    runtime replaces (Ultralytics: dkit.distill.bench.ultralytics_predictor); None leaves fps_ultralytics out."""
    with Runtime.load(bundle, threads=threads, precision=precision) as rt:
        frames = load_frames(source, images)
        inputs = [rt.preprocess(rgb)[0] for rgb in frames]
        size = rt.spec.size  # (H, W); a classifier's square side alone, as Ultralytics takes it
        ultra = None
        if reference is not None and rt.task in ("detect", "classify"):
            ultra = reference(rt.model_file, rt.task, size[0] if rt.task == "classify" else list(size), rt.conf,
                              rt.iou, rt.max_det)
        best = {"runtime": 0.0, "bare": 0.0, "ultralytics": 0.0}
        latencies: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            for rgb in frames:
                t = time.perf_counter()
                rt(rgb)
                latencies.append((time.perf_counter() - t) * 1000)
            best["runtime"] = max(best["runtime"], len(frames) / (time.perf_counter() - start))
            start = time.perf_counter()
            for x in inputs:
                rt.infer(x)
            best["bare"] = max(best["bare"], len(frames) / (time.perf_counter() - start))
            if ultra is not None:
                start = time.perf_counter()
                for rgb in frames:
                    ultra(rgb)
                best["ultralytics"] = max(best["ultralytics"], len(frames) / (time.perf_counter() - start))
        pipeline = Pipeline(rt, [open_source(str(source))], [], max_frames=len(frames))
        piped = pipeline.run()
        lat = np.asarray(latencies)
        return {
            "bundle": str(bundle), "task": rt.task, "model": rt.model_file.name, "provider": rt.provider,
            "input": list(inputs[0].shape), "images": len(frames), "repeat": repeat,
            "fps_runtime": round(best["runtime"], 2), "fps_bare": round(best["bare"], 2),
            "fps_ultralytics": round(best["ultralytics"], 2) if ultra is not None else None,
            "runtime_vs_bare": round(best["runtime"] / best["bare"], 3),
            "runtime_vs_ultralytics": round(best["runtime"] / best["ultralytics"], 3) if ultra is not None else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "fps_pipeline": piped["fps"], "pipeline_p50_ms": piped["p50_ms"], "pipeline_p99_ms": piped["p99_ms"],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": threads or 0},
        }


def load_frames(source: str | os.PathLike, count: int) -> list[np.ndarray]:
    with open_source(str(source)) as src:
        if src.live:
            raise ValueError(f"--source {source}: give a folder of images (a benchmark needs the same frames each "
                             "round)")
        frames = []
        for frame in src:
            frames.append(frame.rgb)
            if len(frames) == count:
                break
    return frames


# ------------------------------------------------------------------------------------------ dkit bench serve


def bench_serve(bundle: str | os.PathLike, *, submissions: int = 10_000, concurrency: int = 8,
                source: str | os.PathLike | None = None, port: int = 0, threads: int = 1) -> dict:
    """Sustained scored submissions/s of `dkit serve` on loopback: `concurrency` clients with keep-alive
    connections post `submissions` drawings in all; p50/p99 latency per submission and the server's resident
    memory before and after. The server runs in its own process, as on a kiosk, with a fresh database."""
    images = _bench_images(source)
    work = tempfile.mkdtemp(prefix="dkit-bench-serve-")
    port = port or _free_port()
    server = _start_server(bundle, port, Path(work) / "kiosk.sqlite", threads)
    try:
        _wait_up(server, port)
        rss_before = _rss_mb(server.pid)
        tally = _Tally()
        seconds = _run_clients(port, images, submissions, concurrency, tally)
        rss_after = _rss_mb(server.pid)
    finally:
        _stop_server(server)
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


def _free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(bundle: str | os.PathLike, port: int, db: Path, threads: int) -> subprocess.Popen:
    """`dkit serve` in its own process, quiet, its stderr kept for _wait_up's error message. The per-client rate
    limit and the near-duplicate refusal are off (the bench's clients are one address sending the same few images:
    it measures capacity); the work queue, retention and quota stay as configured."""
    return subprocess.Popen([sys.executable, "-m", "dkit", "serve", str(bundle), "--port", str(port), "--db",
                             str(db), "--threads", str(threads), "-q", "--set", "submit_rate=0", "--set",
                             "dup_bits=-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_server(server: subprocess.Popen) -> None:
    """Terminate, and kill if it has not exited within 30 s."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


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


def _wait_up(server, port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dkit serve exited {server.returncode}: {server.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"dkit serve did not answer on port {port} within {timeout:.0f} s")


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
