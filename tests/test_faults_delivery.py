"""Delivery faults a box nobody watches meets, against a real mosquitto: a failing acknowledgement or a
hostile retained message must not stop delivery, paho's network loop ending must show and heal, an
outage must neither replay old state nor fill memory, and nothing is published twice or lost
to QoS 0; snapshots are on disk before their event."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.publish as paho_publish
import pytest

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.config import MqttTlsConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import parse_config
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.deliver import mqtt as mqtt_module
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.outbox import Outbox
from birdwatch.errors import ConfigError
from birdwatch.types import CameraState
from birdwatch.types import VisitEvent
from tests.support.process import wait_until
from tests.support.proxy import TcpProxy
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.test_mqtt import Acks
from tests.test_mqtt import make_event
from tests.test_mqtt import payload
from tests.test_snapshots import event as snapshot_event
from tests.test_snapshots import frame

Collector = Callable[..., MqttCollector]


def sink_of(broker: MosquittoBroker, prefix: str, *, discovery: str | None = None, **overrides: object) -> MqttSink:
    """A sink with a client id of its own (a leftover with the same id would take the session over)."""
    fields: dict[str, object] = {"reconnect_max_s": 1, "client_id": f"{prefix}-{uuid.uuid4().hex[:8]}", **overrides}
    cfg = MqttConfig(host=broker.host, port=broker.port, topic_prefix=prefix, **fields)  # type: ignore[arg-type]
    ha = HomeAssistantConfig(discovery_prefix=discovery) if discovery else HomeAssistantConfig(discovery=False)
    return MqttSink(cfg, None, ha)


def sink_of_proxy(network: TcpProxy, prefix: str) -> MqttSink:
    """A sink that reaches the broker through `network`, which the test can cut."""
    cfg = MqttConfig(
        host=network.host,
        port=network.port,
        topic_prefix=prefix,
        reconnect_max_s=1,
        client_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
    )
    return MqttSink(cfg, None, HomeAssistantConfig(discovery=False))


def fail_first_marks(store: EventStore, monkeypatch: pytest.MonkeyPatch, n: int, error: str) -> list[str]:
    """store.mark_sent raises sqlite3.OperationalError(error) for its first n calls, as SQLite does on a
    full disk or a lock held past busy_timeout; returns the ids it was called with."""
    real = store.mark_sent
    calls: list[str] = []

    def mark_sent(event_id: str, when: float | None = None) -> None:
        calls.append(event_id)
        if len(calls) <= n:
            raise sqlite3.OperationalError(error)
        real(event_id, when)

    monkeypatch.setattr(store, "mark_sent", mark_sent)
    return calls


def event_ids(collector: MqttCollector) -> list[str]:
    return [json.loads(m.payload)["id"] for m in collector.messages if m.topic.endswith("/event")]


def state(visits: int, present: bool = False) -> CameraState:
    return CameraState("feeder", present, "Great Tit", 0.8, visits, time.strftime("%Y-%m-%d"), "v1", time.time())


def visits_of(message: object) -> int:
    return int(json.loads(message.payload)["visits_today"])  # type: ignore[attr-defined]


def held_by_paho(sink: MqttSink) -> int:
    """Bytes paho holds for the broker: QoS 1 messages until acknowledged, packets not yet written."""
    client = sink.client
    messages = sum(len(m.payload) for m in list(client._out_messages.values()))
    packets = sum(len(p["packet"]) for p in list(client._out_packet))
    return messages + packets


def events_with_picture(tmp_path: Path, n: int, size: int) -> list[VisitEvent]:
    crop = tmp_path / "crop.jpg"
    crop.write_bytes(b"\xff\xd8" + os.urandom(size))
    return [dataclasses.replace(make_event(species=f"Species {i}"), snapshot=str(crop)) for i in range(n)]


# ---- fault 2: a callback that raises must not end delivery -------------------------------------------


@pytest.mark.timeout(60)
def test_an_acknowledgement_the_database_cannot_record_stops_no_delivery(
    mosquitto: MosquittoBroker, mqtt_collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database past busy_timeout just as the first PUBACK comes in."""
    store = EventStore(tmp_path / "bw.db")
    calls = fail_first_marks(store, monkeypatch, 1, "database is locked")
    sink = sink_of(mosquitto, "ackfail")
    outbox = Outbox(store, sink)
    collector = mqtt_collector("ackfail/+/event")
    sink.start()
    try:
        assert sink.connected.wait(10)
        first = make_event()
        outbox.submit(first)
        wait_until(lambda: len(calls) >= 1, 10, "the first acknowledgement")
        later = [make_event(species=f"Species {i}") for i in range(3)]
        for e in later:
            outbox.submit(e)
        collector.wait_for(count=4, timeout=10)
        assert outbox.flush(10), "every event acknowledged, and marked sent once the database lets us"
        assert store.count_pending() == 0 and sink.online
        assert event_ids(collector) == [e.id for e in [first, *later]], "each once, in order"
    finally:
        sink.stop()
        store.close()


