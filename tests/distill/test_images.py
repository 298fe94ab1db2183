"""Image discovery and decoding on real photos, and on the broken, odd and huge files a stranger's folder holds.

Every bad or unusual input is built in tmp_path from a copy of a real photo in ../shared/assets/data/photos;
the originals are never touched.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from dkit.core.errors import UsageError
from dkit.distill import images
from dkit.distill.images import MAX_PIXELS, LoadedImage, iter_images, load_image, scan

PHOTO = "owl.jpg"  # 512 x 384, no EXIF orientation tag
CRASH = "crash.jpg"  # the file _crashy_load dies on
NOT_AN_IMAGE = "not an image (unrecognised format)"


@pytest.fixture
def photos(assets: Path) -> list[Path]:
    found = sorted((assets / "data" / "photos").glob("*.jpg"))
    assert len(found) >= 5, f"expected real JPEG photos in {assets / 'data' / 'photos'}, found {found}"
    return found


@pytest.fixture
def photo(photos: list[Path]) -> Path:
    return next(p for p in photos if p.name == PHOTO)


def _pixels(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as Pillow decodes the file, for reference."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 of Pillow's own luma, repeated."""
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    return np.repeat(gray[:, :, None], 3, axis=2)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- makers: (real photo, destination) -> writes the destination ------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def _truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _flipped(src: Path, dst: Path) -> None:
    """64 bytes inverted in the middle of the file."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    dst.write_bytes(bytes(data))


def _empty(src: Path, dst: Path) -> None:
    dst.write_bytes(b"")


def _text(src: Path, dst: Path) -> None:
    dst.write_text("a caption, not a picture\n")


def _nothing(src: Path, dst: Path) -> None:
    """The file vanished between scan and load."""


def _folder(src: Path, dst: Path) -> None:
    dst.mkdir()


def _pil(mode: str, fmt: str, **save: object) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        with Image.open(src) as image:
            image.convert(mode).save(dst, fmt, **save)

    return make


def _then(first: Callable[[Path, Path], None], second: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        middle = dst.with_name("middle-" + dst.name)
        first(src, middle)
        second(middle, dst)

    return make


def _rgba_left_clear(src: Path, dst: Path) -> None:
    """RGBA PNG whose left half is fully transparent."""
    rgb = _pixels(src)  # (H, W, 3)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)  # (H, W)
    alpha[:, : rgb.shape[1] // 2] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(dst, "PNG")


def _cv2_16bit(gray: bool) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)  # (H, W, 3) uint8 BGR
        if gray:
            bgr = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cv2.COLOR_RGB2GRAY)  # (H, W)
        assert cv2.imwrite(str(dst), bgr.astype(np.uint16) * 257)

    return make


def _exif_rotated(src: Path, dst: Path) -> None:
    """The photo stored as is, with EXIF orientation 6 (display turned 90 degrees clockwise)."""
    with Image.open(src) as image:
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(dst, "JPEG", quality=95, exif=exif)


def _palette_png(src: Path, dst: Path) -> None:
    with Image.open(src) as image:
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(dst, "PNG")


def _gif_two_frames(src: Path, dst: Path) -> None:
    with Image.open(src) as image:
        first = image.convert("RGB")
    second = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    first.save(dst, "GIF", save_all=True, append_images=[second])


# id, file name, maker, skipped (prefix) or None, normalised or None, expected pixels from the original or None,
# largest mean absolute difference allowed against them
CASES = [
    ("photo", "cat.jpg", _copy, None, None, lambda o: o, 0.0),
    ("truncated-jpeg", "half.jpg", _truncated, "truncated or corrupt: image file is truncated", None, None, 0),
    ("flipped-jpeg", "flipped.jpg", _flipped, None, None, None, 0),  # libjpeg decodes damaged data with artifacts
    ("flipped-png", "flipped.png", _then(_pil("RGB", "PNG"), _flipped), "truncated or corrupt: ", None, None, 0),
    ("empty", "empty.jpg", _empty, "empty file (0 bytes)", None, None, 0),
    ("text-as-jpg", "fake.jpg", _text, NOT_AN_IMAGE, None, None, 0),
    ("txt", "notes.txt", _text, NOT_AN_IMAGE, None, None, 0),
    ("vanished", "gone.jpg", _nothing, "unreadable: No such file or directory", None, None, 0),
    ("folder", "folder.jpg", _folder, "unreadable: Is a directory", None, None, 0),
    ("cmyk-jpeg", "cmyk.jpg", _pil("CMYK", "JPEG", quality=95), None, "CMYK to RGB", lambda o: o, 4.0),
    ("gray-jpeg", "gray.jpg", _pil("L", "JPEG", quality=95), None, "grayscale to RGB", _gray, 2.0),
    ("bilevel-png", "ink.png", _pil("1", "PNG"), None, "grayscale to RGB", None, 0),
    ("palette-png", "palette.png", _palette_png, None, "palette to RGB", lambda o: o, 6.0),
    (
        "rgba-png",
        "clear.png",
        _rgba_left_clear,
        None,
        "alpha dropped",
        lambda o: np.concatenate([np.full_like(o[:, : o.shape[1] // 2], 255), o[:, o.shape[1] // 2 :]], axis=1),
        0.0,
    ),
    ("la-png", "gray-alpha.png", _pil("LA", "PNG"), None, "grayscale to RGB, alpha dropped", _gray, 0.0),
    ("gray16-png", "gray16.png", _cv2_16bit(gray=True), None, "16-bit to 8-bit, grayscale to RGB", _gray, 1.0),
    ("rgb16-png", "rgb16.png", _cv2_16bit(gray=False), None, "16-bit to 8-bit", lambda o: o, 0.0),
    ("exif-rotated", "turned.jpg", _exif_rotated, None, "EXIF rotation", lambda o: np.rot90(o, k=-1), 3.0),
    ("gif-two-frames", "anim.gif", _gif_two_frames, None, "palette to RGB, first frame", lambda o: o, 12.0),
]


@pytest.mark.parametrize(
    "name, maker, skipped, normalised, expected, tolerance", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_load_image(photo, tmp_path, name, maker, skipped, normalised, expected, tolerance):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    path = root / "sub" / name
    maker(photo, path)

    image = load_image(path, root)

    assert image.path == path and image.rel == f"sub/{name}"
    assert image.sha256 == (_sha(path) if path.is_file() else None)
    assert image.normalised == normalised
    if skipped is not None:
        assert image.skipped is not None and image.skipped.startswith(skipped), image.skipped
        assert not image.ok and image.rgb is None and (image.width, image.height) == (0, 0)
        return
    assert image.skipped is None and image.ok
    assert image.rgb.dtype == np.uint8 and image.rgb.flags.c_contiguous
    assert image.rgb.shape == (image.height, image.width, 3)
    if expected is not None:
        want = expected(_pixels(photo))  # (H, W, 3)
        assert image.rgb.shape == want.shape
        assert _mean_abs(image.rgb, want) <= tolerance


def test_sixteen_bit_is_scaled_not_clipped(photo, tmp_path):
    """Clipping 16-bit samples to 255 gives a white image; scaling gives the photo back."""
    _cv2_16bit(gray=True)(photo, tmp_path / "gray16.png")
    rgb = load_image(tmp_path / "gray16.png", tmp_path).rgb  # (H, W, 3)
    assert 40 < rgb.mean() < 215 and rgb.std() > 20
    assert _mean_abs(rgb, _gray(_pixels(photo))) <= 1.0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that apply (not root)")
def test_unreadable_file_gives_the_os_reason(photo, tmp_path):
    path = tmp_path / "locked.jpg"
    _copy(photo, path)
    path.chmod(0)
    image = load_image(path, tmp_path)
    assert image.skipped == "unreadable: Permission denied" and image.sha256 is None


def _png_header_size(src: Path, dst: Path, width: int, height: int) -> None:
    """A real PNG whose IHDR claims another size (checksum fixed): what a decompression bomb looks like."""
    with Image.open(src) as image:
        image.convert("RGB").save(dst, "PNG")
    data = bytearray(dst.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of "IHDR" + its 13 bytes
    dst.write_bytes(bytes(data))


def _png_bilevel(src: Path, dst: Path, width: int, height: int) -> None:
    """A genuine, tiny-on-disk PNG of width x height (1-bit, blank)."""
    Image.new("1", (width, height)).save(dst, "PNG")


@pytest.mark.parametrize(
    "maker, width, height, reason",
    [
        (_png_bilevel, 8000, 7000, "too large: 8000 x 7000 = 56 MP (limit 50 MP)"),
        (_png_header_size, 20000, 20000, "too large: 20000 x 20000 = 400 MP (limit 50 MP)"),  # past Pillow's own limit
    ],
    ids=["png-56MP", "png-bomb-400MP"],
)
def test_huge_png_is_skipped_without_decoding(photo, tmp_path, monkeypatch, maker, width, height, reason):
    path = tmp_path / "huge.png"
    maker(photo, path, width, height)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))

    image = load_image(path, tmp_path)

    assert image.skipped == reason and image.sha256 == _sha(path)
    assert decoded == []


def _jpeg_upscaled(src: Path, dst: Path, width: int, height: int) -> None:
    with Image.open(src) as image:
        image.convert("RGB").resize((width, height), Image.Resampling.NEAREST).save(dst, "JPEG", quality=80)


def _jpeg_gray_blank(src: Path, dst: Path, width: int, height: int) -> None:
    Image.new("L", (width, height), 128).save(dst, "JPEG", quality=50)


@pytest.mark.parametrize(
    "maker, width, height, size, normalised",
    [
        (_jpeg_upscaled, 9000, 6000, (4500, 3000), "downscaled from 9000x6000"),
        # 182 MP is past Pillow's own decompression-bomb limit too: the header is read regardless
        (_jpeg_gray_blank, 14000, 13000, (7000, 6500), "downscaled from 14000x13000, grayscale to RGB"),
    ],
    ids=["jpeg-54MP", "jpeg-182MP"],
)
def test_huge_jpeg_is_decoded_at_reduced_scale(photo, tmp_path, maker, width, height, size, normalised):
    path = tmp_path / "huge.jpg"
    maker(photo, path, width, height)

    image = load_image(path, tmp_path)

    assert image.ok and image.normalised == normalised
    assert (image.width, image.height) == size and image.width * image.height <= MAX_PIXELS
    assert image.rgb.shape == (size[1], size[0], 3) and image.rgb.dtype == np.uint8
    if maker is _jpeg_upscaled:
        original = _pixels(photo)  # (H, W, 3)
        small = cv2.resize(image.rgb, original.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert _mean_abs(small, original) <= 8.0


def test_import_is_light_and_leaves_pillow_alone():
    """No torch in the decoding workers, and Pillow's global limits stay as the rest of the process set them."""
    code = (
        "import sys; from PIL import Image, ImageFile\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "import dkit.distill.images\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before, 'Pillow globals changed'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(images.__file__).parents[1], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_loaded_image_checks_its_fields(tmp_path):
    with pytest.raises(ValueError, match=r"expected C-contiguous uint8 rgb of shape \(2, 3, 3\)"):
        LoadedImage(tmp_path, "x.jpg", None, np.zeros((2, 3), np.uint8), 3, 2, None, None)
    with pytest.raises(ValueError, match="expected a skip reason"):
        LoadedImage(tmp_path, "x.jpg", None, None, 0, 0, None, None)


# --- scan ------------------------------------------------------------------------------------------------


def test_scan_sorts_skips_hidden_and_follows_symlinks(photo, tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for rel in ["b.jpg", "a/z.jpg", "a/b/c.txt", "a-b.jpg", "A.jpg", ".hidden.jpg", ".git/x.jpg", "a/.cache/y.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _copy(photo, root / rel)
    (elsewhere / "deep").mkdir(parents=True)
    _copy(photo, elsewhere / "deep" / "far.jpg")
    (root / "link.jpg").symlink_to(photo)  # a link to a file outside the root
    (root / "alias").symlink_to(elsewhere)  # a link to a folder outside the root
    (root / "a" / "loop").symlink_to(root)  # a link back up: listed once, not forever
    (root / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")

    paths = scan(root)

    rels = [p.relative_to(root).as_posix() for p in paths]
    assert rels == ["A.jpg", "a-b.jpg", "a/b/c.txt", "a/z.jpg", "alias/deep/far.jpg", "b.jpg", "link.jpg"]
    assert all(p.is_absolute() for p in paths)
    assert [load_image(p, root).rel for p in paths] == rels
    linked = load_image(root / "link.jpg", root)
    assert linked.ok and linked.path == root / "link.jpg" and linked.sha256 == _sha(photo)


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty", "no files in {root}"),
        ("only-hidden", "no files in {root}"),
        ("file", "not a folder: {root}"),
        ("missing", "no such folder: {root}"),
    ],
)
def test_scan_refuses_what_is_not_a_folder_of_files(tmp_path, layout, message):
    root = tmp_path / "images"
    if layout in ("empty", "only-hidden"):
        root.mkdir()
    if layout == "only-hidden":
        (root / ".DS_Store").write_bytes(b"x")
        (root / ".thumbs").mkdir()
        (root / ".thumbs" / "a.jpg").write_bytes(b"x")
    if layout == "file":
        root.write_bytes(b"x")
    with pytest.raises(UsageError) as caught:
        scan(root)
    assert str(caught.value) == message.format(root=root)


# --- iter_images -------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(photos: list[Path], tmp_path: Path) -> tuple[list[Path], Path]:
    """A folder of every real photo plus a few bad files: (scanned paths, root)."""
    root = tmp_path / "mixed"
    (root / "bad").mkdir(parents=True)
    (root / "photos").symlink_to(photos[0].parent)
    _truncated(photos[0], root / "bad" / "half.jpg")
    _empty(photos[0], root / "bad" / "empty.jpg")
    _text(photos[0], root / "bad" / "fake.jpg")
    _pil("L", "PNG")(photos[0], root / "bad" / "gray.png")
    return scan(root), root


def _run_within(seconds: float, fn: Callable[[], object]) -> object:
    """fn() in a daemon thread; fail instead of hanging the suite if it has not returned in time."""
    values: list[object] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            values.append(fn())
        except BaseException as e:  # handed back to the test below, KeyboardInterrupt included
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s (hung?)"
    if errors:
        raise errors[0]
    return values[0]


def _same(a: LoadedImage, b: LoadedImage) -> bool:
    fields = ("path", "rel", "sha256", "width", "height", "skipped", "normalised")
    if any(getattr(a, f) != getattr(b, f) for f in fields):
        return False
    return (a.rgb is None and b.rgb is None) or np.array_equal(a.rgb, b.rgb)


def test_workers_give_what_the_calling_process_gives(mixed):
    paths, root = mixed
    inline = list(iter_images(paths, root, workers=0))
    pooled = _run_within(120, lambda: list(iter_images(paths, root, workers=2, prefetch=4)))

    assert [i.rel for i in inline] == [p.relative_to(root).as_posix() for p in paths]
    assert [i.rel for i in pooled] == [i.rel for i in inline]
    assert all(_same(a, b) for a, b in zip(pooled, inline, strict=True))
    assert sum(i.ok for i in inline) >= 5 and {i.skipped for i in inline if not i.ok} >= {NOT_AN_IMAGE}


class _Counter:
    """Counts ProcessPoolExecutor.submit calls against the images the caller has taken."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.submitted, self.consumed = 0, 0
        self.outstanding: list[int] = []  # submitted - consumed, at each submit
        self.methods: set[str] = set()
        real_submit = ProcessPoolExecutor.submit

        def submit(pool, fn, /, *args, **kwargs):
            self.methods.add(pool._mp_context.get_start_method())
            self.submitted += 1
            self.outstanding.append(self.submitted - self.consumed)
            return real_submit(pool, fn, *args, **kwargs)

        monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)


def test_prefetch_bounds_the_images_in_flight(mixed, monkeypatch):
    paths, root = mixed
    counter = _Counter(monkeypatch)

    def consume_slowly() -> list[str]:
        rels = []
        for image in iter_images(paths, root, workers=2, prefetch=3):
            counter.consumed += 1
            rels.append(image.rel)
            time.sleep(0.02)  # the caller's own work, during which workers decode ahead
        return rels

    rels = _run_within(120, consume_slowly)

    assert rels == [p.relative_to(root).as_posix() for p in paths]
    assert counter.submitted == len(paths)
    assert max(counter.outstanding) == 3  # filled up to prefetch, never beyond
    assert counter.methods and "fork" not in counter.methods


def _break_after_two(paths: list[Path], root: Path) -> None:
    for taken, _ in enumerate(iter_images(paths, root, workers=2, prefetch=4), start=1):
        if taken == 2:
            break


def _raise_after_two(paths: list[Path], root: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        for taken, _ in enumerate(iter_images(paths, root, workers=2, prefetch=4), start=1):
            if taken == 2:
                raise ZeroDivisionError


def _interrupt_after_two(paths: list[Path], root: Path) -> None:
    images_ = iter_images(paths, root, workers=2, prefetch=4)
    next(images_)
    next(images_)
    with pytest.raises(KeyboardInterrupt):
        images_.throw(KeyboardInterrupt())  # Ctrl-C while the caller is waiting on the generator


@pytest.mark.parametrize(
    "stop", [_break_after_two, _raise_after_two, _interrupt_after_two], ids=["break", "exception", "KeyboardInterrupt"]
)
def test_stopping_early_cancels_and_shuts_down(mixed, monkeypatch, stop):
    paths, root = mixed
    paths = paths * 5  # far more than prefetch
    counter = _Counter(monkeypatch)
    children_before = set(multiprocessing.active_children())

    _run_within(60, lambda: stop(paths, root))

    assert counter.submitted <= 2 + 4  # the two taken, and at most prefetch more
    assert set(multiprocessing.active_children()) <= children_before  # the workers are gone


def _crashy_load(path: Path, root: Path) -> LoadedImage:
    """load_image, except that the worker process dies on CRASH, as it would in a segfaulting decoder."""
    if path.name == CRASH:
        os._exit(70)
    return load_image(path, root)


def test_a_crashing_decoder_costs_only_its_file(mixed, photo):
    paths, root = mixed
    _copy(photo, root / "bad" / CRASH)
    paths = scan(root)

    pooled = _run_within(120, lambda: list(images._iter_pool(paths, root, 2, 4, _crashy_load)))

    assert [i.rel for i in pooled] == [p.relative_to(root).as_posix() for p in paths]
    for image, path in zip(pooled, paths, strict=True):
        if path.name == CRASH:
            assert image.skipped == "decoder crashed (its worker process died)" and image.sha256 == _sha(path)
        else:
            assert _same(image, load_image(path, root))


@pytest.mark.parametrize("workers, prefetch", [(-1, 16), (2, 0)])
def test_iter_images_refuses_bad_settings(workers, prefetch, tmp_path):
    with pytest.raises(ValueError, match="expected"):
        iter_images([], tmp_path, workers=workers, prefetch=prefetch)
