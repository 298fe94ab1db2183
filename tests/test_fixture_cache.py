"""tests.fixture_cache: the edge tests' bundles are built once, kept under build/test-fixtures/ and reused; `make
test-edge` runs this file in the dev venv first, so the base-only venv finds them."""

from __future__ import annotations

import pytest

from dkit.edge.bundle import open_bundle
from tests import fixture_cache
from tests.edge.conftest import detect_bundle, yolo_onnx  # noqa: F401 - fixtures, found by name
from tests.fixture_cache import cached, cached_path, source_key


def test_the_edge_bundles_are_in_the_cache(judge_bundle, yolo_onnx, detect_bundle):  # noqa: F811
    for path in (judge_bundle, yolo_onnx):
        assert path.parent.parent == fixture_cache.CACHE and (path.parent / fixture_cache.DONE).is_file()
    with open_bundle(judge_bundle) as bundle:  # sound: every file's hash as the export wrote it
        assert bundle.manifest.task == "embed"
    with open_bundle(detect_bundle) as bundle:
        assert bundle.manifest.task == "detect" and bundle.manifest.classes[0] == "person"


def test_a_folder_is_built_once_per_key_and_the_old_key_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture_cache, "CACHE", tmp_path)
    builds = []

    def build(out):
        builds.append(out)
        (out / "model.onnx").write_bytes(b"x")

    first = cached("thing", "aaaa", build)
    assert cached("thing", "aaaa", build) == first == cached_path("thing", "aaaa") and len(builds) == 1
    assert (first / "model.onnx").read_bytes() == b"x"
    second = cached("thing", "bbbb", build)
    assert len(builds) == 2 and not first.exists() and second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing-bbbb"]  # no temporary folder left


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture_cache, "CACHE", tmp_path)

    def broken(out):
        (out / "half.onnx").write_bytes(b"x")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        cached("thing", "aaaa", broken)
    assert cached_path("thing", "aaaa") is None and list(tmp_path.iterdir()) == []


def test_the_key_follows_the_texts_and_the_file_bytes(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    key = source_key(["kit"], [f])
    assert key == source_key(["kit"], [f]) and len(key) == 16
    assert source_key(["kit2"], [f]) != key
    f.write_text("x = 2\n")
    assert source_key(["kit"], [f]) != key
