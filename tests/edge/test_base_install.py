"""The base install is the edge runtime only: no torch, ultralytics, open_clip or onnx in it or its imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tests.conftest import RECIPES, ROOT

HEAVY = {"torch", "torchvision", "ultralytics", "open-clip-torch", "onnx", "onnxslim", "tensorrt", "pillow", "ray"}
HEAVY_MODULES = ["torch", "torchvision", "ultralytics", "open_clip", "onnx", "onnxslim", "tensorrt", "PIL", "ray"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(dist: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Names of every installed distribution that `pip install dist[extras]` pulls in, transitively."""
    seen: set[str] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a marker-excluded or optional package this environment does not have
        for text in requires:
            req = Requirement(text)
            envs = [{"extra": e} for e in (wanted or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_base_dependencies_pull_in_no_training_stack():
    base = _closure("distill-kit")
    assert not (base & HEAVY), f"the base install pulls in {sorted(base & HEAVY)}"
    assert {"numpy", "onnxruntime", "opencv-python-headless", "fastapi", "uvicorn"} <= base


@pytest.mark.parametrize(("extra", "expected"), [
    ("distill", {"torch", "torchvision", "open-clip-torch", "ultralytics"}),
    ("export", {"onnx", "onnxslim"}),
    ("dev", {"pytest", "ruff"}),
])
def test_extras_carry_the_heavy_packages(extra, expected):
    requires = [Requirement(r) for r in metadata.requires("distill-kit") or []]
    in_extra = {_norm(r.name) for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})}
    assert expected <= in_extra


# Runs in a fresh interpreter where the training stack cannot be imported at all, as on a base-only
# install: any import of it, even indirect, fails the script.
_BLOCKED_RUN = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in a base install)", name=name)
sys.meta_path.insert(0, Block())
import pkgutil, dkit, dkit.edge, dkit.cli.main, dkit.core.kit, dkit.core.store, dkit.core.errors
for mod in pkgutil.walk_packages(dkit.edge.__path__, "dkit.edge."):
    __import__(mod.name)
from dkit.cli.main import main
codes = {
    "check": main(["check", sys.argv[2], "-q"]),
    "run_help": None,
}
try:
    main(["run", "--help"])
except SystemExit as e:
    codes["run_help"] = e.code
codes["label"] = main(["label", sys.argv[3], "-q"])  # needs the distill extra: exit 4 naming it, no crash
codes["fetch"] = main(["fetch", sys.argv[3], "-q"])
print(json.dumps({"codes": codes, "loaded": sorted(m for m in BLOCKED if m in sys.modules)}))
"""


def test_edge_and_cli_work_without_the_training_stack():
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, ",".join(HEAVY_MODULES),
         str(RECIPES / "imagenette" / "kit.yaml"), str(RECIPES / "imagenette" / "kit.yaml")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["codes"] == {"check": 0, "run_help": 0, "label": 4, "fetch": 4}
    assert "install the 'distill' extra" in result.stderr


def test_importing_edge_loads_no_training_stack():
    code = f"import sys, dkit.edge; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == ""


def test_edge_sources_import_nothing_from_the_training_side():
    heavy = r"torch|open_clip|ultralytics|onnx\b|onnxslim|dkit\.(distill|export|core|cli)"
    pattern = re.compile(rf"^\s*(import|from)\s+({heavy})\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "edge").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_blocked_stack_dkit_run_scores_a_bundle(detect_bundle, assets):
    """`dkit run` on a real bundle in an interpreter where the training stack cannot be imported."""
    photo = str(assets / "data/photos/pets.jpg")
    code = _BLOCKED_RUN.split("import pkgutil")[0] + (
        "from dkit.cli.main import main\n"
        f"code = main(['run', {str(detect_bundle)!r}, '--source', {photo!r}, '--jsonl'])\n"
        "print(json.dumps({'code': code, 'loaded': sorted(m for m in BLOCKED if m in sys.modules)}))\n")
    result = subprocess.run([sys.executable, "-c", code, ",".join(HEAVY_MODULES)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert lines[-1] == {"code": 0, "loaded": []}
    assert lines[0]["name"] == "pets.jpg" and lines[0]["detections"]


@pytest.mark.slow
def test_a_real_base_only_install_runs_a_bundle(detect_bundle, assets, tmp_path):
    """`pip install .` (no extras) into a new virtual environment, then `dkit run` a bundle with it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u, json; print(json.dumps("
                            f"[m for m in {HEAVY_MODULES!r} if u.find_spec(m)]))"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert json.loads(probe.stdout) == []  # none of the training stack is even installed
    out = subprocess.run([str(venv / "bin" / "dkit"), "run", str(detect_bundle), "--source",
                          str(assets / "data/photos/pets.jpg"), "--jsonl"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.splitlines()[0])
    assert doc["name"] == "pets.jpg" and {d["class"] for d in doc["detections"]} & {"cat", "dog"}
