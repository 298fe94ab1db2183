"""Small file helpers every stage shares: atomic writes, JSON documents, durations a person reads.

    from dkit.core.files import atomic_write, write_json, read_json, duration

    atomic_write(path, "text" or b"bytes")   # a temp file beside `path`, then os.replace: never half a file
    write_json(path, doc); read_json(path)   # read_json gives {} for a missing file
    duration(3725) == "1h02m"
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to a temp file beside `path`, then rename it over `path`: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for any file (mkstemp: 0600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
