"""The operator's API (every route needs `Authorization: Bearer TOKEN`, see dkit.edge.kiosk.auth; the page that
uses it is GET /admin):

    GET    /api/admin/stats               counters (accepted, blocked, rate-limited, duplicates, ...), per minute, disk,
                                          the bundle (name; `untrained`: made from a random teacher, with a warning)
    GET    /api/admin/submissions         the moderation queue, newest first (?limit=&before=ID), hidden ones too
    PATCH  /api/admin/submissions/{id}    {"hidden": true|false}: take an entry off the public board, or back
    DELETE /api/submissions/{id}          delete one (remembered: the same drawing is refused on its prompt)
    POST   /api/admin/delete              {"name": ...} or {"client": ...}: delete all of a name or of a client,
                                          remembered like one delete, except the kiosk's own screen's: those are
                                          every player's drawings, so they are deleted and not remembered (the
                                          answer says so: {"deleted", "remembered": false, "note"})
    GET    /api/admin/removed             how many deleted drawings are remembered, the newest (id, prompt, time)
    DELETE /api/admin/removed[/{id}]      allow them again: one, or all (?prompt= for one prompt's); {"forgotten"}
    GET    /api/admin/thumbs/{name}       a submission's thumbnail, hidden ones too (the public /thumbs/ has only
                                          the board's)
    GET    /api/admin/bans                the banned clients; POST {"client", "reason"} bans (an IPv6 address by
                                          its /64; never the kiosk's own screen: 400); DELETE .../{client}, the
                                          client percent-encoded (2001:db8::/64 -> 2001%3Adb8%3A%3A%2F64)
    POST   /api/admin/round               {"prompt"?, "seconds"}: a round with a countdown; DELETE ends it now
    GET    /api/admin/export              ?prompt=: the leaderboard as a zip (leaderboard.csv + thumbs/)
"""

import csv
import io
import re
import tempfile
import zipfile

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from dkit.edge.bundle.manifest import UNTRAINED_WARNING
from dkit.edge.kiosk.auth import require_admin
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.guard import ban_key, banned
from dkit.edge.kiosk.limits import is_kiosk_screen
from dkit.edge.kiosk.prompts import checked_prompt, round_doc, set_prompt
from dkit.edge.kiosk.state import KioskState, StateDep

router = APIRouter()
MAX_ID = 2**63 - 1  # SQLite's largest rowid: a bigger id is a 400, not an overflow inside the database driver
MAX_ROUND = 24 * 3600  # seconds
CLIENT = Field(min_length=1, max_length=64)
THUMB_NAME = re.compile(r"[0-9a-f]{32}\.jpg")  # a stored thumbnail's name, as GET /thumbs/{name} takes it
KIOSK_SCREEN_DELETE = ("{client} is the kiosk's own event screen (every player at the kiosk draws from it): its "
                       "entries were deleted but not remembered, so players may draw the like again")
KIOSK_SCREEN_BAN = ("{client} is the kiosk's own event screen (every player at the kiosk draws from it), so it "
                    "cannot be banned: hide or delete its entries instead")


class HiddenIn(BaseModel):
    hidden: bool


