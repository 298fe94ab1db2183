"""The board: a scored submission stored (or refused), the steps after decoding that POST /api/submissions takes:

- refused (409) when the operator took the same drawing off this prompt's board (hidden, or deleted with `delete`
  / `delete_by` and remembered; not retention pruning), from any address; another prompt's removals do not count;
- refused (409) when it is a near-duplicate of an entry on its prompt's board: a shape (dkit.edge.kiosk.dupes) with
  cosine >= `dup_shape` to one of the prompt's best `keep_top` (a flipped, turned, cropped, moved, shrunk or
  inverted copy), or to any shown entry whose perceptual hash is within `dup_bits` (a re-encoded copy of one
  further down). Every refusal needs the shape: a pHash alone refused 1-3% of honest same-class doodles.
- scored; the thumbnail; stored under the retention rule and the disk quota (507 when the kept entries alone fill
  it, and when the disk itself is full or read-only).

Both checks run before scoring (a copy costs no model time) and again under `state.board_lock` together with the
insert, so the same image sent many times at once is stored once. `dup_bits` -1 turns every check off.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dkit.edge.images.phash import distance, phash, to_signed
from dkit.edge.kiosk import dupes
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState
from dkit.edge.kiosk.store import Entry, Prints, QuotaFull, StorageFull

THUMB_SIDE = 256
TAKEN_OFF = "the operator took this drawing off the board: draw a new one"
SAME = "this image is (almost) the same as one already on the board: draw a new one"


@dataclass(frozen=True)
class Drawing:
    """One upload's fingerprints: its perceptual hash (signed), its stored shapes and its 8 turned shapes."""

    phash: int
    shapes: bytes
    variants: np.ndarray  # (8, dupes.DIMS) float32

    @classmethod
    def of(cls, rgb: np.ndarray) -> Drawing:
        return cls(to_signed(phash(rgb)), dupes.shapes(rgb), dupes.variants(rgb))

    def matches(self, prints: Prints, bits: int, cosine: float) -> bool:
        """Whether a drawing of `prints` has this one's shape (cosine >= `cosine`): one of the first `prints.top`,
        or one whose hash is within `bits` of this one's (a row stored without a shape: the hash alone)."""
        near = [h is not None and distance(self.phash, h) <= bits for h in prints.hashes]
        if any(n and s is None for n, s in zip(near, prints.shapes, strict=True)):
            return True
        shapes = [s for i, (n, s) in enumerate(zip(near, prints.shapes, strict=True))
                  if s is not None and (i < prints.top or n)]
        return dupes.similarity(self.variants, shapes) >= cosine


def score_and_store(state: KioskState, rgb: np.ndarray, entry: Entry):
    """Refuse taken-off and near-duplicate drawings, score, and store unless blocked; `rgb` is the decoded (H, W, 3)
    uint8 upload. Returns (verdict, id or None); raises ApiError (409, 507). Blocking: run in a thread."""
    drawing = Drawing.of(rgb)
    check(state, drawing, entry.prompt)  # early: a copy costs no scoring
    verdict = state.judge.score(rgb, entry.prompt)
    if verdict.verdict == "blocked":
        state.stats.count("blocked")
        return verdict, None
    thumb = thumbnail(rgb)
    entry = Entry(entry.prompt, verdict.score, verdict.verdict, entry.name, entry.client, drawing.phash,
                  drawing.shapes)
    try:
        with state.board_lock:  # the check and the insert together: concurrent copies are stored once
            check(state, drawing, entry.prompt)
            sid = store(state, entry, thumb)
    except StorageFull as e:
        state.stats.count("storage_full")
        raise ApiError(507, f"{e}: the operator must make room") from e
    state.stats.count("accepted")
    return verdict, sid


def check(state: KioskState, drawing: Drawing, prompt: str) -> None:
    """409 when the operator took this drawing off the board, or when it is a near-duplicate on `prompt`'s board."""
    cfg = state.cfg
    if cfg.dup_bits < 0:
        return
    if drawing.matches(state.store.refused_prints(prompt), cfg.dup_bits, cfg.dup_shape):
        state.stats.count("taken_off")
        raise ApiError(409, TAKEN_OFF)
    board = state.store.board_prints(prompt, cfg.keep_top, lambda h: distance(drawing.phash, h) <= cfg.dup_bits)
    if drawing.matches(board, cfg.dup_bits, cfg.dup_shape):
        state.stats.count("duplicates")
        raise ApiError(409, SAME)


def store(state: KioskState, entry: Entry, thumb: bytes) -> int:
    """Prune, store under the quota (507 when the kept entries fill it), prune again; the new id."""
    cfg = state.cfg
    state.store.prune(keep_top=cfg.keep_top, keep_last=cfg.keep_last, max_bytes=state.max_disk, room=len(thumb))
    try:
        sid = state.store.add(entry, thumb, max_bytes=state.max_disk)
    except QuotaFull as e:
        state.stats.count("quota_full")
        raise ApiError(507, f"{e}: the operator must make room") from e
    # the retention rule once more with the new entry counted: the prune above ran before it existed, so the board
    # would otherwise hold keep_top + keep_last + 1 entries
    state.store.prune(keep_top=cfg.keep_top, keep_last=cfg.keep_last)
    return sid


def thumbnail(rgb: np.ndarray) -> bytes:
    """JPEG bytes of the image shrunk to THUMB_SIDE on its longer side."""
    h, w = rgb.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ApiError(500, "could not encode the thumbnail")
    return buf.tobytes()

