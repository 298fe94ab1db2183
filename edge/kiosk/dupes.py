"""A near-duplicate check for drawings that survives the edits a player would try to get one drawing onto the board
twice (flips, 90-degree turns, crops, shifts, shrinks, inverts), with numpy + OpenCV only.

    from dkit.edge.kiosk.dupes import NEAR, shapes, variants, similarity

    blob = shapes(rgb)                              # bytes kept beside a stored drawing (21 x 1024 int8)
    similarity(variants(other_rgb), [blob, ...])    # the highest cosine between any of the other image's 8 turns
                                                    # and mirrors and any stored shape: >= NEAR is the same drawing

The shape of a drawing is its canonical form, not the image as sent:
- the background is the median of the image's border; on a dark background the image is inverted (an invert of a
  white-paper drawing is the same drawing); "ink" is how much darker than the background a pixel is;
- the ink is cropped to its bounding box (the rows and columns holding all but TRIM of it on each side, so a stray
  dot does not widen it), padded square around its centre and resized to SIDE x SIDE: a shift, a shrink, a larger
  canvas or a crop of empty margin leave it as it was;
- blurred a little (BLUR) at GRID x GRID (32 x 32: a finer grid than a 16 x 16 one, which let simple doodles of one
  class, eyes above all, look alike), centred and normalised: one unit vector, compared by cosine.
A crop that cuts into the drawing itself changes the bounding box, so the stored blob also holds the shapes of the
drawing cut by each of CROPS on each side (1 + 4 x 5 = 21 rows, 21.5 KB); and `variants` turns and mirrors the new
image's shape 8 ways, which catches flips and rotations.

Measured on real Quick, Draw! doodles rendered the kiosk way (apple, bicycle, diamond, eye; the edits of 100 per
class, the test's EDITS in tests/edge/test_kiosk_round2_board.py; the refusals with its refused_per_submission over
300 per class). Every edit caught on 400 of 400 doodles at NEAR: a 16 px shift at cosine >= 0.963, a 10% crop >=
0.970, a 75% shrink >= 0.993, flips, turns, inverts and a JPEG re-encode >= 0.996, the combinations >= 0.952. An
honest drawing is refused as a copy by a same-class board of 100 (the kiosk compares with its prompt's best
KioskConfig.keep_top = 100; a board holds one prompt): apple 0.0%, bicycle 0.0%, diamond 0.0%, eye 0.22% of
submissions (the most similar pair of different eyes 0.957). Before (GRID 16, BLUR 1.0, 3 crops): 0.22%, 0.33%,
0.52%, 3.36%; and the kiosk's plain 64-bit pHash match (within 6 bits) alone refused 1.34%, 0.0%, 3.3%, 0.63%, so
dkit.edge.kiosk.board now refuses only on the shape.
"""

from __future__ import annotations

import cv2
import numpy as np

NEAR = 0.95  # default bound on similarity(): the same drawing at or above it (KioskConfig.dup_shape)
SIDE, GRID = 32, 32  # the canonical form is SIDE x SIDE; the shape compared is GRID x GRID of it, blurred
BLUR = 0.7  # Gaussian sigma (canonical pixels) before the reduction to GRID
CROPS = (0.03, 0.06, 0.09, 0.12, 0.15)  # the stored drawing is also kept cut by these shares of its box, each side
INK = 48  # grey levels darker than the background that count as a stroke when finding the bounding box
TRIM = 0.01  # share of the ink left outside the bounding box on each side
WORK = 512  # the longer side an image is first shrunk to (bounded work for a big photo)
DIMS = GRID * GRID
CHUNK = 256  # stored drawings compared at once (bounded memory however many the operator removed)


