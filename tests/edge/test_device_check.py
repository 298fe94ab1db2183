"""The on-device accuracy check (dkit.edge.infer.device_check): a reduced-precision model exported on another CPU
architecture is run against the export's fp32 results before auto uses it; a forced one is checked and warned."""

from __future__ import annotations

import json
import shutil
import types

import pytest

from dkit.edge.bundle import open_bundle
from dkit.edge.bundle.manifest import ModelEntry
from dkit.edge.infer import device_check, select
from dkit.edge.infer.runtime import Runtime, RuntimeConfigError
from tests.conftest import ASSETS
from tests.edge.test_runtime import _rgb
from tests.edge.test_select import fake_timings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DKIT_HOME", str(tmp_path / "home"))


def _bundle(detect_bundle, root, checked_on: str, images: int = 4):
    """The test detector with an fp16 entry (the fp32 file: it agrees fully) checked on `checked_on`, and checks/
    written by the export's own code from real COCO images."""
    from dkit.export.device_checks import write_checks
    from dkit.export.manifest import write_manifest

    shutil.copytree(detect_bundle, root)
    doc = json.loads((root / "manifest.json").read_text())
    shutil.copy(root / "student.onnx", root / "student-fp16.onnx")
    doc["models"]["student_fp16"] = {"file": "student-fp16.onnx", "precision": "fp16", "checked_on": checked_on,
                                     "backends": {"onnxruntime": {"agreement": 1.0}}}
    manifest = write_manifest(root, {k: v for k, v in doc.items() if k not in ("files", "schema_version")})
    photos = sorted((ASSETS / "data/coco128/images/train2017").glob("*.jpg"))[:images]
    kit = types.SimpleNamespace(export=types.SimpleNamespace(device_checks=images, accuracy_guard=0.95))
    write_checks(root, kit, manifest, [_rgb(p) for p in photos])
    return root


def _tamper(root, shift: float):
    """Move every reference box by `shift` pixels (the manifest's hashes rewritten: a consistent bundle)."""
    from dkit.export.manifest import write_manifest

    path = root / "checks" / "reference.json"
    doc = json.loads(path.read_text())
    for item in doc["images"]:
        item["detections"] = [[v + shift for v in r[:4]] + r[4:] for r in item["detections"]]
    path.write_text(json.dumps(doc))
    m = json.loads((root / "manifest.json").read_text())
    write_manifest(root, {k: v for k, v in m.items() if k not in ("files", "schema_version")})


def test_which_models_need_a_check_here(monkeypatch):
    monkeypatch.setattr(device_check.platform, "machine", lambda: "aarch64")
    q = ModelEntry("student_ncnn_int8", "q.param", "int8", "ncnn", "q.bin", info={"checked_on": "x86_64"})
    assert device_check.needs_check(q)
    assert not device_check.needs_check(ModelEntry("student_ncnn_int8", "q.param", "int8", "ncnn", "q.bin",
                                                   info={"checked_on": "aarch64"}))
    assert device_check.needs_check(ModelEntry("student_ncnn_int8", "q.param", "int8", "ncnn", "q.bin"))  # unknown
    assert not device_check.needs_check(ModelEntry("student", "s.onnx"))  # fp32: never
    assert not device_check.needs_check(ModelEntry("student_int8", "s.onnx", "int8"))  # before checked_on: trusted
    assert device_check.needs_check(ModelEntry("student_fp16", "s.onnx", "fp16", info={"checked_on": "x86_64"}))


