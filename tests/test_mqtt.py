"""MQTT out: QoS 1 JSON events per camera, an availability topic with a retained last will, and a
broker that is down at start costs a log line, not the service. All against a real mosquitto."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest

from birdwatch.config import MqttConfig
from birdwatch.mqtt import MqttSink
from birdwatch.types import Event
from birdwatch.types import SpeciesScore
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

DOCUMENTED_FIELDS = {"id", "kind", "camera", "time", "ts", "species", "score", "top_k", "box", "frame_seq", "model"}


def make_event(camera: str = "feeder", species: str = "Eurasian Blue Tit") -> Event:
    top = (SpeciesScore(species, 0.91), SpeciesScore("Great Tit", 0.05))
    return Event("sighting", camera, time.time(), species, 0.91, top, (10, 20, 110, 120), 42, "hgnet_v2_b2_danube-delta")


def sink_for(broker: MosquittoBroker, **overrides: object) -> MqttSink:
    cfg = MqttConfig(host=broker.host, port=broker.port, topic_prefix="bwtest", reconnect_max_s=1, **overrides)
    return MqttSink(cfg, None)


@pytest.mark.timeout(30)
def test_events_arrive_as_json_on_the_camera_topic(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector("bwtest/#")
    sink = sink_for(mosquitto)
    sink.start()
    try:
        assert sink.connected.wait(10)
        event = make_event()
        sink.publish(event)
        (msg,) = collector.wait_for(lambda m: m.topic == "bwtest/feeder/sighting", timeout=10)
        payload = json.loads(msg.payload)
        assert set(payload) == DOCUMENTED_FIELDS
        assert payload["id"] == event.id and payload["species"] == "Eurasian Blue Tit"
        assert payload["top_k"][0] == {"species": "Eurasian Blue Tit", "score": 0.91}
        assert payload["box"] == [10, 20, 110, 120]
        assert msg.qos == 1 and not msg.retain
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_availability_is_retained_online_then_offline_on_clean_stop(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    sink = sink_for(mosquitto)
    sink.start()
    assert sink.connected.wait(10)
    late = mqtt_collector("bwtest/status")  # subscribes after the fact: sees the retained value
    late.wait_for(lambda m: m.payload == b"online" and m.retain, timeout=10)
    sink.stop()
    late.wait_for(lambda m: m.payload == b"offline", timeout=10)
    again = mqtt_collector("bwtest/status")
    again.wait_for(lambda m: m.payload == b"offline" and m.retain, timeout=10)


@pytest.mark.timeout(60)
def test_broker_down_at_start_queues_events_and_delivers_them(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto.stop()
    sink = sink_for(mosquitto)
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        sink.start()
        events = [make_event(species=f"Species {i}") for i in range(5)]
        for event in events:
            sink.publish(event)
        deadline = time.monotonic() + 10
        while not any("unreachable" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        warning = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
        assert f"MQTT broker {mosquitto.host}:{mosquitto.port} unreachable" in warning and "queued" in warning
        mosquitto.start()
        collector = mqtt_collector("bwtest/+/sighting")
        got = collector.wait_for(lambda m: True, timeout=20, count=5)
        assert [json.loads(m.payload)["id"] for m in got] == [e.id for e in events], "all of them, in order"
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_wrong_credentials_are_reported_not_raised(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MosquittoBroker(tmp_path_factory.mktemp("authbroker"))
    broker.config_path.write_text(broker.config_path.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        sink = sink_for(broker, username="nobody")
        with caplog.at_level(logging.ERROR, logger="birdwatch"):
            sink.start()
            deadline = time.monotonic() + 10
            while not any("refused" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.1)
            sink.stop()
        assert any("refused the connection" in r.getMessage() and "mqtt.username" in r.getMessage() for r in caplog.records)
    finally:
        broker.stop()
