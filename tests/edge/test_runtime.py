"""The edge runtime end to end: a real detector bundle scored on real images equals Ultralytics' predict; providers
picked in order; the pipeline survives a camera that drops, stalls and sends garbage; `dkit run` and `dkit bench
runtime` through the CLI; the whole edge layer imports without the training stack."""

from __future__ import annotations

import io
import json
import logging
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dkit.edge.infer.runtime import PROVIDER_ORDER, Runtime, RuntimeConfigError, choose_providers
from dkit.edge.stream.pipeline import JsonlSink, Pipeline, VideoSink
from dkit.edge.stream.sources import open_source
from tests.conftest import ASSETS, ROOT, run_dkit, run_main


class CallbackSink:
    """A sink calling `fn(frame, result)` for every scored frame; an exception in it is logged, the pipeline goes
    on (the tests' own: the library's sinks are JsonlSink, VideoSink and WindowSink)."""

    def __init__(self, fn):
        self.fn = fn

    def write(self, frame, result) -> None:
        try:
            self.fn(frame, result)
        except Exception:
            logging.getLogger(__name__).exception("sink callback failed on frame %d of %s", frame.id, frame.source)

    def close(self) -> None:
        """Nothing to do."""

HEAVY = ("torch", "torchvision", "ultralytics", "open_clip", "onnx", "onnxslim", "timm", "dkit.distill", "dkit.export")
COCO = ASSETS / "data" / "coco128" / "images" / "train2017"


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------ layering


def test_the_whole_edge_layer_imports_without_the_training_stack():
    import dkit.edge

    modules = sorted(m.name for m in pkgutil.walk_packages(dkit.edge.__path__, "dkit.edge."))  # sub-packages too
    assert {f"dkit.edge.{m}" for m in ("infer.runtime", "stream.pipeline", "stream.sources", "infer.postprocess",
                                       "infer.tokenizer", "kiosk.server", "bundle.manifest")} <= set(modules)
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n" \
           f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {HEAVY!r} or " \
           f"'.'.join(k.split('.')[:2]) in {HEAVY!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# ------------------------------------------------------------------------------------------ providers


