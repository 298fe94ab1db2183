"""`dkit serve`: the kiosk web app: the event screen (a drawing canvas and camera page), the scoring API, the
leaderboard, the operator page and its API, every resource bounded for a hostile public.

    from dkit.edge.kiosk.serving import serve
    from dkit.edge.kiosk.server import create_app

    app = create_app("runs/quickdraw/bundle", db="kiosk/kiosk.sqlite", admin_token="s3cret",
                     settings=["submit_rate=0.5"])
    dkit.edge.kiosk.serving.serve(app, host="0.0.0.0", port=8000, cfg=app.state.kiosk.cfg)

Routes (the OpenAPI schema is at /openapi.json; the interactive docs at /docs only with docs=True, `--docs`):
    GET    /                        the event screen (edge/kiosk/static/kiosk.html)
    GET    /admin                   the operator page (it holds no data: every call it makes needs the token)
    GET    /static/{name}           the pages' scripts, styles and icon (a fixed allow-list; nothing inline)
    GET    /api/prompt              the current prompt, the bundle's suggestions and the round, if one runs
    PUT    /api/prompt              admin: set the prompt (any text: embedded on the device); free play
    POST   /api/submissions         multipart `image` (+ `name`, `prompt`): score, moderation verdict, rank
    POST   /api/score               multipart `image` (+ `prompt`): score only, nothing stored (camera mode)
    GET    /api/leaderboard         ?prompt=&limit=: the best shown submissions with thumbnail URLs
    *      /api/admin/...           admin: stats, moderation queue, hide, bulk delete, bans, rounds, export
    DELETE /api/submissions/{id}    admin: remove a submission
    GET    /thumbs/{name}           a stored submission's thumbnail
    GET    /healthz                 liveness and counts
Admin routes need `Authorization: Bearer TOKEN` with the token given at start (there is no default: without
one they answer 403). Every error is JSON `{"error": "..."}` with a fitting status: 400 (not an image,
truncated, decompression bomb, missing field, a refused name), 401/403 (admin; 403 also for a banned client),
404 (unknown prompt or id), 408 (a body too slow), 409 (a near-duplicate, a round that is over), 413 (upload
over the limit), 415 (wrong content type), 429 (over the client's rate, with Retry-After), 503 (the work queue
is full, with Retry-After), 507 (the storage quota is full), 500 (unexpected; logged). A blocked image is
answered (verdict "blocked") but never stored. The limits are KioskConfig's (dkit.edge.bundle.kiosk_config): the kit's
`judge.kiosk:` carried in the bundle, overridden by `dkit serve --set KEY=VALUE`.

The routes live in dkit.edge.kiosk, one router per concern (pages, prompts, scoring, leaderboard, admin), with
the shared state (kiosk.state), the limits (config, limits, guard, auth), the JSON errors (kiosk.errors) and the
server with its connection limits (kiosk.serving); this module only puts them together.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from dkit.edge.bundle.kiosk_config import KioskConfig
from dkit.edge.infer.judge import Judge
from dkit.edge.infer.runtime import Runtime
from dkit.edge.kiosk import admin, leaderboard, pages, prompts, scoring
from dkit.edge.kiosk.bodies import BodyLimit, BodyTimeout, BodyTooLarge, too_large, too_slow
from dkit.edge.kiosk.decoder import DecoderPool
from dkit.edge.kiosk.errors import add_handlers
from dkit.edge.kiosk.headers import SecurityHeaders, page_csp
from dkit.edge.kiosk.names import Blocklist
from dkit.edge.kiosk.state import MAX_UPLOAD, KioskState, attach, load_page
from dkit.edge.kiosk.store import KioskStore

log = logging.getLogger(__name__)

# In this order, so /openapi.json lists the paths as it always has.
ROUTERS = (pages.router, prompts.router, scoring.router, leaderboard.router, admin.router)


def create_app(bundle: str | Path, *, db: str | Path, thumbs: str | Path | None = None,
               admin_token: str | None = None, max_upload: int = MAX_UPLOAD, threads: int | None = 1,
               providers: list[str] | None = None, docs: bool = False, settings: Sequence[str] = ()) -> FastAPI:
    """The kiosk app for `bundle`. `settings`: `KEY=VALUE` overrides of the bundle's kiosk limits (KioskConfig)."""
    runtime = Runtime.load(bundle, threads=threads, providers=providers)
    judge = Judge(runtime)
    cfg = kiosk_config(runtime, settings)
    db = Path(db)
    store = KioskStore(db, thumbs if thumbs is not None else db.parent / "thumbs")
    if store.swept:
        log.warning("removed %d orphan thumbnail(s) left by an interrupted write", store.swept)
    if store.current_prompt() is None:
        store.set_prompt(prompts.first_prompt(judge.cfg, runtime.classes))
    decoder = DecoderPool(cfg.workers, cfg.decode_timeout, {"max_scans": cfg.max_scans})  # started by _lifespan
    state = KioskState(runtime, judge, store, load_page(), admin_token, max_upload, cfg,
                       blocklist(cfg, runtime.bundle.source), decoder=decoder)
    app = FastAPI(title="Distill Kit kiosk judge", version="1", lifespan=_lifespan,
                  description=f"Scores drawings against a prompt, offline, with the bundle {runtime.bundle.source}.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)
    attach(app, state)
    add_handlers(app)
    # announced sizes, chunked bodies while read, and the body deadline
    app.add_middleware(BodyLimit, max_upload=max_upload, body_timeout=cfg.body_timeout, min_rate=cfg.min_body_rate)
    app.add_middleware(SecurityHeaders, csp=page_csp(state.page))
    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_exception_handler(BodyTimeout, too_slow)
    for router in ROUTERS:
        app.include_router(router)
    return app


def kiosk_config(runtime: Runtime, settings: Sequence[str] = ()) -> KioskConfig:
    """The bundle's kiosk limits (its manifest's judge.kiosk) with `KEY=VALUE` overrides."""
    judge = runtime.manifest.judge
    return KioskConfig.from_dict(judge.kiosk if judge is not None else {}).with_overrides(settings)


def blocklist(cfg: KioskConfig, bundle: Path) -> Blocklist:
    """The words refused in names: the bundle's, and those of `cfg.blocklist` (a file; relative paths are tried
    beside the bundle, then from the current folder)."""
    words = list(cfg.blocked_names)
    if cfg.blocklist:
        path = Path(cfg.blocklist)
        if not path.is_absolute() and (bundle.parent / path).is_file():
            path = bundle.parent / path
        words += Blocklist.load(path).words
    return Blocklist(tuple(dict.fromkeys(words)))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    decoder = app.state.kiosk.decoder
    if decoder is not None:
        # the decoder processes, ready before the first request; DecoderUnavailable (none could start) fails the
        # startup: uvicorn logs it and stops
        await asyncio.to_thread(decoder.start)
    yield
    if decoder is not None:
        await asyncio.to_thread(decoder.close)  # joins processes (seconds): not on the event loop
    app.state.kiosk.store.close()
    app.state.kiosk.runtime.close()
