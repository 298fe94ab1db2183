"""The pipeline's side of issue #16 ("the first hour"): where the latency goes (queue wait vs inference), videos of
mixed-size frames letterboxed rather than stretched, and the --show preflight that refuses before OpenCV's GUI
can abort the process. Real bundle, real photos; the timing checks are arithmetic on one set of clock readings,
never thresholds on how long something took."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from dkit.edge.infer.runtime import Runtime, RuntimeConfigError
from dkit.edge.stream import pipeline as pipeline_module
from dkit.edge.stream.pipeline import Pipeline, VideoSink, annotate, letterbox_into, window_problem
from dkit.edge.stream.sources import Frame, open_source
from tests.conftest import ASSETS
from tests.edge.test_runtime import CallbackSink

COCO = ASSETS / "data" / "coco128" / "images" / "train2017"
PHOTOS = ASSETS / "data" / "photos"
MIXED = ("cat_720p.jpg", "parrot.jpg", "kite_and_cold.jpg", "grace_hopper.bmp")  # 16:9, tall, 3:2 and bigger, tall


def mixed_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Links to real photos of different aspect ratios, named so that the 1280x720 one comes first."""
    if not (PHOTOS / "parrot.jpg").is_file():
        pytest.skip(f"real photos not found at {PHOTOS}")
    folder = tmp_path / "mixed"
    folder.mkdir()
    links = []
    for i, name in enumerate(MIXED):
        links.append(folder / f"{i}_{name}")
        links[-1].symlink_to(PHOTOS / name)
    return folder, links


# ------------------------------------------------------------------------------------------ row 7: wait vs infer


def test_stats_split_latency_into_queue_wait_and_inference(detect_bundle, tmp_path):
    if not COCO.is_dir():
        pytest.skip(f"real images not found at {COCO}")
    results = []
    with Runtime.load(detect_bundle, backend="onnxruntime", precision="fp32") as rt:
        pipeline = Pipeline(rt, [open_source(str(COCO), prefetch=4)], [CallbackSink(lambda f, r: results.append(r))],
                            max_frames=12)
        stats = pipeline.run()
    assert stats["frames"] == len(results) == 12
    for key in ("p50_ms", "p95_ms", "wait_p50_ms", "wait_p95_ms", "infer_p50_ms", "infer_p95_ms"):
        assert isinstance(stats[key], float), key
    assert 0 < stats["infer_p50_ms"] <= stats["p50_ms"] and stats["wait_p50_ms"] <= stats["p50_ms"]
    for r in results:  # one set of clock readings: capture -> start, start -> result, and their sum
        assert r.wait_ms >= 0 and 0 < r.infer_ms <= r.latency_ms
        assert r.latency_ms == pytest.approx(r.wait_ms + r.infer_ms, abs=1e-6)
        doc = r.to_json(rt.classes)
        assert doc["latency_ms"] == pytest.approx(doc["wait_ms"] + doc["infer_ms"], abs=2e-3)
    assert stats["infer_p50_ms"] == round(float(np.percentile([r.infer_ms for r in results], 50)), 2)
    assert stats["wait_p95_ms"] == round(float(np.percentile([r.wait_ms for r in results], 95)), 2)


def test_a_frame_without_a_capture_time_waits_zero(detect_bundle):
    with Runtime.load(detect_bundle, backend="onnxruntime", precision="fp32") as rt:
        r = rt(np.full((48, 64, 3), 114, np.uint8))  # no timestamp: latency is the inference alone
    assert r.wait_ms == 0.0 and r.latency_ms == r.infer_ms > 0


# ------------------------------------------------------------------------------------------ row 12: letterbox


