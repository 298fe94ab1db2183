"""Scoring uploads: POST /api/score (score only, nothing stored: camera mode) and POST /api/submissions (score,
moderation verdict, stored with a thumbnail unless blocked, rank).

Both are guarded in this order, cheapest first, and everything up to the work queue is decided before the upload's
body is read: banned (403) and over the client's rate (429, Retry-After); a place in the work queue (503 with
Retry-After when the kiosk already has `workers` images scoring and `queue` waiting, of which `screen_reserve`
places only the kiosk's own screen may take; 429 with Retry-After when this client already holds `queue_per_client`
of those places). Such a refusal is answered with `Connection: close` and the body is never read, so at most
workers + queue uploads are in memory at once, however many arrive. Then the upload is read with its own checks
(dkit.edge.kiosk.uploads), at `min_body_rate` or faster, counted on the bytes received (408 otherwise, BodyLimit: a
trickled body cannot hold a place for long), the client waits for a running slot (round-robin by client, see
dkit.edge.kiosk.limits.WorkQueue), the image is decoded once in a decoder process under the time budget
`decode_timeout` (dkit.edge.kiosk.decoder: 400 past it), and scored.

/api/score is also charged to the client's scoring budget for its prompt (429, dkit.edge.kiosk.budget) and answers
the coarse score the screen shows, not the raw cosine. A submission is also refused when its prompt's round is
over (409), when its name is on the blocklist (400), when the operator took the same drawing off the board and when
it is a near-duplicate of an entry on its prompt's board (409, dkit.edge.kiosk.board). Storing it applies the
retention rule and the disk quota (507 when the kept entries alone fill it).
"""

import contextlib
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from dkit.edge.kiosk.board import score_and_store
from dkit.edge.kiosk.budget import charge, public_score, public_submission
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.guard import admit, client_of
from dkit.edge.kiosk.limits import Buckets, Busy, ClientBusy, Place, is_kiosk_screen, retry_after
from dkit.edge.kiosk.names import public_name
from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import KioskState, StateDep
from dkit.edge.kiosk.store import Entry
from dkit.edge.kiosk.uploads import decode_pooled, read_upload

BUSY_RETRY = 2.0  # seconds a client is asked to wait when the work queue (or its share of it) is full

router = APIRouter()


@router.post("/api/score")
async def score(state: StateDep, request: Request):
    client = client_of(request)
    async with contextlib.AsyncExitStack() as stack:
        try:
            place = await take_place(stack, state, client, state.score_buckets)
        except ApiError as e:
            return unread(e)
        data, fields = await read_upload(request, state.max_upload)
        prompt = prompt_of(state, fields.get("prompt"))
        charge(state, client, prompt)
        async with place.running():
            rgb = await decode_pooled(state, data)
            del data
            verdict = await run_in_threadpool(state.judge.score, rgb, prompt)
    state.stats.count("scored")
    return public_score(state, verdict)


@router.post("/api/submissions")
async def submit(state: StateDep, request: Request):
    client = client_of(request)
    async with contextlib.AsyncExitStack() as stack:
        try:
            place = await take_place(stack, state, client, state.submit_buckets)
        except ApiError as e:
            return unread(e)
        data, fields = await read_upload(request, state.max_upload)
        prompt = prompt_of(state, fields.get("prompt"))
        check_round(state, prompt)
        name = player_name(state, fields.get("name"))
        async with place.running():
            rgb = await decode_pooled(state, data)
            del data
            verdict, sid = await run_in_threadpool(score_and_store, state, rgb, Entry(prompt, 0.0, "", name, client))
    doc = public_submission(verdict) | {"id": sid, "name": name, "stored": sid is not None}
    if sid is not None:
        doc["rank"], doc["total"] = state.store.rank(prompt, verdict.score, sid)
    return doc


async def take_place(stack: contextlib.AsyncExitStack, state: KioskState, client: str, buckets: Buckets) -> Place:
    """Admit `client` (ban, rate: guard.admit) and take its place in the work queue, held until `stack` closes;
    ApiError 403/429 (admit), 503 (the queue is full) or 429 (the client holds its share), with Retry-After."""
    admit(state, client, buckets)
    try:
        return await stack.enter_async_context(state.queue.place(client, screen=is_kiosk_screen(client)))
    except Busy as e:
        state.stats.count("busy")
        raise ApiError(503, f"{e}: try again in a moment", retry_after=BUSY_RETRY) from e
    except ClientBusy as e:
        state.stats.count("client_busy")
        raise ApiError(429, f"{e}: wait for an answer, then send the next one", retry_after=BUSY_RETRY) from e


def unread(e: ApiError) -> JSONResponse:
    """The answer to an upload refused before its body was read: JSON, Retry-After where there is one, and
    `Connection: close`, since the body is left unread."""
    doc, headers = {"error": e.message}, {"Connection": "close"}
    if e.retry_after is not None:
        wait = retry_after(e.retry_after)
        doc["retry_after"], headers["Retry-After"] = int(wait), wait
    return JSONResponse(doc, status_code=e.status, headers=headers)


def check_round(state: KioskState, prompt: str) -> None:
    """409 when the newest round was for `prompt` and it is over (the operator starts the next one)."""
    last = state.store.last_round()
    if last is not None and last["prompt"] == prompt and last["ends"] <= time.time():
        state.stats.count("round_over")
        raise ApiError(409, "this round is over: wait for the next one")


def player_name(state: KioskState, text: str | None) -> str:
    """The submitted name as the public screen may show it (dkit.edge.kiosk.names); 400 when it is on the blocklist."""
    name = public_name(text)
    if state.blocklist.match(name):
        state.stats.count("name_refused")
        raise ApiError(400, "that name is not allowed here: choose another one")
    return name
