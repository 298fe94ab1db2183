"""What a browser fetches besides the API: GET / (the kiosk page), GET /thumbs/{name} (a stored submission's
thumbnail) and GET /healthz (liveness and counts)."""

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import StateDep

_THUMB_NAME = re.compile(r"[0-9a-f]{32}\.jpg")

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def kiosk(state: StateDep):
    return HTMLResponse(state.page)


@router.get("/healthz")
async def healthz(state: StateDep):
    return {"ok": True, "submissions": state.store.count(), "prompt": state.store.current_prompt(),
            "provider": state.runtime.provider}


@router.get("/thumbs/{name}", include_in_schema=False)
async def thumb(state: StateDep, name: str):
    path = state.store.thumb_file(name) if _THUMB_NAME.fullmatch(name) else None
    if path is None or not path.is_file():
        raise ApiError(404, f"no thumbnail {name!r}")
    return FileResponse(path, media_type="image/jpeg")
