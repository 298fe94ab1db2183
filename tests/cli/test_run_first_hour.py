"""`dkit run` in its first hour (issue #16), as the user runs it: --show without a display, a camera index or stream
that is not there, a run that scores nothing, the stats line's latency split, and --save over mixed-size photos.
Every mistake ends in one `dkit: error:` line with its exit code, and ends: the subprocess timeouts are only a guard
against a hang, never what a test measures."""

from __future__ import annotations

import json
import os
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ASSETS, run_dkit
from tests.edge import conftest as edge

yolo_onnx, detect_bundle = edge.yolo_onnx, edge.detect_bundle  # the edge tests' real detector bundle, as fixtures

COCO = ASSETS / "data" / "coco128" / "images" / "train2017"
PHOTOS = ASSETS / "data" / "photos"
GUARD = 120  # seconds: only reached when something hangs


def no_display_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def stats_of(stderr: str) -> dict:
    return json.loads(stderr.split("dkit: stats ", 1)[1].splitlines()[0])


def one_error(out, code: int, message: str) -> None:
    errors = [line for line in out.stderr.splitlines() if line.startswith("dkit: error: ")]
    assert out.returncode == code, out.stderr
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------ row 4: --show


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the DISPLAY check is Linux's")
def test_show_without_a_display_is_a_clear_error_not_an_abort(detect_bundle):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "dkit", "run", str(detect_bundle), "--source", "0", "--show"],
                         env=no_display_env(), capture_output=True, text=True, timeout=GUARD)
    one_error(out, 2, "--show: no display here")  # RuntimeConfigError -> UsageError: exit 2, never 134 (abort)
    assert "needs an OpenCV build with GUI support" in out.stderr and "use --save instead" in out.stderr
    assert "running student.onnx" not in out.stderr  # refused before the model loads, before any capture


# ------------------------------------------------------------------------------------------ row 5: sources


def test_a_camera_index_that_is_not_there_fails_after_open_tries(detect_bundle):
    out = run_dkit("run", str(detect_bundle), "--source", "97", "--open-tries", "2", timeout=GUARD)
    one_error(out, 2, "camera 97: no frame after 2 tries (open failed); check the index")
    assert out.stderr.count("97: try 1 of 2 failed (open failed); next try in") == 1  # our one line per try
    assert "[ WARN" not in out.stderr and "[ERROR" not in out.stderr and "VIDEOIO" not in out.stderr  # no flood


def test_a_stream_nobody_serves_fails_after_open_tries(detect_bundle):
    out = run_dkit("run", str(detect_bundle), "--source", "rtsp://user:secret@127.0.0.1:9/none", "--open-tries",
                   "1", timeout=GUARD)  # nothing listens on port 9: refused at once
    one_error(out, 2, "stream rtsp://***@127.0.0.1:9/none: no frame after 1 try (open failed); check the URL")
    assert "secret" not in out.stderr and "Connection refused" not in out.stderr  # FFmpeg's own line silenced


def test_a_missing_video_file_is_named(detect_bundle, tmp_path):
    out = run_dkit("run", str(detect_bundle), "--source", str(tmp_path / "no" / "clip.mp4"), timeout=GUARD)
    one_error(out, 2, "clip.mp4: no such file or folder")


@pytest.mark.parametrize("value", ["-1", "two"])
def test_open_tries_must_be_a_count(detect_bundle, value):
    out = run_dkit("run", str(detect_bundle), "--source", "0", "--open-tries", value, timeout=GUARD)
    assert out.returncode == 2 and "--open-tries: expected a number of tries >= 0" in out.stderr


def test_a_run_that_scores_nothing_does_not_exit_0(detect_bundle, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image at all")
    out = run_dkit("run", str(detect_bundle), "--source", str(folder), timeout=GUARD)
    one_error(out, 1, "no frame was scored: 2 read, 2 unreadable or corrupt")
    assert stats_of(out.stderr)["frames"] == 0  # the stats line still comes first


# ------------------------------------------------------------------------------------------ row 7: latency split


def test_stats_say_inference_and_queue_wait_apart(detect_bundle):
    if not COCO.is_dir():
        pytest.skip(f"real images not found at {COCO}")
    out = run_dkit("run", str(detect_bundle), "--source", str(COCO), "--jsonl", "--max-frames", "6",
                   "--backend", "onnxruntime", "--precision", "fp32", timeout=GUARD)
    assert out.returncode == 0, out.stderr
    stats = stats_of(out.stderr)
    assert stats["frames"] == 6
    assert 0 < stats["infer_p50_ms"] <= stats["p50_ms"] and 0 <= stats["wait_p50_ms"] <= stats["p50_ms"]
    assert stats["infer_p95_ms"] <= stats["p95_ms"] <= stats["p99_ms"]
    for doc in map(json.loads, out.stdout.splitlines()):
        assert doc["latency_ms"] == pytest.approx(doc["wait_ms"] + doc["infer_ms"], abs=2e-3)


# ------------------------------------------------------------------------------------------ row 12: --save


def test_save_letterboxes_mixed_sizes_into_the_first_frames_size(detect_bundle, tmp_path):
    if not (PHOTOS / "parrot.jpg").is_file():
        pytest.skip(f"real photos not found at {PHOTOS}")
    names = ["cat_720p.jpg", "parrot.jpg", "kite_and_cold.jpg"]  # 1280x720 first, then tall, then 3:2 and larger
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / f"{i}_{name}").symlink_to(PHOTOS / name)
    video = tmp_path / "out.mp4"
    out = run_dkit("run", str(detect_bundle), "--source", str(folder), "--save", str(video), "--conf", "1.0",
                   timeout=GUARD)  # conf 1.0: no boxes, so the picture itself can be compared
    assert out.returncode == 0, out.stderr
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        decoded.append(image.astype(np.int16))
    assert len(decoded) == len(names) and all(d.shape == (720, 1280, 3) for d in decoded)
    for frame, name in zip(decoded[1:], names[1:], strict=True):
        source = cv2.imread(str(PHOTOS / name))
        h0, w0 = source.shape[:2]
        scale = min(1280 / w0, 720 / h0)
        w, h = round(w0 * scale), round(h0 * scale)
        x, y = (1280 - w) // 2, (720 - h) // 2
        pads = [frame[:, : max(0, x - 2)], frame[:, x + w + 2:], frame[: max(0, y - 2)], frame[y + h + 2:]]
        assert all(p.size == 0 or np.abs(p).mean() < 3 for p in pads), name  # the pad colour: black
        assert sum(p.size for p in pads) > 0.1 * frame.size, name  # there is padding: the aspect differs from 16:9
        fitted = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA).astype(np.int16)[4:-40, 4:-4]
        stretched = cv2.resize(source, (1280, 720), interpolation=cv2.INTER_AREA).astype(np.int16)[y:y + h, x:x + w]
        content = frame[y:y + h, x:x + w]
        kept = np.abs(content[4:-40, 4:-4] - fitted).mean()  # (the bottom rows hold the "NN ms" label)
        assert kept < 8, (name, kept)
        assert kept * 3 < np.abs(content - stretched).mean(), name  # and not the stretched picture
