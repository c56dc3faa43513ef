"""Home Assistant MQTT discovery: per camera one device with four entities.

Config topics are `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, published retained
so Home Assistant finds them whenever it (re)starts. Keys are Home Assistant's documented MQTT
discovery options (full names, no abbreviations); every entity is tied to birdwatch's availability
topic and grouped under one device per camera:

| entity | component | from |
| --- | --- | --- |
| Species | sensor | `value_json.species` of `<prefix>/<camera>/state` |
| Bird present | binary_sensor (occupancy) | `value_json.present` (ON/OFF) |
| Visits today | sensor (total_increasing) | `value_json.visits_today`, back to 0 at local midnight |
| Last bird | image | the JPEG on `<prefix>/<camera>/snapshot` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from birdwatch import __version__


@dataclass(frozen=True)
class CameraTopics:
    camera: str
    state: str
    snapshot: str | None  # None: snapshots are not on MQTT, so no image entity
    availability: str


def node_id(topic_prefix: str, camera: str) -> str:
    """Stable and unique per birdwatch instance (its topic prefix) and camera; HA allows [a-zA-Z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", topic_prefix).strip("_") + "_" + camera


def config_topic(discovery_prefix: str, component: str, node: str, object_id: str) -> str:
    return f"{discovery_prefix}/{component}/{node}/{object_id}/config"


def is_birdwatch_config(payload: object, availability: str) -> bool:
    """Whether a discovery config payload is one `camera_configs` made for the instance whose
    availability topic this is (another device's, or another birdwatch prefix's, is not)."""
    return (
        isinstance(payload, dict)
        and payload.get("availability_topic") == availability
        and isinstance(payload.get("origin"), dict)
        and payload["origin"].get("name") == "birdwatch"
    )


def camera_configs(
    topics: CameraTopics, *, discovery_prefix: str, node: str, model: str, qos: int = 1
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) for every entity of one camera."""
    device = {
        "identifiers": [node],
        "name": f"birdwatch {topics.camera}",
        "manufacturer": "birdwatch",
        "model": model,
        "sw_version": __version__,
    }
    common = {
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "birdwatch", "sw_version": __version__},
        "qos": qos,
    }
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "sensor",
            "species",
            {
                "name": "Species",
                "state_topic": topics.state,
                "value_template": "{{ value_json.species }}",
                "json_attributes_topic": topics.state,
                "icon": "mdi:bird",
            },
        ),
        (
            "binary_sensor",
            "present",
            {
                "name": "Bird present",
                "state_topic": topics.state,
                "value_template": "{{ value_json.present }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "occupancy",
            },
        ),
        (
            "sensor",
            "visits_today",
            {
                "name": "Visits today",
                "state_topic": topics.state,
                "value_template": "{{ value_json.visits_today }}",
                "state_class": "total_increasing",  # falls to 0 at midnight: HA reads that as a reset
                "unit_of_measurement": "visits",
                "icon": "mdi:counter",
            },
        ),
    ]
    if topics.snapshot is not None:
        entities.append(
            ("image", "snapshot", {"name": "Last bird", "image_topic": topics.snapshot, "content_type": "image/jpeg"})
        )
    return [
        (
            config_topic(discovery_prefix, component, node, object_id),
            {**payload, "unique_id": f"{node}_{object_id}", **common},
        )
        for component, object_id, payload in entities
    ]
