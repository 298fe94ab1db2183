"""README.md's Python example, run as written: the ```python block of its `## From Python` section, in a folder
holding what it names (runs/coco128/bundle: the session's yolov8n detect bundle; photo.jpg: a real photo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ASSETS, ROOT

SECTION = "## From Python"


def readme_example() -> str:
    """The one ```python block of README.md's `## From Python` section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    return code


def test_the_readme_example_runs_as_written(detect_bundle, tmp_path):
    code = readme_example()
    assert re.search(r"^import dkit$", code, flags=re.MULTILINE) and len(code.splitlines()) <= 12
    (tmp_path / "runs" / "coco128").mkdir(parents=True)
    (tmp_path / "runs" / "coco128" / "bundle").symlink_to(detect_bundle)
    (tmp_path / "photo.jpg").symlink_to(ASSETS / "data" / "photos" / "cat_720p.jpg")
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DKIT_HOME": str(tmp_path / "dkit-home")}
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines and all(re.fullmatch(r"[a-z][a-z ]* 0\.\d+ \[[-\d., ]+\]", line) for line in lines), lines
    assert any(line.startswith("cat ") for line in lines), lines  # the photo is of a cat
