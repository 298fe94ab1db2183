"""The per-app state every kiosk route shares: the runtime, the judge, the store, the page, the admin token, the
upload limit, the kiosk's limits (config, token buckets, work queue, counters) and the name blocklist, held in one
small dataclass at `app.state.kiosk` and handed to routes by the `StateDep` dependency."""

import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from dkit.edge.bundle.kiosk_config import KioskConfig
from dkit.edge.infer.judge import Judge
from dkit.edge.infer.runtime import Runtime
from dkit.edge.kiosk.decoder import DecoderPool
from dkit.edge.kiosk.limits import Buckets, Stats, WorkQueue
from dkit.edge.kiosk.names import Blocklist
from dkit.edge.kiosk.store import KioskStore

MAX_UPLOAD = 4 << 20  # bytes of one uploaded image


@dataclass(frozen=True)
class KioskState:
    """What one kiosk app serves with; built once by `create_app`."""

    runtime: Runtime
    judge: Judge
    store: KioskStore
    page: str  # the kiosk page's HTML
    admin_token: str | None = None  # None or empty: the admin routes answer 403
    max_upload: int = MAX_UPLOAD  # bytes of one uploaded image
    cfg: KioskConfig = field(default_factory=KioskConfig)
    blocklist: Blocklist = field(default_factory=Blocklist)
    stats: Stats = field(default_factory=Stats)
    auth_failures: Buckets = field(default_factory=lambda: Buckets(rate=0.1, burst=10))  # wrong admin tokens
    score_buckets: Buckets = field(init=False)
    submit_buckets: Buckets = field(init=False)
    queue: WorkQueue = field(init=False)
    score_budgets: Buckets = field(init=False)  # /api/score per client and prompt (dkit.edge.kiosk.budget)
    board_lock: threading.Lock = field(default_factory=threading.Lock, compare=False)  # duplicate check + insert
    decoder: DecoderPool | None = None  # the upload decoder processes (create_app's); None: decoded in-process

    def __post_init__(self) -> None:
        cfg = self.cfg
        object.__setattr__(self, "score_buckets", Buckets(cfg.score_rate, cfg.score_burst))
        object.__setattr__(self, "submit_buckets", Buckets(cfg.submit_rate, cfg.submit_burst))
        object.__setattr__(self, "queue", WorkQueue(cfg.workers, cfg.queue, cfg.queue_per_client,
                                                      reserve=cfg.screen_reserve))
        budget_rate = cfg.score_budget / cfg.score_window if cfg.score_budget and cfg.score_window > 0 else 0.0
        object.__setattr__(self, "score_budgets", Buckets(budget_rate, max(1.0, float(cfg.score_budget))))

    @property
    def max_disk(self) -> int:
        """The disk quota in bytes."""
        return int(self.cfg.max_disk_mb * (1 << 20))


def load_page() -> str:
    """The kiosk page (edge/kiosk/static/kiosk.html, package data of dkit.edge.kiosk)."""
    return resources.files("dkit.edge.kiosk").joinpath("static/kiosk.html").read_text(encoding="utf-8")


def attach(app: FastAPI, state: KioskState) -> None:
    """Make `state` the app's kiosk state (runtime, judge and store stay at app.state too, as before)."""
    app.state.kiosk = state
    app.state.runtime, app.state.judge, app.state.store = state.runtime, state.judge, state.store


def kiosk_state(request: Request) -> KioskState:
    """The kiosk state of the app serving `request`."""
    return request.app.state.kiosk


async def _kiosk_state(request: Request) -> KioskState:  # async: FastAPI runs it on the loop, not in a thread
    return kiosk_state(request)


StateDep = Annotated[KioskState, Depends(_kiosk_state)]
