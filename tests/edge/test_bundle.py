"""The bundle verifier: a good bundle opens (folder and archive); every kind of tampering is refused by name."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dkit.edge.bundle.hashing import sha256_file
from dkit.edge.bundle.manifest import Manifest, Preprocess
from dkit.edge.bundle.verifier import MANIFEST, SCHEMA_VERSION, BundleError, open_bundle
from dkit.export.manifest import write_manifest

BASE = {
    "name": "toy", "task": "detect",
    "teacher": {"id": "yolo:yolov8n.pt@640", "random": False},
    "student": {"kind": "yolo-detect"},
    "models": {"student": {"file": "student.onnx", "precision": "fp32"}},
    "preprocess": {"resize": "letterbox", "size": [320, 320]},
    "classes": ["cat", "dog"],
    "thresholds": {"conf": 0.25, "iou": 0.45, "max_det": 100},
}


@pytest.fixture
def bundle(tmp_path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "student.onnx").write_bytes(os.urandom(4096))
    (root / "README.md").write_text("# toy bundle\n")
    write_manifest(root, BASE)
    return root


def test_a_good_bundle_opens(bundle):
    with open_bundle(bundle) as b:
        assert isinstance(b.manifest, Manifest) and b.manifest.schema_version == SCHEMA_VERSION
        assert set(b.manifest.files) == {"student.onnx", "README.md"}
        assert b.manifest.files["student.onnx"] == sha256_file(bundle / "student.onnx")
        assert b.manifest.thresholds.max_det == 100 and b.manifest.preprocess == Preprocess("letterbox", (320, 320))
        assert b.path("student.onnx") == bundle / "student.onnx"
        with pytest.raises(BundleError, match="not a file of this bundle"):
            b.path("other.onnx")


@pytest.mark.parametrize("top_folder", [True, False])
def test_an_archive_opens_into_a_private_copy_that_is_removed(bundle, tmp_path, top_folder):
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        if top_folder:
            tf.add(bundle, arcname="bundle")
        else:
            for p in bundle.iterdir():
                tf.add(p, arcname=p.name)
    b = open_bundle(archive)
    copy = b.root
    assert (copy / "student.onnx").read_bytes() == (bundle / "student.onnx").read_bytes()
    b.close()
    assert not copy.exists()


def _edit_manifest(root: Path, change) -> None:
    doc = json.loads((root / MANIFEST).read_text())
    change(doc)
    (root / MANIFEST).write_text(json.dumps(doc))


def _swap_for_link(root: Path) -> None:
    (root / "student.onnx").unlink()
    (root / "student.onnx").symlink_to("/etc/passwd")


MISSING = "student.onnx is listed in manifest.json but missing"

TAMPERING = [
    ("modified model file", lambda r: (r / "student.onnx").write_bytes(b"evil"), "student.onnx has been modified"),
    ("missing model file", lambda r: (r / "student.onnx").unlink(), MISSING),
    ("unlisted extra file", lambda r: (r / "payload.py").write_text("import os"), "files not listed in manifest.json: "
                                                                                  "payload.py"),
    ("newer schema", lambda r: _edit_manifest(r, lambda d: d.update(schema_version=2)), "schema_version 2 is not "
                                                                                       "supported"),
    ("no schema", lambda r: _edit_manifest(r, lambda d: d.pop("schema_version")), "schema_version None"),
    ("missing key", lambda r: _edit_manifest(r, lambda d: d.pop("classes")), "classes: missing required key"),
    ("wrong type", lambda r: _edit_manifest(r, lambda d: d.update(classes="cat")), "classes: expected a JSON array"),
    ("unknown task", lambda r: _edit_manifest(r, lambda d: d.update(task="segment")), "task: 'segment' is not one of"),
    ("bad preprocess", lambda r: _edit_manifest(r, lambda d: d["preprocess"].update(resize="stretch")),
     "preprocess.resize: expected one of letterbox, shortest"),
    ("embed bundle without prompts", lambda r: _edit_manifest(r, lambda d: d.update(task="embed", decode={})),
     "prompts: missing required key for an embed bundle"),
    ("bool for a number", lambda r: _edit_manifest(r, lambda d: d["thresholds"].update(conf=True)),
     "thresholds.conf: expected a number, got bool"),
    ("path out of the bundle", lambda r: _edit_manifest(r, lambda d: d["files"].update({"../x": "0" * 64})),
     "'../x' leaves the bundle folder"),
    ("model not listed", lambda r: _edit_manifest(r, lambda d: d["models"]["student"].update(file="other.onnx")),
     "models.student.file must name a file listed"),
    ("not JSON", lambda r: (r / MANIFEST).write_text("{oops"), "manifest.json: not valid JSON"),
    ("not an object", lambda r: (r / MANIFEST).write_text("[1, 2]"), "expected a JSON object"),
    ("no manifest", lambda r: (r / MANIFEST).unlink(), "no manifest.json: not a bundle"),
    ("model swapped for a link", _swap_for_link, MISSING),
]


@pytest.mark.parametrize(("tamper", "message"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_tampered_bundles_are_refused(bundle, tamper, message):
    tamper(bundle)
    with pytest.raises(BundleError) as info:
        open_bundle(bundle)
    assert message in str(info.value)


def test_archive_that_escapes_its_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        open_bundle(archive)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


@pytest.mark.parametrize("name", ["nothing-here", "bundle.zip"])
def test_not_a_bundle(tmp_path, name):
    (tmp_path / "bundle.zip").write_bytes(b"PK")
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / name)
