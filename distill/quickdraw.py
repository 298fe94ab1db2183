"""Quick, Draw! bitmaps -> kiosk-like drawings: dark strokes on white, upscaled, one PNG per doodle.

    from dkit.distill.quickdraw import render_folder

    folder = render_folder(npy_dir, run_dir / "rendered", per_file=200, size=256)   # then label `folder`

A Quick, Draw! `.npy` file (as in ../shared/assets/data/quickdraw) holds N doodles of one class as 28x28
uint8 bitmaps, white strokes on black, shaped (N, 784) or (N, 1, 784). Each of the first `per_file` doodles
(or `per_file` from a later index on: an unlabeled pool drawn from the same file, dkit.distill.pool) becomes
`<folder>/<class>/<class>_<i>.png`: inverted to dark strokes on white (how a drawing on the kiosk canvas looks)
and upscaled to `size` px with cubic interpolation. `<folder>-labels.csv` (file,class) beside the folder is
the class each came from, usable as `dkit eval --ground-truth`.

Rendering is cached: a folder already rendered from the same files with the same settings is reused as is;
anything else is rendered into a temporary folder and swapped into place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from dkit.core.errors import UsageError
from dkit.core.files import atomic_write, new_tmp_dir, replace_dir

STAMP = ".rendered.json"


def render(bitmap: np.ndarray, size: int = 256) -> np.ndarray:
    """(784,) or (28, 28) uint8 white-on-black -> (size, size, 3) uint8 RGB, dark strokes on white."""
    square = np.asarray(bitmap, np.uint8).reshape(28, 28)
    big = cv2.resize(255 - square, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.repeat(big[:, :, None], 3, axis=2)


def npy_files(source: Path) -> list[Path]:
    """The .npy files under a folder (recursively), or [source] for one .npy file."""
    source = Path(source)
    if source.is_file():
        return [source] if source.suffix.lower() == ".npy" else []
    return sorted(p for p in source.rglob("*.npy") if not p.name.startswith("."))


def render_folder(source: Path, dest: Path, *, per_file: int = 200, size: int = 256,
                  start: Mapping[str, int] | None = None) -> Path:
    """Render `per_file` doodles of every .npy under `source` (a folder or one file) into `dest` (cached); returns
    `dest`. A file whose `file_digest` is a key of `start` is rendered from that index on (an unlabeled pool
    taken from the same file as the kit's images starts after them); the others from their first doodle."""
    files = npy_files(source)
    if not files:
        raise UsageError(f"{source}: no Quick, Draw! .npy files")
    start = start or {}
    digests = {p: file_digest(p) for p in files}
    first = {p: int(start.get(digests[p], 0)) for p in files}
    stamp = {"files": {p.name: digests[p] for p in files}, "per_file": per_file, "size": size}
    if any(first.values()):
        stamp["start"] = {p.name: first[p] for p in files}
    if (dest / STAMP).is_file() and json.loads((dest / STAMP).read_text()) == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_tmp_dir(dest.parent, f".{dest.name}-")
    try:
        rows = ["file,class"]
        for path in files:
            try:
                doodles = np.load(path, allow_pickle=False, mmap_mode="r")  # only the doodles rendered are read
            except (OSError, ValueError) as e:
                raise UsageError(f"{path}: not a Quick, Draw! bitmap file ({e})") from e
            if doodles.dtype != np.uint8 or doodles.size % 784 or doodles.ndim < 2:
                raise UsageError(f"{path}: expected uint8 bitmaps shaped (N, 784) or (N, 1, 784), got "
                                 f"{doodles.dtype} {doodles.shape}")
            doodles = doodles.reshape(-1, 784)
            name = path.stem
            (tmp / name).mkdir()
            for i, bitmap in enumerate(doodles[first[path]:first[path] + per_file], start=first[path]):
                file = f"{name}_{i:05d}.png"
                cv2.imwrite(str(tmp / name / file), render(bitmap, size))  # gray: the same in BGR and RGB
                rows.append(f"{file},{name}")
        atomic_write(tmp / STAMP, json.dumps(stamp))
        replace_dir(tmp, dest)
        atomic_write(truth_file(dest), "\n".join(rows) + "\n")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def truth_file(dest: Path) -> Path:
    return dest.with_name(f"{dest.name}-labels.csv")


def file_digest(path: Path) -> str:
    """A cheap identity of a .npy file (its size and first MiB): the same file under another name or folder."""
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))  # size + the first MiB: enough to notice another file, cheap on big ones
    return h.hexdigest()
