"""SQLite: the outbox and the event history, one table.

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
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol

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
        return json.loads(self.payload)


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


class Publisher(Protocol):
    """What the outbox needs of a sink (mqtt.MqttSink, mqtt.LogSink)."""

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        """Hand over one event (and its crop JPEG); False if it cannot be taken now. Calls on_sent on the ack."""
        ...


class Outbox:
    """Store first, then publish; acknowledged events are marked sent.

    Events are handed to the publisher strictly in outbox order, at most `max_in_flight` unacknowledged
    at a time (the rest wait in SQLite, not in memory, however long the broker is away). A handed event
    stays with the publisher (paho keeps QoS 1 messages across reconnects) until acknowledged, so it is
    handed once per process; a new process hands every unsent row again, oldest first.

    `on_sent` runs on the publisher's delivery thread. If marking the row fails there (a full disk, a
    lock held too long), the event is still acknowledged: it is not handed again, and marking it is
    tried again at the next pump; should the process end first, the next one sends it again (at least
    once).
    """

    def __init__(self, store: EventStore, publisher: Publisher, max_in_flight: int = 100) -> None:
        self.store = store
        self.publisher = publisher
        self.max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._pumping = threading.Lock()  # one hand-over at a time, so the order holds across threads
        self._in_flight: set[str] = set()
        self._unmarked: dict[str, float] = {}  # acknowledged, not yet marked sent: event id -> when acked
        self._handed_seq = 0  # every row up to here was handed in this process
        self.sent = 0
        self.mark_failures = 0

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)

    @property
    def unmarked(self) -> int:
        """Acknowledged by the broker, not yet marked sent in SQLite (its write failed; tried again)."""
        with self._cond:
            return len(self._unmarked)

    def submit(self, event: VisitEvent) -> None:
        self.store.add(event)
        self.pump()

    def pump(self) -> int:
        """Hand over what is pending, in order; returns how many were handed."""
        self._mark_unmarked()
        with self._pumping:
            return self._pump()

    def _pump(self) -> int:
        handed = 0
        while True:
            with self._cond:
                room = self.max_in_flight - len(self._in_flight)
            if room <= 0:
                return handed
            rows = self.store.pending(after_seq=self._handed_seq, limit=room)
            if not rows:
                return handed
            for row in rows:
                with self._cond:
                    self._in_flight.add(row.id)
                try:
                    taken = self.publisher.publish_event(
                        row.camera, row.payload, self._on_sent(row.id), _read(row.snapshot)
                    )
                except BaseException:
                    with self._cond:
                        self._in_flight.discard(row.id)
                    raise
                if not taken:
                    with self._cond:
                        self._in_flight.discard(row.id)
                    return handed  # refused (publisher queue full): the rest stays pending, in order
                self._handed_seq = row.seq
                handed += 1

    def flush(self, timeout: float) -> bool:
        """Hand over everything (as acknowledgements make room) and wait for the acknowledgements; True
        if nothing is left unsent."""
        deadline = time.monotonic() + timeout
        while True:
            handed = self.pump()
            with self._cond:
                if not self._in_flight and not handed:
                    break  # nothing out, nothing more taken
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._in_flight:
                    self._cond.wait(left)  # woken by each acknowledgement
        self._mark_unmarked()
        return self.store.count_pending() == 0

    def _on_sent(self, event_id: str) -> Callable[[], None]:
        def sent() -> None:  # the publisher's delivery thread (LogSink: the caller's)
            when = time.time()
            try:
                self.store.mark_sent(event_id, when)
            except Exception as exc:  # sqlite3.Error mostly (a full disk, a lock held too long): keep it
                self._keep_unmarked(event_id, when, exc)
            with self._cond:
                self._in_flight.discard(event_id)
                self.sent += 1
                self._cond.notify_all()

        return sent

    def _keep_unmarked(self, event_id: str, when: float, exc: Exception) -> None:
        self.mark_failures += 1
        with self._cond:
            first = not self._unmarked
            self._unmarked[event_id] = when
        if first:
            log.warning(
                "event history: the broker has event %s but marking it sent failed (%s); trying again, it is not "
                "published again meanwhile",
                event_id[:8],
                exc,
            )

    def _mark_unmarked(self) -> None:
        """Mark what the broker acknowledged while SQLite refused the write; quietly, until it works."""
        with self._cond:
            todo = dict(self._unmarked)
        if not todo:
            return
        done = 0
        for event_id, when in todo.items():
            try:
                self.store.mark_sent(event_id, when)
            except Exception:
                break  # still failing: next pump
            with self._cond:
                self._unmarked.pop(event_id, None)
            done += 1
        if done:
            log.info("event history: %d acknowledged event(s) marked sent after all", done)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:  # removed by retention meanwhile: the event goes out without its picture
        return None


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
        box=tuple(p["box"]),  # type: ignore[arg-type]
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
