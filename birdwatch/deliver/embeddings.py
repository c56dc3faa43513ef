"""Embeddings in the history: each visit's best crop as the classifier's backbone saw it, and the feeder memory
that people's words make of them.

A visit's row in `embeddings` is written with its event (history.py, in the event's transaction), float16, with the
weights that made it (`Embedding.model`). The memory is not a copy: it is every visit whose standing correction
names a species (a fix, or "right as it is"), joined to its embedding, less what someone told birdwatch to forget.
So an undo takes a visit out of the memory and a new correction puts it back, with nothing to keep in step; and
forgetting hides the corrections as they stand now, while the names they gave stay.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass

import numpy as np

from birdwatch.deliver.corrections import NOT_A_BIRD
from birdwatch.types import Embedding

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    visit_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,                    -- Embedding.model: the weights that made it
    vector BLOB NOT NULL                    -- float16, little-endian
);
CREATE TABLE IF NOT EXISTS forgotten (      -- corrections left out of the memory (`birdwatch memory clear`)
    correction_id INTEGER PRIMARY KEY,
    ts REAL NOT NULL
);
"""

# Each visit's standing correction (its latest not undone) that names a species, with the visit's embedding.
_REMEMBERED = f"""
SELECT c.id, c.visit_id, c.camera, c.after, c.ts, e.model, e.vector
FROM corrections c JOIN embeddings e ON e.visit_id = c.visit_id
WHERE c.undone_ts IS NULL AND c.after != '{NOT_A_BIRD}'
  AND c.id = (SELECT max(id) FROM corrections WHERE visit_id = c.visit_id AND undone_ts IS NULL)
  AND c.id NOT IN (SELECT correction_id FROM forgotten)
"""


@dataclass(frozen=True)
class Remembered:
    """One visit in the memory: the name a person gave it and its best crop's embedding."""

    correction_id: int
    visit_id: str
    camera: str
    species: str
    ts: float
    model: str
    vector: bytes  # float16; `vector_of` checks its length

    def vector_of(self, dim: int) -> np.ndarray | None:
        """The embedding as float32, or None when the stored value is not `dim` float16 numbers."""
        if not isinstance(self.vector, bytes) or not dim or len(self.vector) != 2 * dim:
            return None
        return np.frombuffer(self.vector, dtype="<f2").astype(np.float32)


def keep(db: sqlite3.Connection, visit_id: str, embedding: Embedding) -> None:
    """The visit's embedding as it now stands (inside the caller's transaction): a better crop replaces it, as a
    new row, so that `version` sees the change."""
    db.execute(
        "INSERT OR REPLACE INTO embeddings (visit_id, model, vector) VALUES (?, ?, ?)",
        (visit_id, embedding.model, embedding.to_bytes()),
    )


def of_visit(db: sqlite3.Connection, visit_id: str) -> tuple[str, bytes] | None:
    row = db.execute("SELECT model, vector FROM embeddings WHERE visit_id = ?", (visit_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def remembered(db: sqlite3.Connection, camera: str | None = None, species: str | None = None) -> list[Remembered]:
    """The memory, oldest correction first; of one camera and/or one species when given."""
    sql, args = _REMEMBERED, []
    for column, value in (("c.camera", camera), ("c.after", species)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return [Remembered(*row) for row in db.execute(sql + " ORDER BY c.id", args)]


def version(db: sqlite3.Connection) -> tuple[int, ...]:
    """Changes whenever the memory may have: a correction made or undone, a visit forgotten, an embedding kept."""
    made, last, undone = db.execute(
        "SELECT count(*), coalesce(max(id), 0), count(undone_ts) FROM corrections"
    ).fetchone()
    forgotten = db.execute("SELECT count(*) FROM forgotten").fetchone()[0]
    # The embeddings of corrected visits only: a visit still open gets a better crop (a new row) after its
    # correction. CROSS JOIN keeps the corrections outside: a lookup per correction, never a scan of every visit's.
    kept = db.execute(
        "SELECT count(*), total(e.rowid) FROM corrections c CROSS JOIN embeddings e ON e.visit_id = c.visit_id"
    ).fetchone()
    return (made, last, undone, forgotten, *kept)


def forget(db: sqlite3.Connection, camera: str | None = None, species: str | None = None) -> int:
    """Leave these visits out of the memory (their names stay); returns how many. Every correction of each visit
    is forgotten, so undoing its latest does not bring an earlier one back; a new correction counts again.
    Own transaction."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        visits = [r.visit_id for r in remembered(db, camera, species)]
        now = time.time()
        for visit_id in visits:
            db.execute(
                "INSERT OR IGNORE INTO forgotten (correction_id, ts) SELECT id, ? FROM corrections WHERE visit_id = ?",
                (now, visit_id),
            )
    return len(visits)


def prune(db: sqlite3.Connection) -> int:
    """Embeddings of visits gone from the book, unless a correction still holds them (inside the caller's
    transaction): the memory outlives the history's retention."""
    return db.execute(
        "DELETE FROM embeddings WHERE visit_id NOT IN (SELECT visit_id FROM visits)"
        " AND visit_id NOT IN (SELECT visit_id FROM corrections WHERE undone_ts IS NULL)"
    ).rowcount


def copy(source: sqlite3.Connection, into: sqlite3.Connection) -> int:
    """The embeddings and forgotten marks `source` can still give, into a fresh history (a repair, after the
    corrections are copied), row by row; each table as far as its own pages let it be read. A mark is kept only
    for a correction that was saved: a lost one's id may be handed out again."""
    n = 0
    into.execute("BEGIN IMMEDIATE")
    with contextlib.suppress(sqlite3.DatabaseError):  # a damaged page: what came before it is kept
        for row in source.execute("SELECT visit_id, model, vector FROM embeddings"):
            into.execute("INSERT OR IGNORE INTO embeddings (visit_id, model, vector) VALUES (?, ?, ?)", row)
            n += 1
    saved = {row[0] for row in into.execute("SELECT id FROM corrections")}
    with contextlib.suppress(sqlite3.DatabaseError):
        for correction_id, ts in source.execute("SELECT correction_id, ts FROM forgotten"):
            if correction_id in saved:
                into.execute("INSERT OR IGNORE INTO forgotten (correction_id, ts) VALUES (?, ?)", (correction_id, ts))
    into.execute("COMMIT")
    return n
