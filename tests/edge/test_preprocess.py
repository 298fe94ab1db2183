"""Edge pre-processing equals the training side's (Ultralytics' LetterBox) pixel for pixel, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.preprocess import letterbox, preprocess


def _photos(assets: Path) -> list[Path]:
    return sorted(p for p in (assets / "data" / "photos").iterdir() if p.suffix in (".jpg", ".bmp"))[:6]


@pytest.mark.parametrize("size", [(320, 320), (640, 640), (256, 416)])
def test_letterbox_matches_ultralytics(assets, size):
    pytest.importorskip("ultralytics")
    import cv2
    from ultralytics.data.augment import LetterBox

    reference = LetterBox(new_shape=size, auto=False, scale_fill=False, scaleup=True, center=True)
    for path in _photos(assets):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        ours, box = letterbox(rgb, size)
        theirs = reference(image=rgb)
        assert ours.shape == theirs.shape == (*size, 3)
        np.testing.assert_array_equal(ours, theirs)
        corners = np.array([[0, 0, rgb.shape[1], rgb.shape[0]]], np.float32) * box.scale
        corners += [box.pad_left, box.pad_top, box.pad_left, box.pad_top]
        np.testing.assert_allclose(box.to_image(corners), [[0, 0, rgb.shape[1], rgb.shape[0]]], atol=1e-3)


def test_preprocess_layout_and_scale():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x, box = preprocess(rgb, {"resize": "letterbox", "size": [64, 64], "scale": 1 / 255})
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert x[0, 0, 32, 32] == pytest.approx(1.0) and x[0, 1, 32, 32] == 0.0  # R channel first
    assert x[0, 0, 0, 0] == pytest.approx(114 / 255)  # padding rows above and below a wide image
    assert (box.scale, box.pad_left, box.pad_top) == (0.32, 0, 16)
    with pytest.raises(ValueError, match="not supported"):
        preprocess(rgb, {"resize": "squash", "size": [64, 64]})
