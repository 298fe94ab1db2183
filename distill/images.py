"""Find and decode a folder of images from strangers without ever dying on one bad file.

    from dkit.distill.images import iter_images, scan

    paths = scan(root)                                    # every non-hidden file, sorted by relative path
    for image in iter_images(paths, root, workers=4):     # decoded in 4 processes, in input order
        if not image.ok:
            log(image.rel, image.skipped)                 # "truncated or corrupt: image file is truncated"
            continue
        label(image.rgb)                                  # (H, W, 3) uint8 RGB, EXIF orientation applied

Each file becomes a `LoadedImage`: plain 8-bit RGB pixels plus the sha256 of the file's bytes, or the
reason it was skipped (empty, unreadable, not an image, truncated, too large). Whatever was changed to
make it plain RGB (CMYK, 16-bit, palette, alpha, EXIF rotation, a downscale) is recorded in `normalised`.

Size is checked from the header before any pixel is decoded: above `MAX_PIXELS` a JPEG is decoded at
1/2, 1/4 or 1/8 scale by libjpeg itself (Pillow's draft mode), anything else is skipped, so a
decompression bomb is never expanded. Pillow's own global limits are left as they are.

Only the standard library, numpy and Pillow are used (no torch), so worker processes start quickly.

Worker processes start with 'forkserver' (or 'spawn'), which re-run the main script in every worker. A script
without an `if __name__ == "__main__":` guard would run its whole body again there (and fail), so for such a
script the images are decoded in the calling process instead (logged at INFO); see `workers_can_start`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import math
import multiprocessing
import os
import signal
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from dkit.core.errors import UsageError
from dkit.edge.images.alpha import over_white

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000  # images above this are downscaled (JPEG, via draft mode) or skipped

_CHUNK = 1 << 20  # bytes read at a time while hashing


@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field makes generated == and hash() raise
class LoadedImage:
    """One file of the scanned folder: its pixels as plain 8-bit RGB, or why it was skipped."""

    path: Path  # absolute path of the source file
    rel: str  # path relative to the scanned root, POSIX style ("sub/cat.jpg")
    sha256: str | None  # hex sha256 of the file's bytes (None only if the file could not be read at all)
    rgb: np.ndarray | None = field(repr=False)  # (H, W, 3) uint8 RGB, C-contiguous; None when skipped
    width: int  # of rgb; 0 when skipped
    height: int
    skipped: str | None  # why the file was skipped, a short human sentence; None when loaded
    normalised: str | None  # what was changed to make it plain 8-bit RGB ("CMYK to RGB", "EXIF rotation", ...),
    # several joined with ", "; None if nothing changed

    def __post_init__(self) -> None:
        if self.rgb is None:
            if not self.skipped:
                raise ValueError(f"LoadedImage {self.rel!r}: expected a skip reason when rgb is None, got none")
            return
        shape = (self.height, self.width, 3)
        if self.rgb.dtype != np.uint8 or self.rgb.shape != shape or not self.rgb.flags.c_contiguous:
            raise ValueError(
                f"LoadedImage {self.rel!r}: expected C-contiguous uint8 rgb of shape {shape}, "
                f"got {self.rgb.dtype} {self.rgb.shape}"
            )

    @property
    def ok(self) -> bool:
        return self.rgb is not None


def scan(root: Path) -> list[Path]:
    """Every regular file under root, recursively, sorted by relative POSIX path.

    Skips hidden files and hidden folders (name starting with '.'). Follows symlinks to files, and to
    folders (each folder is listed once, so a symlink loop ends). Sub-folders that cannot be listed are
    left out. Raises UsageError naming the folder if root is not a folder or holds no files at all.
    """
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise UsageError(f"no such folder: {root}")
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    found: list[tuple[str, Path]] = []  # (rel POSIX path, path)
    seen: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders already listed
    stack: list[tuple[Path, str]] = [(root, "")]  # (folder, its rel prefix)
    while stack:
        folder, prefix = stack.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise UsageError(f"cannot read folder {root}: {e.strerror or e}") from e
            continue  # an unlistable sub-folder: none of its files could be read either
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:  # is_dir/is_file follow symlinks; a dangling link is neither
                if entry.is_dir():
                    subfolders.append((Path(entry.path), f"{prefix}{entry.name}/"))
                elif entry.is_file():
                    found.append((prefix + entry.name, Path(entry.path)))
            except OSError:
                continue
        stack.extend(reversed(subfolders))  # depth first, by name
    if not found:
        raise UsageError(f"no files in {root}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def load_image(path: Path, root: Path) -> LoadedImage:
    """Decode one file. Never raises for a bad file: returns skipped=<reason>."""
    path, rel = _where(path, root)
    try:
        with open(path, "rb") as f:
            sha256 = _sha256(f)
            if f.tell() == 0:
                return _skipped(path, rel, sha256, "empty file (0 bytes)")
            try:
                rgb, notes = _decode(f)
            except _Skip as e:
                return _skipped(path, rel, sha256, str(e))
    except OSError as e:  # permission denied, vanished, a folder, an I/O error while hashing
        return _skipped(path, rel, None, f"unreadable: {e.strerror or e}")
    height, width = rgb.shape[:2]
    return LoadedImage(path, rel, sha256, rgb, width, height, None, ", ".join(notes) or None)


def iter_images(paths: Sequence[Path], root: Path, *, workers: int = 0, prefetch: int = 16) -> Iterator[LoadedImage]:
    """Yield load_image(p, root) for each path, in input order.

    workers=0 decodes in the calling process. workers>=1 decodes in that many worker processes
    (started with 'forkserver' where available, else 'spawn'; never 'fork', since the parent may hold
    torch threads) while the caller consumes, with at most `prefetch` images in flight or buffered.
    Closing the generator early (break, an exception, Ctrl-C) cancels pending work and shuts the
    workers down. A worker that dies (a decoder segfault, killed for memory) costs only the file that
    killed it, which is yielded as skipped. When workers could not start safely (a main script without a
    main guard, see `workers_can_start`), decodes in the calling process.
    """
    if workers < 0:
        raise ValueError(f"iter_images: expected workers >= 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"iter_images: expected prefetch >= 1, got {prefetch}")
    if workers and not workers_can_start():
        log.info("decoding images in this process, not in %d worker processes: the main script %s has no "
                 "`if __name__ == '__main__':` guard, and each worker would run it again", workers, _main_source())
        workers = 0
    if workers == 0:
        return (load_image(path, root) for path in paths)
    return _iter_pool(list(paths), Path(root), workers, prefetch, load_image)


# --- decoding ---------------------------------------------------------------------------------------


class _Skip(Exception):
    """Internal: this file is skipped; the message is the reason."""


def _where(path: Path, root: Path) -> tuple[Path, str]:
    path = Path(os.path.abspath(path))  # absolute and normalised, symlinks kept as named
    return path, Path(os.path.relpath(path, os.path.abspath(root))).as_posix()


def _skipped(path: Path, rel: str, sha256: str | None, reason: str) -> LoadedImage:
    return LoadedImage(path, rel, sha256, None, 0, 0, reason, None)


def _sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _decode(f: BinaryIO) -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 RGB of the first frame, and what was changed to get it; raises _Skip."""
    notes: list[str] = []
    try:
        with _open(f) as image:
            _fit_size(image, notes)  # from the header: drafts a huge JPEG down, refuses anything else
            sixteen_bit = _raw_16bit(image)  # the tile says how the file stores samples; gone after load
            image.load()
            upright = _upright(image, notes)
            if sixteen_bit:
                notes.append("16-bit to 8-bit")  # Pillow keeps the high byte of each sample
            rgb = _to_rgb(upright, notes)  # (H, W, 3) uint8
            if _multiframe(image):
                notes.append("first frame")
    except _Skip:
        raise
    except OSError as e:  # "image file is truncated", "broken data stream", a bad PNG checksum
        raise _Skip(f"truncated or corrupt: {e}") from e
    except Exception as e:  # a decoder plugin may raise anything on hostile bytes
        raise _Skip(f"could not decode: {type(e).__name__}: {e}") from e
    return rgb, notes


