"""The visit book: one row per visit in the history, written in the same transaction as each of its events
(deliver/history.py), so the page, `birdwatch stats` and the charts read years of history without grouping
every event again. A history from before the book (schema 1) gets it built from its events when it is
first opened, and so does a repaired one.

A visit's row follows its latest event: the species and score the visit was last told with, its frames,
the bird score, and the best crop so far (an event whose picture did not improve carries none). A person's
correction (deliver/corrections.py) sits beside the model's species, and `name`, the one the queries read, is
theirs where they gave one; a visit named "not a bird" counts for no species.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from birdwatch.deliver.corrections import NOT_A_BIRD
from birdwatch.types import EventKind
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

SCHEMA = """
CREATE TABLE IF NOT EXISTS visits (
    visit_id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    day TEXT NOT NULL,                      -- local date the visit started, YYYY-MM-DD
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    species TEXT NOT NULL,                  -- as last told
    score REAL NOT NULL,
    frames INTEGER NOT NULL,
    bird_score REAL,
    snapshot TEXT,                          -- the best crop so far
    ended INTEGER NOT NULL DEFAULT 0,
    events INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS visits_day ON visits (day, first_seen);
CREATE INDEX IF NOT EXISTS visits_open ON visits (camera, first_seen) WHERE ended = 0;
"""

_UPSERT = """
INSERT INTO visits (visit_id, camera, day, first_seen, last_seen, species, score, frames, bird_score, snapshot,
                    ended, events)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (visit_id) DO UPDATE SET
    last_seen = excluded.last_seen,
    species = excluded.species,
    score = excluded.score,
    frames = excluded.frames,
    bird_score = coalesce(excluded.bird_score, visits.bird_score),
    snapshot = coalesce(excluded.snapshot, visits.snapshot),
    ended = max(visits.ended, excluded.ended),
    events = visits.events + 1
"""

# From the events alone: each visit's latest event, and its latest crop.
_REBUILD = """
DELETE FROM visits;
INSERT INTO visits (visit_id, camera, day, first_seen, last_seen, species, score, frames, bird_score, snapshot,
                    ended, events)
SELECT e.visit_id, e.camera, e.day,
       json_extract(e.payload, '$.first_seen'), json_extract(e.payload, '$.last_seen'),
       e.species, e.score, json_extract(e.payload, '$.frames'), json_extract(e.payload, '$.bird_score'),
       (SELECT s.snapshot FROM events s WHERE s.visit_id = e.visit_id AND s.snapshot IS NOT NULL
        ORDER BY s.seq DESC LIMIT 1),
       e.kind = 'end', g.n
FROM events e JOIN (SELECT visit_id, max(seq) AS last, count(*) AS n FROM events GROUP BY visit_id) g
     ON e.seq = g.last;
"""


@dataclass(frozen=True)
class Visit:
    visit_id: str
    camera: str
    day: str
    first_seen: float
    last_seen: float
    species: str
    score: float
    frames: int
    bird_score: float | None
    snapshot: str | None
    ended: bool
    events: int
    corrected: str | None = None  # a person's word: a species, or NOT_A_BIRD

    @property
    def name(self) -> str:
        """The species this visit counts as: the person's word where there is one, else the model's."""
        return self.corrected if self.corrected is not None else self.species

    @property
    def duration_s(self) -> float:
        return max(0.0, self.last_seen - self.first_seen)


COLUMNS = (
    "visit_id, camera, day, first_seen, last_seen, species, score, frames, bird_score, snapshot, ended, events,"
    " corrected"
)
A_BIRD = f"name != '{NOT_A_BIRD}'"  # visits that count


def record(db: sqlite3.Connection, event: VisitEvent) -> None:
    """The event's visit, as it now stands (inside the caller's transaction)."""
    db.execute(
        _UPSERT,
        (
            event.visit_id,
            event.camera,
            local_day(event.first_seen),
            event.first_seen,
            event.last_seen,
            event.species,
            event.score,
            event.frames,
            event.bird_score,
            event.snapshot,
            int(event.kind == EventKind.END),
        ),
    )


def rebuild(db: sqlite3.Connection) -> None:
    """The whole book again from the events (inside the caller's transaction)."""
    for statement in _REBUILD.split(";"):
        if statement.strip():
            db.execute(statement)


def prune(db: sqlite3.Connection, before: float) -> int:
    """Visits none of whose events are left (retention removed them); inside the caller's transaction."""
    cur = db.execute(
        "DELETE FROM visits WHERE last_seen < ? AND NOT EXISTS"
        " (SELECT 1 FROM events e WHERE e.visit_id = visits.visit_id)",
        (before,),
    )
    return int(cur.rowcount)


def on_day(db: sqlite3.Connection, day: str, camera: str | None = None) -> list[Visit]:
    """The visits that began on a local day, newest first."""
    where = "day = ?" + (" AND camera = ?" if camera else "")
    args = (day, camera) if camera else (day,)
    rows = db.execute(f"SELECT {COLUMNS} FROM visits WHERE {where} ORDER BY first_seen DESC", args).fetchall()
    return [visit_of(row) for row in rows]


def per_day(
    db: sqlite3.Connection, days: int, camera: str | None = None, today: str | None = None
) -> list[tuple[str, str, int]]:
    """(day, species, visits) for the last `days` days up to today, newest day first, most visits first."""
    today = today or local_day(time.time())
    where = "day BETWEEN ? AND ?" + (" AND camera = ?" if camera else "")
    args = (day_minus(today, days - 1), today, *([camera] if camera else []))
    rows = db.execute(
        f"SELECT day, name, count(*) FROM visits WHERE {where} AND {A_BIRD}"
        " GROUP BY day, name ORDER BY day DESC, count(*) DESC, name",
        args,
    ).fetchall()
    return [(str(d), str(s), int(n)) for d, s, n in rows]


@dataclass(frozen=True)
class SpeciesSeen:
    species: str
    visits: int
    first_seen: float
    last_seen: float
    best_snapshot: str | None  # the crop of its best-scored visit that has one


def species_seen(db: sqlite3.Connection) -> list[SpeciesSeen]:
    """Every species ever told, most visits first, with its best picture."""
    rows = db.execute(
        f"SELECT name, count(*), min(first_seen), max(last_seen) FROM visits WHERE {A_BIRD} GROUP BY name"
        " ORDER BY count(*) DESC, name"
    ).fetchall()
    best = "SELECT snapshot FROM visits WHERE name = ? AND snapshot IS NOT NULL ORDER BY score DESC LIMIT 1"
    out = []
    for species, n, first, last in rows:
        snap = db.execute(best, (species,)).fetchone()
        out.append(SpeciesSeen(species, n, first, last, snap[0] if snap else None))
    return out


def by_hour(db: sqlite3.Connection, days: int, today: str | None = None) -> list[int]:
    """Visits that began in each local hour of the day (0..23), over the last `days` days."""
    today = today or local_day(time.time())
    rows = db.execute(
        "SELECT CAST(strftime('%H', first_seen, 'unixepoch', 'localtime') AS INTEGER), count(*) FROM visits"
        f" WHERE day BETWEEN ? AND ? AND {A_BIRD} GROUP BY 1",
        (day_minus(today, days - 1), today),
    ).fetchall()
    hours = [0] * 24
    for hour, n in rows:
        hours[int(hour)] = int(n)
    return hours


def day_minus(day: str, n: int) -> str:
    t = time.mktime(time.strptime(day, "%Y-%m-%d")) + 12 * 3600  # noon: safe across DST changes
    return local_day(t - n * 86400)


def visit_of(row: Any) -> Visit:
    """A row of COLUMNS as a Visit."""
    values = list(row)
    values[10] = bool(values[10])  # SQLite's 0/1
    return Visit(*values)
