"""Corrections: a person's word on a visit's species, kept beside the model's in the history.

A visit's row in the book (visitbook.py) keeps the species the model told (`species`) and, once someone
corrected or confirmed it, their word (`corrected`); `name` is the one every count, chart and export reads.
Each correction is also a row of its own: who, when, the name before and after, whether it was undone, and
whether it was told on MQTT yet. The page writes them; the service tells them (`<prefix>/<camera>/correction`,
QoS 1) from its decide thread, marking each told once the broker has it, so a correction made while the
broker or the service is down is told when they are back.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from birdwatch.types import iso_time

NOT_A_BIRD = "not a bird"  # a correction's name for a visit of a leaf, a squirrel or a shadow

SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    visit_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    model_species TEXT NOT NULL,            -- the model's verdict, kept whatever people say
    before TEXT NOT NULL,                   -- the visit's name before this correction
    after TEXT NOT NULL,                    -- a species, or NOT_A_BIRD
    who TEXT NOT NULL,
    ts REAL NOT NULL,
    undone_ts REAL,                         -- set when undone; the undo is told as a correction back
    told_ts REAL,                           -- when the broker had it (and its undo, once undone)
    undo_told_ts REAL
);
CREATE INDEX IF NOT EXISTS corrections_visit ON corrections (visit_id, id);
CREATE INDEX IF NOT EXISTS corrections_untold ON corrections (id) WHERE told_ts IS NULL OR
    (undone_ts IS NOT NULL AND undo_told_ts IS NULL);
"""

# A book from before corrections (schema 2) gains these columns, and its indexes move from the model's species to
# the name a visit counts as.
COLUMNS = (
    ("corrected", "TEXT"),
    ("name", "TEXT GENERATED ALWAYS AS (coalesce(corrected, species)) VIRTUAL"),
)
INDEXES = """
DROP INDEX IF EXISTS visits_species;
DROP INDEX IF EXISTS visits_best;
CREATE INDEX IF NOT EXISTS visits_name ON visits (name, first_seen, last_seen);  -- covers the gallery
CREATE INDEX IF NOT EXISTS visits_name_best ON visits (name, score) WHERE snapshot IS NOT NULL;
"""


@dataclass(frozen=True)
class Correction:
    id: int
    visit_id: str
    camera: str
    model_species: str
    before: str
    after: str
    who: str
    ts: float
    undone_ts: float | None = None

    def payload(self, undo: bool = False) -> dict[str, Any]:
        """What `<prefix>/<camera>/correction` carries: the visit, the name it had and the name it has now."""
        was, now = (self.after, self.before) if undo else (self.before, self.after)
        ts = (self.undone_ts or time.time()) if undo else self.ts
        return {
            "correction_id": self.id,
            "visit_id": self.visit_id,
            "camera": self.camera,
            "species": None if now == NOT_A_BIRD else now,
            "not_a_bird": now == NOT_A_BIRD,
            "was": None if was == NOT_A_BIRD else was,
            "model_species": self.model_species,
            "undo": undo,
            "by": self.who,
            "ts": round(ts, 3),
            "time": iso_time(ts),
        }

    def message(self, undo: bool = False) -> str:
        return json.dumps(self.payload(undo), ensure_ascii=False)


FIELDS = "id, visit_id, camera, model_species, before, after, who, ts, undone_ts"


def add_columns(db: sqlite3.Connection) -> None:
    """The book's correction columns and indexes, on a book made before them (inside the caller's transaction)."""
    have = {row[1] for row in db.execute("PRAGMA table_xinfo(visits)")}
    for name, kind in COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE visits ADD COLUMN {name} {kind}")
    for statement in _statements(INDEXES):
        db.execute(statement)


def correct(db: sqlite3.Connection, visit_ids: Sequence[str], after: str, who: str) -> list[Correction]:
    """Name these visits `after` (a species, or NOT_A_BIRD); one correction per visit whose name changes, or
    that nobody confirmed yet (naming a visit what it is already called confirms it). Own transaction."""
    now = time.time()
    made: list[Correction] = []
    with db:
        db.execute("BEGIN IMMEDIATE")  # the names read below are the ones changed: no writer between
        for visit_id in dict.fromkeys(visit_ids):
            row = db.execute(
                "SELECT camera, species, name, corrected FROM visits WHERE visit_id = ?", (visit_id,)
            ).fetchone()
            if row is None:
                continue
            camera, model_species, before, corrected = row
            if before == after and corrected is not None:
                continue  # said already
            cur = db.execute(
                "INSERT INTO corrections (visit_id, camera, model_species, before, after, who, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (visit_id, camera, model_species, before, after, who, now),
            )
            db.execute("UPDATE visits SET corrected = ? WHERE visit_id = ?", (after, visit_id))
            assert cur.lastrowid is not None
            made.append(Correction(cur.lastrowid, visit_id, camera, model_species, before, after, who, now))
    return made


