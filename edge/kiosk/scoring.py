"""Scoring uploads: POST /api/score (score only, nothing stored: camera mode) and POST /api/submissions (score,
moderation verdict, stored with a thumbnail unless blocked, rank).

Both are guarded in this order, cheapest first: banned (403) and over the client's rate (429, Retry-After) before
the upload is read; the upload's own checks (dkit.edge.kiosk.uploads); the work queue (503, Retry-After, when the
kiosk already has `workers` images scoring and `queue` waiting). A submission is also refused when its prompt's
round is over (409), when its name is on the blocklist (400) and when it is a near-duplicate of an entry already
on its prompt's board (409: the perceptual hashes differ in at most `dup_bits` of 64 bits), so resubmitting the
best image found by probing /api/score cannot fill the board. Storing it applies the retention rule and the disk
quota (507 when the kept entries alone fill it).
"""

import time

import cv2
import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.guard import admit, client_of
from dkit.edge.kiosk.limits import Busy
from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import KioskState, StateDep
from dkit.edge.kiosk.uploads import decode, read_upload
from dkit.edge.names import public_name
from dkit.edge.phash import distance, phash, to_signed
from dkit.edge.store import Entry, QuotaFull

THUMB_SIDE = 256
BUSY_RETRY = 2.0  # seconds a client is asked to wait when the work queue is full

router = APIRouter()


@router.post("/api/score")
async def score(state: StateDep, request: Request):
    admit(state, client_of(request), state.score_buckets)
    data, fields = await read_upload(request, state.max_upload)
    prompt = prompt_of(state, fields.get("prompt"))
    async with queued(state):
        verdict = await run_in_threadpool(lambda: state.judge.score(decode(data), prompt))
    state.stats.count("scored")
    return verdict.as_dict()


@router.post("/api/submissions")
async def submit(state: StateDep, request: Request):
    client = client_of(request)
    admit(state, client, state.submit_buckets)
    data, fields = await read_upload(request, state.max_upload)
    prompt = prompt_of(state, fields.get("prompt"))
    check_round(state, prompt)
    name = player_name(state, fields.get("name"))
    async with queued(state):
        verdict, sid = await run_in_threadpool(score_and_store, state, data, Entry(prompt, 0.0, "", name, client))
    doc = verdict.as_dict() | {"id": sid, "name": name, "stored": sid is not None}
    if sid is not None:
        doc["rank"], doc["total"] = state.store.rank(prompt, verdict.score, sid)
    return doc


class queued:
    """`async with queued(state):` a slot of the work queue, or ApiError(503) with Retry-After when it is full."""

    def __init__(self, state: KioskState):
        self.state, self.slot = state, state.queue.slot()

    async def __aenter__(self):
        try:
            return await self.slot.__aenter__()
        except Busy as e:
            self.state.stats.count("busy")
            raise ApiError(503, f"{e}: try again in a moment", retry_after=BUSY_RETRY) from e

    async def __aexit__(self, *exc):
        return await self.slot.__aexit__(*exc)


def check_round(state: KioskState, prompt: str) -> None:
    """409 when the newest round was for `prompt` and it is over (the operator starts the next one)."""
    last = state.store.last_round()
    if last is not None and last["prompt"] == prompt and last["ends"] <= time.time():
        state.stats.count("round_over")
        raise ApiError(409, "this round is over: wait for the next one")


def player_name(state: KioskState, text: str | None) -> str:
    """The submitted name as the public screen may show it (dkit.edge.names); 400 when it is on the blocklist."""
    name = public_name(text)
    if state.blocklist.match(name):
        state.stats.count("name_refused")
        raise ApiError(400, "that name is not allowed here: choose another one")
    return name


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
