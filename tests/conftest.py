"""Shared fixtures: the real assets beside the project, an isolated model store, the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = (ROOT / ".." / "shared" / "assets").resolve()
RECIPES = ROOT / "datasets"


@pytest.fixture
def assets() -> Path:
    """../shared/assets (real weights and images); the test is skipped when it is absent."""
    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS} (they live beside the project, never in it)")
    return ASSETS


@pytest.fixture
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store ($DKIT_HOME) for this test, with the network allowed unless a test says otherwise."""
    home = tmp_path / "dkit-home"
    home.mkdir()
    monkeypatch.setenv("DKIT_HOME", str(home))
    for var in ("DKIT_OFFLINE", "HF_HUB_OFFLINE", "DKIT_YOLO_ASSETS_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


def run_dkit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m dkit ARGS` in a fresh interpreter, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dkit", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def link_images(source: Path, pattern: str, count: int, dest: Path) -> Path:
    """A folder `dest` of symlinks to the first `count` files of `source` matching `pattern` (real images,
    never copied into the repo, never modified)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(source.glob(pattern))[:count]:
        (dest / p.name).symlink_to(p)
    return dest


def yolo_store(assets: Path, root: Path):
    """An offline model store holding the real yolov8n.pt (by file name, as users place it)."""
    from dkit.store import ModelStore

    root.mkdir(parents=True, exist_ok=True)
    (root / "yolov8n.pt").symlink_to(assets / "models" / "yolov8n.pt")
    return ModelStore(root, offline=True)