@pytest.mark.timeout(60)
def test_a_deeply_nested_retained_message_under_the_discovery_prefix_stops_no_delivery(
    mosquitto: MosquittoBroker, mqtt_collector: Collector
) -> None:
    """Anyone on the broker can leave it there; birdwatch reads it back at every start (RecursionError)."""
    prank = "nestdisc/sensor/prank/deep/config"
    nested = "[" * 30_000 + "]" * 30_000
    paho_publish.single(prank, nested, qos=1, retain=True, hostname=mosquitto.host, port=mosquitto.port)
    sink = sink_of(mosquitto, "nesttest", discovery="nestdisc")
    sink.describe(["feeder"], "m")
    acks = Acks()
    # Handed before the connection, as the pipeline hands the backlog: paho sends it after subscribing,
    # so its PUBACK comes after the retained messages the subscription brings.
    backlog = make_event()
    assert sink.publish_event("feeder", payload(backlog), acks.on_sent("backlog"))
    sink.start()
    try:
        assert acks.wait(1, timeout=10) == ["backlog"]
        later = make_event()
        assert sink.publish_event("feeder", payload(later), acks.on_sent("later"))
        assert acks.wait(2, timeout=10) == ["backlog", "later"]
        assert sink.online
    finally:
        sink.stop()
        paho_publish.single(prank, b"", qos=1, retain=True, hostname=mosquitto.host, port=mosquitto.port)


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected raise, as meant
def test_a_network_loop_that_ends_anyway_shows_offline_and_is_started_again(
    mosquitto: MosquittoBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever ends paho's loop (here: one raise inside it), health must not read `connected` forever."""
    sink = sink_of(mosquitto, "loopend")
    acks = Acks()
    sink.start()
    try:
        assert sink.connected.wait(10)
        broke = threading.Event()
        real_loop = sink.client._loop

        def loop_that_breaks_once(timeout: float = 1.0) -> object:
            if not broke.is_set():
                broke.set()
                raise RuntimeError("injected: a bug inside paho's loop")
            return real_loop(timeout)

        with caplog.at_level(logging.ERROR, logger="birdwatch"):
            monkeypatch.setattr(sink.client, "_loop", loop_that_breaks_once)
            assert broke.wait(5)
            wait_until(lambda: not sink.connected.is_set(), 5, "connected cleared (health, STATUS and metrics read it)")
            assert not sink.online
            assert sink.connected.wait(20), "the loop is started again, on a fresh connection"
        assert "network loop" in caplog.text and "restarting" in caplog.text
        event = make_event()
        assert sink.publish_event("feeder", payload(event), acks.on_sent(event.id))
        assert acks.wait(1, timeout=10) == [event.id]
        assert sink.problem is None
    finally:
        sink.stop()


# ---- fault 4: after an outage, the current state, never an old one ------------------------------------


@pytest.mark.timeout(60)
def test_after_an_outage_the_broker_ends_on_the_current_state_and_visits_today_never_falls(
    mosquitto: MosquittoBroker, mqtt_collector: Collector
) -> None:
    seen = mqtt_collector("stale/#")  # on the broker itself: it sees the whole outage through
    with TcpProxy(mosquitto.port) as network:
        sink = sink_of_proxy(network, "stale")
        acks = Acks()
        sink.start()
        try:
            assert sink.connected.wait(10)
            sink.publish_state(state(1))
            seen.wait_for(lambda m: m.topic == "stale/feeder/state" and visits_of(m) == 1, timeout=10)
            network.cut()
            wait_until(lambda: not sink.connected.is_set(), 10, "the sink saw the network go")
            before = len(seen.messages)
            pictures = [b"\xff\xd8picture %d" % n for n in range(2, 6)]
            for n, picture in zip(range(2, 6), pictures, strict=True):  # the outage's visits, each with its state
                event = make_event()
                assert sink.publish_event("feeder", payload(event), acks.on_sent(event.id), snapshot=picture)
                sink.publish_state(state(n, present=n % 2 == 0))
            network.restore()
            acks.wait(4, timeout=20)
            seen.wait_for(lambda m: m.topic == "stale/feeder/state" and visits_of(m) == 5, timeout=10)
            marker = make_event()  # published after all of the above: once it is seen, so is everything else
            assert sink.publish_event("feeder", payload(marker), lambda: None)
            seen.wait_for(lambda m: m.topic.endswith("/event") and json.loads(m.payload)["id"] == marker.id, timeout=10)

            after = seen.messages[before:]
            states = [visits_of(m) for m in seen.messages if m.topic == "stale/feeder/state"]
            assert states == sorted(states), f"visits_today went back (Home Assistant reads a counter reset): {states}"
            snapshots = [m.payload for m in after if m.topic == "stale/feeder/snapshot"]
            assert snapshots == [pictures[-1]], "only the current picture, none of the outage's older ones"
            topics = [m.topic for m in after]
            backlog_end = max(i for i, t in enumerate(topics[:-1]) if t.endswith("/event"))
            assert backlog_end < topics.index("stale/feeder/state"), "the current state follows the backlog"
            late = mqtt_collector("stale/feeder/state").wait_for(lambda m: m.retain, timeout=10)
            assert visits_of(late[-1]) == 5 and json.loads(late[-1].payload)["present"] == "OFF"
        finally:
            sink.stop()


@pytest.mark.timeout(60)
def test_a_new_event_waits_for_the_events_held_over_an_outage(
    mosquitto: MosquittoBroker, mqtt_collector: Collector
) -> None:
    """paho sends what it held offline only once its connect callback has returned; an event handed to
    it in between (the decide thread does not wait) would reach the broker first."""
    seen = mqtt_collector("order/+/event")
    with TcpProxy(mosquitto.port) as network:
        sink = sink_of_proxy(network, "order")
        acks = Acks()
        held, newer = make_event(), make_event()
        taken_in_the_gap: list[bool] = []
        armed = threading.Event()  # only the reconnect: the first connect has nothing held
        on_connect = sink.client.on_connect

        def connected_then_a_new_event(*args: object) -> None:
            on_connect(*args)
            if armed.is_set() and sink.connected.is_set():  # the moment a racing publish would land
                armed.clear()
                taken_in_the_gap.append(sink.publish_event("feeder", payload(newer), acks.on_sent(newer.id)))

        sink.client.on_connect = connected_then_a_new_event
        sink.start()
        try:
            assert sink.connected.wait(10)
            network.cut()
            wait_until(lambda: not sink.connected.is_set(), 10, "the sink saw the network go")
            assert sink.publish_event("feeder", payload(held), acks.on_sent(held.id))
            armed.set()
            network.restore()
            acks.wait(1, timeout=20)
            assert taken_in_the_gap == [False], "the new event is left in the outbox while the held one is out"
            assert sink.publish_event("feeder", payload(newer), acks.on_sent(newer.id)), "then it goes"
            seen.wait_for(count=2, timeout=10)
            assert event_ids(seen) == [held.id, newer.id]
        finally:
            sink.stop()


# ---- fault 5: a long outage costs disk, not memory, and few log lines -------------------------------------


@pytest.mark.timeout(90)
def test_a_long_outage_keeps_events_on_disk_not_in_memory(
    mosquitto: MosquittoBroker, mqtt_collector: Collector, tmp_path: Path
) -> None:
    collector = mqtt_collector("outage/+/event")  # on the broker itself: it sees the whole outage through
    network = TcpProxy(mosquitto.port)  # not started: the broker cannot be reached
    store = EventStore(tmp_path / "bw.db")
    sink = sink_of_proxy(network, "outage")
    outbox = Outbox(store, sink)
    events = events_with_picture(tmp_path, 200, 50_000)
    sink.start()
    try:
        for n, e in enumerate(events, 1):  # what the decide thread does per event, and on each tick
            outbox.submit(e)
            sink.publish_state(state(n))
            outbox.pump()
        held = held_by_paho(sink)
        assert held < 200_000, f"paho holds {held} bytes for 200 events: pictures and states wait in memory"
        assert store.count_pending() == 200
        network.restore()
        assert sink.connected.wait(20)
        assert outbox.flush(30), f"{store.count_pending()} events left after the broker came back"
        collector.wait_for(count=200, timeout=20)
        assert event_ids(collector) == [e.id for e in events], "every one, once, in order"
    finally:
        sink.stop()
        network.cut()
        store.close()


@pytest.mark.timeout(90)
def test_a_full_paho_queue_is_said_once_not_for_every_refused_publish(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(mqtt_module, "MAX_QUEUED", 20)  # paho's cap, reached sooner than in months of outage
    mosquitto.stop()
    store = EventStore(tmp_path / "bw.db")
    sink = sink_of(mosquitto, "capped", reconnect_max_s=3)
    outbox = Outbox(store, sink)
    events = events_with_picture(tmp_path, 60, 1000)
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        sink.start()
        try:
            for n, e in enumerate(events, 1):
                outbox.submit(e)
                sink.publish_state(state(n))
                outbox.pump()
            refusals = [r.getMessage() for r in caplog.records if "not queued" in r.getMessage()]
            assert len(refusals) <= 1, f"{len(refusals)} warnings, e.g. {refusals[:2]}"
            mosquitto.start()
            assert sink.connected.wait(20)
            assert outbox.flush(30), f"{store.count_pending()} events left after the broker came back"
        finally:
            sink.stop()
            store.close()


# ---- fault 6: at least once, and no password in the clear ------------------------------------------------


def test_qos_0_for_events_is_refused_when_the_config_loads() -> None:
    text = "cameras:\n  - {name: feeder, url: rtsp://cam.local/stream}\nmqtt: {host: broker.lan, qos: 0}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    message = str(info.value)
    assert message.startswith("c.yaml: mqtt.qos: 0") and "never sent again" in message and "\n" not in message
    assert parse_config(text.replace("qos: 0", "qos: 1"), source="c.yaml").mqtt.qos == 1


def test_a_password_that_would_cross_the_network_without_tls_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    def warnings_for(host: str, tls: MqttTlsConfig | None = None) -> list[str]:
        caplog.clear()
        cfg = MqttConfig(host=host, port=1883, username="birdwatch", tls=tls)
        with caplog.at_level(logging.WARNING, logger="birdwatch"):
            MqttSink(cfg, "s3cret-pw", HomeAssistantConfig(discovery=False))
        return [r.getMessage() for r in caplog.records if "password" in r.getMessage()]

    (warning,) = warnings_for("broker.lan")
    assert "unencrypted" in warning and "mqtt.tls" in warning and "broker.lan" in warning
    assert "s3cret-pw" not in warning
    assert warnings_for("127.0.0.1") == [] and warnings_for("localhost") == [], "it never leaves the machine"
    assert warnings_for("broker.lan", MqttTlsConfig()) == []


# ---- fault 19: a snapshot is on disk before the event that names it ----------------------------------------


def test_a_snapshot_is_synced_to_disk_before_save_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after the event is committed must not leave it pointing at a missing or empty JPEG:
    the file's data and then its rename (the directory) are synced before save() returns."""
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        steps.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), full_frame=False))
    assert writer.save(snapshot_event(), frame()) is not None
    assert steps == ["fsync file", "rename", "fsync dir"]


