"""The kiosk's storage: submissions, prompts, rounds and bans in SQLite (WAL), thumbnails on disk, nothing
acknowledged ever lost, and the disk use bounded.

    from dkit.edge.kiosk.store import KioskStore, Entry

    store = KioskStore("kiosk.sqlite", thumbs="thumbs/")
    sid = store.add(Entry(prompt, score, verdict, name, client, phash), jpeg_bytes)   # durable when it returns
    store.leaderboard(prompt, limit=10), store.rank(prompt, score, sid), store.delete(sid)
    store.prune(keep_top=100, keep_last=1000, max_bytes=512 << 20)                    # retention and the quota
    store.board_prints(prompt, top=100), store.refused_prints(prompt)                  # near-duplicate checks
    store.removed(), store.forget(rid), store.forget()                                  # allow removed ones again

Durability: the thumbnail (a random name) is written to a temporary file, fsynced, renamed into place and its
folder fsynced (so the rename itself survives a power cut); then the row naming it is inserted and committed with
`synchronous=FULL` in WAL mode, so once `add` returns (and the server answers), a crash or `kill -9` cannot lose
it. A crash between the two leaves at most an orphan thumbnail, which nothing lists or serves, and which
`sweep_orphans` (run when the store opens) deletes. One connection guarded by a lock serves every thread.

Retention: a submission stays while it is among the best `keep_top` of its prompt or the newest `keep_last`
overall; past the byte quota the oldest of the others go first, and if the kept ones alone fill it, `add` raises
QuotaFull (answered 507) instead of growing the disk.

Operator removals are remembered: `delete` and `delete_by` keep the fingerprints (perceptual hash, shape) and the
prompt of what they delete in `removed` (the newest REMOVED_CAP rows: older ones are forgotten), so a drawing the
operator took off the board can be refused when it comes back on that prompt (`refused_prints`); `delete_by(...,
remember=False)` deletes without remembering (the kiosk's own screen: every player's drawings), `forget` allows a
remembered drawing (or all of them) again, and retention pruning forgets.

A full or read-only disk: every write turns ENOSPC, EDQUOT, EROFS, EACCES and SQLite's "database or disk is full" /
"readonly database" / disk I/O errors into StorageFull (answered 507). A small reserve file (`RESERVE` bytes, in
the database's folder) is kept so that the deletes that make room work on a full disk: when one fails for want of
space the reserve is released, the delete is retried, and the reserve is made again once there is room.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dkit.edge.bundle.files import TMP_SUFFIX, atomic_write

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    text TEXT PRIMARY KEY,
    created REAL NOT NULL,
    current INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL REFERENCES prompts(text),
    name TEXT NOT NULL,
    score REAL NOT NULL,
    verdict TEXT NOT NULL,
    thumb TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS by_prompt_score ON submissions (prompt, score DESC, id);
CREATE TABLE IF NOT EXISTS bans (
    client TEXT PRIMARY KEY,
    created REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS removed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,
    phash INTEGER,
    shape BLOB,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,
    started REAL NOT NULL,
    ends REAL NOT NULL
);
"""
# columns added after the first release: (name, declaration); an older database gains them when opened
ADDED = (("client", "TEXT NOT NULL DEFAULT ''"), ("phash", "INTEGER"), ("bytes", "INTEGER NOT NULL DEFAULT 0"),
         ("hidden", "INTEGER NOT NULL DEFAULT 0"), ("shape", "BLOB"))
WAL_LIMIT = 1 << 20  # bytes the write-ahead log may keep between checkpoints
PUBLIC = "id, name, score, verdict, thumb, created"
REMOVED_CAP = 2_000  # remembered operator removals kept (the newest): each holds ~21.5 KB of shapes (43 MB in all)
FULL = "id, prompt, name, score, verdict, thumb, created, client, hidden"
RESERVE = 1 << 20  # bytes of the reserve file that lets deletes through on a full disk
RESERVE_NAME = ".dkit-reserve"
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)  # a write the disk refuses
SQLITE_NO_ROOM = (8, 10, 13)  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL (primary codes)


class QuotaFull(Exception):
    """The kept submissions alone fill the disk quota: nothing more can be stored."""


class StorageFull(Exception):
    """The disk under the kiosk's data is full or read-only: the write was not made (answered 507)."""


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn a disk that is full or read-only (OSError or SQLite error) into StorageFull naming `what` failed."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        raise StorageFull(f"could not {what}: the kiosk's disk is full or read-only ({os.strerror(e.errno)})") from e
    except sqlite3.DatabaseError as e:
        code = getattr(e, "sqlite_errorcode", None)
        text = str(e).lower()
        if (code is None or code & 0xFF not in SQLITE_NO_ROOM) and not any(
                k in text for k in ("disk is full", "readonly database", "disk i/o error")):
            raise
        raise StorageFull(f"could not {what}: the kiosk's disk is full or read-only ({e})") from e


