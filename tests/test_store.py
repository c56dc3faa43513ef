"""The outbox and the history in SQLite: every event on disk before it is published, marked sent on
the broker's acknowledgement, delivered in order, and still delivered by the next process after a
broker outage; `birdwatch events` and `birdwatch stats` read the same file."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.deliver import repair
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import HistoryUnavailable
from birdwatch.deliver.history import StoreError
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.outbox import Outbox
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

DAY = 86400.0


def event(
    kind: str = "new",
    species: str = "Eurasian Blue Tit",
    camera: str = "feeder",
    visit: str = "v1",
    ts: float | None = None,
) -> VisitEvent:
    ts = time.time() if ts is None else ts
    top = (SpeciesScore(species, 0.8),)
    return VisitEvent(kind, visit, camera, ts, species, 0.8, top, ts - 2, ts, 5, (1, 2, 30, 40), "m")


def rows(path: Path, sql: str) -> list[tuple]:
    """Read the database the way another process would: its own connection."""
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


class RecordingPublisher:
    """A publisher that looks into the database at the moment it is handed an event."""

    def __init__(self, db: Path, accept: bool = True) -> None:
        self.db, self.accept = db, accept
        self.seen_on_disk: list[tuple] = []
        self.handed: list[tuple[str, Callable[[], None], bytes | None]] = []

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        if not self.accept:
            return False
        event_id = json.loads(payload)["id"]
        self.seen_on_disk += rows(self.db, f"SELECT id, sent_ts FROM events WHERE id = '{event_id}'")
        self.handed.append((event_id, on_sent, snapshot))
        return True


def test_an_event_is_on_disk_before_it_is_published(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    publisher = RecordingPublisher(db)
    outbox = Outbox(store, publisher)
    e = event()
    outbox.submit(e)
    assert publisher.seen_on_disk == [(e.id, None)], "committed, and not yet sent, when handed over"
    assert store.count_pending() == 1
    publisher.handed[0][1]()  # the broker's acknowledgement
    assert rows(db, "SELECT id FROM events WHERE sent_ts IS NOT NULL") == [(e.id,)]
    assert store.count_pending() == 0 and outbox.in_flight == 0


def test_refused_events_wait_in_order(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    publisher = RecordingPublisher(db, accept=False)
    outbox = Outbox(store, publisher)
    events = [event(visit=f"v{i}") for i in range(4)]
    for e in events:
        outbox.submit(e)
    assert publisher.handed == [] and store.count_pending() == 4
    publisher.accept = True
    assert outbox.pump() == 4
    assert [h[0] for h in publisher.handed] == [e.id for e in events]
    assert outbox.pump() == 0, "handed once per process"


def test_in_flight_is_bounded(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    publisher = RecordingPublisher(db)
    outbox = Outbox(EventStore(db), publisher, max_in_flight=2)
    for i in range(5):
        outbox.submit(event(visit=f"v{i}"))
    assert len(publisher.handed) == 2
    publisher.handed[0][1]()
    outbox.pump()
    assert len(publisher.handed) == 3


def test_snapshot_file_goes_with_its_event(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    crop = tmp_path / "crop.jpg"
    crop.write_bytes(b"\xff\xd8jpeg")
    publisher = RecordingPublisher(db)
    outbox = Outbox(EventStore(db), publisher)
    outbox.submit(dataclasses.replace(event(), snapshot=str(crop)))
    assert publisher.handed[0][2] == b"\xff\xd8jpeg"


def mqtt_sink(broker: MosquittoBroker) -> MqttSink:
    cfg = MqttConfig(host=broker.host, port=broker.port, topic_prefix="outbox", reconnect_max_s=1)
    return MqttSink(cfg, None, HomeAssistantConfig(discovery=False))


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_marked_sent_on_the_brokers_acknowledgement_only(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], tmp_path: Path
) -> None:
    mosquitto.stop()
    store = EventStore(tmp_path / "bw.db")
    sink = mqtt_sink(mosquitto)
    outbox = Outbox(store, sink)
    sink.start()
    try:
        events = [event(visit=f"v{i}") for i in range(3)]
        for e in events:
            outbox.submit(e)
        time.sleep(1.5)  # paho tries to connect meanwhile; nothing can be acknowledged
        assert store.count_pending() == 3 and outbox.in_flight == 3
        mosquitto.start()
        collector = mqtt_collector("outbox/#")
        wait_until(lambda: store.count_pending() == 0, timeout=20)
        got = collector.wait_for(lambda m: m.topic == "outbox/feeder/event", timeout=10, count=3)
        assert [json.loads(m.payload)["id"] for m in got] == [e.id for e in events]
        assert outbox.flush(5)
    finally:
        sink.stop()
        store.close()


@pytest.mark.timeout(60)
def test_the_next_process_sends_what_was_pending(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], tmp_path: Path
) -> None:
    """birdwatch stopped while the broker was away: the next start sends those events first, in order."""
    db = tmp_path / "bw.db"
    mosquitto.stop()
    first_store = EventStore(db)
    first_sink = mqtt_sink(mosquitto)
    first = Outbox(first_store, first_sink)
    first_sink.start()
    events = [event(visit=f"v{i}") for i in range(5)]
    for e in events:
        first.submit(e)
    assert not first.flush(0.5)
    first_sink.stop()
    first_store.close()

    mosquitto.start()
    collector = mqtt_collector("outbox/#")
    store = EventStore(db)
    sink = mqtt_sink(mosquitto)
    outbox = Outbox(store, sink)
    assert store.count_pending() == 5
    sink.start()
    try:
        outbox.pump()
        # A new event comes once the pipeline runs, on a connected sink; it is handed over once the held
        # ones are acknowledged (the decide thread pumps every tick; flush does here).
        assert sink.connected.wait(10)
        later = event(visit="v-after-restart")
        outbox.submit(later)
        assert outbox.flush(10) and store.count_pending() == 0
        got = collector.wait_for(lambda m: m.topic == "outbox/feeder/event", timeout=20, count=6)
        assert [json.loads(m.payload)["id"] for m in got] == [e.id for e in [*events, later]]
    finally:
        sink.stop()
        store.close()


# ---- history --------------------------------------------------------------------------------


def fill(store: EventStore) -> None:
    now = time.time()
    sent = []
    for visit, species, camera, ago in [("a", "Great Tit", "feeder", 0), ("b", "Great Tit", "feeder", 0),
                                        ("c", "Eurasian Jay", "window", 0), ("d", "Great Tit", "feeder", DAY)]:  # fmt: skip
        sent.append(event("new", "Coal Tit", camera, visit, now - ago))
        sent.append(event("end", species, camera, visit, now - ago + 1))
    for e in sent:
        store.add(e)
        store.mark_sent(e.id)


def test_stats_count_each_visit_once_by_its_final_species(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "bw.db")
    fill(store)
    today = time.strftime("%Y-%m-%d")
    yesterday = time.strftime("%Y-%m-%d", time.localtime(time.time() - DAY))
    assert store.species_per_day(7) == [
        (today, "Great Tit", 2),
        (today, "Eurasian Jay", 1),
        (yesterday, "Great Tit", 1),
    ]
    assert store.species_per_day(1, camera="window") == [(today, "Eurasian Jay", 1)]
    assert store.visits_on("feeder", today) == 2


def test_recent_filters_and_order(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "bw.db")
    fill(store)
    assert [r.kind for r in store.recent(limit=3)] == ["end", "new", "end"]
    assert {r.data["camera"] for r in store.recent(camera="window")} == {"window"}
    assert [r.data["visit_id"] for r in store.recent(species="Eurasian Jay")] == ["c"]


def test_retention_removes_old_delivered_events_but_never_pending_ones(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "bw.db")
    old_sent, old_pending, fresh = event(ts=time.time() - 40 * DAY), event(ts=time.time() - 40 * DAY), event()
    for e in (old_sent, old_pending, fresh):
        store.add(e)
    store.mark_sent(old_sent.id)
    store.mark_sent(fresh.id)
    assert store.prune(retention_days=30) == 1
    assert {r.id for r in store.recent(limit=10)} == {old_pending.id, fresh.id}


def refusing_history(
    monkeypatch: pytest.MonkeyPatch, after_add: Callable[[VisitEvent], None] | None = None
) -> list[bool]:
    """EventStore.add refuses, as the history does on a full disk, while the returned flag is set."""
    refuse = [True]
    add = EventStore.add

    def refusing(self: EventStore, e: VisitEvent, sent_ts: float | None = None) -> int:
        if refuse[0]:
            raise HistoryUnavailable("event history: the disk is full")
        seq = add(self, e, sent_ts)
        if after_add is not None:
            after_add(e)
        return seq

    monkeypatch.setattr(EventStore, "add", refusing)
    return refuse


def test_an_event_the_history_refuses_is_handed_from_memory_once_and_stored_as_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    publisher = RecordingPublisher(db)
    outbox = Outbox(store, publisher)
    refuse = refusing_history(monkeypatch)
    first, second = event(visit="a"), event(visit="b")
    outbox.submit(first)
    outbox.submit(second)
    assert [h[0] for h in publisher.handed] == [first.id, second.id], "told at once, in order"
    assert outbox.held == 2 and publisher.seen_on_disk == []
    publisher.handed[0][1]()  # the broker acknowledges the first while the disk still refuses

    refuse[0] = False
    outbox.pump()
    stored = rows(db, "SELECT id, sent_ts IS NOT NULL FROM events ORDER BY seq")
    assert stored == [(first.id, 1), (second.id, 0)], "stored in order, the first as delivered"
    assert outbox.pump() == 0 and len(publisher.handed) == 2, "and not handed again"
    publisher.handed[1][1]()  # the second's acknowledgement comes after it was stored
    assert store.count_pending() == 0 and outbox.held == 0 and outbox.dropped == 0


def test_an_acknowledgement_that_comes_while_the_held_event_is_stored_does_not_send_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    publisher = RecordingPublisher(db)
    outbox = Outbox(store, publisher)

    def acked_as_it_is_written(e: VisitEvent) -> None:
        [on_sent] = [ack for event_id, ack, _ in publisher.handed if event_id == e.id]
        on_sent()  # the broker's acknowledgement arrives just as the row is written, still unsent

    refuse = refusing_history(monkeypatch, after_add=acked_as_it_is_written)
    held = [event(visit="a"), event(visit="b")]
    for e in held:
        outbox.submit(e)
    refuse[0] = False
    outbox.pump()
    outbox.pump()
    assert [h[0] for h in publisher.handed] == [e.id for e in held], "each handed once"
    assert store.count_pending() == 0, "and marked sent"


def test_a_repair_cut_short_by_a_full_disk_leaves_the_damaged_file_and_is_done_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    for n in range(30):
        store.add(event(visit=f"v{n}"), sent_ts=1.0)
    store.close()
    db.write_bytes(b"#!/bin/sh\n" + db.read_bytes()[10:])  # no longer SQLite
    damaged = db.read_bytes()
    recover = repair.recover
    full = [True]

    def full_disk(source: Path, into: sqlite3.Connection) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return recover(source, into)

    monkeypatch.setattr(repair, "recover", full_disk)
    store = EventStore(db, retry_s=0.0)
    assert store.problem and "repairing it failed" in store.problem and "the disk is full" in store.problem
    assert db.read_bytes() == damaged and not list(tmp_path.glob("*.repairing*")), "left as it was"
    full[0] = False
    store.add(later := event(visit="later"))  # the next write repairs it, then goes through
    assert store.writable and len(store.set_aside) == 1 and store.set_aside[0].read_bytes() == damaged
    assert [e.id for e in store.pending()] == [later.id]
    store.close()


def test_a_repair_killed_between_its_renames_is_finished_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    fresh = EventStore(repair.repairing_path(db))  # complete: renamed only once committed
    fresh.add(e := event(), sent_ts=1.0)
    fresh.close()
    (tmp_path / "bw.db.damaged-20261205-120000").write_text("the damaged one, moved aside")
    store = EventStore(db)
    assert store.recent()[0].id == e.id and not repair.repairing_path(db).exists()
    store.close()


def test_a_history_damaged_under_the_running_service_is_repaired_at_the_first_error(tmp_path: Path) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    for n in range(300):
        store.add(event(visit=f"v{n}"), sent_ts=1.0)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with db.open("r+b") as f:  # a page of garbage where the service's own pages are
            f.seek(4096 * 4)
            f.write(random.Random(4).randbytes(4096))
        other.execute("PRAGMA user_version=1")  # a write: the service's cached pages are read again
    later = event(visit="later")
    store.add(later)  # hits the damage: repaired, then written

    [kept] = store.set_aside
    assert kept.exists() and store.writable
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "SELECT count(*) FROM events WHERE sent_ts IS NOT NULL") == [(300,)], "every event saved"
    assert [e.id for e in store.pending()] == [later.id]


def test_a_file_that_is_not_a_database_is_set_aside_and_a_fresh_history_takes_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bw.db"
    bad.write_text("hello")
    with pytest.raises(StoreError, match=r"cannot read .*bw.db as birdwatch's event history .*repairs it"):
        EventStore(bad, readonly=True)  # `birdwatch events` leaves it alone
    store = EventStore(bad)
    assert store.writable and store.count_pending() == 0
    [kept] = store.set_aside
    assert kept.read_text() == "hello" and kept.name.startswith("bw.db.damaged-"), "kept, never deleted"


def birdwatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birdwatch", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(120)
def test_cli_events_and_stats(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "birdwatch.db")
    fill(store)
    store.close()
    (tmp_path / "config.yaml").write_text("cameras:\n  - {name: feeder, url: rtsp://cam/x}\n")

    out = birdwatch("events", "--config", "config.yaml", "--camera", "feeder", "--limit", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(" feeder " in line for line in lines)
    assert "end" in lines[0] and "Great Tit" in lines[0] and "visit d" in lines[0]

    out = birdwatch("events", "--db", "birdwatch.db", "--species", "Eurasian Jay", "--json", cwd=tmp_path)
    assert [json.loads(line)["visit_id"] for line in out.stdout.splitlines()] == ["c"]

    out = birdwatch("stats", "--db", "birdwatch.db", "--days", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].split() == [time.strftime("%Y-%m-%d"), "Great", "Tit", "2"]

    out = birdwatch("stats", "--db", "birdwatch.db", "--json", cwd=tmp_path)
    assert {"species": "Eurasian Jay", "visits": 1, "day": time.strftime("%Y-%m-%d")} in json.loads(out.stdout)


@pytest.mark.timeout(60)
def test_cli_without_history_says_where_it_looked(tmp_path: Path) -> None:
    out = birdwatch("events", "--db", "nowhere.db", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("birdwatch: error: no event history at nowhere.db (birdwatch run creates it")
    assert "Traceback" not in out.stderr and not (tmp_path / "nowhere.db").exists()
    out = birdwatch("stats", "--days", "0", "--db", "x.db", cwd=tmp_path)
    assert out.returncode == 2 and "0 is too small" in out.stderr


def test_a_quick_check_that_runs_out_of_time_holds_up_no_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "bw.db"
    store = EventStore(db)
    store.add_many([event(visit=f"v{n}") for n in range(3000)])
    store.close()
    monkeypatch.setattr(repair, "QUICK_CHECK_S", 0.0)  # a big history on a slow card
    with caplog.at_level(logging.INFO):
        assert repair.damage(db) is None, "no verdict: the start goes on"
    assert "quick_check stopped after" in caplog.text
