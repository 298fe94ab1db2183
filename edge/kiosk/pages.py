"""What a browser fetches besides the API: GET / (the event screen), GET /admin (the operator page: public HTML
that holds no data; every call it makes needs the admin token), GET /static/{name} (the pages' scripts, style
sheets and icon: a fixed allow-list of package files, nothing else), GET /thumbs/{name} (a shown submission's
thumbnail: 404 for one the operator hid; the admin page has its own route) and GET /healthz (liveness and counts)."""

import functools
import hashlib
import re
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import StateDep

_THUMB_NAME = re.compile(r"[0-9a-f]{32}\.jpg")

# the only files GET /static/{name} serves (edge/kiosk/static/, package data of dkit.edge.kiosk), with their
# content types
STATIC = {
    "common.js": "text/javascript; charset=utf-8",
    "kiosk.js": "text/javascript; charset=utf-8",
    "kiosk.css": "text/css; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

router = APIRouter()


@functools.cache
def static_file(name: str) -> tuple[bytes, str]:
    """The bytes of edge/kiosk/static/`name` and their ETag (read once per process)."""
    data = resources.files("dkit.edge.kiosk").joinpath("static", name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def kiosk(state: StateDep):
    return HTMLResponse(state.page)


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
async def admin_page():
    return HTMLResponse(static_file("admin.html")[0], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str, request: Request):
    if name not in STATIC:  # an allow-list: no path, no other package file, no traversal
        raise ApiError(404, "no such file")
    data, etag = static_file(name)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}  # revalidated each load: a kiosk update shows at once
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=STATIC[name], headers=headers)


@router.get("/healthz")
async def healthz(state: StateDep):
    return {"ok": True, "submissions": state.store.count(), "prompt": state.store.current_prompt(),
            "provider": state.runtime.provider, "decoders": state.decoder.ready if state.decoder else None}


@router.get("/thumbs/{name}", include_in_schema=False)
async def thumb(state: StateDep, name: str):
    path = state.store.thumb_file(name) if _THUMB_NAME.fullmatch(name) else None
    if path is None or not path.is_file():
        raise ApiError(404, f"no thumbnail {name!r}")
    return FileResponse(path, media_type="image/jpeg")
