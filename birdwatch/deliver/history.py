"""SQLite: the event history, which is also the outbox's table (deliver/outbox.py).

Every event is written (and committed, `synchronous=FULL`) before it is handed to MQTT, and marked
sent when the broker acknowledges it (QoS 1 PUBACK). Rows still unsent at start-up, from a broker
outage or a crash, go out first, in the order they were made. Delivered rows are the history that
`birdwatch events` and `birdwatch stats` read, kept for `store.retention_days`.

A history the disk damages, fills or makes read-only never stops the service: see EventStore.
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
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import TypeVar

from birdwatch.deliver import corrections
from birdwatch.deliver import embeddings
from birdwatch.deliver import repair
from birdwatch.deliver import visitbook
from birdwatch.errors import BirdwatchError
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4  # 2: the visit book (visitbook.py); 3: corrections (corrections.py); 4: embeddings.py

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


class HistoryUnavailable(StoreError):
    """The history refuses reads and writes now (a full, read-only or failing disk); tried again later."""


T = TypeVar("T")


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
    """The history file. Read-only (the CLI): it must open, else StoreError. Writable (the service): it heals
    and waits out a disk that refuses, and never stops the service for it:

    - A damaged file (at open, or a corruption error later) is moved aside and its readable events copied
      into a fresh history (deliver/repair.py); one ERROR line says where it went and how many were saved.
    - A disk that refuses (full, read-only, failing) makes every call raise HistoryUnavailable at once;
      `problem` says why, and the file is opened again at most every `retry_s`.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, retry_s: float = 60.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.retry_s = retry_s
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self.closed = False
        self.problem: str | None = None  # why the history refuses writes now, or None
        self._retry_at = 0.0  # monotonic: when to open it again
        self.set_aside: list[Path] = []  # damaged files moved aside by this process
        self._opened = False  # once: later opens never create the file
        self._damaged: str | None = None  # found damaged, not repaired yet
        if readonly:
            self._db = self._open_readonly()
        elif self.path.is_dir():
            raise StoreError(f"store.path: {self.path} is a folder; name a file in it, e.g. {self.path}/birdwatch.db")
        else:
            self._open()

    @property
    def writable(self) -> bool:
        return self.problem is None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            self.closed = True

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(
                f"no event history at {self.path} (birdwatch run creates it; store.path in the config "
                "names it, relative to the directory birdwatch runs in)"
            )
        try:
            db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("SELECT count(*) FROM events").fetchone()
            old = db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION
        except sqlite3.Error as exc:
            hint = "; birdwatch run repairs it at its next start" if repair.is_damage(exc) else ""
            raise StoreError(
                f"store.path: cannot read {self.path} as birdwatch's event history ({exc}){hint}"
            ) from None
        if old:
            db.close()
            raise StoreError(
                f"{self.path} is a history from an older birdwatch: `birdwatch run` upgrades it as it starts"
            )
        return db

    def _connect(self, path: Path, create: bool = True) -> sqlite3.Connection:
        """Open for writing. Only the first open (and a repair) may create the file: one that vanished later
        is a disk unmounted under the service, and a new history beneath its mount point would hide events."""
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # committed means on disk: a power cut keeps it
            db.executescript(_SCHEMA + visitbook.SCHEMA + corrections.SCHEMA + embeddings.SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                with _transaction(db):
                    corrections.add_columns(db)
                    if version < 2:  # a history from before the visit book: built once, from its events
                        visitbook.rebuild(db)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM events").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def check(self) -> None:
        """The decide thread, every tick: a history that refused writes is opened again when due (and repaired
        if it is damaged), so the problem clears without waiting for the next bird."""
        with self._lock:
            if not self.closed and not self.readonly and self._db is None and time.monotonic() >= self._retry_at:
                self._open()

    @property
    def repairs(self) -> int:
        return len(self.set_aside)

    def _open(self) -> None:
        """Open the file for writing, repairing it first if it is damaged (checked at the first open and after a
        corruption error only: a whole-file check every retry would wear a failing card). A disk that refuses
        leaves it closed, `problem` set, tried again after retry_s; after a refusal, the problem clears only once
        a write has gone through."""
        db: sqlite3.Connection | None = None
        try:
            if not self._opened:
                repair.finish_interrupted(self.path)
                self._damaged = repair.damage(self.path)
            if self._damaged is not None:
                self._repair(self._damaged)
                self._damaged = None
            db = self._connect(self.path, create=not self._opened)
            self._opened = True
            if self.problem is not None:
                with _transaction(db):  # a write: the disk takes them again
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            damaged = f"it is damaged ({self._damaged}) and repairing it failed: " if self._damaged else ""
            self._refused(exc, damaged)
            return
        self._db = db
        if self.problem is not None:
            log.warning("event history %s takes writes again", self.path)
            self.problem = None

    def _repair(self, damaged: str) -> None:
        """Copy the readable events into a fresh history built beside the damaged one, then swap the two: the
        damaged file to `<name>.damaged-<time>`, the fresh one into its place. Cut short (a full disk, a kill),
        it leaves the damaged file where it was, to be repaired again."""
        fresh = repair.repairing_path(self.path)
        repair.remove_with_sidecars(fresh)  # what a repair cut short left
        try:
            db = self._connect(fresh)
            try:
                saved = repair.recover(self.path, db)
                with _transaction(db):
                    visitbook.rebuild(db)
                    corrections.reapply(db)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the one file that is moved
            finally:
                db.close()
        except BaseException:
            repair.remove_with_sidecars(fresh)
            raise
        moved = repair.set_aside(self.path)
        repair.remove_with_sidecars(fresh, keep_main=True)
        fresh.rename(self.path)
        self.set_aside.append(moved)
        log.error(
            "event history %s was damaged (%s): moved aside to %s, %d event(s) saved into a fresh history",
            self.path,
            damaged,
            moved,
            saved,
        )

    def _refused(self, exc: BaseException, context: str = "") -> None:
        first = self.problem is None
        self.problem = context + repair.reason(exc)
        self._retry_at = time.monotonic() + self.retry_s
        self._close_db()
        if first:
            log.error(
                "event history %s refuses writes: %s; events are told live and kept in memory until it takes them "
                "(checked every %.0f s)",
                self.path,
                self.problem,
                self.retry_s,
            )

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _run(self, work: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """`work` on the connection, under the lock. A refusing disk raises HistoryUnavailable; only writes (on
        the decide thread) open the file again, and repair it after a corruption error, then try `work` once
        more; a read (a metrics scrape) never does."""
        with self._lock:
            if self.closed:
                raise StoreError(f"event history {self.path} is closed")
            if self._db is None and write and time.monotonic() >= self._retry_at:
                self._open()
            if self._db is None:
                why = self.problem or f"it is damaged ({self._damaged}), repaired at the next write"
                raise HistoryUnavailable(f"event history {self.path}: {why}")
            try:
                return work(self._db)
            except sqlite3.IntegrityError:
                raise  # the caller's (an event stored already)
            except (sqlite3.Error, OSError) as exc:
                if self.readonly:
                    raise
                if not repair.is_damage(exc):
                    self._refused(exc)
                else:
                    self._damaged, self._retry_at = str(exc), 0.0
                    self._close_db()
                    if write:
                        self._open()
                    if self._db is not None:
                        try:
                            return work(self._db)  # on the repaired history
                        except (sqlite3.Error, OSError) as again:
                            self._refused(again)
                why = self.problem or f"it is damaged ({self._damaged}), repaired at the next write"
                raise HistoryUnavailable(f"event history {self.path}: {why}") from None

    # -- outbox --

    def add(self, event: VisitEvent, sent_ts: float | None = None) -> int:
        """Commit the event (pending, or delivered already at `sent_ts`); returns its outbox sequence number."""

        def insert(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return _insert(db, event, sent_ts)

        return self._run(insert, write=True)

    def add_many(self, events: Iterable[VisitEvent], sent_ts: float | None = None) -> int:
        """Many events in one transaction (a bulk load: the bench's years of history); returns how many."""

        def insert(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return sum(1 for event in events if _insert(db, event, sent_ts))

        return self._run(insert, write=True)

    def mark_sent(self, event_id: str, when: float | None = None) -> None:
        def update(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "UPDATE events SET sent_ts = ? WHERE id = ? AND sent_ts IS NULL", (when or time.time(), event_id)
                )

        self._run(update, write=True)

    def pending(self, after_seq: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Unsent events after `after_seq`, oldest first."""
        return self._query(
            "SELECT seq, id, kind, camera, payload, snapshot, sent_ts FROM events"
            " WHERE sent_ts IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )

    def count_pending(self) -> int:
        return int(self._one("SELECT count(*) FROM events WHERE sent_ts IS NULL", ())[0])

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

        A visit counts once, under the species it was last told with and the day it started.
        """
        return self._run(lambda db: visitbook.per_day(db, days, camera, today))

    def visits_on(self, camera: str, day: str) -> int:
        row = self._one("SELECT count(DISTINCT visit_id) FROM events WHERE camera = ? AND day = ?", (camera, day))
        return int(row[0])

    def last_event(self, camera: str) -> VisitEvent | None:
        rows = self._query(
            "SELECT seq, id, kind, camera, payload, snapshot, sent_ts FROM events WHERE camera = ?"
            " ORDER BY seq DESC LIMIT 1",
            (camera,),
        )
        return VisitEvent.from_payload(rows[0].data) if rows else None

    def run(self, work: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """`work` on the history's connection, as its own queries run: for the tables other rooms keep in it."""
        return self._run(work, write)

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete delivered events older than the retention; unsent ones stay until they are delivered."""
        cutoff = (now or time.time()) - retention_days * 86400

        def delete(db: sqlite3.Connection) -> int:
            with _transaction(db):
                removed = db.execute("DELETE FROM events WHERE sent_ts IS NOT NULL AND ts < ?", (cutoff,)).rowcount
                visitbook.prune(db, cutoff)
                embeddings.prune(db)
            return int(removed)

        removed = self._run(delete, write=True)
        if removed:
            log.info("event history: removed %d event(s) older than %g days", removed, retention_days)
        return removed

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[StoredEvent]:
        rows = self._run(lambda db: db.execute(sql, args).fetchall())
        return [StoredEvent(*row) for row in rows]

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        row: tuple[Any, ...] = self._run(lambda db: db.execute(sql, args).fetchone())
        return row


def _insert(db: sqlite3.Connection, event: VisitEvent, sent_ts: float | None) -> int:
    """The event and its visit's row, inside the caller's transaction; returns its sequence number."""
    cur = db.execute(
        "INSERT INTO events (id, kind, visit_id, camera, species, score, ts, day, payload, snapshot, sent_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.kind,
            event.visit_id,
            event.camera,
            event.species,
            event.score,
            event.ts,
            local_day(event.first_seen),
            event.to_json(),
            event.snapshot,
            sent_ts,
        ),
    )
    visitbook.record(db, event)
    if event.embedding is not None:
        embeddings.keep(db, event.visit_id, event.embedding)
    return int(cur.lastrowid or 0)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # a failed write may have rolled it back already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _filters(**values: str | None) -> tuple[str, tuple[str, ...]]:
    given = [(k, v) for k, v in values.items() if v]
    if not given:
        return "", ()
    return "WHERE " + " AND ".join(f"{k} = ?" for k, _ in given), tuple(v for _, v in given if v)