def shapes(rgb: np.ndarray) -> bytes:
    """What the store keeps for a drawing: its shape and the shapes of it cut by CROPS on each side, int8 bytes."""
    ink = _ink(rgb)
    (y0, y1), (x0, x1) = _box(ink)
    h, w = y1 - y0, x1 - x0
    cuts = [ink[y0:y1, x0:x1]]
    for share in CROPS:  # the image cut into the drawing's box, as a player's crop would; then boxed again
        dy, dx = round(share * h), round(share * w)
        cuts += [_ink_box(c) for c in (ink[:, x0 + dx:], ink[:, : x1 - dx], ink[y0 + dy:], ink[: y1 - dy])]
    rows = np.stack([_vector(_square(c)) for c in cuts])  # (21, DIMS)
    peak = np.abs(rows).max(axis=1, keepdims=True)  # (21, 1): each row scaled to fill int8 (compared by cosine)
    scaled = np.divide(rows * 127.0, peak, out=np.zeros_like(rows), where=peak > 0)
    return np.round(scaled).astype(np.int8).tobytes()


def variants(rgb: np.ndarray) -> np.ndarray:
    """(8, DIMS) float32 unit vectors: the shape of an image turned 0-270 degrees, and mirrored."""
    form = _square(_ink_box(_ink(rgb)))
    turned = [np.rot90(form, k) for k in range(4)]
    return np.stack([_vector(np.ascontiguousarray(f)) for f in turned + [np.fliplr(f) for f in turned]])


def similarity(mine: np.ndarray, stored: list[bytes]) -> float:
    """The highest cosine between any row of `mine` (variants()) and any stored shape (shapes()); 0.0 when none.
    Blobs of another size (an older GRID) are skipped; the stored shapes are compared CHUNK blobs at a time."""
    blobs = [b for b in stored if b and len(b) % DIMS == 0]
    best = 0.0
    for start in range(0, len(blobs), CHUNK):
        rows = np.frombuffer(b"".join(blobs[start : start + CHUNK]), np.int8).reshape(-1, DIMS).astype(np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (M, 1)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
        best = max(best, float((mine @ rows.T).max()))
    return best


def _ink(rgb: np.ndarray) -> np.ndarray:
    """(h, w) float32: how much darker than the background each pixel is (the image inverted first when its border
    is dark), the image shrunk to WORK on its longer side."""
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)) or 0 in rgb.shape[:2]:
        raise ValueError(f"expected a non-empty (H, W, 3) or (H, W) uint8 image, got {rgb.shape} {rgb.dtype}")
    gray = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = WORK / max(gray.shape)
    if scale < 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    background = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    if background < 128:  # light strokes on a dark ground: the inverted image
        gray, background = 255 - gray, 255.0 - background
    return np.clip(background - gray.astype(np.float32), 0, None)


def _box(ink: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """((y0, y1), (x0, x1)): the ink's bounding box (all of the image when there is none)."""
    strokes = ink > INK
    return _span(strokes.sum(axis=1)), _span(strokes.sum(axis=0))


def _ink_box(ink: np.ndarray) -> np.ndarray:
    """The ink cropped to its bounding box."""
    (y0, y1), (x0, x1) = _box(ink)
    return ink[y0:y1, x0:x1]


def _span(counts: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the rows (or columns) that hold all but TRIM of the ink on each side; all when no ink."""
    total = counts.sum()
    if total == 0:
        return 0, len(counts)
    cum = np.cumsum(counts)  # (n,)
    start = int(np.searchsorted(cum, TRIM * total, side="right"))
    stop = int(np.searchsorted(cum, (1 - TRIM) * total, side="left")) + 1
    return start, max(stop, start + 1)


def _square(crop: np.ndarray) -> np.ndarray:
    """(SIDE, SIDE) float32: `crop` padded square around its centre (with no ink) and resized."""
    h, w = crop.shape
    side = max(h, w, 1)
    square = np.zeros((side, side), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = crop
    return cv2.resize(square, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def _vector(form: np.ndarray) -> np.ndarray:
    """(DIMS,) float32 unit vector of a canonical form: blurred, reduced to GRID x GRID, centred (zeros if flat)."""
    small = cv2.resize(cv2.GaussianBlur(form, (0, 0), BLUR), (GRID, GRID), interpolation=cv2.INTER_AREA)
    v = small.astype(np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
