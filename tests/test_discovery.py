"""Home Assistant MQTT discovery: every config payload is checked against the keys Home Assistant
documents for its component (unknown keys rejected, required keys present), the value templates are
rendered with Jinja2 against a real state payload as Home Assistant would, and on a real broker the
configs are retained and tied to the availability topic."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import jinja2
import paho.mqtt.publish as paho_publish
import pytest

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.deliver.discovery import CameraTopics
from birdwatch.deliver.discovery import camera_configs
from birdwatch.deliver.discovery import instance_configs
from birdwatch.deliver.discovery import node_id
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.types import CameraState
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

# Home Assistant's MQTT discovery options, full names, as its documentation lists them for each
# platform (home-assistant.io/integrations/{sensor,binary_sensor,image}.mqtt; the voluptuous
# schemas in homeassistant/components/mqtt/{schemas,config,sensor,binary_sensor,image}.py).
ENTITY_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "entity_category", "entity_picture",
    "enabled_by_default", "icon", "json_attributes_template", "json_attributes_topic", "default_entity_id",
    "object_id", "origin", "unique_id", "qos", "encoding", "platform",
}  # fmt: skip
COMPONENT_KEYS = {
    "sensor": {
        "name", "state_topic", "value_template", "device_class", "expire_after", "force_update",
        "last_reset_value_template", "options", "suggested_display_precision", "state_class", "unit_of_measurement",
    },
    "binary_sensor": {
        "name", "state_topic", "value_template", "device_class", "expire_after", "force_update", "off_delay",
        "payload_on", "payload_off",
    },
    "image": {"name", "image_topic", "url_topic", "content_type", "image_encoding", "url_template"},
}  # fmt: skip
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}, "image": set()}
DEVICE_KEYS = {
    "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version", "serial_number",
    "sw_version", "via_device", "suggested_area", "configuration_url",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
BINARY_SENSOR_CLASSES = {
    "occupancy",
    "presence",
    "motion",
    "moving",
    "problem",
}  # a few of HA's list; the ones that fit
TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor|image)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config$")


def configs(cameras: list[str], snapshots: bool = True) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for camera in cameras:
        topics = CameraTopics(
            camera,
            f"birdwatch/{camera}/state",
            f"birdwatch/{camera}/snapshot" if snapshots else None,
            "birdwatch/status",
        )
        out += camera_configs(topics, discovery_prefix="homeassistant", node=node_id("birdwatch", camera), model="m")
    return out


def check_payload(topic: str, payload: dict[str, Any]) -> str:
    """Raise with what is wrong, as Home Assistant's schema would; returns the component."""
    match = TOPIC.match(topic)
    assert match, f"{topic}: not <prefix>/<component>/<node_id>/<object_id>/config with HA's allowed characters"
    component = match.group(1)
    unknown = set(payload) - ENTITY_COMMON - COMPONENT_KEYS[component]
    assert not unknown, f"{topic}: keys Home Assistant does not document for {component}: {sorted(unknown)}"
    missing = REQUIRED[component] - set(payload)
    assert not missing, f"{topic}: required keys missing: {sorted(missing)}"
    if component == "image":
        assert ("image_topic" in payload) != ("url_topic" in payload), "exactly one of image_topic, url_topic"
        assert payload.get("content_type") == "image/jpeg"
    device = payload["device"]
    assert set(device) <= DEVICE_KEYS and device["identifiers"], f"{topic}: device needs identifiers"
    assert set(payload["origin"]) <= ORIGIN_KEYS and payload["origin"]["name"]
    assert payload["qos"] in (0, 1, 2)
    if "state_class" in payload:
        assert payload["state_class"] in STATE_CLASSES
    if component == "binary_sensor":
        assert payload["device_class"] in BINARY_SENSOR_CLASSES
    for key in ("state_topic", "availability_topic", "image_topic", "json_attributes_topic"):
        if key in payload:
            assert payload[key] and not set("+#") & set(payload[key]), f"{key} must be a plain topic"
    return component