@pytest.mark.parametrize(("requested", "available", "expected"), [
    (None, ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    (None, ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    (None, ["CoreMLExecutionProvider", "CPUExecutionProvider", "OpenVINOExecutionProvider"],
     ["OpenVINOExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"]),
    (["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
])
def test_providers_in_order(requested, available, expected):
    assert choose_providers(requested, available) == expected
    assert PROVIDER_ORDER[-1] == "CPUExecutionProvider"


def test_an_unavailable_provider_is_named():
    with pytest.raises(RuntimeConfigError, match="TensorrtExecutionProvider not available.*available: CPU"):
        choose_providers(["tensorrt"], ["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ runtime


def exact_resize(monkeypatch):
    """Make OpenCV's INTER_LINEAR mean its bit-exact bilinear, as the device's letterbox uses
    (dkit.edge.infer.preprocess: the SIMD one differs between x86 and aarch64), so Ultralytics' own pipeline can be
    compared exactly."""
    import cv2

    real = cv2.resize
    monkeypatch.setattr(cv2, "resize", lambda img, dsize, *a, interpolation=None, **kw: real(
        img, dsize, *a, interpolation=cv2.INTER_LINEAR_EXACT if interpolation == cv2.INTER_LINEAR else interpolation,
        **kw) if interpolation is not None else real(img, dsize, *a, **kw))


@pytest.mark.devenv("ultralytics")
def test_runtime_matches_ultralytics_predict_on_real_images(detect_bundle, yolo_onnx, caplog, monkeypatch):
    from ultralytics import YOLO

    exact_resize(monkeypatch)
    model = YOLO(str(yolo_onnx), task="detect")
    paths = sorted(COCO.glob("*.jpg"))[:8] + [ASSETS / "data" / "photos" / "pets.jpg"]
    with caplog.at_level("INFO"), Runtime.load(detect_bundle) as rt:
        assert rt.provider == "CPUExecutionProvider" and rt.dynamic_batch
        assert "student.onnx on CPUExecutionProvider" in caplog.text  # the choice is logged
        total = 0
        for path in paths:
            ours = rt(_rgb(path)).detections
            ref = model.predict(str(path), imgsz=320, conf=0.25, iou=0.7, rect=False, verbose=False)[0].boxes
            assert len(ours) == len(ref), path.name
            np.testing.assert_array_equal(ours.class_id, ref.cls.numpy().astype(np.int64))
            np.testing.assert_allclose(ours.xyxy, ref.xyxy.numpy(), rtol=0, atol=1e-2)
            total += len(ours)
        assert total >= 15
        # several frames in one session.run give the same results as one by one
        frames = [_rgb(p) for p in paths[:3]]
        batched = rt.batch(frames)
        for frame, result in zip(frames, batched, strict=True):
            np.testing.assert_allclose(result.detections.xyxy, rt(frame).detections.xyxy, atol=1e-3)


def test_runtime_thresholds_and_json(detect_bundle):
    with Runtime.load(detect_bundle, conf=0.9) as rt:
        loose = Runtime.load(detect_bundle, conf=0.05)
        rgb = _rgb(COCO / "000000000036.jpg")
        strict, lax = rt(rgb, frame_id=7, timestamp=time.time()), loose(rgb)
        loose.close()
        assert len(strict.detections) < len(lax.detections) and (strict.detections.confidence >= 0.9).all()
        doc = strict.to_json(rt.classes)
        assert doc["frame"] == 7 and 0 <= doc["latency_ms"] < 60_000
        assert {d["class"] for d in doc["detections"]} <= set(rt.classes)
        json.dumps(doc)


def test_runtime_refuses_a_precision_the_bundle_lacks(detect_bundle):
    with pytest.raises(RuntimeConfigError, match="no int8 onnx model in this bundle.*it has: onnx fp32"):
        Runtime.load(detect_bundle, precision="int8")


# ------------------------------------------------------------------------------------------ pipeline


class FlakyCamera:
    """A camera (capture_factory) that sends good frames, garbage, then drops; the next open works again."""

    opens = 0

    def __init__(self, frames: list[np.ndarray]):
        FlakyCamera.opens += 1
        self.frames, self.n = frames, 0

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self):
        self.n += 1
        time.sleep(0.005)
        if self.n % 7 == 3:
            return True, np.zeros((4, 4), np.uint8)  # corrupt: one channel
        if self.n > 10 and FlakyCamera.opens < 3:
            return False, None  # the camera drops
        return True, self.frames[self.n % len(self.frames)][..., ::-1].copy()  # BGR, as OpenCV gives

    def release(self):
        pass


def test_pipeline_survives_a_flaky_camera(detect_bundle):
    frames = [_rgb(p) for p in sorted(COCO.glob("*.jpg"))[:4]]
    FlakyCamera.opens = 0
    events: list[str] = []
    source = open_source("0", capture_factory=lambda spec: FlakyCamera(frames), backoff=(0.01, 0.05),
                         stall_timeout=1.0, on_event=lambda kind, detail: events.append(kind))
    out = io.StringIO()
    seen = []
    with Runtime.load(detect_bundle) as rt:
        pipeline = Pipeline(rt, [source], [JsonlSink(out, rt), CallbackSink(lambda f, r: seen.append(f.id))],
                            max_frames=30)
        stats = pipeline.run()
    assert stats["frames"] >= 30 and stats["reconnects"] >= 2 and stats["corrupt"] >= 2
    assert "disconnected" in events and "reconnected" in events
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == stats["frames"] and all("detections" in d for d in lines)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # frame ids only increase
    assert stats["p50_ms"] is not None and stats["p99_ms"] >= stats["p50_ms"]


def test_pipeline_stops_on_request_and_writes_video(detect_bundle, tmp_path):
    import cv2

    frames = [_rgb(p) for p in sorted(COCO.glob("*.jpg"))[:2]]

    class Endless:
        def read(self):
            time.sleep(0.01)
            return True, frames[0][..., ::-1].copy()

        def release(self):
            pass

    stop_after, seen = 5, []

    def stop_on_the_fifth(frame, result):  # stop() as SIGINT or another thread would call it, after frame 5
        seen.append(frame.id)
        if len(seen) == stop_after:
            pipeline.stop()

    with Runtime.load(detect_bundle) as rt:
        source = open_source("0", capture_factory=lambda s: Endless())
        pipeline = Pipeline(rt, [source], [VideoSink(tmp_path / "out.avi", rt, fps=10),
                                           CallbackSink(stop_on_the_fifth)])
        stats = pipeline.run()
    assert stats["stopped"] and stats["frames"] == stop_after  # the round in progress ends, no further one starts
    assert seen == list(range(stop_after)) and source.closed
    video = cv2.VideoCapture(str(tmp_path / "out.avi"))
    count = 0
    while video.read()[0]:
        count += 1
    assert count == stats["frames"] and not list(tmp_path.glob(".*part*"))


def test_pipeline_batches_several_sources(detect_bundle, tmp_path):
    import cv2

    for i, p in enumerate(sorted(COCO.glob("*.jpg"))[:6]):
        folder = tmp_path / f"cam{i % 2}"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / p.name), cv2.imread(str(p)))
    seen: list[tuple[str, str]] = []
    with Runtime.load(detect_bundle) as rt:
        pipeline = Pipeline(rt, [open_source(str(tmp_path / "cam0")), open_source(str(tmp_path / "cam1"))],
                            [CallbackSink(lambda f, r: seen.append((Path(f.source).name, f.name)))])
        stats = pipeline.run()
    assert stats["frames"] == 6 and sorted(seen) == sorted(
        (f"cam{i % 2}", p.name) for i, p in enumerate(sorted(COCO.glob("*.jpg"))[:6]))
    assert pipeline.rounds == 3  # one frame of each camera per round, scored together


# ------------------------------------------------------------------------------------------ CLI


def test_dkit_run_jsonl_on_a_folder(detect_bundle):
    out = run_dkit("run", str(detect_bundle), "--source", str(COCO), "--jsonl", "--max-frames", "4")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["frame"] for d in lines] == [0, 1, 2, 3] and lines[0]["name"] == "000000000009.jpg"
    assert any(d["class"] == "bowl" for d in lines[0]["detections"])
    stats = json.loads(out.stderr.split("dkit: stats ", 1)[1])
    assert stats["frames"] == 4  # on the backend auto chose, which the log names with its figures:
    assert "running student.onnx with " in out.stderr and "backend/precision " in out.stderr
    forced = run_dkit("run", str(detect_bundle), "--source", str(COCO), "--jsonl", "--max-frames", "1",
                      "--backend", "onnxruntime", "--precision", "fp32")
    assert json.loads(forced.stderr.split("dkit: stats ", 1)[1])["provider"] == "CPUExecutionProvider"
    assert "with onnxruntime/fp32 (as asked)" in forced.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--source", "/nonexistent/folder"], 2, "/nonexistent/folder"),
    (["--source", "0", "--providers", "tensorrt"], 2, "not available"),
    (["--source", "0", "--precision", "int8"], 2, "no int8 model"),
    (["--source", "0", "--save", "out.txt"], 2, "use a .mp4"),
])
def test_dkit_run_errors_are_one_line(detect_bundle, args, code, message):
    out = run_dkit("run", str(detect_bundle), *args)
    assert out.returncode == code and message in out.stderr and "Traceback" not in out.stderr


