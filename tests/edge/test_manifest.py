"""The bundle manifest dataclasses: what export writes parses back to the same document; defaults live in one
place; every malformed section is refused naming its key; a bundle exported before the dataclasses still reads."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from dkit.edge.bundle.manifest import Calibration, JudgeConfig, Manifest, ManifestError, Preprocess, Thresholds

DETECT = {
    "schema_version": 1, "name": "toy", "task": "detect", "created": "2026-12-01T00:00:00+00:00",
    "dkit_version": "0.1.0", "teacher": {"id": "yolo:yolov8n.pt@640+tta", "random": False},
    "student": {"kind": "yolo-detect", "model": "yolov8n.pt", "imgsz": 320, "weights_sha256": "ab" * 32},
    "models": {"student": {"file": "student.onnx", "precision": "fp32", "opset": 17,
                           "parity": {"images": 16, "max_abs_diff": 0.002, "agreement": 1.0},
                           "inputs": [{"name": "images", "shape": ["batch", 3, 320, 320]}],
                           "outputs": [{"name": "output0", "shape": ["batch", 84, 2100]}]},
               "student_int8": {"file": "student.int8.onnx", "precision": "int8",
                                "vs_fp32": {"metric": "mAP50", "agreement": 0.956}}},
    "refused_variants": {},
    "preprocess": {"resize": "letterbox", "size": [320, 320], "pad_value": 114, "interpolation": "linear",
                   "channels": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                   "layout": "NCHW"},
    "decode": {"type": "yolov8-detect"}, "classes": ["cat", "dog"],
    "thresholds": {"conf": 0.25, "iou": 0.45, "max_det": 100},
    "runtime": {"providers": [], "threads": 0, "max_fps": 0.0},
    "files": {"student.onnx": "00" * 32, "student.int8.onnx": "11" * 32},
}
EMBED = copy.deepcopy(DETECT) | {
    "task": "embed", "classes": ["apple"], "thresholds": {},
    "decode": {"type": "embedding", "output": "(batch, dim)", "normalized": True, "dim": 4},
    "preprocess": {"resize": "shortest", "size": 128, "crop": "center", "interpolation": "area", "channels": "RGB",
                   "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "layout": "NCHW"},
    "tokenizer": {"type": "clip-bpe", "file": "vocab.txt.gz", "context_length": 77},
    "prompts": {"file": "prompts.npy", "dim": 4, "templates": ["a drawing of {}."], "ensemble": "mean",
                "rows": [{"text": "apple", "role": "class", "prompts": ["an apple"]},
                         {"text": "text", "role": "text"}, {"text": "a weapon", "role": "unsafe"}]},
    "logit_scale": 100.0,
    "calibration": {"method": "piecewise-linear", "cosine": [0.1, 0.2, 0.3], "score": [0.0, 50.0, 100.0],
                    "anchors": [["rest", 1.0, 0.0]], "images": 64},
    "judge": {"prompt": "an apple", "prompts": ["an apple"], "text_prompts": ["text"], "unsafe_prompts": ["a weapon"],
              "text_penalty": 0.5, "text_margin": 0.0, "unsafe_margin": 0.0, "no_match_score": 15.0},
}


@pytest.mark.parametrize("doc", [DETECT, EMBED], ids=["detect", "embed"])
def test_what_export_writes_parses_back_to_the_same_document(doc):
    m = Manifest.from_dict(copy.deepcopy(doc))
    assert m.to_dict() == doc
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_typed_access_and_defaults():
    m = Manifest.from_dict(copy.deepcopy(DETECT))
    assert m.preprocess.size == (320, 320) and m.thresholds == Thresholds(conf=0.25, iou=0.45, max_det=100)
    assert m.model("int8").file == "student.int8.onnx" and m.model("fp16") is None
    assert m.precisions() == ["fp32", "int8"]
    assert m.judge is None and m.judge_config == JudgeConfig()  # one set of judge defaults: the kit's
    e = Manifest.from_dict(copy.deepcopy(EMBED))
    assert e.preprocess.size == (128, 128) and e.prompts.texts("text", "unsafe") == ["text", "a weapon"]
    assert e.calibration.to_score(0.25) == pytest.approx(75.0)
    assert np.allclose(e.calibration.to_score(np.array([0.0, 0.15, 1.0])), [0.0, 25.0, 100.0])
    assert Preprocess("shortest", (8, 8)).interpolation == "area"  # the mode's default, filled in once


def _broken(doc: dict, path: str, value=KeyError) -> dict:
    doc = copy.deepcopy(doc)
    *parents, key = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value is KeyError:
        node.pop(key)
    else:
        node[key] = value
    return doc


def test_one_set_of_defaults_the_kit_and_the_device_share():
    """A manifest without thresholds starts from the device's defaults, which are the kit's (dkit.core.kit takes
    them from dkit.edge.bundle.manifest): no second copy that could say max_det 300 where the kit says 100."""
    from dkit.core.kit import Edge, JudgeSection

    m = Manifest.from_dict(_broken(DETECT, "thresholds"))
    edge = Edge()
    assert (m.thresholds.conf, m.thresholds.iou, m.thresholds.max_det) == (edge.conf, edge.iou, edge.max_det)
    assert m.to_dict()["thresholds"] == {"conf": edge.conf, "iou": edge.iou, "max_det": edge.max_det}
    judge, device = JudgeSection(), JudgeConfig()
    assert [getattr(judge, k) for k in ("text_penalty", "text_margin", "unsafe_margin", "no_match_score")] == \
           [getattr(device, k) for k in ("text_penalty", "text_margin", "unsafe_margin", "no_match_score")]


def test_a_bundle_without_decode_uses_its_tasks_decoder():
    m = Manifest.from_dict(_broken(DETECT, "decode"))
    assert m.decode.type == "yolov8-detect" and m.to_dict()["decode"] == {"type": "yolov8-detect"}


def test_unknown_preprocess_keys_survive_a_round_trip():
    doc = _broken(EMBED, "preprocess.dtype", "float32")  # the clip-embed student's spec carries one
    assert Manifest.from_dict(doc).to_dict()["preprocess"]["dtype"] == "float32"


@pytest.mark.parametrize(("doc", "message"), [
    (_broken(DETECT, "models.student.file"), "models.student.file: missing required key"),
    (_broken(DETECT, "models.student"), "models.student: missing required key"),
    (_broken(DETECT, "preprocess.size", [320]), "preprocess.size: expected a JSON array of 2 numbers"),
    (_broken(DETECT, "preprocess.mean", "grey"), "preprocess.mean: expected a JSON array of 3 numbers"),
    (_broken(DETECT, "preprocess.channels", "YUV"), "preprocess.channels: expected RGB or BGR"),
    (_broken(DETECT, "thresholds.iou", "0.5"), "thresholds.iou: expected a number, got str"),
    (_broken(EMBED, "prompts.rows", [{"text": "x", "role": "class"}, {"role": "text"}]),
     "prompts.rows[1].text: missing required key"),
    (_broken(DETECT, "runtime.providers", "cuda"), "runtime.providers: expected a JSON array of strings"),
    (_broken(EMBED, "calibration.cosine", [0.3, 0.2]), "calibration: expected at least two"),
    (_broken(EMBED, "calibration.cosine", [0.1, 0.1, 0.2]), "calibration.cosine: knots must increase"),
    (_broken(EMBED, "prompts.rows", [{"text": "x", "role": "villain"}]), "prompts.rows[0]: role 'villain' is not"),
    (_broken(EMBED, "calibration"), "calibration: missing required key for an embed bundle"),
    (_broken(EMBED, "judge.text_penalty", "half"), "judge.text_penalty: expected a number, got str"),
    (_broken(DETECT, "schema_version", 2), "schema_version 2 is not supported"),
    (_broken(DETECT, "decode.type", "yolov10-detect"), "decode.type: this runtime decodes the output of detect "
                                                        "models as 'yolov8-detect', the bundle says 'yolov10-detect'"),
])
def test_malformed_manifests_are_refused_by_key(doc, message):
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(doc)
    assert message in str(info.value)


def test_the_manifest_is_frozen():
    m = Manifest.from_dict(copy.deepcopy(DETECT))
    with pytest.raises(AttributeError):
        m.task = "classify"
    with pytest.raises(TypeError):
        m.models["student"] = None  # a read-only mapping
    with pytest.raises(ValueError):
        Calibration((0.0,), (0.0,))


def test_an_exported_judge_bundle_reads_identically_from_the_json(judge_bundle):
    """The manifest a real export wrote parses and re-serialises to exactly the same JSON document."""
    doc = json.loads((judge_bundle / "manifest.json").read_text())
    assert Manifest.from_dict(copy.deepcopy(doc)).to_dict() == doc


def test_a_section_built_in_python_is_checked_and_names_its_key():
    """Sections constructed directly (what export does) run the same checks as a parsed document, with the key."""
    from dkit.edge.bundle.manifest import ModelEntry

    with pytest.raises(ManifestError, match=r"^preprocess\.channels: expected RGB or BGR, got 'YUV'"):
        Preprocess("letterbox", (64, 64), channels="YUV")
    with pytest.raises(ManifestError, match=r"^models\.engine_fp16\.format: expected one of onnx, ncnn"):
        ModelEntry("engine_fp16", "student.engine", "fp16", "tensorrt")
    with pytest.raises(ManifestError, match=r"^models\.student_ncnn\.format: expected one of onnx, ncnn"):
        Manifest.from_dict(_broken(DETECT, "models.student_ncnn", {"file": "s.param", "format": "tflite"}))


@pytest.mark.parametrize(("doc", "message"), [
    (_broken(DETECT, "teacher", "yolo"), "teacher: expected a JSON object, got str"),
    (_broken(DETECT, "models.student", "student.onnx"), "models.student: expected a JSON object"),
    (_broken(DETECT, "classes", ["cat", 3]), "classes: expected a JSON array of strings"),
    (_broken(DETECT, "thresholds.max_det", True), "thresholds.max_det: expected a number, got bool"),
    (_broken(DETECT, "preprocess.pad_value", "grey"), "preprocess.pad_value: expected a number, got str"),
    (_broken(EMBED, "prompts.dim", 4.5), "prompts.dim: expected an integer, got float"),
    (_broken(EMBED, "tokenizer.file", None), "tokenizer.file: expected a string, got NoneType"),
    (_broken(EMBED, "judge.kiosk", {"queue": -1}), "judge.kiosk.queue: expected an integer >= 0"),
    (_broken(DETECT, "files"), "files: missing required key"),
])
def test_more_malformed_sections_are_refused_by_key(doc, message):
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(doc)
    assert message in str(info.value)


def test_null_optional_keys_take_their_defaults_and_numbers_are_json_numbers():
    doc = _broken(DETECT, "runtime", {"providers": None, "threads": None, "max_fps": 2})
    doc["preprocess"]["pad_value"] = 114.0
    m = Manifest.from_dict(doc)
    assert m.runtime.providers == () and m.runtime.threads == 0 and m.runtime.max_fps == 2.0
    assert m.preprocess.pad_value == 114 and isinstance(m.preprocess.pad_value, int)
