"""The visit book: one row per visit, kept with its events in one transaction, so years of history are
read without grouping every event. It follows the visit's latest event, keeps its best crop, goes with
retention, and is built from the events for a history from before it and after a repair."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from birdwatch.deliver import visitbook
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import StoreError
from birdwatch.types import EndReason
from birdwatch.types import EventKind
from birdwatch.types import VisitEvent
from tests.test_store import event

DAY = 86400.0


def told(kind: str, visit: str, ts: float, species: str = "Great Tit", snapshot: str | None = None) -> VisitEvent:
    e = event(kind=kind, species=species, visit=visit, ts=ts)
    end = EndReason.TIMEOUT if kind == EventKind.END else None
    return dataclasses.replace(e, snapshot=snapshot, end_reason=end, frames=int(ts) % 50 + 3)


def book(db: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute(
            "SELECT visit_id, species, snapshot, ended, events, frames FROM visits ORDER BY first_seen"
        ).fetchall()


def test_a_visits_row_follows_its_latest_event_and_keeps_its_best_crop(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    now = time.mktime(time.strptime("2026-11-24 12:00", "%Y-%m-%d %H:%M"))  # local noon: no midnight between
    store.add(told("new", "v1", now, "Great Tit", snapshot="a.jpg"))
    store.add(told("update", "v1", now + 5, "Eurasian Blue Tit"))  # the picture did not improve
    store.add(told("end", "v1", now + 9, "Eurasian Blue Tit"))
    store.add(told("new", "v2", now + 60, "Robin", snapshot="b.jpg"))
    [v1, v2] = book(db)
    assert v1[:5] == ("v1", "Eurasian Blue Tit", "a.jpg", 1, 3), "the last verdict, the best crop so far, ended"
    assert v2[:5] == ("v2", "Robin", "b.jpg", 0, 1)
    assert store.species_per_day(1, today="2026-11-24") == [
        ("2026-11-24", "Eurasian Blue Tit", 1),
        ("2026-11-24", "Robin", 1),
    ], "a visit counts once, under its last verdict"
    store.close()


def test_a_history_from_before_the_book_gets_it_built_from_its_events(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    now = time.time()
    for n in range(20):
        store.add(told("new", f"v{n}", now + n * 60, snapshot=f"{n}.jpg"))
        store.add(told("end", f"v{n}", now + n * 60 + 9, species="Robin" if n % 3 else "Great Tit"))
    expected = book(db)
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as con:  # as schema 1 left it
        con.execute("DROP TABLE visits")
        con.execute("PRAGMA user_version=1")
        con.commit()
    with pytest.raises(StoreError, match="from an older birdwatch: `birdwatch run` upgrades it"):
        EventStore(db, readonly=True)  # `birdwatch stats` says what to do, in one line
    EventStore(db).close()
    assert book(db) == expected


def test_retention_takes_the_visits_whose_events_it_took(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    now = time.time()
    for n, age in enumerate([400, 10]):
        store.add(told("new", f"v{n}", now - age * DAY), sent_ts=now)
        store.add(told("end", f"v{n}", now - age * DAY + 9), sent_ts=now)
    store.prune(retention_days=365)
    assert [row[0] for row in book(db)] == ["v1"]
    store.close()


def test_a_repaired_history_has_its_book_rebuilt_from_the_saved_events(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    now = time.time()
    for n in range(30):
        store.add(told("new", f"v{n}", now + n), sent_ts=now)
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.write_bytes(db.read_bytes()[: len(db.read_bytes()) // 2 + 100])  # truncated by a power cut
    store = EventStore(db)
    assert store.set_aside, "repaired"
    with contextlib.closing(sqlite3.connect(db)) as con:
        events = {row[0] for row in con.execute("SELECT DISTINCT visit_id FROM events")}
    assert {row[0] for row in book(db)} == events
    store.close()


def test_the_species_gallery_and_the_hour_chart_read_the_book(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "bw.db")
    noon = time.mktime(time.strptime("2026-11-24 12:00", "%Y-%m-%d %H:%M"))
    store.add_many(
        [
            told("end", "a", noon, "Robin", snapshot="robin-low.jpg"),
            dataclasses.replace(told("end", "b", noon + 3600, "Robin", snapshot="robin-best.jpg"), score=0.95),
            told("end", "c", noon + 7200, "Robin"),  # no picture: never the best one
            told("end", "d", noon - 3 * 3600, "Great Tit"),
        ]
    )
    with contextlib.closing(sqlite3.connect(tmp_path / "bw.db")) as db:
        gallery = visitbook.species_seen(db)
        hours = visitbook.by_hour(db, 1, today="2026-11-24")
    assert [(s.species, s.visits, s.best_snapshot) for s in gallery] == [
        ("Robin", 3, "robin-best.jpg"),
        ("Great Tit", 1, None),
    ]
    assert gallery[0].first_seen == noon - 2 and gallery[0].last_seen == noon + 7200
    assert [h for h, n in enumerate(hours) if n] == [8, 11, 12, 13], "each by the local hour it began (ts - 2 s)"
    store.close()
