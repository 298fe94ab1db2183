"""tools/import_cycles.py (run by `make layers`): it finds a cycle that only a function-level import closes, names
the lines, and finds none in a package without one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "import_cycles.py"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkgx" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def _run(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "pkgx"], cwd=where, env={"PYTHONPATH": str(where)},
                          capture_output=True, text=True, timeout=120)


def test_a_cycle_closed_inside_a_function_is_found_and_named(tmp_path):
    where = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkgx.b import helper\n\ndef f():\n    return helper()\n",
        "b.py": "def helper():\n    from pkgx import a  # the hidden way back\n    return a\n",
        "c.py": "import pkgx.a\n",  # imports into the cycle, is not part of it
    })
    done = _run(where)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "import cycle (2 modules): pkgx.a -> pkgx.b -> pkgx.a" in done.stdout
    assert "pkgx.b imports pkgx.a (line 2)" in done.stdout
    assert "import cycles in pkgx: 1 " in done.stdout


def test_a_package_without_cycles_passes(tmp_path):
    where = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkgx.b import helper\n",
        "b.py": "def helper():\n    from pkgx import c\n    return c\n",
        "c.py": "X = 1\n",
    })
    done = _run(where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "import cycles in pkgx: 0 (4 modules" in done.stdout