def test_letterbox_into_keeps_the_aspect_and_pads():
    image = np.full((100, 50, 3), 200, np.uint8)  # tall
    out = letterbox_into(image, (160, 90), pad=(1, 2, 3))
    assert out.shape == (90, 160, 3)
    assert (out[:, :57] == (1, 2, 3)).all() and (out[:, 58 + 45:] == (1, 2, 3)).all()  # 45 wide, centred at 57
    assert (out[:, 58:57 + 45] == 200).all()
    same = letterbox_into(np.full((90, 160, 3), 7, np.uint8), (160, 90))
    assert (same == 7).all()  # the same aspect: no padding at all


def test_video_of_mixed_sizes_has_boxes_where_they_belong(detect_bundle, tmp_path):
    """Boxes are drawn on the frame at its own size, then the frame is letterboxed: the box lines in the decoded
    video are where annotate-then-letterbox puts them, not where a box drawn after the resize would be."""
    _, links = mixed_folder(tmp_path)
    with Runtime.load(detect_bundle, backend="onnxruntime", precision="fp32") as rt:
        frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in links[:2]]
        results = [rt(rgb, i, 0.0) for i, rgb in enumerate(frames)]
        assert results[1].detections is not None and len(results[1].detections.xyxy), "the parrot has a box"
        sink = VideoSink(tmp_path / "boxes.avi", rt, fps=5)  # MJPG: less loss than mp4v on thin lines
        for i, (rgb, r) in enumerate(zip(frames, results, strict=True)):
            sink.write(Frame(i, 0.0, rgb, "test"), r)
        sink.close()
        drawn = letterbox_into(annotate(frames[1], results[1], rt), (1280, 720))
    plain = letterbox_into(cv2.cvtColor(frames[1], cv2.COLOR_RGB2BGR), (1280, 720))
    video = cv2.VideoCapture(str(tmp_path / "boxes.avi"))
    decoded = [video.read()[1] for _ in range(2)]
    assert decoded[1].shape == (720, 1280, 3)
    lines = np.abs(drawn.astype(int) - plain).max(axis=2) > 80  # the box and label pixels
    assert lines.sum() > 200
    got = decoded[1].astype(int)[lines]
    assert np.abs(got - drawn[lines]).mean() * 3 < np.abs(got - plain[lines]).mean()


# ------------------------------------------------------------------------------------------ row 4: --show preflight


def test_no_display_on_linux_is_found_before_opencv_is_asked():
    problem = window_problem(env={}, platform="linux")
    assert problem and "DISPLAY and WAYLAND_DISPLAY are not set" in problem
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISPLAY", raising=False)
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        mp.setattr(pipeline_module.sys, "platform", "linux")
        mp.setattr(pipeline_module.cv2, "namedWindow", lambda *a: pytest.fail("namedWindow was called"))
        with pytest.raises(RuntimeConfigError, match=r"^--show: no display .*needs an OpenCV build with GUI support"):
            pipeline_module.WindowSink(runtime=None)


def test_an_x_display_nobody_answers_at_is_no_display():
    number = 5000 + uuid.uuid4().int % 1000
    assert "no X server answers at DISPLAY=" in window_problem(env={"DISPLAY": f":{number}"}, platform="linux")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:  # an X server's socket (abstract namespace)
        server.bind(f"\0/tmp/.X11-unix/X{number}")
        server.listen(1)
        problem = window_problem(env={"DISPLAY": f":{number}.0"}, platform="linux")
    assert problem is None or "headless build" in problem  # the display is there; the build decides the rest


@pytest.mark.parametrize("env", [{"WAYLAND_DISPLAY": "wayland-0"}, {"QT_QPA_PLATFORM": "offscreen"}])
def test_wayland_or_a_qt_platform_without_x_is_not_refused(env):
    problem = window_problem(env=env, platform="linux")
    assert problem is None or "headless build" in problem


def test_a_headless_build_is_refused_anywhere(monkeypatch):
    monkeypatch.setattr(pipeline_module.cv2, "getBuildInformation", lambda: "  Video I/O:\n  GUI:   NONE\n")
    assert "headless build" in window_problem(env={}, platform="darwin")