def undo(db: sqlite3.Connection, correction_ids: Sequence[int]) -> list[Correction]:
    """Undo these corrections, each only while it is its visit's latest: the visit's name goes back to what it
    was before. Own transaction. The undone, with `undone_ts` set."""
    now = time.time()
    done: list[Correction] = []
    with db:
        db.execute("BEGIN IMMEDIATE")
        for cid in dict.fromkeys(correction_ids):
            row = db.execute(f"SELECT {FIELDS} FROM corrections WHERE id = ? AND undone_ts IS NULL", (cid,)).fetchone()
            if row is None:
                continue
            c = Correction(*row)
            latest = db.execute(
                "SELECT max(id) FROM corrections WHERE visit_id = ? AND undone_ts IS NULL", (c.visit_id,)
            ).fetchone()[0]
            if latest != c.id:
                continue  # a later correction stands on this one: undo that first
            db.execute("UPDATE corrections SET undone_ts = ? WHERE id = ?", (now, c.id))
            previous = db.execute(
                "SELECT after FROM corrections WHERE visit_id = ? AND undone_ts IS NULL ORDER BY id DESC LIMIT 1",
                (c.visit_id,),
            ).fetchone()
            db.execute(
                "UPDATE visits SET corrected = ? WHERE visit_id = ?", (previous[0] if previous else None, c.visit_id)
            )
            done.append(dataclasses.replace(c, undone_ts=now))
    return done


def reapply(db: sqlite3.Connection) -> None:
    """After the book is built again from the events: each visit's standing correction on it once more."""
    db.execute(
        "UPDATE visits SET corrected = (SELECT c.after FROM corrections c WHERE c.visit_id = visits.visit_id"
        " AND c.undone_ts IS NULL ORDER BY c.id DESC LIMIT 1)"
    )


def name_of(db: sqlite3.Connection, visit_id: str) -> str | None:
    """A person's standing word on a visit, or None."""
    row = db.execute("SELECT corrected FROM visits WHERE visit_id = ?", (visit_id,)).fetchone()
    return row[0] if row else None


def of_visit(db: sqlite3.Connection, visit_id: str) -> list[Correction]:
    rows = db.execute(f"SELECT {FIELDS} FROM corrections WHERE visit_id = ? ORDER BY id", (visit_id,)).fetchall()
    return [Correction(*row) for row in rows]


def recent(db: sqlite3.Connection, limit: int = 50) -> list[Correction]:
    rows = db.execute(f"SELECT {FIELDS} FROM corrections ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [Correction(*row) for row in rows]


def untold(db: sqlite3.Connection, limit: int = 100) -> list[tuple[Correction, bool]]:
    """(correction, undo) not yet told on MQTT, oldest first: a correction, then its undo once it is told. One
    undone before it was ever told comes with `undone_ts` set and undo False: `skip` it."""
    rows = db.execute(
        f"SELECT {FIELDS}, told_ts FROM corrections WHERE told_ts IS NULL OR"
        " (undone_ts IS NOT NULL AND undo_told_ts IS NULL) ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [(Correction(*row[:9]), row[9] is not None) for row in rows]


def skip(db: sqlite3.Connection, correction_id: int) -> None:
    """A correction undone before anyone heard of it: nothing to tell, then or now (telling both later would
    land after a newer correction of the same visit)."""
    db.execute("UPDATE corrections SET told_ts = undone_ts, undo_told_ts = undone_ts WHERE id = ?", (correction_id,))


def mark_told(db: sqlite3.Connection, correction_id: int, undo: bool, when: float) -> None:
    column = "undo_told_ts" if undo else "told_ts"
    with db:
        db.execute(f"UPDATE corrections SET {column} = ? WHERE id = ?", (when, correction_id))


def copy(source: sqlite3.Connection, into: sqlite3.Connection) -> int:
    """The corrections `source` can still give, into a fresh history (a repair), in one transaction: a person's
    word is kept as far as the damaged file lets it be read, row by row. Returns how many."""
    marks = ", ".join("?" * 11)
    insert = f"INSERT OR IGNORE INTO corrections ({FIELDS}, told_ts, undo_told_ts) VALUES ({marks})"
    n = 0
    into.execute("BEGIN IMMEDIATE")
    try:
        for row in source.execute(f"SELECT {FIELDS}, told_ts, undo_told_ts FROM corrections ORDER BY id"):
            into.execute(insert, row)
            n += 1
    except sqlite3.DatabaseError:
        pass  # a damaged page: what came before it is kept
    into.execute("COMMIT")
    return n


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]
