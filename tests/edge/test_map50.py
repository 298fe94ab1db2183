"""dkit.edge.infer.map50 (the device's mAP50, numpy only) against Ultralytics' matching and AP
(dkit.distill.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from dkit.edge.infer.map50 import map50, match


def _boxes(rng, n: int) -> np.ndarray:
    xy = rng.uniform(0, 280, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(8, 120, (n, 2))], 1).astype(np.float32)  # (n, 4) xyxy


def _pairs(seed: int, images: int = 12, classes: int = 4) -> list[tuple]:
    """Reference boxes and a noisy copy: jittered, some dropped, some spurious, some relabelled, ties in conf."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        m = int(rng.integers(0, 9))
        g, gc = _boxes(rng, m), rng.integers(0, classes, m)
        keep = rng.random(m) > 0.2
        p = g[keep] + rng.normal(0, rng.choice([1.0, 12.0]), (int(keep.sum()), 4)).astype(np.float32)
        pc = np.where(rng.random(len(p)) < 0.1, rng.integers(0, classes, len(p)), gc[keep])
        extra = int(rng.integers(0, 4))
        p, pc = np.concatenate([p, _boxes(rng, extra)]), np.concatenate([pc, rng.integers(0, classes, extra)])
        conf = np.round(rng.uniform(0.001, 1.0, len(p)), 1).astype(np.float32)  # rounded: ties
        out.append((p, conf, pc, g, gc))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.devenv("ultralytics")
def test_map50_equals_ultralytics(seed):
    pytest.importorskip("ultralytics")
    from dkit.distill.metrics import detection_map

    pairs = _pairs(seed)
    want = detection_map(pairs, [f"c{i}" for i in range(4)])["map50"]
    assert map50(pairs) == pytest.approx(want, abs=1e-9)


def test_identical_detections_score_one_and_edge_cases():
    pairs = _pairs(0)
    # identical detections: 0.995, as Ultralytics scores them (its recall sentinel halves the last 1/100 step)
    assert map50([(g, np.ones(len(g)), gc, g, gc) for _, _, _, g, gc in pairs]) == pytest.approx(0.995)
    empty = np.zeros((0, 4), np.float32)
    assert map50([(empty, [], [], empty, [])]) == 1.0  # nothing to find, nothing found
    assert map50([(np.array([[0, 0, 9, 9]]), [0.9], [1], empty, [])]) == 0.0
    assert map50([]) == 1.0


def test_a_prediction_claims_one_reference_only():
    g = np.array([[0, 0, 10, 10]], np.float32)
    p = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float32)  # two hits on one reference box: one counts
    assert match(p, np.array([0, 0]), g, np.array([0])).tolist() == [True, False]
    assert match(p, np.array([1, 1]), g, np.array([0])).tolist() == [False, False]  # another class
