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

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from dkit.edge.kiosk.board import score_and_store
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.guard import admit, client_of
from dkit.edge.kiosk.limits import Busy
from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import KioskState, StateDep
from dkit.edge.kiosk.uploads import decode, read_upload
from dkit.edge.names import public_name
from dkit.edge.store import Entry

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
