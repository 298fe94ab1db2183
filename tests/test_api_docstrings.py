"""Issue #26 (docs as a product), first step: every public name of the Python API and of the contracts it hands out
has a docstring of its own, so `help(dkit.Runtime)` and the others teach something. Checked from the source (ast):
a public class, function or method (not starting with "_") without one fails, naming file, line and name."""

from __future__ import annotations

import ast
import inspect

import pytest

import dkit
from tests.conftest import ROOT

# the Python API (dkit.__all__) and the objects it returns: runtime, results, pipeline, judge, bundle, manifest, run
API_FILES = ("dkit/api.py", "edge/infer/runtime.py", "edge/infer/model.py", "edge/infer/result.py",
             "edge/stream/pipeline.py", "edge/stream/sources.py", "edge/stream/source.py", "edge/stream/live.py",
             "edge/stream/files.py", "edge/infer/judge.py", "edge/bundle/verifier.py", "edge/bundle/manifest.py",
             "dkit/core/run.py", "dkit/core/records.py")


def undocumented(path) -> list[str]:
    """`file:line name` of each public module-level class or function, and public method, without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
        if isinstance(node, ast.ClassDef):
            missing += [f"{path.relative_to(ROOT)}:{sub.lineno} {node.name}.{sub.name}" for sub in node.body
                        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and not sub.name.startswith("_")
                        and ast.get_docstring(sub) is None]
    return missing


@pytest.mark.parametrize("name", API_FILES)
def test_every_public_name_of_the_api_has_a_docstring(name):
    assert undocumented(ROOT / name) == []


@pytest.mark.parametrize("name", dkit.__all__)
def test_help_on_each_api_name_shows_its_own_docstring(name):
    """Not a dataclass's generated signature (`Manifest(name: 'str', ...)`), nor nothing."""
    obj = getattr(dkit, name)
    doc = inspect.getdoc(obj) or ""
    assert doc and not doc.startswith(f"{getattr(obj, '__name__', name)}("), (name, doc[:80])


def test_the_check_finds_a_missing_docstring(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.test_api_docstrings.ROOT", tmp_path)
    (tmp_path / "m.py").write_text('class A:\n    """Doc."""\n\n    def f(self):\n        pass\n\n\ndef g():\n'
                                   '    pass\n\n\ndef _h():\n    pass\n')
    assert undocumented(tmp_path / "m.py") == ["m.py:4 A.f", "m.py:8 g"]
