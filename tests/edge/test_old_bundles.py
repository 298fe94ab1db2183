"""Bundles written by an older dkit still load and run: a classify bundle and a judge manifest written at commit
2bc1e49 (tests/fixtures/README.md), before the manifest sections were typed with pydantic, read identically now."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

from dkit.edge.bundle.manifest import Manifest
from dkit.edge.infer.runtime import Runtime
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"
OLD_BUNDLE = FIXTURES / "bundle_2bc1e49"


@pytest.fixture
def old_bundle(tmp_path):
    """A copy (opening a bundle may cache device checks beside it)."""
    return shutil.copytree(OLD_BUNDLE, tmp_path / "bundle")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_bundle_written_by_2bc1e49_loads_and_runs(old_bundle, precision):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 2] = 255  # blue
    with Runtime.load(old_bundle, precision=precision) as rt:
        m = rt.manifest
        assert (m.task, m.classes, m.preprocess.size, m.thresholds.top_k) == ("classify", ("red", "green", "blue"),
                                                                              (16, 16), 3)
        assert m.info["refused_variants"] == {"int8": "top-1 agreement against fp32 0.500 is below "
                                                      "export.accuracy_guard 0.9: not shipped"}
        top = rt(rgb).top
    assert top[0][0] == 2 and top[0][1] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("path", [OLD_BUNDLE / "manifest.json", FIXTURES / "manifest_embed_2bc1e49.json"],
                         ids=["classify", "embed"])
def test_an_old_manifest_parses_and_writes_back_the_same_document(path):
    doc = json.loads(path.read_text())
    m = Manifest.from_dict(copy.deepcopy(doc))
    assert m.to_dict() == doc
    assert json.dumps(m.to_dict(), indent=2) + "\n" == path.read_text()  # same keys, values and key order
