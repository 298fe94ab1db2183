"""Cache of teacher outputs, keyed by (teacher identity, sha256 of the image file's bytes).

A rerun, or a run that was interrupted, reuses every image the teacher already saw; renaming or
moving images does not invalidate anything, changing the teacher (weights, sizes, proposer) does.
Stored as one SQLite file (WAL) of npz blobs (no pickle), committed batch by batch, so a kill
loses at most the batch in flight. The clip-embed student trains on the embeddings kept here.

    from dkit.distill.cache import TeacherCache

    with TeacherCache(run_dir / "cache" / "teacher.sqlite") as cache:
        raw = cache.get(teacher.cache_key, sha)
        cache.put_many(teacher.cache_key, [(sha, raw), ...])
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

Raw = dict[str, np.ndarray]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS teacher_outputs (
    teacher TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    outputs BLOB NOT NULL,
    PRIMARY KEY (teacher, image_sha256)
) WITHOUT ROWID
"""


class TeacherCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.db.commit()

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def get(self, teacher: str, sha: str) -> Raw | None:
        row = self.db.execute(
            "SELECT outputs FROM teacher_outputs WHERE teacher = ? AND image_sha256 = ?", (teacher, sha)
        ).fetchone()
        return None if row is None else decode_raw(row[0])

    def put_many(self, teacher: str, items: Iterable[tuple[str, Raw]]) -> None:
        with self.db:  # one transaction: the whole batch or none of it
            self.db.executemany(
                "INSERT OR REPLACE INTO teacher_outputs VALUES (?, ?, ?)",
                [(teacher, sha, encode_raw(raw)) for sha, raw in items],
            )

    def count(self, teacher: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM teacher_outputs WHERE teacher = ?", (teacher,)).fetchone()[0]

    def keys(self, teacher: str) -> Iterator[str]:
        """The image sha256s this teacher has outputs for."""
        for (sha,) in self.db.execute("SELECT image_sha256 FROM teacher_outputs WHERE teacher = ?", (teacher,)):
            yield sha

    def items(self, teacher: str) -> Iterator[tuple[str, Raw]]:
        for sha, blob in self.db.execute(
            "SELECT image_sha256, outputs FROM teacher_outputs WHERE teacher = ? ORDER BY image_sha256", (teacher,)
        ):
            yield sha, decode_raw(blob)


def encode_raw(raw: Raw) -> bytes:
    """One image's outputs as an npz blob (what the cache stores; the ray engine ships them so)."""
    buf = io.BytesIO()
    np.savez(buf, **raw)
    return buf.getvalue()


def decode_raw(blob: bytes) -> Raw:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
