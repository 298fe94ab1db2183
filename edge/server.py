"""`dkit serve`: the kiosk web app: a drawing canvas and camera page, the scoring API, the leaderboard.

    app = create_app("runs/quickdraw/bundle", db="kiosk/kiosk.sqlite", admin_token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (the OpenAPI schema is at /openapi.json; the interactive docs at /docs only with docs=True, `--docs`):
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

The routes live in dkit.edge.kiosk, one router per concern (pages, prompts, scoring, leaderboard, admin), with
the shared state (kiosk.state) and the JSON errors (kiosk.errors); this module only puts them together.
"""

import contextlib
from pathlib import Path

from fastapi import FastAPI

from dkit.edge.judge import Judge
from dkit.edge.kiosk import admin, leaderboard, pages, prompts, scoring
from dkit.edge.kiosk.errors import add_handlers
from dkit.edge.kiosk.headers import SecurityHeaders, page_csp
from dkit.edge.kiosk.state import MAX_UPLOAD, KioskState, attach, load_page
from dkit.edge.kiosk.uploads import BodyLimit, BodyTooLarge, too_large
from dkit.edge.runtime import Runtime
from dkit.edge.store import Store

# In this order, so /openapi.json lists the paths as it always has.
ROUTERS = (pages.router, prompts.router, scoring.router, leaderboard.router, admin.router)


def create_app(bundle: str | Path, *, db: str | Path, thumbs: str | Path | None = None,
               admin_token: str | None = None, max_upload: int = MAX_UPLOAD, threads: int | None = 1,
               providers: list[str] | None = None, docs: bool = False) -> FastAPI:
    runtime = Runtime.load(bundle, threads=threads, providers=providers)
    judge = Judge(runtime)
    db = Path(db)
    store = Store(db, thumbs if thumbs is not None else db.parent / "thumbs")
    if store.current_prompt() is None:
        store.set_prompt(prompts.first_prompt(judge.cfg, runtime.classes))
    state = KioskState(runtime, judge, store, load_page(), admin_token, max_upload)
    app = FastAPI(title="Distill Kit kiosk judge", version="1", lifespan=_lifespan,
                  description=f"Scores drawings against a prompt, offline, with the bundle {runtime.bundle.source}.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)
    attach(app, state)
    add_handlers(app)
    app.add_middleware(BodyLimit, max_upload=max_upload)  # announced sizes, and chunked bodies while read
    app.add_middleware(SecurityHeaders, csp=page_csp(state.page))
    app.add_exception_handler(BodyTooLarge, too_large)
    for router in ROUTERS:
        app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.kiosk.store.close()
    app.state.kiosk.runtime.close()
