"""`dkit export` of a tiny real YOLO student: parity asserted, verified bundle, runs on the edge without torch."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ultralytics")
pytest.importorskip("onnx")

from dkit.core.errors import DkitError  # noqa: E402
from dkit.core.kit import load_kit  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.students import student_module  # noqa: E402
from dkit.edge.bundle import open_bundle  # noqa: E402
from dkit.edge.bundle.manifest import ModelEntry, Preprocess  # noqa: E402
from dkit.export.bundle import export_bundle  # noqa: E402
from dkit.export.exporters import Refused  # noqa: E402
from tests.conftest import RECIPES, ROOT  # noqa: E402

TINY = ["data.val=4", "teacher.augment=false", "student.imgsz=64", "student.batch=8", "student.epochs=1",
        "export.precisions=[fp32]", "export.backends=[onnx]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """16 real COCO-128 images labelled by YOLOv8n and a 64 px student trained for one epoch."""
    from tests.conftest import ASSETS, link_images, yolo_store

    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    tmp = tmp_path_factory.mktemp("export")
    data = link_images(ASSETS / "data/coco128/images/train2017", "*.jpg", 16, tmp / "coco16")
    store = yolo_store(ASSETS, tmp / "store")

    def kit(*extra):
        return load_kit(RECIPES / "coco128" / "kit.yaml", data=data, overrides=[*TINY, *extra])

    run = tmp / "run"
    label_images(kit(), run, store=store, progress=False, report=False)
    student_module(kit()).train(kit(), run, store=store, progress=False)
    return kit, run


def test_export_writes_a_verified_bundle_with_parity(trained):
    kit, run = trained
    result = export_bundle(kit(), run)
    parity = result["parity"]["student"]
    assert parity["images"] == 16 and parity["max_abs_diff"] <= kit().export.parity_atol
    assert parity["agreement"] >= kit().export.accuracy_guard
    with open_bundle(run / "bundle") as bundle:
        m = bundle.manifest.to_dict()  # the JSON document the device reads
        assert (m["task"], m["classes"][:2], m["teacher"]["random"]) == ("detect", ["person", "bicycle"], False)
        assert m["models"]["student"]["parity"] == parity and m["models"]["student"]["opset"] == 17
        assert m["preprocess"]["size"] == [64, 64] and set(m["files"]) == {"student.onnx", "README.md"}
        assert "trtexec --onnx=student.onnx" in bundle.path("README.md").read_text()
    with open_bundle(run / "bundle.tar.gz") as packed:
        assert packed.manifest.files == m["files"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary folders left
    assert oct((run / "bundle").stat().st_mode & 0o777) == "0o755"
    assert not (run / "student" / "weights" / "best.onnx").exists()


def test_the_bundle_runs_on_the_edge_without_the_training_stack(trained, assets):
    kit, run = trained
    export_bundle(kit(), run)
    code = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "ultralytics", "open_clip", "onnx", "onnxslim", "distill",
                                  "export"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import cv2, numpy as np, onnxruntime as ort
from dkit.edge.bundle import open_bundle
from dkit.edge.infer.preprocess import preprocess
with open_bundle(sys.argv[1]) as b:
    m = b.manifest.to_dict()  # the JSON document the device reads
    rgb = cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB)
    x, box = preprocess(rgb, m["preprocess"])
    s = ort.InferenceSession(str(b.path(m["models"]["student"]["file"])), providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    print(json.dumps({"shape": list(out.shape), "finite": bool(np.isfinite(out).all())}))
"""
    photo = assets / "data" / "photos" / "pets.jpg"
    for bundle in (run / "bundle", run / "bundle.tar.gz"):
        result = subprocess.run([sys.executable, "-c", code, str(bundle), str(photo)], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report == {"shape": [1, 84, 84], "finite": True}  # 80 classes + 4; (8x8 + 4x4 + 2x2) anchors at 64 px


def test_out_of_tolerance_is_refused_saying_by_how_much(trained):
    kit, run = trained
    export_bundle(kit(), run)
    before = (run / "bundle" / "manifest.json").read_text()
    refused = r"out of tolerance .* max abs output difference .* \(export.parity_atol 1e-09\)"
    with pytest.raises(DkitError, match=refused):
        export_bundle(kit("export.parity_atol=1e-9"), run)
    assert (run / "bundle" / "manifest.json").read_text() == before  # the previous bundle is untouched
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(("guard", "shipped"), [(0.0, {"fp16", "int8"}), (1.0, set())])
def test_fp16_and_int8_variants_carry_their_agreement_or_are_refused(trained, guard, shipped):
    kit, run = trained
    result = export_bundle(kit("export.precisions=[fp32, fp16, int8]", f"export.accuracy_guard={guard}",
                               "export.calibration_images=8"), run)
    with open_bundle(run / "bundle") as bundle:
        m = bundle.manifest.to_dict()  # the JSON document the device reads
        assert {k.removeprefix("student_") for k in m["models"] if k != "student"} == shipped
        for precision in shipped:
            v = m["models"][f"student_{precision}"]
            assert bundle.path(v["file"]).is_file() and v["precision"] == precision
            assert 0.0 <= v["vs_fp32"]["map50_vs_fp32"] <= 1.0 and v["vs_fp32"]["images"] == 4
            assert v["vs_fp32"]["ms_per_image"] > 0 and v["vs_fp32"]["ms_per_image_fp32"] > 0
            assert v["backends"]["onnxruntime"]["agreement"] == round(v["vs_fp32"]["agreement"], 4)
            assert "openvino" in v["backends"] and 0.0 <= v["backends"]["openvino"]["agreement"] <= 1.0
        for precision in {"fp16", "int8"} - shipped:  # below the guard: refused by name, its file not shipped
            assert "below export.accuracy_guard 1" in m["refused_variants"][precision]
            assert not (run / "bundle" / f"student-{precision}.onnx").exists()
            assert f"{precision}: refused" in bundle.path("README.md").read_text()
        if shipped:  # checks/: held-out images and the fp32 results, run here on every reduced model too
            assert m["checks"]["machine"] == platform.machine() and m["checks"]["min_agreement"] == guard
            ref = json.loads(bundle.path(m["checks"]["reference"]).read_text())
            assert len(ref["images"]) == 4 and all(bundle.path(i["file"]).is_file() for i in ref["images"])
            assert {m["models"][f"student_{p}"]["checked_on"] for p in shipped} == {platform.machine()}
            figures = m["device_checks"][platform.machine()]
            runs = {f"{b}/{p}" for b in ("onnxruntime", "openvino") for p in shipped  # OpenVINO may not run one
                    if "does not run it" not in m["models"][f"student_{p}"]["backends"][b].get("refused", "")}
            assert set(figures) == runs and "onnxruntime/int8" in runs  # (int8 on an AMX CPU, OpenVINO 2026)
            assert all(0.0 <= v <= 1.0 for v in figures.values())
        else:  # an fp32-only bundle has nothing to check on a device
            assert "checks" not in m and not any(n.startswith("checks/") for n in m["files"])
    assert set(result["variants"]) == {"fp16", "int8"}
    assert result["variants"]["int8"]["int8_format"] == "s8s8"  # the default: signed activations and weights
    if "int8" in shipped:
        assert int8_kinds(run / "bundle" / "student-int8.onnx") == ({"int8"}, {"int8", "int32"})  # biases s32


def int8_kinds(path) -> tuple[set[str], set[str]]:
    """The dtypes of an int8 QDQ model's activation and weight/bias zero points."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    zero_points = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    acts = {zero_points[n.input[2]].dtype.name for n in graph.node if n.op_type == "QuantizeLinear"}
    weights = {zero_points[n.input[0]].dtype.name for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in zero_points}
    return acts, weights


def test_the_u8s8_int8_format_quantizes_activations_unsigned(trained, tmp_path):
    from dkit.export.variants import _quantize_int8
    from dkit.export.yolo import kit_images, preprocess_spec

    kit, run = trained
    export_bundle(kit(), run)
    images = kit_images(run, split=None, limit=2)
    _quantize_int8(run / "bundle" / "student.onnx", tmp_path / "u8s8.onnx", images, preprocess_spec(kit()), "u8s8")
    assert int8_kinds(tmp_path / "u8s8.onnx") == ({"uint8"}, {"int8", "int32"})


def test_int8_keeps_linear_convolutions_in_float(trained):
    from dkit.export.variants import linear_convs

    kit, run = trained
    export_bundle(kit(), run)
    names = linear_convs(run / "bundle" / "student.onnx")
    # YOLOv8's head: the last conv of each box and class branch at 3 scales, and the fixed DFL conv
    assert len(names) == 7 and all("model.22" in n for n in names)


def test_tensorrt_without_a_gpu_documents_the_device_build(trained):
    kit, run = trained
    export_bundle(kit("export.tensorrt=true"), run)
    readme = (run / "bundle" / "README.md").read_text()
    assert "trtexec --onnx=student.onnx --saveEngine=student.engine --fp16" in readme
    assert "--minShapes=images:1x3x64x64" in readme


def test_export_before_training(tmp_path):
    kit = load_kit(RECIPES / "coco128" / "kit.yaml", overrides=["export.precisions=[fp32]"])
    (tmp_path / "labels").mkdir()
    with pytest.raises(DkitError, match="run `dkit train` first"):
        export_bundle(kit, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_parity_numbers_are_real(trained):
    """The agreement is computed from two different runtimes' outputs, not assumed: perturb one and it drops."""
    from dkit.export.yolo import detector_parity, preprocess_spec

    kit, run = trained
    export_bundle(kit(), run)
    from ultralytics import YOLO

    model = YOLO(str(run / "student" / "weights" / "best.pt"))
    photos = [np.asarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3)), np.uint8)]
    same = detector_parity(model, run / "bundle" / "student.onnx", photos, preprocess_spec(kit()), kit())
    assert same["max_abs_diff"] < 0.05
    other = run / "other.onnx"
    YOLO("yolov8n.yaml").export(format="onnx", imgsz=64, opset=17, dynamic=True, simplify=False, verbose=False)
    Path("yolov8n.onnx").replace(other)
    different = detector_parity(model, other, photos, preprocess_spec(kit()), kit())
    assert different["max_abs_diff"] > 1.0  # an untrained network: the check notices


