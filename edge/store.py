"""The kiosk's storage: submissions, prompts, rounds and bans in SQLite (WAL), thumbnails on disk, nothing
acknowledged ever lost, and the disk use bounded.

    from dkit.edge.store import Store, Entry

    store = Store("kiosk.sqlite", thumbs="thumbs/")
    sid = store.add(Entry(prompt, score, verdict, name, client, phash), jpeg_bytes)   # durable when it returns
    store.leaderboard(prompt, limit=10), store.rank(prompt, score, sid), store.delete(sid)
    store.prune(keep_top=100, keep_last=1000, max_bytes=512 << 20)                    # retention and the quota

Durability: the thumbnail (a random name) is written to a temporary file, fsynced, renamed into place and its
folder fsynced (so the rename itself survives a power cut); then the row naming it is inserted and committed with
`synchronous=FULL` in WAL mode, so once `add` returns (and the server answers), a crash or `kill -9` cannot lose
it. A crash between the two leaves at most an orphan thumbnail, which nothing lists or serves, and which
`sweep_orphans` (run when the store opens) deletes. One connection guarded by a lock serves every thread.

Retention: a submission stays while it is among the best `keep_top` of its prompt or the newest `keep_last`
overall; past the byte quota the oldest of the others go first, and if the kept ones alone fill it, `add` raises
QuotaFull (answered 507) instead of growing the disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,
    started REAL NOT NULL,
    ends REAL NOT NULL
);
"""
# columns added after the first release: (name, declaration); an older database gains them when opened
ADDED = (("client", "TEXT NOT NULL DEFAULT ''"), ("phash", "INTEGER"), ("bytes", "INTEGER NOT NULL DEFAULT 0"),
         ("hidden", "INTEGER NOT NULL DEFAULT 0"))
WAL_LIMIT = 1 << 20  # bytes the write-ahead log may keep between checkpoints
PUBLIC = "id, name, score, verdict, thumb, created"
FULL = "id, prompt, name, score, verdict, thumb, created, client, hidden"


class QuotaFull(Exception):
    """The kept submissions alone fill the disk quota: nothing more can be stored."""


@dataclass(frozen=True)
class Entry:
    """One scored submission to store (its thumbnail bytes go beside it)."""

    prompt: str
    score: float
    verdict: str
    name: str
    client: str = ""
    phash: int | None = None  # signed 64-bit perceptual hash (dkit.edge.phash), for near-duplicate refusal


class Store:
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
            if path.is_file() and path.name not in known and (path.suffix == ".jpg" or path.name.endswith(".part")):
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
        with self.lock:
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
        with self.lock:
            self.conn.execute("UPDATE rounds SET ends = ? WHERE ends > ?", (now, now))
            self.conn.execute("INSERT INTO rounds (prompt, started, ends) VALUES (?, ?, ?)",
                              (prompt, now, now + seconds))
        return self.last_round()

    def end_round(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self.lock:
            return self.conn.execute("UPDATE rounds SET ends = ? WHERE ends > ?", (now, now)).rowcount > 0

    def clear_rounds(self) -> None:
        """Forget every round (free play: no round can be over)."""
        with self.lock:
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
        part = self.thumbs / f".{thumb}.part"
        try:
            with open(part, "wb") as f:
                f.write(thumbnail_jpeg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.thumbs / thumb)
            _fsync_dir(self.thumbs)
        finally:
            part.unlink(missing_ok=True)
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO submissions (prompt, name, score, verdict, thumb, created, client, phash, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (entry.prompt, entry.name, entry.score, entry.verdict, thumb,
                                                       time.time(), entry.client, entry.phash, len(thumbnail_jpeg)))
        return int(cur.lastrowid)

    def thumb_file(self, thumb: str) -> Path | None:
        """The thumbnail file of that name, if it belongs to a stored submission."""
        with self.lock:
            known = self.conn.execute("SELECT 1 FROM submissions WHERE thumb = ?", (thumb,)).fetchone()
        return self.thumbs / thumb if known else None

    def get(self, sid: int) -> dict | None:
        with self.lock:
            row = self.conn.execute(f"SELECT {FULL} FROM submissions WHERE id = ?", (sid,)).fetchone()
        return None if row is None else dict(row)

    def delete(self, sid: int) -> bool:
        return self._delete_where("id = ?", (sid,)) > 0

    def delete_by(self, *, name: str | None = None, client: str | None = None) -> int:
        """Delete every submission with this name, or from this client; returns how many."""
        if (name is None) == (client is None):
            raise ValueError("delete_by needs exactly one of name, client")
        return self._delete_where("name = ?" if name is not None else "client = ?", (name or client,))

    def _delete_where(self, where: str, args: tuple) -> int:
        with self.lock:
            rows = self.conn.execute(f"SELECT id, thumb FROM submissions WHERE {where}", args).fetchall()
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("DELETE FROM submissions WHERE id = ?", [(r["id"],) for r in rows])
            self.conn.execute("COMMIT")
        for row in rows:  # the rows first: a crash in between leaves orphans, which the next start sweeps
            (self.thumbs / row["thumb"]).unlink(missing_ok=True)
        return len(rows)

    def set_hidden(self, sid: int, hidden: bool) -> dict | None:
        """Hide a submission from the public board (or show it again); the entry, or None if there is none."""
        with self.lock:
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

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0])

    # ------------------------------------------------------------------------------------------ retention

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
        with self.lock:
            self.conn.execute("INSERT INTO bans (client, created, reason) VALUES (?, ?, ?) ON CONFLICT(client) "
                              "DO UPDATE SET reason = excluded.reason", (client, time.time(), reason))
        return next(b for b in self.bans() if b["client"] == client)

    def unban(self, client: str) -> bool:
        with self.lock:
            return self.conn.execute("DELETE FROM bans WHERE client = ?", (client,)).rowcount > 0

    def bans(self) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute("SELECT client, created, reason FROM bans ORDER BY created")]

    def is_banned(self, client: str) -> bool:
        with self.lock:
            return self.conn.execute("SELECT 1 FROM bans WHERE client = ?", (client,)).fetchone() is not None


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX: fsync the directory); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
