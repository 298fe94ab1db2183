"""Scoring uploads: POST /api/score (score only, nothing stored: camera mode) and POST /api/submissions (score,
moderation verdict, stored with a thumbnail unless blocked, rank)."""


import cv2
import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import KioskState, StateDep
from dkit.edge.kiosk.uploads import decode, read_upload
from dkit.edge.names import public_name

THUMB_SIDE = 256

router = APIRouter()


@router.post("/api/score")
async def score(state: StateDep, request: Request):
    data, fields = await read_upload(request, state.max_upload)
    prompt = prompt_of(state, fields.get("prompt"))
    verdict = await run_in_threadpool(lambda: state.judge.score(decode(data), prompt))
    return verdict.as_dict()


@router.post("/api/submissions")
async def submit(state: StateDep, request: Request):
    data, fields = await read_upload(request, state.max_upload)
    prompt = prompt_of(state, fields.get("prompt"))
    name = player_name(fields.get("name"))
    verdict, sid = await run_in_threadpool(score_and_store, state, data, prompt, name)
    doc = verdict.as_dict() | {"id": sid, "name": name, "stored": sid is not None}
    if sid is not None:
        doc["rank"], doc["total"] = state.store.rank(prompt, verdict.score, sid)
    return doc


def player_name(text: str | None) -> str:
    """The submitted name as the public screen may show it (dkit.edge.names)."""
    return public_name(text)


def score_and_store(state: KioskState, data: bytes, prompt: str, name: str):
    """Decode and score the upload; store it unless blocked. Returns (verdict, id or None). Blocking: run in a
    thread."""
    rgb = decode(data)
    verdict = state.judge.score(rgb, prompt)
    if verdict.verdict == "blocked":
        return verdict, None
    sid = state.store.add(prompt, verdict.score, verdict.verdict, name, thumbnail(rgb))
    return verdict, sid


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