class DeleteIn(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    client: str | None = Field(default=None, min_length=1, max_length=64)


class BanIn(BaseModel):
    client: str = CLIENT
    reason: str = Field(default="", max_length=200)


class RoundIn(BaseModel):
    prompt: str | None = None
    seconds: int = Field(ge=1, le=MAX_ROUND)


def entry_doc(row: dict) -> dict:
    """A stored row as the operator page shows it."""
    doc = {k: row[k] for k in ("id", "prompt", "name", "score", "verdict", "created", "client")}
    return doc | {"hidden": bool(row["hidden"]), "thumb_url": f"/api/admin/thumbs/{row['thumb']}",
                  "kiosk_screen": is_kiosk_screen(row["client"] or "")}


@router.get("/api/admin/stats")
async def stats(state: StateDep, request: Request):
    require_admin(state, request)
    disk = await run_in_threadpool(state.store.disk_bytes)
    return {"submissions": state.store.count(), "per_minute": state.stats.per_minute(),
            "counts": dict(state.stats.counts), "disk": {"bytes": disk, "quota": state.max_disk,
                                                         "files": state.store.count()},
            "prompt": state.store.current_prompt(), "round": round_doc(state), "queue": state.queue.admitted,
            "decoders": state.decoder.ready if state.decoder else None,
            "bundle": bundle_doc(state)}


def bundle_doc(state: KioskState) -> dict:
    """What the operator must know about the bundle being served (admin only: the public screen never shows it):
    its name and whether it was made from an untrained teacher, with the warning the operator page shows."""
    m = state.runtime.manifest
    return {"name": m.name, "source": str(state.runtime.bundle.source), "untrained": m.untrained,
            "warning": f"This bundle was {UNTRAINED_WARNING}." if m.untrained else None}


@router.get("/api/admin/submissions")
async def queue(state: StateDep, request: Request, limit: int = Query(50, ge=1, le=500),
                before: int | None = Query(None, ge=1, le=MAX_ID)):
    require_admin(state, request)
    return {"entries": [entry_doc(r) for r in state.store.recent(limit, before)]}


@router.patch("/api/admin/submissions/{sid}")
async def hide(state: StateDep, request: Request, body: HiddenIn, sid: int = Path(ge=1, le=MAX_ID)):
    require_admin(state, request)
    row = state.store.set_hidden(sid, body.hidden)
    if row is None:
        raise ApiError(404, f"no submission {sid}")
    return entry_doc(row)


@router.delete("/api/submissions/{sid}", status_code=204)
async def delete(state: StateDep, request: Request, sid: int = Path(ge=1, le=MAX_ID)):
    require_admin(state, request)
    if not state.store.delete(sid):
        raise ApiError(404, f"no submission {sid}")
    return Response(status_code=204)


@router.post("/api/admin/delete")
async def delete_many(state: StateDep, request: Request, body: DeleteIn):
    require_admin(state, request)
    if (body.name is None) == (body.client is None):
        raise ApiError(400, "send exactly one of 'name' or 'client'")
    screen = body.client is not None and is_kiosk_screen(body.client.strip())
    deleted = await run_in_threadpool(lambda: state.store.delete_by(name=body.name, client=body.client,
                                                                    remember=not screen))
    note = {"remembered": False, "note": KIOSK_SCREEN_DELETE.format(client=body.client.strip())} if screen else {}
    return {"deleted": deleted} | note


@router.get("/api/admin/removed")
async def removed(state: StateDep, request: Request, limit: int = Query(100, ge=1, le=1000)):
    require_admin(state, request)
    total, rows = state.store.removed(limit)
    return {"total": total, "removed": rows}


@router.delete("/api/admin/removed")
async def forget_all(state: StateDep, request: Request, prompt: str | None = Query(None, max_length=300)):
    require_admin(state, request)
    return {"forgotten": await run_in_threadpool(lambda: state.store.forget(prompt=prompt))}


@router.delete("/api/admin/removed/{rid}")
async def forget(state: StateDep, request: Request, rid: int = Path(ge=1, le=MAX_ID)):
    require_admin(state, request)
    if not state.store.forget(rid):
        raise ApiError(404, f"no remembered drawing {rid}")
    return {"forgotten": 1}


@router.get("/api/admin/bans")
async def bans(state: StateDep, request: Request):
    require_admin(state, request)
    return {"bans": state.store.bans()}


@router.post("/api/admin/bans")
async def ban(state: StateDep, request: Request, body: BanIn):
    require_admin(state, request)
    client = ban_key(body.client)
    if not client:
        raise ApiError(400, "name the client to ban (its address, as the moderation queue shows it)")
    if is_kiosk_screen(client):
        raise ApiError(400, KIOSK_SCREEN_BAN.format(client=client))
    return state.store.ban(client, body.reason)


@router.delete("/api/admin/bans/{client:path}", status_code=204)  # path: an IPv6 ban's key holds a "/" (…/64)
async def unban(state: StateDep, request: Request, client: str = Path(min_length=1, max_length=64)):
    require_admin(state, request)
    try:
        key = ban_key(client)
    except ApiError:
        key = client  # not a key a ban is made under today: only an exact match lifts it
    if not (state.store.unban(client) or key != client and state.store.unban(key)):
        covering = [b["client"] for b in state.store.bans() if banned([b["client"]], key)]  # e.g. a /64 holding it
        hint = f": it is refused by the ban of {', '.join(covering)}; lift that one" if covering else ""
        raise ApiError(404, f"{client!r} is not banned itself{hint}")
    return Response(status_code=204)


@router.get("/api/admin/thumbs/{name}", include_in_schema=False)
async def thumb(state: StateDep, request: Request, name: str):
    """A submission's thumbnail for the moderation queue, hidden entries' too (the public GET /thumbs/{name}
    serves only what the board shows)."""
    require_admin(state, request)
    path = state.store.thumb_file(name, hidden_too=True) if THUMB_NAME.fullmatch(name) else None
    if path is None or not path.is_file():
        raise ApiError(404, f"no thumbnail {name!r}")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


@router.post("/api/admin/round")
async def start_round(state: StateDep, request: Request, body: RoundIn):
    require_admin(state, request)
    text = checked_prompt(body.prompt) if body.prompt else state.store.current_prompt()
    if text != state.store.current_prompt():
        await set_prompt(state, text)
    state.store.start_round(text, body.seconds)
    return {"round": round_doc(state)}


@router.delete("/api/admin/round", status_code=204)
async def end_round(state: StateDep, request: Request):
    require_admin(state, request)
    if not state.store.end_round():
        raise ApiError(404, "no round is running")
    return Response(status_code=204)


@router.get("/api/admin/export")
async def export(state: StateDep, request: Request, prompt: str | None = None):
    require_admin(state, request)
    path = await run_in_threadpool(write_export, state, prompt)
    return FileResponse(path, media_type="application/zip", filename="leaderboard.zip",
                        background=BackgroundTask(path.unlink, missing_ok=True))


def write_export(state: KioskState, prompt: str | None):
    """A zip in a temporary file: leaderboard.csv (rank per prompt, name, score, verdict, hidden, client, time,
    thumbnail) and the thumbnails under thumbs/. Bounded by the disk quota, as the store is."""
    import pathlib

    rows = state.store.all_entries(prompt)
    text = io.StringIO()
    out = csv.writer(text)
    out.writerow(["prompt", "rank", "id", "name", "score", "verdict", "hidden", "client", "created", "thumbnail"])
    rank, last = 0, None
    for row in rows:
        rank = 1 if row["prompt"] != last else rank + 1
        last = row["prompt"]
        out.writerow([safe_cell(row["prompt"]), rank, row["id"], safe_cell(row["name"]), f"{row['score']:.2f}",
                      safe_cell(row["verdict"]), int(row["hidden"]), safe_cell(row["client"] or ""),
                      f"{row['created']:.3f}", f"thumbs/{row['thumb']}"])
    fd, name = tempfile.mkstemp(prefix="dkit-export-", suffix=".zip")
    path = pathlib.Path(name)
    with open(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("leaderboard.csv", text.getvalue())
        for row in rows:
            thumb = state.store.thumbs / row["thumb"]
            if thumb.is_file():
                z.write(thumb, f"thumbs/{row['thumb']}", compress_type=zipfile.ZIP_STORED)
    return path


# a spot where a spreadsheet would start a cell that is a formula: the cell's start, or any separator a spreadsheet
# may split on (comma, semicolon, tab, pipe: it guesses by locale), then blanks or quotes, then = + - @
_FORMULA_START = re.compile(r"(^|[,;\t|])(?=[\s\"']*[=+\-@])")
_LINE_BREAKS = re.compile(r"[\t\r\n\v\f]")


def safe_cell(text: str) -> str:
    """A text cell (name, prompt, client) that is no formula in any spreadsheet, however it splits the CSV (CSV
    injection): tabs and line breaks become spaces, and a ' goes before a formula's = + - @ at the cell's start
    and after every , ; | that a spreadsheet splitting on it would make a cell start ("a;=1+1" -> "a;'=1+1")."""
    return _FORMULA_START.sub(r"\1'", _LINE_BREAKS.sub(" ", text))
