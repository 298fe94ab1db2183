"""dkit.export.ncnn_int8 (NCNN int8 in ncnn2int8's format, written in Python) on a small real conv net."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pnnx = pytest.importorskip("pnnx")
ncnn = pytest.importorskip("ncnn")

from dkit.core.errors import UsageError  # noqa: E402
from dkit.export.ncnn_int8 import quantize_ncnn, read_convs  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.c = torch.nn.Conv2d(32, 8, 1)  # linear: no activation after it

    def forward(self, x):
        return self.c(torch.nn.functional.silu(self.b(torch.nn.functional.silu(self.a(x)))))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    from dkit.export.ncnn import _pnnx_export

    tmp = tmp_path_factory.mktemp("ncnn-int8")
    _pnnx_export(Net().eval(), tmp / "net.pt", tmp, "net", False, torch.rand(1, 3, 32, 32))
    return tmp / "net.ncnn.param", tmp / "net.ncnn.bin"


def run(param, weights, x, int8: bool) -> np.ndarray:
    net = ncnn.Net()
    net.opt.use_int8_inference = int8
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    sample = np.ascontiguousarray(x[0])
    with net.create_extractor() as ex:
        ex.input(net.input_names()[0], ncnn.Mat(sample))
        return np.array(ex.extract(net.output_names()[0])[1])


def test_the_int8_model_loads_in_ncnn_and_stays_close_to_fp32(fp32, tmp_path):
    param, weights = fp32
    lines, convs, _ = read_convs(param, weights)
    assert [c.num_output for c in convs] == [16, 32, 8]
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(8)]
    how = quantize_ncnn(param, weights, tmp_path / "q.param", tmp_path / "q.bin", calibration)
    assert how["quantized"] == 1 and len(how["float"]) == 2  # the first conv (raw input) and the linear last one
    q_lines = (tmp_path / "q.param").read_text().splitlines()
    assert sum(" 8=2" in line for line in q_lines) == 1
    assert (tmp_path / "q.bin").stat().st_size < weights.stat().st_size  # one layer's weights in a quarter the bytes
    x = rng.random((1, 3, 32, 32), dtype=np.float32)
    ref, got = run(param, weights, x, False), run(tmp_path / "q.param", tmp_path / "q.bin", x, True)
    assert ref.shape == got.shape == (8, 16, 16)
    assert not np.array_equal(ref, got)  # really quantized
    np.testing.assert_allclose(got, ref, atol=0.05 * float(np.abs(ref).max()))


def test_a_graph_with_other_weighted_layers_is_refused(fp32, tmp_path):
    param, weights = fp32
    text = param.read_text().replace("Convolution ", "InnerProduct ", 1)
    (tmp_path / "x.param").write_text(text)
    with pytest.raises(UsageError, match="Convolution-only graphs; layer .* is InnerProduct"):
        read_convs(tmp_path / "x.param", weights)
