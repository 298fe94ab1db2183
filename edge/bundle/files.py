"""The one atomic file writer: a reader sees the old file or the new one, never half of one.

    from dkit.edge.bundle.files import atomic_write

    atomic_write(path, "text" or b"bytes")                 # a temp file beside `path`, then os.replace
    atomic_write(path, data, durable=True)                 # + fsync the file and its folder: survives a power cut
    atomic_write(path, data, mode=0o644)                   # exactly these permission bits (else: 0o666 less umask)

It lives in the lowest layer that writes files (the device's backend-choice cache, the kiosk's thumbnails);
`dkit.core.files` re-exports it for the training side.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_SUFFIX = ".tmp"  # a temporary file is `.{name}.{pid}.{random}.tmp` in the destination's folder


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int | None = None,
                 durable: bool = False) -> Path:
    """Write `data` (str: UTF-8) to a new temp file beside `path`, then rename it over `path`.

    Args:
        path: the destination; its folder is made if missing.
        data: the whole content.
        mode: the file's permission bits; None: 0o666 less the umask, as for any new file.
        durable: fsync the file before the rename and its folder after it, so the new file survives a power cut.

    Returns:
        `path`. On any error the temp file is removed, the old file (if any) is untouched, and the error raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (POSIX: fsync the directory); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["TMP_SUFFIX", "atomic_write", "fsync_dir"]
