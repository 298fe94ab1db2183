"""`dkit export` of tiny real classifier and judge students: parity asserted, verified bundles that run on the edge.

The judge bundle is also checked the way a kiosk uses it, from the edge layer alone (torch, open_clip, onnx
blocked): the device's tokenizer and the exported text encoder re-embed every prompt the bundle ships, and
the result must equal the teacher's embeddings in prompts.npy.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ultralytics")
pytest.importorskip("open_clip")
pytest.importorskip("onnx")

from dkit.edge.bundle import open_bundle  # noqa: E402
from dkit.export.judge import ANCHORS, calibrate, score  # noqa: E402
from tests.conftest import ASSETS, ROOT, distill_and_export  # noqa: E402

BLOCK = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "ultralytics", "open_clip", "onnx", "onnxslim", "distill",
                                  "export", "timm", "PIL"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""

CLS_KIT = """\
name: cls-toy
data: {{images: {images}, val: 8}}
ontology: {{classes: {{animal: [an animal], thing: [a thing]}}}}
teacher: {{kind: clip, model: ViT-S-32-alt, pretrained: random, abstain: {{margin: 0.0}}}}
student: {{kind: yolo-cls, model: yolov8n-cls.pt, imgsz: 64, epochs: 1, batch: 8}}
export: {{precisions: [fp32, fp16]}}
"""


@pytest.fixture(scope="module")
def judge(judge_run):
    return judge_run


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return distill_and_export(tmp_path_factory.mktemp("cls"), CLS_KIT, 32)


# ------------------------------------------------------------------------------------------ judge


def test_judge_bundle_parity_and_contents(judge):
    kit, run, _, result = judge
    parity = result["parity"]
    assert parity["student"]["images"] == 16 and parity["student"]["max_abs_diff"] <= kit.export.parity_atol
    assert parity["student"]["agreement"] >= 0.9999 and parity["student"]["min_cosine"] >= 0.999
    text = parity["text"]
    assert text["token_agreement"] == 1.0 and text["first_mismatch"] is None
    assert text["max_abs_diff"] <= 1e-4 and text["min_cosine"] >= 0.9999
    with open_bundle(run / "bundle") as bundle:
        m = bundle.manifest.to_dict()  # the JSON document the device reads
        assert m["task"] == "embed" and m["teacher"]["random"] and m["classes"] == ["animal", "food", "vehicle"]
        checks = {f for f in m["files"] if f.startswith("checks/")}  # the int8 model's on-device check
        assert set(m["files"]) - checks == {"student.onnx", "student-int8.onnx", "text.onnx",
                                            "bpe_simple_vocab_16e6.txt.gz", "prompts.npy", "README.md"}
        ref = json.loads(bundle.path("checks/reference.json").read_text())
        assert checks == {"checks/reference.json"} | {i["file"] for i in ref["images"]} and len(ref["images"]) == 10
        assert len(ref["images"][0]["embedding"]) == m["prompts"]["dim"] and ref["letterbox"] is None
        assert 0.9 <= m["device_checks"][platform.machine()]["onnxruntime/int8"] <= 1.0  # mean cosine, run here
        assert set(m["models"]) == {"student", "student_int8", "text"}
        assert m["models"]["student_int8"]["vs_fp32"]["metric"] == "mean cosine"
        rows = m["prompts"]["rows"]
        assert [r["role"] for r in rows] == ["class"] * 3 + ["background"] + ["prompt"] * 2 + ["text"] * 4 + ["unsafe"]
        table = np.load(bundle.path("prompts.npy"), allow_pickle=False)
        assert table.shape == (len(rows), m["prompts"]["dim"]) and table.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-5)
        c = m["calibration"]
        assert c["source"] == "student" and c["score"][0] == 0 and c["score"][-1] == 100
        assert c["split"] == "train" and c["images"] == 30  # fitted on the training images only
        assert np.all(np.diff(c["cosine"]) > 0) and np.all(np.diff(c["score"]) > 0)
        # held-out images x the 5 ontology prompts, each alone (as typed on the device)
        assert c["agreement"]["split"] == "val" and c["agreement"]["pairs"] == 10 * 5
        assert 0 <= c["agreement"]["mean_abs_score_diff"] <= 100 and -1 <= c["agreement"]["spearman"] <= 1
        mod = c["agreement"]["moderation"]  # the device's moderation rule on 10 held-out images x 2 judge prompts
        assert mod["pairs"] == 10 * 2 and 0 <= mod["agreement"] <= 1
        assert sum(mod["student"].values()) == sum(mod["teacher"].values()) == mod["pairs"]
        assert set(mod["student"]) == {"ok", "text", "no_match", "blocked"}
        assert m["judge"]["unsafe_prompts"] == ["a weapon"] and m["judge"]["text_penalty"] == 0.5
        assert m["tokenizer"] == {"type": "clip-bpe", "file": "bpe_simple_vocab_16e6.txt.gz", "context_length": 77}
        readme = bundle.path("README.md").read_text()
        assert "UNTRAINED" in readme and "token ids identical 1.000" in readme and "dkit serve" in readme
        assert f"agree on {mod['agreement']:.3f} of 20 image-prompt pairs" in readme


def test_judge_bundle_embeds_prompts_on_the_edge_alone(judge):
    """The kiosk path without the training stack: tokenizer + text.onnx re-create prompts.npy; images score 0-100."""
    _, run, _, _ = judge
    image = sorted((ASSETS / "data/imagenet-sample").glob("*.JPEG"))[-1]
    code = BLOCK + f"""
