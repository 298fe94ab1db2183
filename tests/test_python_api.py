"""The Python API (`import dkit`, dkit.api): lazy names, a script without a main guard, and the examples of its page.

docs/PYTHON_API.md is the API's documentation (README.md links to it); its ```python blocks are run here as written,
one after the other, as one plain script without a main guard (so dkit.label decodes in that process), in a folder
holding what the page says (images/, photo.jpg, drawing.png and the page's kit.yaml).

    .venv/bin/python -m pytest tests/test_python_api.py -x -q
    DKIT_API_PAGE=path/to/draft.md .venv/bin/python -m pytest tests/test_python_api.py -x -q   # check a draft
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import ROOT, link_images

PAGE = ROOT / "docs" / "PYTHON_API.md"
API_NAMES = ("load_kit", "label", "train", "evaluate", "export_bundle", "read_image", "Runtime", "Judge", "DkitError")
HEAVY = ("torch", "open_clip", "ultralytics", "PIL", "onnx", "onnxruntime", "cv2", "dkit.api", "dkit.distill")


def api_page() -> str:
    """The Python API's page, docs/PYTHON_API.md (or $DKIT_API_PAGE, a draft of it), whole."""
    page = Path(os.environ.get("DKIT_API_PAGE") or PAGE)
    if not page.is_file():
        pytest.fail(f"{page} is missing: the Python API must be documented there")
    return page.read_text(encoding="utf-8")


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of `text`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def python(code: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` as a script file, run in a fresh interpreter in `cwd` (a plain script: no main guard unless it has
    one), offline, with a model store of its own."""
    script = cwd / "script.py"
    script.write_text(code)
    full_env = {**os.environ, "DKIT_HOME": str(cwd / "dkit-home"), "DKIT_OFFLINE": "1",
                "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def demo_folder(assets: Path, tmp: Path, kit_yaml: str, count: int = 12) -> Path:
    """What the page's examples expect in their folder: images/, photo.jpg, drawing.png and kit.yaml."""
    link_images(assets / "data/imagenet-sample", "*.JPEG", count, tmp / "images")
    (tmp / "photo.jpg").symlink_to(assets / "data/photos/cat_720p.jpg")
    import cv2
    import numpy as np

    doodle = np.load(assets / "data/quickdraw/apple.npy", mmap_mode="r")[0].reshape(28, 28)
    drawing = cv2.resize(255 - np.asarray(doodle), (224, 224), interpolation=cv2.INTER_NEAREST)  # black on white
    cv2.imwrite(str(tmp / "drawing.png"), drawing)
    (tmp / "kit.yaml").write_text(kit_yaml)
    return tmp


# --- import dkit --------------------------------------------------------------------------------------


def test_import_dkit_imports_nothing_heavy(tmp_path):
    code = f"""
import json, sys
import dkit
before = [m for m in {HEAVY!r} if m in sys.modules]
names = [n for n in {API_NAMES!r} if n not in dir(dkit)]
dkit.load_kit, dkit.label, dkit.DkitError, dkit.__version__   # dkit.api itself imports only the standard library
after_api = [m for m in {HEAVY!r} if m in sys.modules and m not in ("dkit.api",)]
try:
    dkit.no_such_name
    missing = "no error"
except AttributeError as e:
    missing = str(e)
dkit.Runtime, dkit.Judge, dkit.read_image   # the device side: onnxruntime and OpenCV, no training stack
edge = [m for m in ("torch", "open_clip", "ultralytics", "PIL", "onnx", "dkit.distill") if m in sys.modules]
print(json.dumps({{"before": before, "undocumented": names, "after_api": after_api, "missing": missing,
                  "edge": edge}}))
"""
    result = python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {"before": [], "undocumented": [], "after_api": [], "edge": [],
                   "missing": "module 'dkit' has no attribute 'no_such_name'"}


def test_the_names_are_the_stages_and_the_edge_classes():
    import dkit
    import dkit.api
    import dkit.edge.infer.judge
    import dkit.edge.infer.runtime
    import dkit.export.bundle  # the subpackage dkit.export must not shadow the API's export function
    from dkit.core.errors import DkitError

    assert dkit.Runtime is dkit.edge.infer.runtime.Runtime and dkit.Judge is dkit.edge.infer.judge.Judge
    assert dkit.DkitError is DkitError
    assert dkit.export_bundle is dkit.api.export_bundle and callable(dkit.export_bundle)
    assert all(getattr(dkit, name).__doc__ for name in API_NAMES if getattr(dkit, name).__module__ == "dkit.api")


def test_load_kit_overrides_as_a_mapping_or_set_strings(tmp_path):
    import dkit

    (tmp_path / "images").mkdir()
    kit_yaml = code_blocks(api_page(), "yaml")[0]
    (tmp_path / "kit.yaml").write_text(kit_yaml)
    mapping = dkit.load_kit(tmp_path / "kit.yaml", overrides={"student.epochs": 3, "judge.prompt": "yes",
                                                              "export.precisions": ["fp32", "int8"]})
    strings = dkit.load_kit(tmp_path / "kit.yaml",
                            overrides=["student.epochs=3", "judge.prompt='yes'", "export.precisions=[fp32,int8]"])
    assert mapping == strings
    assert (mapping.student.epochs, mapping.judge.prompt) == (3, "yes")  # "yes" stays a string, not YAML's True
    assert list(mapping.export.precisions) == ["fp32", "int8"]
    with pytest.raises(dkit.DkitError, match="student.epochs"):
        dkit.load_kit(tmp_path / "kit.yaml", overrides={"student.epochs": 0})


# --- a script without a main guard ---------------------------------------------------------------------


def _as_main(monkeypatch, file: str | None, spec_name: str | None = None) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=spec_name) if spec_name else None
    if file is not None:
        main.__file__ = file
    monkeypatch.setitem(sys.modules, "__main__", main)


@pytest.mark.parametrize(("source", "expected"), [
    ("import dkit\nif __name__ == '__main__':\n    dkit.label(dkit.load_kit('kit.yaml'))\n", True),
    ("import dkit\nif '__main__' == __name__:\n    pass\n", True),
    ("import dkit\ndkit.label(dkit.load_kit('kit.yaml'))\n", False),
    ("def main():\n    if __name__ == '__main__':\n        pass\n", False),  # not at the top level
    ("this is not python\n", False),
])
def test_workers_start_only_when_the_main_script_has_a_guard(tmp_path, monkeypatch, source, expected):
    from dkit.distill.images import workers_can_start

    script = tmp_path / "script.py"
    script.write_text(source)
    _as_main(monkeypatch, str(script))
    assert workers_can_start() is expected
    _as_main(monkeypatch, str(script), spec_name="pkg.script")  # python -m pkg.script runs it again too
    assert workers_can_start() is expected


def test_workers_start_when_no_main_script_is_run_again(monkeypatch):
    from dkit.distill.images import workers_can_start

    _as_main(monkeypatch, None)  # python -c, an interactive session, a notebook
    assert workers_can_start()
    _as_main(monkeypatch, str(ROOT / "dkit" / "__main__.py"), spec_name="dkit.__main__")  # python -m dkit
    assert workers_can_start()
    _as_main(monkeypatch, "<stdin>")  # python - < script.py: a worker could not read it
    assert not workers_can_start()


# --- the page's examples -----------------------------------------------------------------------------

# A plain script, as a reader would paste the examples into one: no main guard, so its decode workers would run
# it again (dkit.distill.images.workers_can_start); each block gets fresh globals, so it must import what it uses.
_RUN_BLOCKS = """
import json, logging
logging.basicConfig(level=logging.INFO)
with open("body-ran.txt", "a") as f:  # each run of this script's body leaves a line
    f.write("ran\\n")
for i, code in enumerate(json.load(open("blocks.json")), 1):
    print(f"--- block {i}", flush=True)
    exec(compile(code, f"docs/PYTHON_API.md, block {i}", "exec"), {"__name__": "__main__"})
print("--- all blocks ran", flush=True)
"""


def test_python_api_page_examples_run_as_a_plain_script(assets, tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("onnx")
    page = api_page()
    blocks = code_blocks(page, "python")
    yaml_blocks = code_blocks(page, "yaml")
    assert 5 <= len(blocks) <= 9 and len(yaml_blocks) == 1, "expected 5-9 python examples and one kit.yaml"
    for i, code in enumerate(blocks, 1):
        assert re.search(r"^import dkit$", code, flags=re.MULTILINE), f"block {i} does not import dkit"
    demo_folder(assets, tmp_path, yaml_blocks[0])
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    result = python(_RUN_BLOCKS, tmp_path)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "--- all blocks ran" in result.stdout
    assert (tmp_path / "body-ran.txt").read_text() == "ran\n"  # never again in a worker process
    assert "decoding images in this process" in result.stderr  # dkit.label's decoding, in the script's process
    run = tmp_path / "runs" / "api-demo"
    assert (run / "eval.json").is_file() and (run / "bundle" / "manifest.json").is_file()


# Module docstrings whose indented block is not Python to paste (a table, a formula, shell commands).
NOT_PYTHON = {"distill/report.py", "edge/kiosk/admin.py", "distill/students/clip_embed/training.py",
              "distill/engines/ray_data.py", "dkit/cli/device_pack.py", "edge/bundle/home.py", "edge/kiosk/names.py"}


def test_docstring_snippets_say_what_to_import():
    """A module docstring's usage snippet (an indented line calling something) comes with its import line."""
    import ast
    import re

    from tests.conftest import ROOT

    lacking = []
    for folder in ("edge", "devtools", "distill", "export", "dkit"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            code = [ln for ln in doc.splitlines() if re.match(r"^    \S", ln) and "(" in ln]
            if code and "import" not in doc and rel not in NOT_PYTHON:
                lacking.append(rel)
    assert lacking == []


def test_overrides_as_one_string_are_refused_plainly():
    import dkit

    with pytest.raises(dkit.DkitError, match="not one string"):
        dkit.load_kit(ROOT / "datasets" / "coco128" / "kit.yaml", overrides="student.epochs=1")
