"""Small file helpers every stage shares: atomic writes, JSON documents, durations a person reads.

    from dkit.core.files import atomic_write, write_json, read_json, duration

    atomic_write(path, "text" or b"bytes")   # a temp file beside `path`, then os.replace: never half a file
                                             # (dkit.edge.bundle.files.atomic_write, the one writer)
    write_json(path, doc); read_json(path)   # read_json gives {} for a missing file
    duration(3725) == "1h02m"
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dkit.edge.bundle.files import atomic_write


def write_json(path: Path, doc: dict) -> None:
    atomic_write(path, json.dumps(doc, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '42s', or '?' for an unknown (infinite) duration."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished folder `tmp` at `dest` with renames only: a crash leaves the old or the new one, never a mix."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def new_tmp_dir(parent: Path, prefix: str) -> Path:
    """A fresh temporary folder inside `parent` (same filesystem, so it can be renamed into place), readable
    like any folder (mkdtemp makes it 0700: a bundle or data set copied elsewhere would be unreadable)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


__all__ = ["atomic_write", "duration", "new_tmp_dir", "read_json", "replace_dir", "write_json"]
