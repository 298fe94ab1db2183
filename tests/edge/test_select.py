"""`--backend auto` / `--precision auto` (dkit.edge.infer.select): candidates, the fastest wins, cached per device."""

from __future__ import annotations

import json
import shutil

import pytest

from dkit.edge.bundle import open_bundle
from dkit.edge.infer import select
from dkit.edge.infer.runtime import Runtime, RuntimeConfigError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def two_precisions(detect_bundle, tmp_path):
    """The test detector bundle with a second model entry, student_int8 (the same file: only timing matters)."""
    from dkit.export.manifest import write_manifest

    root = tmp_path / "bundle"
    shutil.copytree(detect_bundle, root)
    doc = json.loads((root / "manifest.json").read_text())
    shutil.copy(root / "student.onnx", root / "student-int8.onnx")
    doc["models"]["student_int8"] = {"file": "student-int8.onnx", "precision": "int8", "backends": {
        "onnxruntime": {"agreement": 0.96}, "openvino": {"agreement": 0.0, "refused": "openvino: mAP50 0.000"}}}
    write_manifest(root, {k: v for k, v in doc.items() if k not in ("files", "schema_version")})
    return root


def fake_timings(monkeypatch, figures: dict[str, float]) -> list[str]:
    calls: list[str] = []

    def measure(bundle, backend, precision, providers, threads, letterbox="square"):
        calls.append(f"{backend}/{precision}")
        return figures.get(f"{backend}/{precision}")

    monkeypatch.setattr(select, "measure", measure)
    return calls


def test_candidates_cross_models_with_installed_backends(two_precisions):
    with open_bundle(two_precisions) as b:
        m = b.manifest
        both = ["onnxruntime", "openvino", "ncnn"]
        # int8 failed the export's check on OpenVINO: never a candidate there
        assert select.candidates(m, installed=both) == [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                        ("openvino", "fp32")]
        assert select.candidates(m, precision="int8", installed=both) == [("onnxruntime", "int8")]
        assert select.candidates(m, backend="openvino", precision="fp32", installed=both) == [("openvino", "fp32")]
        with pytest.raises(RuntimeConfigError, match="no fp16 model for backend auto.*it has: onnx fp32, int8"):
            select.candidates(m, precision="fp16", installed=both)
        with pytest.raises(RuntimeConfigError, match="no model for backend ncnn"):
            select.candidates(m, backend="ncnn", installed=both)


def test_the_fastest_is_chosen_then_cached_for_this_device(two_precisions, home, monkeypatch):
    calls = fake_timings(monkeypatch, {"onnxruntime/fp32": 20.0, "onnxruntime/int8": 31.0,
                                       "openvino/fp32": 18.5, "openvino/int8": 1.0})  # refused: never timed
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime", "openvino"])
    with open_bundle(two_precisions) as b:
        first = select.choose(b)
        assert (first.backend, first.precision, first.reason) == ("openvino", "fp32", "measured")
        assert len(calls) == 3 and first.figures["onnxruntime/int8"] == 31.0 and "openvino/int8" not in calls
        assert "openvino/fp32 (measured: openvino/fp32 18.5 ms, onnxruntime/fp32 20.0 ms" in first.describe()
        again = select.choose(b)
        assert (again.backend, again.precision, again.reason, len(calls)) == ("openvino", "fp32", "cached", 3)
        assert select.choose(b, remeasure=True).reason == "measured" and len(calls) == 6
        # another device (or library version) measures again
        real = select.device_fingerprint
        monkeypatch.setattr(select, "device_fingerprint", lambda: real() | {"cpu": "Cortex-A76"})
        assert select.choose(b).reason == "measured" and len(calls) == 9
        # a request that leaves one candidate needs no timing (int8 is refused on OpenVINO)
        int8 = select.choose(b, precision="int8")
        assert (int8.backend, int8.precision, int8.reason, len(calls)) == ("onnxruntime", "int8", "only candidate", 9)
    doc = json.loads((home / "choices.json").read_text())
    assert len(doc) == 2 and all(set(v) == {"pick", "figures", "checks", "measured"} for v in doc.values())
    assert not list(home.glob(".*.tmp"))


def test_a_broken_cache_or_an_unloadable_candidate_is_not_fatal(two_precisions, home, monkeypatch):
    home.mkdir(parents=True)
    (home / "choices.json").write_text("{not json")
    fake_timings(monkeypatch, {"onnxruntime/fp32": 9.0})  # int8 "does not load": None
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    with open_bundle(two_precisions) as b:
        assert (select.choose(b).backend, select.choose(b).precision) == ("onnxruntime", "fp32")
    fake_timings(monkeypatch, {})
    with open_bundle(two_precisions) as b, pytest.raises(RuntimeConfigError, match="none of .* ran here"):
        select.choose(b, remeasure=True)


