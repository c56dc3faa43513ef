"""MQTT out, against a real mosquitto: visit events as JSON per camera, snapshots as raw JPEG on
their own retained topic, camera states retained, acknowledgements reported per event, an
availability topic with a retained last will, and a broker that is down costs a log line."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.decide.snapshots import encode_jpeg
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.types import CameraState
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

DOCUMENTED_FIELDS = {
    "id", "kind", "visit_id", "camera", "ts", "time", "species", "score", "top_k", "first_seen", "last_seen",
    "duration_s", "frames", "box", "snapshot", "end_reason", "bird_score", "model", "novel",
}  # fmt: skip


def make_event(kind: str = "new", camera: str = "feeder", species: str = "Eurasian Blue Tit") -> VisitEvent:
    now = time.time()
    top = (SpeciesScore(species, 0.91), SpeciesScore("Great Tit", 0.05))
    return VisitEvent(
        kind, "v1", camera, now, species, 0.91, top, now - 3, now, 12, (10, 20, 110, 120), "hgnet_v2_b2_danube-delta"
    )


def payload(event: VisitEvent) -> str:
    return json.dumps(event.to_payload())


def sink_for(broker: MosquittoBroker, **overrides: object) -> MqttSink:
    # A client id of its own: a sink left over elsewhere with the same id would take the session over.
    cfg = MqttConfig(
        host=broker.host, port=broker.port, topic_prefix="bwtest", reconnect_max_s=1,
        client_id=f"bwtest-{uuid.uuid4().hex[:8]}", **overrides,  # type: ignore[arg-type]
    )  # fmt: skip
    return MqttSink(cfg, None, HomeAssistantConfig(discovery=False))


class Acks:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.cond = threading.Condition()

    def on_sent(self, name: str) -> Callable[[], None]:
        def sent() -> None:
            with self.cond:
                self.got.append(name)
                self.cond.notify_all()

        return sent

    def wait(self, n: int, timeout: float) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), f"{len(self.got)}/{n} acks: {self.got}"
            return list(self.got)


@pytest.mark.timeout(30)
def test_event_is_json_on_the_camera_event_topic_and_acknowledged(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector("bwtest/#")
    sink = sink_for(mosquitto)
    acks = Acks()
    sink.start()
    try:
        assert sink.connected.wait(10)
        event = make_event()
        assert sink.publish_event("feeder", payload(event), acks.on_sent(event.id))
        (msg,) = collector.wait_for(lambda m: m.topic == "bwtest/feeder/event", timeout=10)
        data = json.loads(msg.payload)
        assert set(data) == DOCUMENTED_FIELDS
        assert (data["id"], data["kind"], data["visit_id"]) == (event.id, "new", "v1")
        assert data["top_k"][0] == {"species": "Eurasian Blue Tit", "score": 0.91}
        assert data["box"] == [10, 20, 110, 120] and data["frames"] == 12 and data["duration_s"] == 3.0
        assert msg.qos == 1 and not msg.retain
        assert acks.wait(1, timeout=10) == [event.id], "the broker's PUBACK reached the caller"
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_snapshot_is_raw_jpeg_on_its_own_retained_topic_before_the_event(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector("bwtest/#")
    sink = sink_for(mosquitto)
    jpeg = encode_jpeg(np.full((40, 50, 3), 120, np.uint8), 90)
    sink.start()
    try:
        assert sink.connected.wait(10)
        event = make_event()
        sink.publish_event("feeder", payload(event), lambda: None, snapshot=jpeg)
        collector.wait_for(lambda m: m.topic == "bwtest/feeder/event", timeout=10)
        topics = [m.topic for m in collector.messages if m.topic.startswith("bwtest/feeder/")]
        assert topics.index("bwtest/feeder/snapshot") < topics.index("bwtest/feeder/event")
        snap = next(m for m in collector.messages if m.topic == "bwtest/feeder/snapshot")
        assert snap.payload == jpeg and snap.payload[:2] == b"\xff\xd8", "bytes as written, no JSON, no base64"
        event_msg = next(m for m in collector.messages if m.topic == "bwtest/feeder/event")
        json.loads(event_msg.payload.decode("utf-8"))  # the JSON topic stays text
        late = mqtt_collector("bwtest/feeder/snapshot")  # retained: a late subscriber gets the last picture
        late.wait_for(lambda m: m.retain and m.payload == jpeg, timeout=10)
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_camera_state_is_retained_and_sent_again_on_reconnect(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    sink = sink_for(mosquitto)
    sink.start()
    try:
        assert sink.connected.wait(10)
        live = mqtt_collector("bwtest/feeder/state")
        state = CameraState("feeder", True, "Great Tit", 0.8, 3, "2026-11-24", "v1", time.time())
        sink.publish_state(state)
        live.wait_for(timeout=10)  # the broker has it (and has stored it) once a subscriber got it
        late = mqtt_collector("bwtest/feeder/state")
        msg = late.wait_for(lambda m: m.retain, timeout=10)[-1]
        assert json.loads(msg.payload)["present"] == "ON" and json.loads(msg.payload)["visits_today"] == 3
        mosquitto.stop()  # this broker forgets retained messages: birdwatch must send them again
        mosquitto.start()
        again = mqtt_collector("bwtest/feeder/state")  # live or retained, depending on who reconnects first
        again.wait_for(lambda m: json.loads(m.payload)["species"] == "Great Tit", timeout=20)
        late_again = mqtt_collector("bwtest/feeder/state")
        late_again.wait_for(lambda m: m.retain and json.loads(m.payload)["species"] == "Great Tit", timeout=10)
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_availability_is_retained_online_then_offline_on_clean_stop(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    sink = sink_for(mosquitto)
    live = mqtt_collector("bwtest/status")
    sink.start()
    assert sink.connected.wait(10)
    live.wait_for(lambda m: m.payload == b"online", timeout=10)  # now the broker holds it
    late = mqtt_collector("bwtest/status")  # subscribes after the fact: sees the retained value
    late.wait_for(lambda m: m.payload == b"online" and m.retain, timeout=10)
    sink.stop()
    late.wait_for(lambda m: m.payload == b"offline", timeout=10)
    again = mqtt_collector("bwtest/status")
    again.wait_for(lambda m: m.payload == b"offline" and m.retain, timeout=10)


@pytest.mark.timeout(60)
def test_broker_down_at_start_queues_events_and_acknowledges_them_later(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto.stop()
    sink = sink_for(mosquitto)
    acks = Acks()
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        sink.start()
        events = [make_event(species=f"Species {i}") for i in range(5)]
        for event in events:
            assert sink.publish_event("feeder", payload(event), acks.on_sent(event.id))
        deadline = time.monotonic() + 10
        while not any("unreachable" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        warning = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
        assert f"MQTT broker {mosquitto.host}:{mosquitto.port} unreachable" in warning and "queued" in warning
        assert acks.got == [], "no broker, no acknowledgement"
        mosquitto.start()
        collector = mqtt_collector("bwtest/+/event")
        got = collector.wait_for(lambda m: True, timeout=20, count=5)
        assert [json.loads(m.payload)["id"] for m in got] == [e.id for e in events], "all of them, in order"
        assert sorted(acks.wait(5, timeout=10)) == sorted(e.id for e in events)
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_wrong_credentials_are_reported_not_raised(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MosquittoBroker(tmp_path_factory.mktemp("authbroker"))
    text = broker.config_path.read_text()
    broker.config_path.write_text(text.replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        sink = sink_for(broker, username="nobody")
        with caplog.at_level(logging.ERROR, logger="birdwatch"):
            sink.start()
            deadline = time.monotonic() + 10
            while not any("refused" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.1)
            sink.stop()
        messages = [r.getMessage() for r in caplog.records]
        assert any("refused the connection" in m and "mqtt.username" in m for m in messages)
    finally:
        broker.stop()