import cv2, numpy as np, onnxruntime as ort
from dkit.edge.bundle import open_bundle
from dkit.edge.infer.preprocess import preprocess
from dkit.edge.infer.tokenizer import Tokenizer
with open_bundle({str(run / "bundle")!r}) as b:
    m = b.manifest.to_dict()  # the JSON document the device reads
    tok = Tokenizer.from_file(b.path(m["tokenizer"]["file"]), m["tokenizer"]["context_length"])
    text = ort.InferenceSession(str(b.path(m["models"]["text"]["file"])), providers=["CPUExecutionProvider"])
    table = np.load(b.path(m["prompts"]["file"]), allow_pickle=False)
    worst = 1.0
    for row, ref in zip(m["prompts"]["rows"], table):
        prompts = row.get("prompts", [row["text"]])
        texts = [t.format(p) for p in prompts for t in m["prompts"]["templates"]]
        e = text.run(None, {{"tokens": tok(texts)}})[0]
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        mean = e.mean(0)
        worst = min(worst, float(mean / np.linalg.norm(mean) @ ref))
    student = ort.InferenceSession(str(b.path("student.onnx")), providers=["CPUExecutionProvider"])
    rgb = cv2.cvtColor(cv2.imread({str(image)!r}), cv2.COLOR_BGR2RGB)
    emb = student.run(None, {{"images": preprocess(rgb, m["preprocess"])[0]}})[0]
    cos = emb @ table.T
    scores = np.interp(cos, m["calibration"]["cosine"], m["calibration"]["score"])
    heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "open_clip", "onnx", "ultralytics"))
    print(json.dumps({{"worst": worst, "norm": float(np.linalg.norm(emb)), "scores": scores.ravel().tolist(),
                      "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["heavy"] == [] and got["worst"] >= 0.9999 and abs(got["norm"] - 1) < 1e-4
    assert all(0 <= s <= 100 for s in got["scores"])


# ------------------------------------------------------------------------------------------ classifier


def test_classifier_bundle_parity_and_edge_run(classifier):
    kit, run, _, result = classifier
    parity = result["parity"]["student"]
    assert parity["images"] == 16 and parity["input_max_abs_diff"] == 0.0  # edge input == torchvision's, bit for bit
    assert parity["max_abs_diff"] <= kit.export.parity_atol and parity["agreement"] == 1.0
    with open_bundle(run / "bundle.tar.gz") as bundle:
        m = bundle.manifest.to_dict()  # the JSON document the device reads
        assert m["task"] == "classify" and m["preprocess"]["interpolation"] == "pil-bilinear"
        assert m["preprocess"]["size"] == 64 and m["thresholds"]["top_k"] == len(m["classes"])
        assert set(m["classes"]) <= {"animal", "thing"} and len(m["classes"]) >= 1
        assert m["models"]["student_fp16"]["vs_fp32"]["metric"] == "top-1 agreement"
        assert "top-1 class agreeing with Ultralytics' predict 1.000" in bundle.path("README.md").read_text()
    image = sorted((ASSETS / "data/imagenet-sample").glob("*.JPEG"))[-1]
    code = BLOCK + f"""
import cv2, numpy as np, onnxruntime as ort
from dkit.edge.bundle import open_bundle
from dkit.edge.infer.preprocess import preprocess
with open_bundle({str(run / "bundle")!r}) as b:
    s = ort.InferenceSession(str(b.path("student.onnx")), providers=["CPUExecutionProvider"])
    rgb = cv2.cvtColor(cv2.imread({str(image)!r}), cv2.COLOR_BGR2RGB)
    p = s.run(None, {{s.get_inputs()[0].name: preprocess(rgb, b.manifest.preprocess)[0]}})[0]
    print(json.dumps({{"shape": list(p.shape), "sum": float(p.sum())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["shape"] == [1, len(m["classes"])] and abs(got["sum"] - 1) < 1e-4


def test_bench_runtime_compares_a_classifier_with_ultralytics(classifier):
    """The runtime benchmark with Ultralytics' predict as the reference runs on a classifier bundle too."""
    from dkit.devtools.bench import bench_runtime
    from dkit.distill.bench import ultralytics_predictor

    _, run, _, _ = classifier
    result = bench_runtime(run / "bundle", ASSETS / "data/imagenet-sample", images=4, repeat=1,
                           reference=ultralytics_predictor)
    assert result["fps_runtime"] > 0 and result["fps_ultralytics"] > 0


def test_cli_export_prints_each_parity(classifier):
    from tests.conftest import run_dkit

    kit, run, store, _ = classifier
    out = run_dkit("export", str(run.parent / "kit.yaml"), "--out", str(run), env={"DKIT_HOME": str(store.root),
                                                                               "DKIT_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "student ONNX parity on 16 images" in out.stdout and "top-1 agreeing with Ultralytics' predict 1.0000" \
        in out.stdout and "fp16: top-1 agreement vs fp32" in out.stdout and "verified" in out.stdout


# ------------------------------------------------------------------------------------------ calibration


def _unit(rng, n, d=16):
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("classes", [1, 2, 10])
@pytest.mark.parametrize("separation", [0.0, 0.5, 3.0])
def test_calibration_curve_is_increasing_and_spans_0_to_100(classes, separation):
    rng = np.random.default_rng(classes)
    protos = _unit(rng, classes)
    labels = rng.integers(0, classes, 200)
    images = protos[labels] * separation + _unit(rng, 200) * 1.0
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    c = calibrate(images, protos)
    assert np.all(np.diff(c["cosine"]) > 0) and c["score"][0] == 0 and c["score"][-1] == 100
    s = score(images @ protos.T, c)
    assert s.min() >= 0 and s.max() <= 100
    if separation == 3.0 and classes > 1:  # well-separated: a match scores high, an unrelated pair low
        match = s[np.arange(200), labels]
        other = s[np.arange(200), (labels + 1) % classes]
        assert np.median(match) == pytest.approx(70, abs=3) and np.median(other) < 20
        assert len(c["cosine"]) == len(ANCHORS)


def test_calibration_refuses_nothing_to_calibrate():
    from dkit.core.errors import DkitError

    with pytest.raises(DkitError, match="no images or no classes"):
        calibrate(np.zeros((0, 4), np.float32), np.eye(4, dtype=np.float32))
