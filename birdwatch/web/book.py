"""What the page reads from the history: the visit book (deliver/visitbook.py) and the corrections, through a
connection of its own per request (WAL: it never waits on the service's writes, nor they on it)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdwatch.deliver import corrections
from birdwatch.deliver import embeddings
from birdwatch.deliver import visitbook
from birdwatch.deliver.corrections import NOT_A_BIRD
from birdwatch.deliver.visitbook import Visit

REVIEW_DAYS = 30  # the review queue looks this far back
RARE_VISITS = 2  # a name given this few times or fewer is worth a second look
PAGE = 200  # visits on one page of a species
# "Visits like this one" compares with the newest this many: a busy feeder's year, read in well under a second.
ALIKE_SCAN = 20_000
ALIKE_CHUNK = 2_000  # rows compared at a time: a few megabytes
ALIKE_MIN = 0.8  # "visits like this one" lists those at least this alike, unless the page asks otherwise


@contextlib.contextmanager
def connect(path: Path, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one request: read-only unless it writes (a correction)."""
    uri = path.resolve().as_uri() + ("?mode=rw" if write else "?mode=ro")
    db = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        yield db
    finally:
        db.close()


@dataclass(frozen=True)
class VisitPage:
    visit: Visit
    top_k: list[dict[str, Any]]  # as its latest event told it
    events: list[dict[str, Any]]  # every event it sent, oldest first, with `sent` (delivered or not)
    crops: list[str]  # snapshot paths of its events, newest first
    corrections: list[corrections.Correction]


@dataclass(frozen=True)
class Review:
    visit: Visit
    why: str
    top_k: list[dict[str, Any]]


def visit_page(db: sqlite3.Connection, visit_id: str) -> VisitPage | None:
    row = db.execute(f"SELECT {visitbook.COLUMNS} FROM visits WHERE visit_id = ?", (visit_id,)).fetchone()
    if row is None:
        return None
    rows = db.execute(
        "SELECT payload, snapshot, sent_ts FROM events WHERE visit_id = ? ORDER BY seq", (visit_id,)
    ).fetchall()
    events = [{**json.loads(payload), "sent": sent is not None} for payload, _, sent in rows]
    crops = list(dict.fromkeys(snap for _, snap, _ in reversed(rows) if snap))
    top_k = events[-1]["top_k"] if events else []
    return VisitPage(visitbook.visit_of(row), top_k, events, crops, corrections.of_visit(db, visit_id))


def species_visits(db: sqlite3.Connection, name: str, limit: int = PAGE) -> list[Visit]:
    rows = db.execute(
        f"SELECT {visitbook.COLUMNS} FROM visits WHERE name = ? ORDER BY first_seen DESC LIMIT ?", (name, limit)
    ).fetchall()
    return [visitbook.visit_of(r) for r in rows]


def visit_ids_of(db: sqlite3.Connection, name: str, day: str) -> list[str]:
    """The visits of one species on one day: "all of these today", for a bulk correction."""
    rows = db.execute("SELECT visit_id FROM visits WHERE day = ? AND name = ?", (day, name)).fetchall()
    return [r[0] for r in rows]


def going_on(db: sqlite3.Connection, camera: str) -> Visit | None:
    """The camera's visit that has not ended, if any."""
    row = db.execute(
        f"SELECT {visitbook.COLUMNS} FROM visits WHERE camera = ? AND ended = 0 ORDER BY first_seen DESC LIMIT 1",
        (camera,),
    ).fetchone()
    return visitbook.visit_of(row) if row else None