def test_every_config_uses_only_documented_keys() -> None:
    got = configs(["feeder", "window"])
    components = [check_payload(topic, payload) for topic, payload in got]
    assert sorted(components) == sorted(["sensor", "sensor", "binary_sensor", "image"] * 2)
    unique_ids = [p["unique_id"] for _, p in got]
    assert len(set(unique_ids)) == len(unique_ids)


def test_one_device_per_camera_and_all_tied_to_availability() -> None:
    got = configs(["feeder", "window"])
    by_device: dict[str, set[str]] = {}
    for topic, payload in got:
        assert payload["availability_topic"] == "birdwatch/status"
        assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
        by_device.setdefault(payload["device"]["identifiers"][0], set()).add(topic.split("/")[3])
    assert by_device == {
        "birdwatch_feeder": {"species", "present", "visits_today", "snapshot"},
        "birdwatch_window": {"species", "present", "visits_today", "snapshot"},
    }


def test_no_image_entity_when_snapshots_stay_off_mqtt() -> None:
    assert {topic.split("/")[1] for topic, _ in configs(["feeder"], snapshots=False)} == {"sensor", "binary_sensor"}


def render(template: str, payload: str) -> str:
    """Home Assistant renders value templates with Jinja2, value_json being the parsed payload."""
    return jinja2.Environment().from_string(template).render(value=payload, value_json=json.loads(payload))


def test_value_templates_read_the_state_payload() -> None:
    state = CameraState("feeder", True, "Eurasian Blue Tit", 0.91, 7, "2026-11-24", "v1", time.time())
    text = json.dumps(state.to_payload())
    values = {
        topic.split("/")[3]: render(p["value_template"], text)
        for topic, p in configs(["feeder"])
        if "value_template" in p
    }
    assert values == {"species": "Eurasian Blue Tit", "present": "ON", "visits_today": "7"}
    present = next(p for t, p in configs(["feeder"]) if "/binary_sensor/" in t)
    gone = CameraState("feeder", False, None, None, 0, "2026-11-24", None, None)
    assert render(present["value_template"], json.dumps(gone.to_payload())) == present["payload_off"]
    assert render(present["value_template"], text) == present["payload_on"]
    species = next(p for t, p in configs(["feeder"]) if t.endswith("/species/config"))
    assert render(species["value_template"], json.dumps(gone.to_payload())) == "unknown", "not the text None"


def test_the_history_problem_sensor_is_one_per_instance_and_reads_its_topic() -> None:
    (topic, payload), *more = instance_configs(
        history="birdwatch/history", availability="birdwatch/status", discovery_prefix="homeassistant", node="birdwatch"
    )
    assert not more and check_payload(topic, payload) == "binary_sensor"
    assert payload["device_class"] == "problem" and payload["json_attributes_topic"] == "birdwatch/history"
    assert payload["device"]["identifiers"] not in [p["device"]["identifiers"] for _, p in configs(["feeder"])]
    refused = json.dumps({"problem": "ON", "reason": "the disk is read-only"})
    assert render(payload["value_template"], refused) == payload["payload_on"]
    assert render(payload["value_template"], json.dumps({"problem": "OFF", "reason": None})) == payload["payload_off"]


def test_node_ids_are_safe_for_any_topic_prefix() -> None:
    assert node_id("home/birds", "feeder") == "home_birds_feeder"
    assert TOPIC.match(f"homeassistant/sensor/{node_id('a b/c', 'x-1')}/species/config")