def test_dkit_run_refuses_a_tampered_bundle(detect_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(detect_bundle, copy)
    with open(copy / "student.onnx", "ab") as f:
        f.write(b"\0")
    out = run_dkit("run", str(copy), "--source", str(COCO))
    assert out.returncode == 1 and "student.onnx has been modified or corrupted" in out.stderr


def test_dkit_run_stops_cleanly_on_sigint(detect_bundle):
    proc = subprocess.Popen([sys.executable, "-m", "dkit", "run", str(detect_bundle), "--source", str(COCO), "--jsonl",
                             "--max-fps", "4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # running: one frame scored
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert json.loads(first)["frame"] == 0 and proc.returncode == 0, err
    stats = json.loads(err.split("dkit: stats ", 1)[1])
    assert stats["stopped"] and 1 <= stats["frames"] < 128


@pytest.mark.devenv("ultralytics")  # fps_ultralytics: YOLO(onnx).predict on the same images
def test_dkit_bench_runtime_json(detect_bundle, capsys):
    out = run_main(capsys, "bench", "runtime", str(detect_bundle), "--source", str(COCO), "--images", "6", "--repeat",
                   "1")  # in this process: Ultralytics is imported once for the session, not again
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("fps_runtime", "fps_bare", "fps_ultralytics", "p50_ms", "p99_ms", "fps_pipeline"):
        assert result[key] > 0, key
    assert result["images"] == 6 and result["input"] == [1, 3, 320, 320] and result["task"] == "detect"
    assert result["runtime_vs_bare"] == pytest.approx(result["fps_runtime"] / result["fps_bare"], abs=2e-3)


def test_pipeline_memory_stays_flat_over_a_long_run(monkeypatch):
    """After 100 warm-up frames, 200 and 1,700 through the pipeline (a fast stand-in model; a latency window of 100 so
    both runs fill it): traced memory does not grow with the count."""
    import tracemalloc

    import dkit.edge.stream.pipeline as pipeline_module
    from dkit.edge.infer.runtime import Result

    window = 100
    monkeypatch.setattr(pipeline_module, "LATENCY_WINDOW", window)  # (10,000 in production) both runs go past it

    class Instant:  # the Runtime interface the pipeline uses, without a model: only the pipeline is measured
        provider, classes, prompts = "test", ["x"], None

        def batch(self, frames, ids, stamps):
            now = time.time()
            return [Result(i, t, (now - t) * 1000, "classify", top=[(0, 1.0)]) for i, t in zip(ids, stamps,
                                                                                             strict=True)]

    frame = np.zeros((48, 64, 3), np.uint8)

    class Camera:
        def read(self):
            return True, frame.copy()

        def release(self):
            pass

    def run(frames: int) -> int:
        out = io.StringIO()
        sink = JsonlSink(out, Instant())
        tracemalloc.start()
        pipeline = Pipeline(Instant(), [open_source("0", capture_factory=lambda s: Camera())],
                            [sink, CallbackSink(lambda f, r: out.seek(0) or out.truncate())], max_frames=frames)
        stats = pipeline.run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats["frames"] >= frames
        assert len(pipeline.latencies) == window  # the statistics keep a bounded window, not every frame
        return peak

    run(100)  # first-time costs (imports, caches) land here, not in the comparison
    short, long = run(200), run(1_700)
    assert long < short * 1.5 + 2_000_000, (short, long)  # 8.5x the frames, not 8.5x the memory
    assert long - short < 100_000, (short, long)  # not even 70 bytes a frame more