def _pil_open():
    """Pillow's own Image.open. Ultralytics replaces it when imported with a wrapper that, on any file
    Pillow does not recognise, tries to pip-install pi-heif: not something to do per stranger's file."""
    fn = Image.open
    if getattr(fn, "__module__", "PIL.Image") != "PIL.Image":
        fn = getattr(sys.modules.get(fn.__module__), "_image_open", fn)
    return fn


def _open(f: BinaryIO) -> Image.Image:
    """Image.open (header only, no pixels), also for sizes beyond Pillow's decompression-bomb limit."""
    try:
        return _pil_open()(f)
    except UnidentifiedImageError as e:
        raise _Skip("not an image (unrecognised format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        pass  # Pillow's global limit refused the header; MAX_PIXELS decides below, with the real size
    image = _open_unchecked(f)
    if image is None:
        raise _Skip("not an image (unrecognised format)")
    return image


def _open_unchecked(f: BinaryIO) -> Image.Image | None:
    """What Image.open does to identify a file, minus its size check (Pillow's limit is global state)."""
    Image.init()
    f.seek(0)
    prefix = f.read(16)
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        verdict = accept(prefix) if accept else True
        if not verdict or isinstance(verdict, str):
            continue
        f.seek(0)
        try:
            return factory(f, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open takes as "not this format"
            continue
    return None


def _fit_size(image: Image.Image, notes: list[str]) -> None:
    """Bring the image within MAX_PIXELS before decoding: a JPEG by libjpeg's 1/2, 1/4, 1/8 scaling."""
    width, height = image.size
    if width == 0 or height == 0:
        raise _Skip(f"no pixels: {width} x {height}")
    if width * height <= MAX_PIXELS:
        return
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        scale = next((s for s in (2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= MAX_PIXELS), None)
        if scale is not None:
            image.draft("RGB", (max(1, width // scale), max(1, height // scale)))  # keeps CMYK/L as they are
            if image.size[0] * image.size[1] <= MAX_PIXELS:
                notes.append(f"downscaled from {width}x{height}")
                return
    pixels = width * height
    raise _Skip(f"too large: {width} x {height} = {_mp(pixels)} MP (limit {_mp(MAX_PIXELS)} MP)")


def _mp(pixels: int) -> str:
    return f"{round(pixels / 1e6, 1):g}"


def _raw_16bit(image: Image.Image) -> bool:
    """True when the file stores 16-bit samples that Pillow narrows while decoding (e.g. "RGB;16B" PNG)."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F") or not image.tile:
        return False  # these modes keep their full depth and are scaled in _to_rgb
    args = image.tile[0].args
    rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    return isinstance(rawmode, str) and ";16" in rawmode


def _upright(image: Image.Image, notes: list[str]) -> Image.Image:
    """The image turned as its EXIF orientation says; a malformed EXIF block leaves it as stored."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation not in range(2, 9):
            return image
        turned = ImageOps.exif_transpose(image)
    except Exception:  # bad EXIF metadata must not cost good pixels
        return image
    notes.append("EXIF rotation")
    return turned


def _multiframe(image: Image.Image) -> bool:
    try:
        return bool(getattr(image, "is_animated", False))
    except Exception:  # a damaged later frame does not matter: only the first is used
        return False


def _to_rgb(image: Image.Image, notes: list[str]) -> np.ndarray:
    """(H, W, 3) uint8 RGB, C-contiguous, from any Pillow mode; appends what changed to notes."""
    mode = image.mode
    if mode == "RGB" and "transparency" in image.info:  # a PNG's RGB tRNS colour: transparent, as OpenCV reads it
        return _drop_alpha(image.convert("RGBA"), notes)
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode in ("1", "L"):
        notes.append("grayscale to RGB")
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if mode in ("P", "PA"):
        notes.append("palette to RGB")
        if mode == "PA" or "transparency" in image.info:
            return _drop_alpha(image.convert("RGBA"), notes)
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if mode in ("LA", "La"):
        notes.append("grayscale to RGB")
        return _drop_alpha(image.convert("RGBA"), notes)
    if mode in ("RGBA", "RGBa"):
        return _drop_alpha(image.convert("RGBA"), notes)
    if mode == "CMYK":
        notes.append("CMYK to RGB")
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _gray_to_8bit(np.asarray(image), notes)  # (H, W) uint8
        notes.append("grayscale to RGB")
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    notes.append(f"{mode} to RGB")  # YCbCr, HSV, RGBX, ...
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _drop_alpha(rgba: Image.Image, notes: list[str]) -> np.ndarray:
    """Composite over white, as a viewer shows a transparent image on a white page: the device's own rule
    (dkit.edge.images.alpha.over_white), so a transparent PNG gives the same pixels in training and on the device."""
    notes.append("alpha dropped")
    return over_white(np.asarray(rgba, dtype=np.uint8))


def _gray_to_8bit(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """(H, W) uint16/int32/float32 -> (H, W) uint8, scaled (never clipped, which turns 16-bit data white)."""
    if values.dtype.kind == "f":
        notes.append("float to 8-bit")
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:  # the usual 0..1 convention
            return np.round(values * 255.0).astype(np.uint8)
        return _stretch(values, low, high)
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 0xFFFF:  # 16-bit samples: 65535 / 257 = 255, rounded
        notes.append("16-bit to 8-bit")
        return ((values + 128) // 257).astype(np.uint8)
    notes.append("32-bit to 8-bit")
    return _stretch(values.astype(np.float64), float(low), float(high))


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) float64 -> (H, W) uint8 with low..high mapped onto 0..255."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


# --- worker processes ---------------------------------------------------------------------------------


def _iter_pool(
    paths: list[Path],
    root: Path,
    workers: int,
    prefetch: int,
    load: Callable[[Path, Path], LoadedImage],
) -> Iterator[LoadedImage]:
    """iter_images with worker processes; `load` is load_image (tests pass a stand-in that crashes)."""
    todo = deque(paths)  # not yet submitted
    pending: deque[tuple[Path, Future[LoadedImage]]] = deque()  # submitted, in input order
    pool = _new_pool(workers)
    try:
        while todo or pending:
            try:
                while todo and len(pending) < prefetch:
                    pending.append((todo[0], pool.submit(load, todo[0], root)))
                    todo.popleft()
                item = pending[0][1].result()
            except BrokenProcessPool:
                # A worker died (a decoder segfault, killed for memory) and took every item in flight with
                # it. Decode those again one at a time in a fresh pool, so a crash names its own file.
                suspects = [path for path, _ in pending]
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = _new_pool(workers)
                for path in suspects:
                    try:
                        item = pool.submit(load, path, root).result()
                    except BrokenProcessPool as e:
                        pool.shutdown(wait=True, cancel_futures=True)
                        pool = _new_pool(workers)
                        _check_pool_starts(pool, e)
                        item = _crashed(path, root)
                    yield item
                continue
            pending.popleft()
            yield item
    finally:  # also on break, an exception in the caller, Ctrl-C, or garbage collection
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def workers_can_start() -> bool:
    """Whether decode workers can start without running the user's code again.

    A 'forkserver' or 'spawn' worker first re-imports the main module as `__mp_main__`, exactly as
    multiprocessing.spawn does: a script file (`python script.py`) or a module run with `python -m pkg.mod`.
    That is harmless when its work sits under an `if __name__ == "__main__":` guard; without one, every worker
    would run the whole script (load the teacher, label, ...) and die. Nothing is re-imported for an
    interactive session, `python -c` or a package's `__main__` (`python -m dkit`, `python -m pytest`).
    """
    source = _main_source()
    return source is None or _has_main_guard(source)


def _main_source() -> str | None:
    """The file a worker process would run again as the main module, or None when it runs none."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None  # multiprocessing does not re-run a package's __main__
    path = getattr(main, "__file__", None)
    if path is None:
        return None
    return os.path.join(getattr(multiprocessing.process, "ORIGINAL_DIR", None) or os.getcwd(), path)


@functools.lru_cache(maxsize=8)
def _has_main_guard(path: str) -> bool:
    """True when the Python file at `path` has a top-level `if __name__ == "__main__":`; False also when it
    cannot be read or parsed (stdin, a notebook's kernel file): then the workers could not start anyway."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_main_test(node.test) for node in tree.body)


def _is_main_test(test: ast.expr) -> bool:
    """`__name__ == "__main__"`, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = {_name_or_text(test.left), _name_or_text(test.comparators[0])}
    return sides == {"name:__name__", "text:__main__"}


def _name_or_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return f"name:{node.id}"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return f"text:{node.value}"
    return None


def _new_pool(workers: int) -> ProcessPoolExecutor:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_ignore_sigint)


def _ignore_sigint() -> None:
    """In a worker: Ctrl-C is the parent's to handle (it closes the generator, which shuts the pool down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ping() -> bool:
    return True


def _check_pool_starts(pool: ProcessPoolExecutor, crash: BrokenProcessPool) -> None:
    """Blame a file for a crash only if a fresh pool can run at all (it cannot when workers fail to start)."""
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"image worker processes die on start ({crash}); the main module must be importable by them "
            "(a script file with an `if __name__ == '__main__':` guard, not stdin), or use workers=0"
        ) from e


def _crashed(path: Path, root: Path) -> LoadedImage:
    path, rel = _where(path, root)
    try:
        with open(path, "rb") as f:
            sha256: str | None = _sha256(f)
    except OSError:
        sha256 = None
    return _skipped(path, rel, sha256, "decoder crashed (its worker process died)")
