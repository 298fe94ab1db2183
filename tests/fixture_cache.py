"""Test fixtures built once and kept under build/test-fixtures/, keyed by what they are made from.

The edge tests run on two real bundles: yolov8n exported to ONNX (needs Ultralytics) and a judge bundle distilled
from a random CLIP teacher (needs torch, open_clip, onnx). The dev venv builds them; every later session, the dev
venv's or a base-only venv's (`make test-edge`: what a device installs), reuses them, so the device runtime's tests
run without the training stack. A cached folder is named after a hash of its inputs (the sources that write it,
constraints.txt), so a change to any of them builds it again; a session that cannot build a missing one skips the
tests that need it, saying why.

    key = source_key(["kit text"], [Path("export/judge.py")])
    bundle = cached("judge", key, lambda out: shutil.copytree(run / "bundle", out / "bundle")) / "bundle"
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DKIT_TEST_FIXTURES", ROOT / "build" / "test-fixtures"))
DONE = ".complete"  # written last: a folder without it is a build that did not finish
SOURCES = ("dkit", "edge", "distill", "export")  # the package folders a bundle's writer may depend on


def source_files(folders: Iterable[str] = SOURCES) -> list[Path]:
    """Every .py file below the named repo folders, plus pyproject.toml and constraints.txt, in a stable order."""
    files = [p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files) + [ROOT / "pyproject.toml", ROOT / "constraints.txt"]


def source_key(texts: Iterable[str], files: Iterable[Path]) -> str:
    """16 hex digits of sha256 over `texts` and the names and bytes of `files` (a missing file counts as empty).

    Example: `source_key([JUDGE_KIT], source_files())` changes when the kit text or any package source changes."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode() + b"\0")
    for path in files:
        h.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


def cached_path(name: str, key: str) -> Path | None:
    """The finished cache folder `name`-`key`, or None when it was never built (or its build did not finish)."""
    folder = CACHE / f"{name}-{key}"
    return folder if (folder / DONE).is_file() else None


def cached(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`-`key` under the cache, made by `build(folder)` the first time (into a temporary folder
    renamed into place once complete, so a crash or a parallel session never leaves a half-built one); folders of
    the same name with another key are removed."""
    hit = cached_path(name, key)
    if hit is not None:
        return hit
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{name}-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        (tmp / DONE).write_text(key + "\n")
        folder = CACHE / f"{name}-{key}"
        try:
            tmp.rename(folder)
        except OSError:  # another session finished first: use its copy
            if cached_path(name, key) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in CACHE.glob(f"{name}-*"):
        if old.name != f"{name}-{key}" and old.name[len(name) + 1:].isalnum():
            shutil.rmtree(old, ignore_errors=True)
    return CACHE / f"{name}-{key}"
