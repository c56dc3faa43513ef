"""SQLite: the event history, which is also the outbox's table (deliver/outbox.py).

Every event is written (and committed, `synchronous=FULL`) before it is handed to MQTT, and marked
sent when the broker acknowledges it (QoS 1 PUBACK). Rows still unsent at start-up, from a broker
outage or a crash, go out first, in the order they were made. Delivered rows are the history that
`birdwatch events` and `birdwatch stats` read, kept for `store.retention_days`.

WAL mode lets the CLI read while the service writes. The connection is shared between the
decide thread (writes) and the MQTT sink's delivery thread (acknowledgements; never paho's network
thread), behind one lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdwatch.errors import BirdwatchError
from birdwatch.types import EndReason
from birdwatch.types import EventKind
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- outbox order
    id TEXT NOT NULL UNIQUE,                -- the event's id, as published
    kind TEXT NOT NULL,
    visit_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    species TEXT NOT NULL,
    score REAL NOT NULL,
    ts REAL NOT NULL,                       -- wall clock of the event
    day TEXT NOT NULL,                      -- local date the visit started, YYYY-MM-DD
    payload TEXT NOT NULL,                  -- the JSON published
    snapshot TEXT,                          -- crop JPEG to publish before the JSON, if any
    sent_ts REAL                            -- NULL until the broker acknowledged it
);
CREATE INDEX IF NOT EXISTS events_pending ON events (seq) WHERE sent_ts IS NULL;
CREATE INDEX IF NOT EXISTS events_camera_ts ON events (camera, ts);
CREATE INDEX IF NOT EXISTS events_visit ON events (visit_id, seq);
CREATE INDEX IF NOT EXISTS events_day ON events (day);
"""


class StoreError(BirdwatchError):
    """The SQLite file cannot be opened or is not birdwatch's."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    id: str
    kind: str
    camera: str
    payload: str
    snapshot: str | None
    sent_ts: float | None

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


class EventStore:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.closed = False
        try:
            if readonly:
                if not self.path.is_file():
                    raise StoreError(
                        f"no event history at {self.path} (birdwatch run creates it; store.path in the config "
                        "names it, relative to the directory birdwatch runs in)"
                    )
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")  # written before published means on disk
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("SELECT count(*) FROM events").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store.path: cannot use {self.path} as birdwatch's event database ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.closed = True

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- outbox --

    def add(self, event: VisitEvent) -> int:
        """Commit the event as pending; returns its outbox sequence number."""
        payload = json.dumps(event.to_payload(), separators=(",", ":"), ensure_ascii=False)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (id, kind, visit_id, camera, species, score, ts, day, payload, snapshot)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.kind,
                    event.visit_id,
                    event.camera,
                    event.species,
                    event.score,
                    event.ts,
                    local_day(event.first_seen),
                    payload,
                    event.snapshot,
                ),
            )
            return int(cur.lastrowid or 0)

    def mark_sent(self, event_id: str, when: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE events SET sent_ts = ? WHERE id = ? AND sent_ts IS NULL", (when or time.time(), event_id)
            )

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Unsent events after `after_seq`, oldest first."""
        return self._query(
            "SELECT seq, id, kind, camera, payload, snapshot, sent_ts FROM events"
            " WHERE sent_ts IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )

    def count_pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM events WHERE sent_ts IS NULL").fetchone()[0])

    # -- history --

    def recent(
        self, camera: str | None = None, species: str | None = None, kind: str | None = None, limit: int = 20
    ) -> list[StoredEvent]:
        """Newest first."""
        where, args = _filters(camera=camera, species=species, kind=kind)
        return self._query(
            f"SELECT seq, id, kind, camera, payload, snapshot, sent_ts FROM events {where} ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )

    def species_per_day(
        self, days: int, camera: str | None = None, today: str | None = None
    ) -> list[tuple[str, str, int]]:
        """(day, species, visits) for the last `days` days up to today, newest day first, most visits first.

        A visit counts once, under the species of its latest event and the day it started.
        """
        today = today or local_day(time.time())
        first = _day_minus(today, days - 1)
        where, args = _filters(camera=camera)
        where = f"{where} {'AND' if where else 'WHERE'} day BETWEEN ? AND ?"
        with self._lock:
            rows = self._db.execute(
                "SELECT day, species, count(*) FROM events WHERE seq IN"
                f" (SELECT max(seq) FROM events {where} GROUP BY visit_id)"
                " GROUP BY day, species ORDER BY day DESC, count(*) DESC, species",
                (*args, first, today),
            ).fetchall()
        return [(str(d), str(s), int(n)) for d, s, n in rows]

    def visits_on(self, camera: str, day: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(DISTINCT visit_id) FROM events WHERE camera = ? AND day = ?", (camera, day)
            ).fetchone()
        return int(row[0])

    def last_event(self, camera: str) -> VisitEvent | None:
        rows = self._query(
            "SELECT seq, id, kind, camera, payload, snapshot, sent_ts FROM events WHERE camera = ?"
            " ORDER BY seq DESC LIMIT 1",
            (camera,),
        )
        return event_from_payload(rows[0].data) if rows else None

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete delivered events older than the retention; unsent ones stay until they are delivered."""
        cutoff = (now or time.time()) - retention_days * 86400
        with self._tx() as db:
            cur = db.execute("DELETE FROM events WHERE sent_ts IS NOT NULL AND ts < ?", (cutoff,))
            removed = cur.rowcount
        if removed:
            log.info("event history: removed %d event(s) older than %g days", removed, retention_days)
        return removed

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [StoredEvent(*row) for row in rows]


def event_from_payload(p: dict[str, Any]) -> VisitEvent:
    """A stored payload back as a VisitEvent (for state carried over a restart)."""
    return VisitEvent(
        kind=EventKind(p["kind"]),
        visit_id=p["visit_id"],
        camera=p["camera"],
        ts=p["ts"],
        species=p["species"],
        score=p["score"],
        top_k=tuple(SpeciesScore(s["species"], s["score"]) for s in p["top_k"]),
        first_seen=p["first_seen"],
        last_seen=p["last_seen"],
        frames=p["frames"],
        box=(p["box"][0], p["box"][1], p["box"][2], p["box"][3]),
        model=p["model"],
        end_reason=EndReason(p["end_reason"]) if p.get("end_reason") else None,
        snapshot=p.get("snapshot"),
        bird_score=p.get("bird_score"),  # absent in events stored before it was told
        id=p["id"],
    )


def _filters(**values: str | None) -> tuple[str, tuple[str, ...]]:
    given = [(k, v) for k, v in values.items() if v]
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k, _ in given), tuple(v for _, v in given if v)


def _day_minus(day: str, n: int) -> str:
    t = time.mktime(time.strptime(day, "%Y-%m-%d")) + 12 * 3600  # noon: safe across DST changes
    return local_day(t - n * 86400)