def test_half_written_snapshots_left_by_a_power_cut_are_pruned(tmp_path: Path) -> None:
    day = tmp_path / "feeder" / "2026-01-01"
    day.mkdir(parents=True)
    orphan = day / "101500_0123456789ab_crop.tmp"
    orphan.write_bytes(b"\xff\xd8half")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    writing = tmp_path / "feeder" / "112000_fedcba987654_crop.tmp"  # younger: could be a write in progress
    writing.write_bytes(b"\xff\xd8")
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), max_age_days=0, max_total_mb=0, max_files=0))
    assert writer.prune() == 1
    assert not orphan.exists() and not day.exists() and writing.exists()


# ---- fault 20: an early acknowledgement whose mark fails is not published again -------------------------


@pytest.mark.timeout(60)
def test_an_acknowledgement_that_beats_publish_back_and_fails_to_mark_publishes_nothing_twice(
    mosquitto: MosquittoBroker, mqtt_collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(tmp_path / "bw.db")
    fail_first_marks(store, monkeypatch, 1, "database or disk is full")
    sink = sink_of(mosquitto, "early")
    outbox = Outbox(store, sink)
    collector = mqtt_collector("early/+/event")
    # The decide thread loses the CPU right after handing the event to paho, and the PUBACK is read meanwhile.
    acked: set[int] = set()
    cond = threading.Condition()
    real_on_publish, real_publish = sink.client.on_publish, sink.client.publish

    def on_publish(*args: object) -> None:
        real_on_publish(*args)  # type: ignore[misc]
        with cond:
            acked.add(args[2])  # type: ignore[arg-type]
            cond.notify_all()

    def publish(topic: str, payload: object = None, qos: int = 0, retain: bool = False, properties: object = None):  # type: ignore[no-untyped-def]
        info = real_publish(topic, payload, qos, retain, properties)  # type: ignore[arg-type]
        if topic.endswith("/event"):
            with cond:
                cond.wait_for(lambda: info.mid in acked, timeout=5)
        return info

    sink.client.on_publish = on_publish
    monkeypatch.setattr(sink.client, "publish", publish)
    sink.start()
    try:
        assert sink.connected.wait(10)
        first = make_event()
        with contextlib.suppress(sqlite3.Error):  # the decide thread logs a failed tick and goes on
            outbox.submit(first)
        for _ in range(2):  # its next ticks
            with contextlib.suppress(sqlite3.Error):
                outbox.pump()
        marker = make_event()
        outbox.submit(marker)
        collector.wait_for(lambda m: json.loads(m.payload)["id"] == marker.id, timeout=10)
        assert event_ids(collector) == [first.id, marker.id], "the first event went out once"
        assert outbox.flush(10) and store.count_pending() == 0, "and it is marked sent once the disk has room"
    finally:
        sink.stop()
        store.close()