def test_ncnn_models_are_exported_checked_against_onnx_and_run_on_the_edge(trained, assets):
    """`export.backends: [onnx, ncnn]`: fp32 and fp16 NCNN models with their agreement, run by the ncnn backend."""
    import cv2

    from dkit.edge.infer.runtime import Runtime

    kit, run = trained
    result = export_bundle(kit("export.backends=[onnx, ncnn]", "export.precisions=[fp32, int8]",
                               "export.calibration_images=4"), run)
    assert {"student_ncnn", "student_ncnn_fp16"} <= set(result["models"])
    int8 = result["formats"]["student_ncnn_int8"]  # the int8 NCNN detector: written here, checked like the others
    assert int8["vs_onnx"]["metric"] == "mAP50" and 0.0 <= int8["vs_onnx"]["agreement"] <= 1.0
    assert int8["int8"]["quantized"] > 0 and int8["int8"]["calibration_images"] == 4
    assert len(int8["int8"]["float"]) == 7  # the first convolution and the head's 6 logit convolutions
    with open_bundle(run / "bundle") as bundle:
        m = bundle.manifest
        assert m.formats() == ["onnx", "ncnn"] and m.precisions("ncnn") == ["fp32", "fp16", "int8"]
        entry = m.model("fp32", "ncnn")
        assert (entry.file, entry.weights, entry.format) == ("student.ncnn.param", "student.ncnn.bin", "ncnn")
        parity = entry.info["vs_onnx"]
        assert parity["images"] == 4 and parity["agreement"] >= kit().export.accuracy_guard
        assert parity["max_abs_diff"] < 1e-2
        assert {"student.ncnn.param", "student.ncnn.bin", "student-fp16.ncnn.bin"} <= set(m.files)
        assert entry.info["head"] == {"type": "yolov8-raw", "strides": [8.0, 16.0, 32.0], "reg_max": 16}
    frames = [cv2.imread(str(p))[..., ::-1] for p in sorted((assets / "data/imagenet-sample").glob("*.JPEG"))[:6]]
    frames.append(np.ascontiguousarray(frames[0][: frames[0].shape[0] // 4]))  # 4:1, minimal at 64 px: 64x32
    with Runtime.load(run / "bundle", backend="onnxruntime") as ort_rt, \
            Runtime.load(run / "bundle", backend="ncnn") as ncnn_rt:
        # the detector's head is decoded on the device, so NCNN takes the minimal letterbox's shapes too
        assert ncnn_rt.provider.startswith("ncnn") and ncnn_rt.spec.letterbox == ort_rt.spec.letterbox == "minimal"
        shapes = set()
        for rgb in frames:
            a, b = ort_rt.preprocess(rgb)[0], ncnn_rt.preprocess(rgb)[0]
            assert np.array_equal(a, b)
            shapes.add(a.shape[2:])
            assert np.abs(ort_rt.infer(a) - ncnn_rt.infer(b)).max() < 1e-2
        assert len(shapes) >= 2


def test_an_ncnn_model_below_the_guard_is_refused_not_shipped(trained, monkeypatch, tmp_path):
    import dkit.export.ncnn as ncnn_export
    from dkit.core.run import RunDir

    kit, run = trained

    def convert(kit, run, bundle_dir, stem, *, half):  # stand-in files: the guard, not pnnx, is under test here
        files = bundle_dir / f"{stem}.ncnn.param", bundle_dir / f"{stem}.ncnn.bin"
        for f in files:
            f.write_text("x")
        return (*files, None)

    monkeypatch.setattr(ncnn_export, "convert_yolo_detect", convert)  # the coco128 kit's kind's (StudentKind.ncnn)
    monkeypatch.setattr(ncnn_export, "_parity", lambda *a: {"metric": "mAP50", "agreement": 0.5, "images": 4,
                                                             "max_abs_diff": 1.0})
    student, spec = ModelEntry("student", "student.onnx"), Preprocess("letterbox", (64, 64))
    docs = ncnn_export.export_ncnn(kit(), RunDir(run), tmp_path, student, spec, [], "detect")
    assert set(docs) == {"student_ncnn", "student_ncnn_fp16"}
    assert all(isinstance(d, Refused) and "below export.accuracy_guard 0.95: not shipped" in d.reason
               for d in docs.values())
    assert list(tmp_path.iterdir()) == []  # the refused files are gone
    monkeypatch.setattr(ncnn_export, "export_ncnn", lambda *a: docs)
    result = export_bundle(kit("export.backends=[onnx, ncnn]"), run)
    assert set(result["models"]) == {"student"}
    with open_bundle(run / "bundle") as bundle:
        refused = bundle.manifest.info["refused_variants"]
        assert set(refused) == {"ncnn", "ncnn_fp16"} and "NCNN fp32: mAP50" in refused["ncnn"]


def test_a_judge_image_encoder_goes_to_ncnn_with_its_cosine(judge_run, tmp_path):
    """A clip-embed student through pnnx.export: checked by mean cosine against the ONNX encoder, run by NCNN."""
    import shutil

    from dkit.core.run import RunDir
    from dkit.edge.infer.backends.ncnn_backend import NcnnBackend
    from dkit.edge.infer.preprocess import preprocess
    from dkit.export.bundle import _split_images
    from dkit.export.ncnn import export_ncnn

    kit, run, _, _ = judge_run
    with open_bundle(run / "bundle") as b:
        student, spec = b.manifest.models["student"], b.manifest.preprocess
        shutil.copy(b.path("student.onnx"), tmp_path / "student.onnx")
    held_out = _split_images(run, "val", 6)
    docs = export_ncnn(kit, RunDir(run), tmp_path, student, spec, held_out, "embed")
    for role in ("student_ncnn", "student_ncnn_fp16"):
        doc = docs[role]
        assert isinstance(doc, ModelEntry) and doc.info["vs_onnx"]["metric"] == "mean cosine"
        parity = doc.info["vs_onnx"]
        assert parity["agreement"] >= kit.export.accuracy_guard and parity["images"] == len(held_out)
    ncnn = NcnnBackend(tmp_path / "student.ncnn.param", tmp_path / "student.ncnn.bin", "fp32")
    x = preprocess(held_out[0], spec)[0]
    emb = ncnn.run(x)  # (1, D), normalised inside the model
    assert emb.shape == (1, b.manifest.prompts.dim) and abs(float(np.linalg.norm(emb)) - 1) < 1e-3