def test_the_export_writes_checks_the_device_reads(detect_bundle, tmp_path):
    root = _bundle(detect_bundle, tmp_path / "b", "x86_64")
    with open_bundle(root) as b:
        m = b.manifest
        assert m.checks.reference == "checks/reference.json" and m.checks.min_agreement == 0.95
        doc = device_check.read_reference(b)
        assert [i["file"] for i in doc["images"]] == [f"checks/{i:03d}.jpg" for i in range(4)]
        assert doc["letterbox"] == m.preprocess.letterbox and sum(len(i["detections"]) for i in doc["images"]) > 0
        for item in doc["images"]:
            assert max(device_check.load_image(b, item["file"]).shape[:2]) <= 320  # fits the model's input
        # the export ran the check here on each candidate (fp16 was checked on onnxruntime only: not openvino)
        assert m.info["device_checks"] == {device_check.platform.machine(): {"onnxruntime/fp16": 0.995}}
        # the reference is what the fp32 runtime finds on those pixels
        out = device_check.check(b, "onnxruntime", "fp32")
        assert (out.agreement, out.images, out.passed, out.metric) == (0.995, 4, True, "mAP50")


def test_auto_checks_a_model_from_another_architecture_and_keeps_the_outcome(detect_bundle, tmp_path, home,
                                                                               monkeypatch):
    root = _bundle(detect_bundle, tmp_path / "b", "riscv64")
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    calls = fake_timings(monkeypatch, {"onnxruntime/fp32": 20.0, "onnxruntime/fp16": 10.0})
    with open_bundle(root) as b:
        first = select.choose(b)
        assert (first.backend, first.precision, first.checks) == ("onnxruntime", "fp16", {"onnxruntime/fp16": 0.995})
        assert "checked here against the export: onnxruntime/fp16 0.995" in first.describe()
        again = select.choose(b)
        assert again.reason == "cached" and again.checks == first.checks and len(calls) == 2


def test_a_model_failing_the_check_here_is_left_out(detect_bundle, tmp_path, home, monkeypatch, caplog):
    root = _bundle(detect_bundle, tmp_path / "b", "riscv64")
    _tamper(root, 40.0)  # the fp16 "model" now disagrees with the reference: the check fails
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    calls = fake_timings(monkeypatch, {"onnxruntime/fp32": 20.0, "onnxruntime/fp16": 10.0})
    with open_bundle(root) as b, caplog.at_level("WARNING"):
        got = select.choose(b)
        assert (got.backend, got.precision, got.reason) == ("onnxruntime", "fp32", "only candidate")
        assert got.checks["onnxruntime/fp16"] < 0.95 and calls == []
    assert "onnxruntime/fp16 on this" in caplog.text and "below the guard 0.95" in caplog.text
    assert "left out" in caplog.text


def test_a_forced_model_is_checked_here_and_warned_about(detect_bundle, tmp_path, home, caplog):
    root = _bundle(detect_bundle, tmp_path / "b", "riscv64")
    with Runtime.load(root, backend="onnxruntime", precision="fp16") as rt:
        assert rt.check.passed and rt.check.agreement == 0.995
    with pytest.MonkeyPatch.context() as mp:  # the next start finds it in choices.json: no check images run
        mp.setattr(device_check, "check", lambda *a, **k: pytest.fail("checked again"))
        with Runtime.load(root, backend="onnxruntime", precision="fp16") as rt:
            assert rt.check.passed and rt.check.agreement == 0.995
    _tamper(root, 40.0)  # another reference: checked again
    with caplog.at_level("WARNING"), Runtime.load(root, backend="onnxruntime", precision="fp16") as rt:
        assert not rt.check.passed and rt.precision == "fp16"  # forced: it runs, with the warning
    assert "below the guard" in caplog.text and "its results may be wrong" in caplog.text


def test_without_checks_a_model_from_another_architecture_is_not_auto(detect_bundle, tmp_path, home, monkeypatch,
                                                                      caplog):
    from dkit.export.manifest import write_manifest

    root = tmp_path / "b"
    shutil.copytree(detect_bundle, root)
    doc = json.loads((root / "manifest.json").read_text())
    shutil.copy(root / "student.onnx", root / "student-fp16.onnx")
    doc["models"]["student_fp16"] = {"file": "student-fp16.onnx", "precision": "fp16", "checked_on": "riscv64"}
    write_manifest(root, {k: v for k, v in doc.items() if k not in ("files", "schema_version")})
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    fake_timings(monkeypatch, {"onnxruntime/fp32": 20.0, "onnxruntime/fp16": 10.0})
    with open_bundle(root) as b, caplog.at_level("WARNING"):
        got = select.choose(b)
        assert got.precision == "fp32" and got.checks == {"onnxruntime/fp16": None}
    assert "no device checks in this bundle" in caplog.text


