"""The prompt: GET /api/prompt (the current one and the bundle's suggestions), PUT /api/prompt (admin: set it,
embedded at once), `prompt_of`, which resolves a request's prompt field against the store, and `first_prompt`, a
new kiosk's prompt from the bundle's judge config."""

import logging
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from dkit.edge.judge import check_prompt
from dkit.edge.kiosk.admin import require_admin
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState, StateDep
from dkit.edge.manifest import JudgeConfig

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
    try:
        text = check_prompt(text)
    except ValueError as e:
        raise ApiError(400, str(e)) from e
    if not state.store.has_prompt(text):
        raise ApiError(404, f"unknown prompt {text!r}: the kiosk scores only prompts its operator has set")
    return text


@router.get("/api/prompt")
async def get_prompt(state: StateDep):
    prompt, suggestions = judge_prompts(state.judge.cfg)
    return {"prompt": state.store.current_prompt(),
            "suggestions": list(dict.fromkeys(([prompt] if prompt else []) + suggestions))}


@router.put("/api/prompt")
async def put_prompt(state: StateDep, body: PromptIn, request: Request):
    require_admin(state, request)
    try:
        text = check_prompt(body.prompt)
    except ValueError as e:
        raise ApiError(400, str(e)) from e
    await run_in_threadpool(state.judge.embed_prompt, text)  # embedded now, so the first player does not wait
    state.store.set_prompt(text)
    log.info("prompt set to %r", text)
    return {"prompt": text}
