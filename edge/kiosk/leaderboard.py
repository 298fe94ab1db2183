"""The leaderboard: GET /api/leaderboard?prompt=&limit= (the best stored submissions for a prompt, the current
one by default, with their thumbnail URLs). Scores are whole points, as the screen shows them (never the stored
one-decimal score: dkit.edge.kiosk.budget); the order is the stored score's."""

from fastapi import APIRouter

from dkit.edge.kiosk.budget import whole
from dkit.edge.kiosk.prompts import prompt_of
from dkit.edge.kiosk.state import StateDep

MAX_LIMIT = 100

router = APIRouter()


@router.get("/api/leaderboard")
async def leaderboard(state: StateDep, prompt: str | None = None, limit: int = 10):
    text = prompt_of(state, prompt)
    limit = max(1, min(int(limit), MAX_LIMIT))
    entries = [e | {"score": whole(e["score"]), "thumb_url": f"/thumbs/{e.pop('thumb')}"}
               for e in state.store.leaderboard(text, limit)]
    return {"prompt": text, "entries": entries}
