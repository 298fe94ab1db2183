"""The leaderboard: GET /api/leaderboard?prompt=&limit= (the best stored submissions for a prompt, the current
one by default, with their thumbnail URLs)."""

from fastapi import APIRouter

from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import StateDep

MAX_LIMIT = 100

router = APIRouter()


@router.get("/api/leaderboard")
async def leaderboard(state: StateDep, prompt: str | None = None, limit: int = 10):
    text = prompt_of(state, prompt)
    limit = max(1, min(int(limit), MAX_LIMIT))
    entries = [e | {"thumb_url": f"/thumbs/{e.pop('thumb')}"} for e in state.store.leaderboard(text, limit)]
    return {"prompt": text, "entries": entries}
