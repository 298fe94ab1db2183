"""dkit.edge.infer.yolo_head (the NCNN detector's head decoding in numpy) against Ultralytics' own Detect decoding."""

from __future__ import annotations

import numpy as np
import pytest

from dkit.edge.infer.yolo_head import decode_head

pytestmark = pytest.mark.devenv("torch", "ultralytics")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(64, 64), (32, 64), (96, 32)])
def test_decode_head_is_ultralytics_detect_inference(shape):
    from ultralytics.nn.modules import Detect

    torch.manual_seed(0)
    det = Detect(nc=5, ch=(8, 16, 32)).eval()
    det.stride = torch.tensor([8.0, 16.0, 32.0])
    h, w = shape
    feats = [torch.randn(1, c, h // s, w // s) for c, s in ((8, 8), (16, 16), (32, 32))]
    with torch.inference_mode():
        ref = det(feats)[0][0].numpy()  # (4 + 5, A): Ultralytics' decoded output
        maps = [torch.cat((det.cv2[i](f), det.cv3[i](f)), 1)[0].numpy() for i, f in enumerate(feats)]
    got = decode_head(maps, [8.0, 16.0, 32.0], det.reg_max)
    assert got.shape == ref.shape == (9, sum((h // s) * (w // s) for s in (8, 16, 32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
