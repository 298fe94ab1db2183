"""`dkit bench runtime --matrix` (dkit.devtools.bench_matrix): every configuration, round-robin, with agreement."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dkit.devtools.bench_matrix import bench_matrix, format_table, wide_frames
from dkit.edge.infer.agreement import agreement
from dkit.edge.infer.postprocess import box_iou
from tests.conftest import ASSETS, ROOT
from tests.edge.test_runtime import _rgb

PHOTOS = ASSETS / "data" / "photos"


def photos(n: int) -> list[np.ndarray]:
    if not PHOTOS.is_dir():
        pytest.skip(f"real test assets not found at {ASSETS}")
    return [_rgb(p) for p in sorted(PHOTOS.glob("*.jpg"))[:n]]


def test_wide_frames_are_16_9_crops_of_the_same_photos():
    frames = photos(4)
    for rgb, wide in zip(frames, wide_frames(frames), strict=True):
        h, w = wide.shape[:2]
        assert abs(w / h - 16 / 9) < 0.01 and (h == rgb.shape[0] or w == rgb.shape[1])


def test_box_iou_and_agreement_of_identical_results(detect_bundle):
    from dkit.edge.infer.runtime import Runtime

    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    np.testing.assert_allclose(box_iou(a, a), [[1, 25 / 175], [25 / 175, 1]], rtol=1e-6)
    with Runtime.load(detect_bundle) as rt:
        results = [rt(rgb) for rgb in photos(3)]
    assert agreement(results, results) == 1.0


@pytest.mark.devenv("openvino")
def test_every_configuration_is_measured_and_agrees(detect_bundle):
    pytest.importorskip("openvino")
    rows = bench_matrix(detect_bundle, photos(3) + wide_frames(photos(2)), repeat=2,
                        backends=["onnxruntime", "openvino"])
    names = [(r["backend"], r["precision"], r["letterbox"]) for r in rows]
    assert names == [("onnxruntime", "fp32", "square"), ("onnxruntime", "fp32", "minimal"),
                     ("openvino", "fp32", "square"), ("openvino", "fp32", "minimal")]
    assert rows[0]["agreement"] == rows[1]["agreement"] == 1.0 and all(r["agreement"] >= 0.8 for r in rows)
    assert all(r["fps"] > 0 and r["fps_bare"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert all(0 < r["spread"] <= 1 for r in rows)
    table = format_table(rows, "t")
    assert table.count("\n| ") == 5 and "| openvino | fp32 | minimal |" in table


@pytest.mark.slow
@pytest.mark.devenv("ultralytics")
def test_dkit_bench_runtime_matrix_cli(detect_bundle, tmp_path):
    pytest.importorskip("ultralytics")
    out = subprocess.run([sys.executable, "-m", "dkit", "bench", "runtime", str(detect_bundle), "--source",
                          str(PHOTOS), "--matrix", "--images", "2", "--repeat", "1", "--backends", "onnxruntime"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["images"] == 2 and set(doc) >= {"photos", "wide_16x9", "machine"}
    for rows in (doc["photos"], doc["wide_16x9"]):
        assert [r["letterbox"] for r in rows] == ["square", "minimal", "default (rect)"]
        assert rows[-1]["backend"] == "ultralytics predict" and rows[-1]["fps"] > 0
    assert "wide_16x9: 2 frames" in out.stderr and "| onnxruntime | fp32 | minimal |" in out.stderr
