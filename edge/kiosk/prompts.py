"""The prompt: GET /api/prompt (the current one, the bundle's suggestions and the round, if one runs),
PUT /api/prompt (admin: set it, embedded at once; free play, no round), `prompt_of`, which resolves a request's
prompt field against the store, `first_prompt`, a new kiosk's prompt from the bundle's judge config, and
`round_doc`, the round as the pages show it."""

import logging
import time
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from dkit.edge.bundle.manifest import JudgeConfig
from dkit.edge.infer.judge import check_prompt
from dkit.edge.kiosk.auth import require_admin
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState, StateDep

log = logging.getLogger(__name__)

router = APIRouter()


class PromptIn(BaseModel):
    """PUT /api/prompt body."""

    prompt: str


def judge_prompts(cfg: JudgeConfig) -> tuple[str | None, list[str]]:
    """The bundle's judge prompt and its suggested prompts."""
    return cfg.prompt, list(cfg.prompts)


def first_prompt(cfg, classes: Sequence[str]) -> str:
    """A new kiosk's prompt: the bundle's judge prompt, else its first suggestion, else its first class."""
    prompt, suggestions = judge_prompts(cfg)
    return check_prompt(prompt or (suggestions or [None])[0] or classes[0])


def prompt_of(state: KioskState, text: str | None) -> str:
    """The prompt a request names (checked, and one the kiosk has used), or the current one if it names none."""
    if not text:
        return state.store.current_prompt()
    text = checked_prompt(text)
    if not state.store.has_prompt(text):
        raise ApiError(404, f"unknown prompt {text!r}: the kiosk scores only prompts its operator has set")
    return text


def round_doc(state: KioskState, now: float | None = None) -> dict | None:
    """The newest round as the pages show it: {prompt, ends_at, remaining (0 when over)}, or None (free play)."""
    last = state.store.last_round()
    if last is None:
        return None
    now = time.time() if now is None else now
    return {"prompt": last["prompt"], "started": last["started"], "ends_at": last["ends"],
            "remaining": max(0.0, round(last["ends"] - now, 1))}


@router.get("/api/prompt")
async def get_prompt(state: StateDep):
    prompt, suggestions = judge_prompts(state.judge.cfg)
    return {"prompt": state.store.current_prompt(),
            "suggestions": list(dict.fromkeys(([prompt] if prompt else []) + suggestions)),
            "round": round_doc(state), "now": time.time()}


@router.put("/api/prompt")
async def put_prompt(state: StateDep, body: PromptIn, request: Request):
    require_admin(state, request)
    text = checked_prompt(body.prompt)
    await set_prompt(state, text)
    state.store.clear_rounds()  # a prompt set without a round is free play
    return {"prompt": text}


def checked_prompt(text: str) -> str:
    """`text` as a prompt (dkit.edge.infer.judge.check_prompt), or ApiError(400) saying what is wrong with it."""
    try:
        return check_prompt(text)
    except ValueError as e:
        raise ApiError(400, str(e)) from e


async def set_prompt(state: KioskState, text: str) -> None:
    """Embed `text` now (so the first player does not wait) and make it the current prompt."""
    await run_in_threadpool(state.judge.embed_prompt, text)
    state.store.set_prompt(text)
    log.info("prompt set to %r", text)
