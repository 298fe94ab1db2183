"""Edge pre-processing equals the training side's pixel for pixel on real photos: Ultralytics' LetterBox for
detectors, Pillow's bilinear + torchvision's Resize/CenterCrop geometry (Ultralytics' classify transform) for
classifiers; and boxes map back to the image as Ultralytics' scale_boxes does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dkit.edge.infer.preprocess import letterbox, preprocess


def _photos(assets: Path) -> list[Path]:
    return sorted(p for p in (assets / "data" / "photos").iterdir() if p.suffix in (".jpg", ".bmp"))[:6]


@pytest.mark.parametrize("size", [(320, 320), (640, 640), (256, 416)])
@pytest.mark.devenv("ultralytics")
def test_letterbox_matches_ultralytics(assets, size, monkeypatch):
    """Ultralytics' LetterBox geometry exactly; its pixels (cv2.INTER_LINEAR, SIMD fixed point that differs between
    x86 and aarch64) within 2 levels, and exactly those of the same LetterBox with OpenCV's bit-exact bilinear,
    which is what the device uses on every platform."""
    pytest.importorskip("ultralytics")
    import cv2
    from ultralytics.data.augment import LetterBox

    reference = LetterBox(new_shape=size, auto=False, scale_fill=False, scaleup=True, center=True)
    real_resize = cv2.resize
    for path in _photos(assets):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        ours, box = letterbox(rgb, size)
        theirs = reference(image=rgb)
        assert ours.shape == theirs.shape == (*size, 3)
        assert np.abs(ours.astype(int) - theirs).max() <= 2
        with monkeypatch.context() as m:  # Ultralytics' own code, with the bit-exact interpolation
            m.setattr(cv2, "resize", lambda img, dsize, interpolation=None, **kw: real_resize(
                img, dsize, interpolation=cv2.INTER_LINEAR_EXACT if interpolation == cv2.INTER_LINEAR
                else interpolation, **kw))
            exact = reference(image=rgb)
        np.testing.assert_array_equal(ours, exact)
        from ultralytics.utils.ops import scale_boxes

        boxes = np.random.default_rng(0).uniform(0, min(size), (50, 4)).astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]  # (50, 4) xyxy input pixels
        theirs = scale_boxes(size, boxes.copy(), rgb.shape[:2])
        np.testing.assert_allclose(box.to_image(boxes), theirs, atol=1e-3)


def test_preprocess_layout_and_scale():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x, box = preprocess(rgb, {"resize": "letterbox", "size": [64, 64], "scale": 1 / 255})
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert x[0, 0, 32, 32] == pytest.approx(1.0) and x[0, 1, 32, 32] == 0.0  # R channel first
    assert x[0, 0, 0, 0] == pytest.approx(114 / 255)  # padding rows above and below a wide image
    assert (box.scale, box.pad_left, box.pad_top) == (0.32, 0, 16)
    with pytest.raises(ValueError, match="preprocess.resize: expected one of letterbox, shortest, got 'squash'"):
        preprocess(rgb, {"resize": "squash", "size": [64, 64]})


SIZES = [(1, 1, 1, 1), (5, 7, 3, 9), (7, 5, 9, 3), (33, 77, 64, 149), (100, 50, 224, 112), (480, 640, 224, 298),
         (640, 480, 320, 240), (300, 301, 224, 224), (2, 300, 1, 150), (300, 2, 150, 1), (17, 17, 40, 40)]


@pytest.mark.parametrize(("h", "w", "new_h", "new_w"), SIZES)
def test_pil_bilinear_is_pillow_bit_for_bit(h, w, new_h, new_w):
    from PIL import Image

    from dkit.edge.infer.preprocess import pil_bilinear

    rng = np.random.default_rng(h * 1000 + w)
    for _ in range(5):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        np.testing.assert_array_equal(pil_bilinear(rgb, (new_h, new_w)), theirs)


def test_pil_bilinear_random_sizes_both_pass_orders():
    """Pillow runs the vertical pass first when the height shrinks much more than the width: both orders occur."""
    from PIL import Image

    from dkit.edge.infer.preprocess import pil_bilinear

    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w, new_h, new_w = (int(v) for v in rng.integers(1, 90, 4))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        np.testing.assert_array_equal(pil_bilinear(rgb, (new_h, new_w)), theirs, err_msg=f"{(h, w)}->{(new_h, new_w)}")


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.devenv("ultralytics")
def test_classify_preprocess_equals_ultralytics_transform(assets, size):
    """The classifier's device input equals Ultralytics' classify_transforms (torchvision on PIL) exactly."""
    pytest.importorskip("ultralytics")
    import cv2
    from PIL import Image
    from ultralytics.data.augment import classify_transforms

    spec = {"resize": "shortest", "size": size, "crop": "center", "interpolation": "pil-bilinear", "scale": 1 / 255,
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channels": "RGB", "layout": "NCHW"}
    reference = classify_transforms(size)
    for path in _photos(assets):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x, _ = preprocess(rgb, spec)
        np.testing.assert_array_equal(x[0], reference(Image.fromarray(rgb)).numpy())


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (1280, 720), (301, 300), (224, 224), (225, 224)])
@pytest.mark.devenv("torch", "torchvision")
def test_shortest_side_and_center_crop_geometry_match_torchvision(h, w):
    pytest.importorskip("torchvision")
    import torch
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    from dkit.edge.infer.preprocess import center_crop, shortest_side

    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    theirs = CenterCrop(224)(Resize(224, InterpolationMode.NEAREST)(torch.from_numpy(rgb).permute(2, 0, 1)))
    ours = center_crop(shortest_side(rgb, 224, "nearest"), 224)
    assert ours.shape == (224, 224, 3)
    resized = Resize(224, InterpolationMode.NEAREST)(torch.zeros(3, h, w)).shape[1:]
    assert shortest_side(rgb, 224, "nearest").shape[:2] == tuple(resized)
    assert theirs.shape[1:] == (224, 224)


def test_unknown_interpolation_is_named():
    with pytest.raises(ValueError, match="'bogus' is not one of pil-bilinear"):
        preprocess(np.zeros((10, 20, 3), np.uint8), {"resize": "shortest", "size": 8, "interpolation": "bogus"})
