"""The board: a scored submission stored (or refused), the steps after scoring that POST /api/submissions takes:
the near-duplicate refusal (perceptual hashes within `dup_bits` of an entry on its prompt's board: 409), the
thumbnail, the retention rule and the disk quota (507 when the kept entries alone fill it)."""

import cv2
import numpy as np

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState
from dkit.edge.kiosk.uploads import decode
from dkit.edge.phash import distance, phash, to_signed
from dkit.edge.store import Entry, QuotaFull

THUMB_SIDE = 256


def score_and_store(state: KioskState, data: bytes, entry: Entry):
    """Decode, refuse near-duplicates, score, and store unless blocked. Returns (verdict, id or None). Blocking:
    run in a thread."""
    rgb = decode(data)
    digest = to_signed(phash(rgb))
    if is_near_duplicate(digest, state.store.hashes(entry.prompt), state.cfg.dup_bits):
        state.stats.count("duplicates")
        raise ApiError(409, "this image is (almost) the same as one already on the board: draw a new one")
    verdict = state.judge.score(rgb, entry.prompt)
    if verdict.verdict == "blocked":
        state.stats.count("blocked")
        return verdict, None
    thumb = thumbnail(rgb)
    cfg = state.cfg
    state.store.prune(keep_top=cfg.keep_top, keep_last=cfg.keep_last, max_bytes=state.max_disk, room=len(thumb))
    entry = Entry(entry.prompt, verdict.score, verdict.verdict, entry.name, entry.client, digest)
    try:
        sid = state.store.add(entry, thumb, max_bytes=state.max_disk)
    except QuotaFull as e:
        state.stats.count("quota_full")
        raise ApiError(507, f"{e}: the operator must make room") from e
    # the retention rule once more with the new entry counted: the prune above ran before it existed, so the board
    # would otherwise hold keep_top + keep_last + 1 entries
    state.store.prune(keep_top=cfg.keep_top, keep_last=cfg.keep_last)
    state.stats.count("accepted")
    return verdict, sid


def is_near_duplicate(digest: int, others: list[int], bits: int) -> bool:
    """Whether `digest` is within `bits` differing bits of any of `others` (hashes as the store keeps them)."""
    return any(distance(digest, h) <= bits for h in others)


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
