"""`dkit serve`: the kiosk web app: a drawing canvas and camera page, the scoring API, the leaderboard.

    app = create_app("runs/quickdraw/bundle", db="kiosk/kiosk.sqlite", admin_token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (the OpenAPI schema is at /openapi.json, the interactive docs at /docs):
    GET    /                        the kiosk page (edge/static/kiosk.html)
    GET    /api/prompt              the current prompt and the bundle's suggestions
    PUT    /api/prompt              admin: set the prompt (any text: embedded on the device)
    POST   /api/submissions         multipart `image` (+ `name`, `prompt`): score, moderation verdict, rank
    POST   /api/score               multipart `image` (+ `prompt`): score only, nothing stored (camera mode)
    GET    /api/leaderboard         ?prompt=&limit=: the best submissions with thumbnail URLs
    DELETE /api/submissions/{id}    admin: remove a submission
    GET    /thumbs/{name}           a stored submission's thumbnail
    GET    /healthz                 liveness and counts
Admin routes need `Authorization: Bearer TOKEN` with the token given at start (there is no default: without
one they answer 403). Every error is JSON `{"error": "..."}` with a fitting status: 400 (not an image,
truncated, decompression bomb, missing field), 401/403 (admin), 404 (unknown prompt or id), 413 (upload
over the limit), 415 (wrong content type). A blocked image is answered (verdict "blocked") but never stored.
"""

import contextlib
import hmac
import logging
import re
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from dkit.edge.judge import Judge, check_prompt
from dkit.edge.runtime import Runtime
from dkit.edge.store import Store
from dkit.edge.upload import UploadError, decode_upload

log = logging.getLogger(__name__)

MAX_UPLOAD = 4 << 20  # bytes of one uploaded image
THUMB_SIDE = 256
MAX_NAME = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PromptIn(BaseModel):
    """PUT /api/prompt body."""

    prompt: str


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(bundle: str | Path, *, db: str | Path, thumbs: str | Path | None = None,
               admin_token: str | None = None, max_upload: int = MAX_UPLOAD, threads: int | None = 1,
               providers: list[str] | None = None) -> FastAPI:
    runtime = Runtime.load(bundle, threads=threads, providers=providers)
    judge = Judge(runtime)
    db = Path(db)
    store = Store(db, thumbs if thumbs is not None else db.parent / "thumbs")
    if store.current_prompt() is None:
        cfg = judge.cfg
        store.set_prompt(check_prompt(cfg.get("prompt") or (cfg.get("prompts") or [None])[0] or runtime.classes[0]))
    page = resources.files("edge").joinpath("static/kiosk.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        store.close()
        runtime.close()

    app = FastAPI(title="Distill Kit kiosk judge", version="1", lifespan=lifespan,
                  description=f"Scores drawings against a prompt, offline, with the bundle {runtime.bundle.source}.")
    app.state.runtime, app.state.judge, app.state.store = runtime, judge, store

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload + 65536:
            return JSONResponse({"error": f"the upload is {int(length):,} bytes; at most {max_upload:,} are "
                                          "accepted"}, status_code=413)
        return await call_next(request)

    def require_admin(request: Request) -> None:
        if not admin_token:
            raise ApiError(403, "admin routes are disabled: start `dkit serve` with --admin-token (or "
                                "DKIT_ADMIN_TOKEN) to enable them")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer TOKEN'")

    async def read_upload(request: Request) -> tuple[bytes, dict[str, str]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(415, f"send the image as multipart/form-data (field 'image'), not {ctype or 'nothing'}")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # python-multipart's own errors: malformed body, too many parts
            raise ApiError(400, f"malformed multipart body ({e})") from e
        image = form.get("image")
        if image is None or isinstance(image, str):
            raise ApiError(400, "the multipart body has no file field 'image'")
        part_type = (image.content_type or "").split(";")[0].strip()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise ApiError(415, f"the 'image' part is {part_type}, not an image")
        data = await image.read(max_upload + 1)
        if len(data) > max_upload:
            raise ApiError(413, f"the image is over {max_upload:,} bytes")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return data, fields

    def prompt_of(fields: dict[str, str]) -> str:
        text = fields.get("prompt")
        if not text:
            return store.current_prompt()
        try:
            text = check_prompt(text)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        if not store.has_prompt(text):
            raise ApiError(404, f"unknown prompt {text!r}: the kiosk's prompts are {store.prompts()}")
        return text

    def decode(data: bytes) -> np.ndarray:
        try:
            return decode_upload(data)
        except UploadError as e:
            raise ApiError(e.status, e.message) from e

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def kiosk():
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "submissions": store.count(), "prompt": store.current_prompt(),
                "provider": runtime.provider}

    @app.get("/api/prompt")
    async def get_prompt():
        cfg = judge.cfg
        return {"prompt": store.current_prompt(), "suggestions": list(dict.fromkeys(
            ([cfg["prompt"]] if cfg.get("prompt") else []) + list(cfg.get("prompts") or [])))}

    @app.put("/api/prompt")
    async def put_prompt(body: PromptIn, request: Request):
        require_admin(request)
        try:
            text = check_prompt(body.prompt)
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        await run_in_threadpool(judge.embed_prompt, text)  # embedded now, so the first player does not wait
        store.set_prompt(text)
        log.info("prompt set to %r", text)
        return {"prompt": text}

    @app.post("/api/score")
    async def score(request: Request):
        data, fields = await read_upload(request)
        prompt = prompt_of(fields)
        verdict = await run_in_threadpool(lambda: judge.score(decode(data), prompt))
        return verdict.as_dict()

    @app.post("/api/submissions")
    async def submit(request: Request):
        data, fields = await read_upload(request)
        prompt = prompt_of(fields)
        name = _CONTROL.sub("", fields.get("name") or "").strip()[:MAX_NAME] or "anonymous"

        def work():
            rgb = decode(data)
            verdict = judge.score(rgb, prompt)
            if verdict.verdict == "blocked":
                return verdict, None
            sid = store.add(prompt, verdict.score, verdict.verdict, name, thumbnail(rgb))
            return verdict, sid

        verdict, sid = await run_in_threadpool(work)
        doc = verdict.as_dict() | {"id": sid, "name": name, "stored": sid is not None}
        if sid is not None:
            doc["rank"], doc["total"] = store.rank(prompt, verdict.score, sid)
        return doc

    @app.get("/api/leaderboard")
    async def leaderboard(prompt: str | None = None, limit: int = 10):
        text = prompt_of({"prompt": prompt} if prompt else {})
        limit = max(1, min(int(limit), 100))
        entries = [e | {"thumb_url": f"/thumbs/{e.pop('thumb')}"} for e in store.leaderboard(text, limit)]
        return {"prompt": text, "entries": entries}

    @app.delete("/api/submissions/{sid}", status_code=204)
    async def delete(sid: int, request: Request):
        require_admin(request)
        if not store.delete(sid):
            raise ApiError(404, f"no submission {sid}")
        return Response(status_code=204)

    @app.get("/thumbs/{name}", include_in_schema=False)
    async def thumb(name: str):
        path = store.thumb_file(name) if re.fullmatch(r"[0-9a-f]{32}\.jpg", name) else None
        if path is None or not path.is_file():
            raise ApiError(404, f"no thumbnail {name!r}")
        return FileResponse(path, media_type="image/jpeg")

    return app


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
