"""The kiosk's storage: submissions and prompts in SQLite (WAL), thumbnails on disk, nothing acknowledged ever lost.

    store = Store("kiosk.sqlite", thumbs="thumbs/")
    sid = store.add(prompt, score, verdict, name, jpeg_bytes)   # durable when it returns
    store.leaderboard(prompt, limit=10), store.rank(prompt, score), store.delete(sid)

Durability: the thumbnail (a random name) is written to a temporary file, fsynced and renamed into place
first; then the row naming it is inserted and committed with `synchronous=FULL` in WAL mode, so once `add`
returns (and the server answers), a crash or `kill -9` cannot lose it. A crash between the two leaves at
most an orphan thumbnail, which nothing lists or serves. One connection guarded by a lock serves every
thread of the server.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
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
"""


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
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------------------------------ prompts

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

    # ------------------------------------------------------------------------------------------ submissions

    def add(self, prompt: str, score: float, verdict: str, name: str, thumbnail_jpeg: bytes) -> int:
        """Store a scored submission durably (thumbnail first, then the row); returns its id."""
        thumb = f"{uuid.uuid4().hex}.jpg"
        part = self.thumbs / f".{thumb}.part"
        try:
            with open(part, "wb") as f:
                f.write(thumbnail_jpeg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.thumbs / thumb)
        finally:
            part.unlink(missing_ok=True)
        with self.lock:
            cur = self.conn.execute("INSERT INTO submissions (prompt, name, score, verdict, thumb, created) "
                                    "VALUES (?, ?, ?, ?, ?, ?)", (prompt, name, score, verdict, thumb, time.time()))
        return int(cur.lastrowid)

    def thumb_file(self, thumb: str) -> Path | None:
        """The thumbnail file of that name, if it belongs to a stored submission."""
        with self.lock:
            known = self.conn.execute("SELECT 1 FROM submissions WHERE thumb = ?", (thumb,)).fetchone()
        return self.thumbs / thumb if known else None

    def get(self, sid: int) -> dict | None:
        with self.lock:
            row = self.conn.execute("SELECT * FROM submissions WHERE id = ?", (sid,)).fetchone()
        return None if row is None else dict(row)

    def delete(self, sid: int) -> bool:
        row = self.get(sid)
        if row is None:
            return False
        with self.lock:
            self.conn.execute("DELETE FROM submissions WHERE id = ?", (sid,))
        (self.thumbs / row["thumb"]).unlink(missing_ok=True)
        return True

    def rank(self, prompt: str, score: float, sid: int) -> tuple[int, int]:
        """(rank of submission `sid` with `score` among `prompt`'s, 1 = best; how many there are)."""
        with self.lock:
            better = self.conn.execute("SELECT COUNT(*) FROM submissions WHERE prompt = ? AND (score > ? OR "
                                       "(score = ? AND id < ?))", (prompt, score, score, sid)).fetchone()[0]
            total = self.conn.execute("SELECT COUNT(*) FROM submissions WHERE prompt = ?", (prompt,)).fetchone()[0]
        return int(better) + 1, int(total)

    def leaderboard(self, prompt: str, limit: int = 10) -> list[dict]:
        with self.lock:
            rows = self.conn.execute("SELECT id, name, score, verdict, thumb, created FROM submissions "
                                     "WHERE prompt = ? ORDER BY score DESC, id LIMIT ?", (prompt, limit)).fetchall()
        return [dict(r) for r in rows]

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0])