def test_a_gpu_provider_is_chosen_without_measuring(two_precisions, home, monkeypatch):
    calls = fake_timings(monkeypatch, {"onnxruntime/fp32": 5.0})
    with open_bundle(two_precisions) as b:
        # asked for CUDA on this CPU machine: it does not run there, so the candidates are measured as usual
        assert select.choose(b, providers=["cuda", "cpu"]).reason == "measured" and calls
        calls.clear()
        monkeypatch.setattr(select, "_gpu_runs", lambda *a: True)  # as on a machine where CUDA really runs it
        pick = select.choose(b, providers=["cuda", "cpu"])
    assert (pick.backend, pick.precision, pick.reason, calls) == ("onnxruntime", "fp32", "gpu provider", [])


def test_each_letterbox_is_measured_at_its_own_input_and_cached_apart(two_precisions, home, monkeypatch):
    seen = []
    real = select.measure
    monkeypatch.setattr(select, "measure", lambda *a: seen.append(a[-1]) or real(*a))
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    with open_bundle(two_precisions) as b:
        square, minimal = select.choose(b, letterbox="square"), select.choose(b, letterbox="minimal")
        assert square.reason == minimal.reason == "measured" and seen == ["square"] * 2 + ["minimal"] * 2
        assert select.choose(b, letterbox="minimal").reason == "cached"
    assert len(json.loads((home / "choices.json").read_text())) == 2
    assert (home / "choices.json.lock").exists() and not list(home.glob(".choices.json.*"))


def test_a_candidate_that_fails_on_a_frame_is_left_out(two_precisions, home, monkeypatch, caplog):
    from dkit.edge.infer.backends.ort_backend import OrtBackend

    real = OrtBackend.run

    def run(self, x):
        if "int8" in self.file:
            raise RuntimeError("kernel fault")
        return real(self, x)

    monkeypatch.setattr(OrtBackend, "run", run)
    monkeypatch.setattr(select, "available", lambda: ["onnxruntime"])
    with caplog.at_level("WARNING"), open_bundle(two_precisions) as b:
        pick = select.choose(b)
    assert (pick.backend, pick.precision, set(pick.figures)) == ("onnxruntime", "fp32", {"onnxruntime/fp32"})
    assert "onnxruntime/int8 failed on a frame here (RuntimeError: kernel fault); left out" in caplog.text


def test_the_runtime_measures_for_real_and_logs_the_choice(two_precisions, home, caplog):
    with caplog.at_level("INFO"), Runtime.load(two_precisions, backend="onnxruntime", precision="auto") as rt:
        assert rt.choice.reason == "measured" and set(rt.choice.figures) == {"onnxruntime/fp32", "onnxruntime/int8"}
        assert all(v > 0 for v in rt.choice.figures.values())
        assert rt.precision == rt.choice.precision and rt.model_file.name.startswith("student")
    assert "backend/precision onnxruntime/" in caplog.text and "ms" in caplog.text
    with Runtime.load(two_precisions, backend="onnxruntime", precision="auto") as rt:
        assert rt.choice.reason == "cached"
    with Runtime.load(two_precisions, backend="onnxruntime", precision="fp32") as rt:
        assert rt.choice.reason == "as asked"


def test_only_backends_the_export_checked_run_a_reduced_precision_model():
    from dkit.edge.bundle.manifest import ModelEntry

    old = ModelEntry("student_int8", "s.onnx", "int8")  # exported before the per-backend record
    assert select.verified(old, "onnxruntime") and not select.verified(old, "openvino")
    checked = ModelEntry("student_fp16", "s.onnx", "fp16", info={"backends": {"onnxruntime": {}, "openvino": {}}})
    assert select.verified(checked, "openvino")
    assert select.verified(ModelEntry("student", "s.onnx"), "openvino")  # fp32 everywhere
    assert select.verified(ModelEntry("student_ncnn_fp16", "s.param", "fp16", "ncnn", "s.bin"), "ncnn")


@pytest.mark.devenv("openvino")
def test_a_forced_unchecked_model_runs_with_a_warning(two_precisions, home, caplog):
    pytest.importorskip("openvino")
    with caplog.at_level("WARNING"), Runtime.load(two_precisions, backend="openvino", precision="int8") as rt:
        assert rt.precision == "int8"
    assert "was not checked against fp32 on openvino" in caplog.text and "mAP50 0.000" in caplog.text