@pytest.mark.timeout(30)
def test_configs_are_retained_on_the_broker_and_point_at_live_topics(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    cfg = MqttConfig(host=mosquitto.host, port=mosquitto.port, topic_prefix="hatest", reconnect_max_s=1)
    sink = MqttSink(cfg, None, HomeAssistantConfig(discovery_prefix="hadisc"))
    sink.describe(["feeder"], "hgnet_v2_b2_danube-delta")
    sink.publish_state(CameraState("feeder", False, None, None, 0, "2026-11-24", None, None))
    sink.publish_history(None)
    live = mqtt_collector("hatest/#")
    sink.start()
    try:
        assert sink.connected.wait(10)
        live.wait_for(lambda m: m.topic == "hatest/feeder/state", timeout=10)  # sent after the configs: all are in
        late = mqtt_collector("hadisc/#")  # Home Assistant starting later still finds them
        got = late.wait_for(lambda m: m.topic.endswith("/config"), timeout=10, count=5)
        assert all(m.retain and m.qos == 1 for m in got)
        for m in got:
            payload = json.loads(m.payload)
            check_payload(m.topic.replace("hadisc/", "homeassistant/", 1), payload)
            if "_feeder/" in m.topic:
                assert payload["device"]["model"] == "hgnet_v2_b2_danube-delta"
        listened = {
            json.loads(m.payload).get(k) for m in got for k in ("state_topic", "image_topic", "availability_topic")
        }
        assert listened - {None} == {"hatest/feeder/state", "hatest/feeder/snapshot", "hatest/status", "hatest/history"}
        history = mqtt_collector("hatest/history").wait_for(lambda m: m.retain, timeout=10)
        assert json.loads(history[-1].payload) == {"problem": "OFF", "reason": None}
        status = mqtt_collector("hatest/status").wait_for(lambda m: m.retain, timeout=10)
        state = mqtt_collector("hatest/feeder/state").wait_for(lambda m: m.retain, timeout=10)
        assert status[-1].payload == b"online" and json.loads(state[-1].payload)["present"] == "OFF"
    finally:
        sink.stop()


@pytest.mark.timeout(30)
def test_a_camera_removed_from_the_config_is_removed_from_home_assistant(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    """Home Assistant keeps an entity while its retained config exists: birdwatch clears the configs
    of its own cameras that left the config, and touches nobody else's."""
    foreign = {
        "gonedisc/sensor/lamp/power/config": {"name": "Power", "state_topic": "z2m/lamp", "availability_topic": "z2m/state"},
        "gonedisc/sensor/other_shed/species/config": {  # another birdwatch instance, its own prefix
            "name": "Species", "state_topic": "other/shed/state", "availability_topic": "other/status",
            "origin": {"name": "birdwatch"},
        },
    }  # fmt: skip
    for topic, config in foreign.items():
        paho_publish.single(topic, json.dumps(config), qos=1, retain=True, hostname=mosquitto.host, port=mosquitto.port)
    cfg = MqttConfig(host=mosquitto.host, port=mosquitto.port, topic_prefix="hagone", reconnect_max_s=1)
    ha = HomeAssistantConfig(discovery_prefix="gonedisc")
    before = MqttSink(cfg, None, ha)
    before.describe(["feeder", "shed"], "m")
    before.start()
    try:
        assert before.connected.wait(10)
        mqtt_collector("gonedisc/#").wait_for(lambda m: "hagone_shed" in m.topic, timeout=10, count=4)
    finally:
        before.stop()
    watcher = mqtt_collector("gonedisc/#")
    after = MqttSink(cfg, None, ha)  # restarted with the shed camera taken out of the config
    after.describe(["feeder"], "m")
    after.start()
    try:
        assert after.connected.wait(10)
        cleared = watcher.wait_for(lambda m: m.payload == b"", timeout=10, count=4)
        assert len({m.topic for m in cleared}) == 4 and all("/hagone_shed/" in m.topic for m in cleared)
        late = mqtt_collector("gonedisc/#")
        late.wait_for(lambda m: m.retain, timeout=10, count=7)
        time.sleep(0.3)  # anything retained beyond these would have come with them
        left = {m.topic.split("/")[2] for m in late.messages if m.retain}
        assert left == {"hagone", "hagone_feeder", "lamp", "other_shed"}, "the instance's own device stays"
    finally:
        after.stop()
