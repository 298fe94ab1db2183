"""Python versions: the base install (edge runtime, dkit.core, the CLI) runs on 3.10-3.13, the training side on 3.11+.

`make compat` runs vermin over the code; these tests run it too, check that pyproject.toml says the same, that a
training stage on 3.10 is one line and exit 4, and the 3.10/3.11.2 differences vermin cannot see (asyncio's
TimeoutError, tarfile's extraction filter).
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import RECIPES, ROOT

BASE_CODE = ["edge", "dkit"]  # what a base install imports for dkit run / serve / doctor / device-pack
TRAINING_CODE = ["distill", "export"]


class _Version(tuple):
    """A stand-in for sys.version_info: a tuple with the named fields."""

    major = property(lambda self: self[0])
    minor = property(lambda self: self[1])
    micro = property(lambda self: self[2])


def _vermin(target: str, paths: list[str]) -> subprocess.CompletedProcess[str]:
    vermin = Path(sys.executable).with_name("vermin")
    if not vermin.is_file():
        pytest.skip("vermin is not installed (the 'dev' extra)")
    return subprocess.run([str(vermin), "--no-tips", "--violations", "--eval-annotations", "--no-parse-comments",
                           "-q", f"-t={target}-", *paths], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_base_install_code_needs_nothing_newer_than_python_310():
    done = _vermin("3.10", BASE_CODE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_training_code_needs_nothing_newer_than_python_311():
    done = _vermin("3.11", TRAINING_CODE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_vermin_sees_a_311_only_feature(tmp_path):
    """The check can fail: datetime.UTC (3.11) in a file is a violation for target 3.10."""
    (tmp_path / "m.py").write_text("import datetime\nNOW = datetime.datetime.now(datetime.UTC)\n")
    done = _vermin("3.10", [str(tmp_path)])
    assert done.returncode != 0 and "datetime.UTC" in done.stdout


def test_pyproject_says_310_to_313():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    versions = {c.rsplit(":: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r".*Python :: 3\.\d+", c)}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert any(r.startswith("vermin") for r in project["optional-dependencies"]["dev"])


def test_make_test_runs_the_compat_check():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\bcompat\b", makefile, re.M)
    assert re.search(r"^compat:", makefile, re.M)


@pytest.mark.parametrize("argv", [["label"], ["eval"], ["export"], ["bench", "label"]])
def test_a_training_stage_on_python_310_is_one_line_and_exit_4(argv, monkeypatch, capsys):
    from dkit.cli.main import main

    monkeypatch.setattr(sys, "version_info", _Version((3, 10, 12, "final", 0)))
    code = main([*argv, str(RECIPES / "coco128" / "kit.yaml"), "-q"])
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"dkit {' '.join(argv)} needs Python 3.11 or newer (this is Python 3.10.12)" in err


def test_base_commands_on_python_310_are_not_refused(monkeypatch, capsys):
    from dkit.cli.main import main

    monkeypatch.setattr(sys, "version_info", _Version((3, 10, 12, "final", 0)))
    assert main(["check", str(RECIPES / "coco128" / "kit.yaml"), "-q"]) == 0
    for argv in (["run", "--help"], ["serve", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0


def test_import_stage_passes_on_311(monkeypatch):
    from dkit.cli.common import import_stage

    monkeypatch.setattr(sys, "version_info", _Version((3, 11, 2, "final", 0)))
    assert import_stage("dkit.core.kit", what="x", extra="distill").__name__ == "dkit.core.kit"


def _asyncio_timeouts_caught_as_builtin(path: Path) -> list[str]:
    """`except TimeoutError` (without asyncio.TimeoutError) around asyncio.wait_for: before Python 3.11 the two are
    different classes, so the handler never runs there."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Try):
            continue
        calls = {ast.unparse(n.func) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Call)}
        if not calls & {"asyncio.wait_for", "asyncio.timeout", "wait_for"}:
            continue
        for handler in node.handlers:
            caught = ast.unparse(handler.type) if handler.type is not None else ""
            if re.search(r"(?<![.\w])TimeoutError", caught) and "asyncio.TimeoutError" not in caught:
                found.append(f"{path.relative_to(ROOT)}:{handler.lineno}")
    return found


def test_asyncio_timeouts_are_caught_on_python_310():
    offenders = [hit for d in BASE_CODE for p in sorted((ROOT / d).rglob("*.py"))
                 for hit in _asyncio_timeouts_caught_as_builtin(p)]
    assert offenders == []


def _archive(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("has_filter", [True, False], ids=["data-filter", "python-without-it"])
def test_extract_tar_on_pythons_with_and_without_the_data_filter(has_filter, tmp_path, monkeypatch):
    """Debian Bookworm's Python 3.11.2 (Raspberry Pi OS) and 3.10 before 3.10.12 have no `filter=` argument."""
    from dkit.edge.bundle.verifier import extract_tar

    if not has_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        monkeypatch.setattr(tarfile.TarFile, "extractall", _extractall_without_filter(tarfile.TarFile.extractall))
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    good = _archive(tmp_path, (tarfile.TarInfo("b/manifest.json"), b"{}"))
    with tarfile.open(good) as tf:
        extract_tar(tf, tmp_path / "out")
    assert (tmp_path / "out" / "b" / "manifest.json").read_bytes() == b"{}"
    link = tarfile.TarInfo("b/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad in (tarfile.TarInfo("../escaped.txt"), link):
        archive = _archive(tmp_path, (bad, b"bad"))
        with tarfile.open(archive) as tf, pytest.raises(tarfile.TarError):
            extract_tar(tf, tmp_path / "evil")
        assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "evil" / "b" / "evil").exists()
    name = f"/tmp/dkit-test-abs-{tmp_path.name}.txt"  # refused, or (the data filter) put inside the folder
    with tarfile.open(_archive(tmp_path, (tarfile.TarInfo(name), b"bad"))) as tf:
        try:
            extract_tar(tf, tmp_path / "abs")
        except tarfile.TarError:
            pass
    assert not Path(name).exists()


def _extractall_without_filter(original):
    def extractall(self, path=".", members=None, *, numeric_owner=False):  # the 3.11.2 signature
        return original(self, path, members, numeric_owner=numeric_owner)
    return extractall