@pytest.fixture(scope="module")
def one_image(detect_bundle, tmp_path_factory):
    """A bundle with an fp16 model checked on another architecture and a one-image checks/ folder."""
    return _bundle(detect_bundle, tmp_path_factory.mktemp("checked") / "b", "riscv64", images=1)


ATTACKS = {"too many images": "must list 1 to 256", "huge jpeg header": "60000x60000", "a gif": "is gif, not a JPEG",
           "over 8 MiB": "is over 8 MiB", "wrong task": "not a detect result", "rows of 3": "rows of 6 finite",
           "a NaN box": "rows of 6 finite", "too many boxes": "at most 300 rows", "deeply nested": "RecursionError",
           "an unlisted image": "is not a file of this bundle"}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_hostile_checks_folder_is_refused_before_decoding(one_image, tmp_path, attack):
    from dkit.export.manifest import write_manifest

    root = tmp_path / "b"
    shutil.copytree(one_image, root)  # built once (write_checks runs the model), copied per attack
    ref = root / "checks" / "reference.json"
    doc = json.loads(ref.read_text())
    image = root / "checks" / "000.jpg"
    if attack == "too many images":
        doc["images"] = doc["images"] * (device_check.MAX_IMAGES + 1)
    elif attack == "huge jpeg header":  # the frame header says 60000 x 60000: refused from it, nothing decoded
        data = bytearray(image.read_bytes())
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
        image.write_bytes(bytes(data))
    elif attack == "a gif":
        image.write_bytes(b"GIF89a" + bytes(100))
    elif attack == "over 8 MiB":
        image.write_bytes(image.read_bytes() + bytes(device_check.MAX_BYTES))
    elif attack == "rows of 3":
        doc["images"][0]["detections"] = [[1, 2, 3], [4, 5, 6]]
    elif attack == "a NaN box":
        doc["images"][0]["detections"] = [[1, 2, 3, 4, 0.5, float("nan")]]
    elif attack == "too many boxes":
        doc["images"][0]["detections"] = [[1, 2, 3, 4, 0.5, 0]] * 301
    elif attack == "an unlisted image":
        doc["images"][0]["file"] = "checks/elsewhere.jpg"
    elif attack == "wrong task":
        doc["images"][0]["detections"] = "boxes"
    if attack == "deeply nested":
        ref.write_text("[" * 100_000 + "]" * 100_000)
    else:
        ref.write_text(json.dumps(doc))
    m = json.loads((root / "manifest.json").read_text())
    write_manifest(root, {k: v for k, v in m.items() if k not in ("files", "schema_version")})
    with open_bundle(root) as b, pytest.raises(RuntimeConfigError) as e:
        device_check.check(b, "onnxruntime", "fp16")
    assert ATTACKS[attack] in str(e.value)
    with open_bundle(root) as b:  # auto leaves it out; a forced run warns and runs
        assert device_check.needs_check(b.manifest.model("fp16"))
    rt = Runtime.load(root, backend="onnxruntime", precision="fp16")
    rt.close()
    assert rt.check is None


def test_a_checks_reference_outside_the_files_is_refused(detect_bundle, tmp_path):
    from dkit.edge.bundle import BundleError

    root = _bundle(detect_bundle, tmp_path / "b", "riscv64", images=1)
    doc = json.loads((root / "manifest.json").read_text())
    doc["checks"]["reference"] = "checks/elsewhere.json"
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="checks.reference must name a file listed"):
        open_bundle(root)