def review_queue(db: sqlite3.Connection, below: float, limit: int = 100) -> list[Review]:
    """Visits of the last REVIEW_DAYS nobody has looked at yet that are worth it: like none of the birds named
    at their camera (`novel`, first), the species unsure, a name the model rarely gives, or a species' first
    visit ever; newest first."""
    since = visitbook.day_minus(time.strftime("%Y-%m-%d"), REVIEW_DAYS - 1)
    cols = ", ".join(f"v.{c.strip()}" for c in visitbook.COLUMNS.split(","))
    rows = db.execute(
        f"""
        WITH seen AS (SELECT name, count(*) AS n, min(first_seen) AS first FROM visits GROUP BY name),
        open AS (
            SELECT {cols}, seen.n AS n, v.first_seen = seen.first AS first,
                   (SELECT payload FROM events e WHERE e.visit_id = v.visit_id ORDER BY e.seq DESC LIMIT 1) AS told
            FROM visits v JOIN seen ON seen.name = v.name
            WHERE v.day >= ? AND v.corrected IS NULL)
        SELECT *, coalesce(json_extract(told, '$.novel'), 0) AS novel FROM open
        WHERE novel OR score < ? OR n <= ? OR first
        ORDER BY novel DESC, first_seen DESC LIMIT ?""",
        (since, below, RARE_VISITS, limit),
    ).fetchall()
    out = []
    width = len(visitbook.COLUMNS.split(","))
    for row in rows:
        visit = visitbook.visit_of(row[:width])
        n, first, payload, novel = row[width:]
        why = (
            f"like none of the birds named here, and unsure ({visit.score:.2f})"
            if novel
            else f"unsure ({visit.score:.2f})"
            if visit.score < below
            else "first ever"
            if first
            else f"rare: named {n} time{'s' if n != 1 else ''}"
        )
        out.append(Review(visit, why, json.loads(payload).get("top_k", []) if payload else []))
    return out


@dataclass(frozen=True)
class Alike:
    visit: Visit
    similarity: float  # cosine of the two visits' best crops, as the classifier's backbone sees them


def alike(db: sqlite3.Connection, visit_id: str, min_similarity: float, limit: int = PAGE) -> list[Alike] | None:
    """The visits whose best crop looks most like this one's (the same weights' embeddings only), most alike
    first, down to `min_similarity`; None when the visit has no embedding to compare. Read in chunks: a year of
    a busy feeder's crops is tens of megabytes."""
    target = embeddings.of_visit(db, visit_id)
    if target is None or not isinstance(target[1], bytes) or not target[1] or len(target[1]) % 2:
        return None
    model, vector = target
    query = np.frombuffer(vector, dtype="<f2").astype(np.float32)  # stored at length 1, as every row
    best: list[tuple[float, str]] = []
    rows = db.execute(
        "SELECT visit_id, vector FROM embeddings WHERE model = ? AND visit_id != ? AND length(vector) = ?"
        " ORDER BY rowid DESC LIMIT ?",
        (model, visit_id, len(vector), ALIKE_SCAN),
    )
    while chunk := [r for r in rows.fetchmany(ALIKE_CHUNK) if isinstance(r[1], bytes)]:
        keys = np.frombuffer(b"".join(r[1] for r in chunk), dtype="<f2").reshape(len(chunk), -1)
        similarity = keys.astype(np.float32) @ query
        best += [(float(similarity[i]), chunk[i][0]) for i in np.flatnonzero(similarity >= min_similarity)]
        best = sorted(best, reverse=True)[: limit * 2]  # twice: some may be gone from the book
    marks = ", ".join("?" * len(best))
    found = {
        r[0]: visitbook.visit_of(r)
        for r in db.execute(f"SELECT {visitbook.COLUMNS} FROM visits WHERE visit_id IN ({marks})", [v for _, v in best])
    }  # a corrected visit outlives the history's retention in the memory, not in the book
    return [Alike(found[v], s) for s, v in best if v in found][:limit]


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """Visits per name (a bird's), for the species search and the species page."""
    rows = db.execute(f"SELECT name, count(*) FROM visits WHERE {visitbook.A_BIRD} GROUP BY name").fetchall()
    return {str(name): int(n) for name, n in rows}


def is_bird(name: str) -> bool:
    return name != NOT_A_BIRD