@dataclass(frozen=True)
class Entry:
    """One scored submission to store (its thumbnail bytes go beside it)."""

    prompt: str
    score: float
    verdict: str
    name: str
    client: str = ""
    phash: int | None = None  # signed 64-bit perceptual hash (dkit.edge.images.phash), for near-duplicate refusal
    shape: bytes | None = None  # the drawing's shapes (dkit.edge.kiosk.dupes.shapes): turned, cut or moved copies


@dataclass(frozen=True)
class Prints:
    """Fingerprints of stored drawings, for the near-duplicate checks: one perceptual hash and one shape blob per
    drawing (parallel lists, None where a row has none), best first; the first `top` are the ranked board, whose
    shapes are all compared (the others only where their hash is near: dkit.edge.kiosk.board)."""

    hashes: list[int | None]
    shapes: list[bytes | None]
    top: int


class KioskStore:
    """The kiosk's submissions, prompts, rounds, bans and thumbnails (the module docstring says how it stays
    durable and bounded); not the model store (dkit.core.store.ModelStore)."""

    def __init__(self, db: str | os.PathLike, thumbs: str | os.PathLike):
        self.db_path = Path(db)
        self.thumbs = Path(thumbs)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.thumbs.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")  # the WAL shrinks back after a checkpoint
            self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT // 4096}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
            self._migrate()
        self.swept = self.sweep_orphans()
        self.reserve = self.db_path.parent / RESERVE_NAME
        self.make_reserve()

    def _migrate(self) -> None:
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(submissions)")}
        for name, decl in ADDED:
            if name not in have:
                self.conn.execute(f"ALTER TABLE submissions ADD COLUMN {name} {decl}")
                if name == "bytes":  # an older database: the sizes of its thumbnails, once
                    for row in self.conn.execute("SELECT id, thumb FROM submissions").fetchall():
                        path = self.thumbs / row["thumb"]
                        size = path.stat().st_size if path.is_file() else 0
                        self.conn.execute("UPDATE submissions SET bytes = ? WHERE id = ?", (size, row["id"]))
        self.conn.execute("CREATE INDEX IF NOT EXISTS by_client ON submissions (client)")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def sweep_orphans(self) -> int:
        """Delete thumbnails no row names (a crash between the file and the row) and stale temporary files;
        returns how many went."""
        with self.lock:
            known = {r[0] for r in self.conn.execute("SELECT thumb FROM submissions")}
        gone = 0
        for path in self.thumbs.iterdir():
            stale = path.suffix == ".part" or path.name.startswith(".") and path.suffix == TMP_SUFFIX  # .part: older
            if path.is_file() and path.name not in known and (path.suffix == ".jpg" or stale):
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    # ------------------------------------------------------------------------------------------ prompts, rounds

    def current_prompt(self) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT text FROM prompts WHERE current = 1").fetchone()
        return None if row is None else row["text"]

    def set_prompt(self, text: str) -> None:
        """Make `text` the current prompt (adding it if new); earlier prompts keep their leaderboards."""
        with writing("set the prompt"), self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("UPDATE prompts SET current = 0 WHERE current = 1")
                self.conn.execute("INSERT INTO prompts (text, created, current) VALUES (?, ?, 1) "
                                  "ON CONFLICT(text) DO UPDATE SET current = 1", (text, time.time()))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def has_prompt(self, text: str) -> bool:
        with self.lock:
            return self.conn.execute("SELECT 1 FROM prompts WHERE text = ?", (text,)).fetchone() is not None

    def prompts(self) -> list[str]:
        with self.lock:
            return [r["text"] for r in self.conn.execute("SELECT text FROM prompts ORDER BY created")]

    def start_round(self, prompt: str, seconds: float, now: float | None = None) -> dict:
        """A round of `prompt` from now for `seconds` (earlier rounds end now)."""
        now = time.time() if now is None else now
        with writing("start the round"), self.lock:
            self.conn.execute("UPDATE rounds SET ends = ? WHERE ends > ?", (now, now))
            self.conn.execute("INSERT INTO rounds (prompt, started, ends) VALUES (?, ?, ?)",
                              (prompt, now, now + seconds))
        return self.last_round()

    def end_round(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with writing("end the round"), self.lock:
            return self.conn.execute("UPDATE rounds SET ends = ? WHERE ends > ?", (now, now)).rowcount > 0

    def clear_rounds(self) -> None:
        """Forget every round (free play: no round can be over)."""
        with writing("clear the rounds"), self.lock:
            self.conn.execute("DELETE FROM rounds")

    def last_round(self) -> dict | None:
        """The newest round (running or over): {id, prompt, started, ends}."""
        with self.lock:
            row = self.conn.execute("SELECT id, prompt, started, ends FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else dict(row)

    # ------------------------------------------------------------------------------------------ submissions

    def add(self, entry: Entry, thumbnail_jpeg: bytes, *, max_bytes: int | None = None) -> int:
        """Store a scored submission durably (thumbnail first, then the row); returns its id. With `max_bytes`,
        QuotaFull when storing it would pass the quota (call `prune` first to make room)."""
        if max_bytes is not None and self.disk_bytes() + len(thumbnail_jpeg) > max_bytes:
            raise QuotaFull(f"the kiosk's storage quota ({max_bytes:,} bytes) is full")
        thumb = f"{uuid.uuid4().hex}.jpg"
        with writing("store the thumbnail"):
            atomic_write(self.thumbs / thumb, thumbnail_jpeg, durable=True)
        try:
            with writing("store the submission"), self.lock:
                cur = self.conn.execute(
                    "INSERT INTO submissions (prompt, name, score, verdict, thumb, created, client, phash, bytes, "
                    "shape) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.prompt, entry.name, entry.score, entry.verdict, thumb, time.time(), entry.client,
                     entry.phash, len(thumbnail_jpeg), entry.shape))
        except StorageFull:
            (self.thumbs / thumb).unlink(missing_ok=True)  # no row names it
            raise
        return int(cur.lastrowid)

    def thumb_file(self, thumb: str, *, hidden_too: bool = False) -> Path | None:
        """The thumbnail file of that name, if it belongs to a stored submission that is shown (or, with
        `hidden_too`, one the operator hid: the admin page's view)."""
        with self.lock:
            row = self.conn.execute("SELECT hidden FROM submissions WHERE thumb = ?", (thumb,)).fetchone()
        return self.thumbs / thumb if row is not None and (hidden_too or not row["hidden"]) else None

    def get(self, sid: int) -> dict | None:
        with self.lock:
            row = self.conn.execute(f"SELECT {FULL} FROM submissions WHERE id = ?", (sid,)).fetchone()
        return None if row is None else dict(row)

    def delete(self, sid: int) -> bool:
        """The operator deletes one submission (remembered in `removed`: it stays refused); False if none."""
        return self._delete_where("id = ?", (sid,), remember=True) > 0

    def delete_by(self, *, name: str | None = None, client: str | None = None, remember: bool = True) -> int:
        """Delete every submission with this name, or from this client (remembered, as `delete`, unless `remember`
        is False); how many."""
        if (name is None) == (client is None):
            raise ValueError("delete_by needs exactly one of name, client")
        return self._delete_where("name = ?" if name is not None else "client = ?", (name or client,),
                                  remember=remember)

    def _delete_where(self, where: str, args: tuple, *, remember: bool = False) -> int:
        """Delete the matching rows (one transaction), then their thumbnails; on a full disk the reserve file is
        released and the delete tried once more (deleting is how the operator makes room)."""
        try:
            rows = self._delete_rows(where, args, remember)
        except StorageFull:
            if not self.release_reserve():
                raise
            rows = self._delete_rows(where, args, remember)
        for row in rows:  # the rows first: a crash in between leaves orphans, which the next start sweeps
            (self.thumbs / row["thumb"]).unlink(missing_ok=True)
        if rows:
            self.make_reserve()
        return len(rows)

    def _delete_rows(self, where: str, args: tuple, remember: bool) -> list[sqlite3.Row]:
        with writing("delete"), self.lock:
            rows = self.conn.execute(f"SELECT id, thumb, prompt, phash, shape FROM submissions WHERE {where}",
                                     args).fetchall()
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if remember:
                    self.conn.executemany("INSERT INTO removed (prompt, phash, shape, created) VALUES (?, ?, ?, ?)",
                                          [(r["prompt"], r["phash"], r["shape"], time.time()) for r in rows])
                    self.conn.execute("DELETE FROM removed WHERE id <= (SELECT id FROM removed ORDER BY id DESC "
                                      "LIMIT 1 OFFSET ?)", (REMOVED_CAP,))
                self.conn.executemany("DELETE FROM submissions WHERE id = ?", [(r["id"],) for r in rows])
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        return rows

    def set_hidden(self, sid: int, hidden: bool) -> dict | None:
        """Hide a submission from the public board (or show it again); the entry, or None if there is none. A hidden
        drawing stays refused (`refused_prints`) and its thumbnail is not served publicly (`thumb_file`)."""
        with writing("hide the submission"), self.lock:
            changed = self.conn.execute("UPDATE submissions SET hidden = ? WHERE id = ?", (int(hidden), sid)).rowcount
        return self.get(sid) if changed else None

    def rank(self, prompt: str, score: float, sid: int) -> tuple[int, int]:
        """(rank of submission `sid` with `score` among `prompt`'s shown ones, 1 = best; how many there are)."""
        with self.lock:
            better = self.conn.execute("SELECT COUNT(*) FROM submissions WHERE prompt = ? AND hidden = 0 AND "
                                       "(score > ? OR (score = ? AND id < ?))", (prompt, score, score, sid)).fetchone()
            total = self.conn.execute("SELECT COUNT(*) FROM submissions WHERE prompt = ? AND hidden = 0",
                                      (prompt,)).fetchone()
        return int(better[0]) + 1, int(total[0])

    def leaderboard(self, prompt: str, limit: int = 10) -> list[dict]:
        """The best shown submissions of `prompt` (hidden ones are left out)."""
        with self.lock:
            rows = self.conn.execute(f"SELECT {PUBLIC} FROM submissions WHERE prompt = ? AND hidden = 0 "
                                     "ORDER BY score DESC, id LIMIT ?", (prompt, limit)).fetchall()
        return [dict(r) for r in rows]

    def recent(self, limit: int = 50, before: int | None = None) -> list[dict]:
        """The newest submissions (hidden ones too), for the moderation queue; `before`: ids below it only."""
        with self.lock:
            rows = self.conn.execute(f"SELECT {FULL} FROM submissions WHERE id < ? ORDER BY id DESC LIMIT ?",
                                     (before if before is not None else 2**63 - 1, limit)).fetchall()
        return [dict(r) for r in rows]

    def all_entries(self, prompt: str | None = None) -> list[dict]:
        """Every submission (of one prompt, or all), best first per prompt: the leaderboard export."""
        with self.lock:
            rows = self.conn.execute(f"SELECT {FULL} FROM submissions WHERE ? IS NULL OR prompt = ? "
                                     "ORDER BY prompt, score DESC, id", (prompt, prompt)).fetchall()
        return [dict(r) for r in rows]

    def hashes(self, prompt: str) -> list[int]:
        """The perceptual hashes of `prompt`'s shown submissions (near-duplicate refusal)."""
        with self.lock:
            rows = self.conn.execute("SELECT phash FROM submissions WHERE prompt = ? AND hidden = 0 AND "
                                     "phash IS NOT NULL", (prompt,)).fetchall()
        return [int(r[0]) for r in rows]

    def board_prints(self, prompt: str, top: int, near: Callable[[int], bool] = lambda h: False) -> Prints:
        """Fingerprints of `prompt`'s shown submissions, best first: the best `top` (the ranked board, where a turned
        or cropped copy would crowd out other players) and any other whose perceptual hash `near` accepts (only
        those shapes are read: a full board holds keep_top + keep_last of them)."""
        with self.lock:
            rows = self.conn.execute("SELECT id, phash FROM submissions WHERE prompt = ? AND hidden = 0 "
                                     "ORDER BY score DESC, id", (prompt,)).fetchall()
            wanted = [r for i, r in enumerate(rows) if i < top or (r["phash"] is not None and near(int(r["phash"])))]
            shapes: dict[int, bytes | None] = {}
            for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
                ids = [r["id"] for r in wanted[start : start + 500]]
                shapes |= {r[0]: r[1] for r in self.conn.execute(
                    f"SELECT id, shape FROM submissions WHERE id IN ({','.join('?' * len(ids))})", ids)}
        return _prints([(r["phash"], shapes.get(r["id"])) for r in wanted], min(top, len(wanted)))

    def refused_prints(self, prompt: str) -> Prints:
        """Fingerprints of what the operator took off `prompt`'s board: its hidden submissions and its remembered
        deleted ones (`delete`, `delete_by`; not retention pruning). Other prompts' removals do not count: a
        look-alike drawn for another prompt is another player's honest drawing."""
        with self.lock:
            rows = self.conn.execute("SELECT phash, shape FROM submissions WHERE prompt = ? AND hidden = 1 "
                                     "UNION ALL SELECT phash, shape FROM removed WHERE prompt = ?",
                                     (prompt, prompt)).fetchall()
        return _prints(rows, len(rows))

    def removed(self, limit: int = 100) -> tuple[int, list[dict]]:
        """(how many deleted drawings are remembered, the newest `limit` of them: id, prompt, created)."""
        with self.lock:
            total = int(self.conn.execute("SELECT COUNT(*) FROM removed").fetchone()[0])
            rows = self.conn.execute("SELECT id, prompt, created FROM removed ORDER BY id DESC LIMIT ?",
                                     (limit,)).fetchall()
        return total, [dict(r) for r in rows]

    def forget(self, rid: int | None = None, prompt: str | None = None) -> int:
        """Allow remembered deleted drawings again: the one with id `rid`, or every one (of `prompt`, or all); how
        many were forgotten."""
        with writing("forget removed drawings"), self.lock:
            if rid is not None:
                return self.conn.execute("DELETE FROM removed WHERE id = ?", (rid,)).rowcount
            return self.conn.execute("DELETE FROM removed WHERE ? IS NULL OR prompt = ?", (prompt, prompt)).rowcount

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0])

    # ------------------------------------------------------------------------------------------ retention

    def make_reserve(self, size: int = RESERVE) -> bool:
        """Make the reserve file (`size` bytes) if it is missing; False when the disk has no room for it yet."""
        if self.reserve.is_file() and self.reserve.stat().st_size >= size:
            return True
        try:
            with open(self.reserve, "wb") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            try:
                self.reserve.unlink(missing_ok=True)  # a part-written reserve: no use, and in the way
            except OSError:
                pass  # a read-only disk
            return False

    def release_reserve(self) -> bool:
        """Delete the reserve file to give its room to a delete on a full disk; False if there was none."""
        try:
            self.reserve.unlink()
            return True
        except FileNotFoundError:
            return False

    def disk_bytes(self) -> int:
        """Bytes the kiosk holds on disk: its thumbnails and its database files (with the WAL)."""
        with self.lock:
            thumbs = int(self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM submissions").fetchone()[0])
        files = (self.db_path, self.db_path.with_name(self.db_path.name + "-wal"))
        return thumbs + sum(p.stat().st_size for p in files if p.is_file())

    def prune(self, *, keep_top: int, keep_last: int, max_bytes: int | None = None, room: int = 0) -> int:
        """Apply the retention rule, then free `room` bytes under `max_bytes` by deleting the oldest unkept
        submissions; returns how many were deleted."""
        kept = ("SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY prompt ORDER BY score DESC, id) AS r "
                "FROM submissions) WHERE r <= ? UNION SELECT id FROM (SELECT id FROM submissions ORDER BY id DESC "
                "LIMIT ?)")
        deleted = self._delete_where(f"id NOT IN ({kept})", (keep_top, keep_last))
        if max_bytes is None:
            return deleted
        over = self.disk_bytes() + room - max_bytes
        if over <= 0:
            return deleted
        top = kept.split(" UNION ")[0]
        with self.lock:
            rows = self.conn.execute(f"SELECT id, bytes FROM submissions WHERE id NOT IN ({top}) ORDER BY id",
                                     (keep_top,)).fetchall()
        victims, freed = [], 0
        for row in rows:
            if freed >= over:
                break
            victims.append(row["id"])
            freed += int(row["bytes"])
        if victims:  # one statement, one commit
            deleted += self._delete_where(f"id IN ({','.join('?' * len(victims))})", tuple(victims))
        return deleted

    # ------------------------------------------------------------------------------------------ bans

    def ban(self, client: str, reason: str = "") -> dict:
        with writing("ban the client"), self.lock:
            self.conn.execute("INSERT INTO bans (client, created, reason) VALUES (?, ?, ?) ON CONFLICT(client) "
                              "DO UPDATE SET reason = excluded.reason", (client, time.time(), reason))
        return next(b for b in self.bans() if b["client"] == client)

    def unban(self, client: str) -> bool:
        with writing("lift the ban"), self.lock:
            return self.conn.execute("DELETE FROM bans WHERE client = ?", (client,)).rowcount > 0

    def bans(self) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute("SELECT client, created, reason FROM bans ORDER BY created")]


def _prints(rows: list, top: int) -> Prints:
    """Prints of (phash, shape) rows."""
    return Prints([None if r[0] is None else int(r[0]) for r in rows],
                  [None if r[1] is None else bytes(r[1]) for r in rows], top)
