"""Home Assistant MQTT discovery: per camera one device with four entities, and one device for the instance.

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
| History not writable | binary_sensor (problem), instance device | `value_json.problem` of `<prefix>/history` |

A value that is not there yet (no visit so far) renders as `unknown`: Home Assistant renders a null as the
text "None", which a sensor would show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from birdwatch import __version__
from birdwatch.deliver.broker import Topics


@dataclass(frozen=True)
class CameraTopics:
    camera: str
    state: str
    snapshot: str | None  # None: snapshots are not on MQTT, so no image entity
    availability: str


def node_id(topic_prefix: str, camera: str) -> str:
    """Stable and unique per birdwatch instance (its topic prefix) and camera; HA allows [a-zA-Z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", topic_prefix).strip("_") + "_" + camera


def discovery_configs(
    topics: Topics, cameras: list[str], model: str, discovery_prefix: str, snapshots: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Every config of an instance: each camera's entities, and the instance's own."""
    out = []
    for camera in cameras:
        camera_topics = CameraTopics(
            camera,
            state=topics.state(camera),
            snapshot=topics.snapshot(camera) if snapshots else None,
            availability=topics.status,
        )
        node = node_id(topics.prefix, camera)
        out += camera_configs(camera_topics, discovery_prefix=discovery_prefix, node=node, model=model)
    return out + instance_configs(
        history=topics.history,
        availability=topics.status,
        discovery_prefix=discovery_prefix,
        node=instance_node(topics.prefix),
    )


def instance_node(topic_prefix: str) -> str:
    """The instance's own device (no camera's: those end in `_<camera>`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", topic_prefix).strip("_") or "birdwatch"


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


def _common(availability: str, device: dict[str, Any], qos: int) -> dict[str, Any]:
    return {
        "availability_topic": availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "birdwatch", "sw_version": __version__},
        "qos": qos,
    }


def instance_configs(
    *, history: str, availability: str, discovery_prefix: str, node: str, qos: int = 1
) -> list[tuple[str, dict[str, Any]]]:
    """(config topic, payload) for the instance's own entities: whether its history takes writes."""
    device = {
        "identifiers": [node],
        "name": f"birdwatch {node}",
        "manufacturer": "birdwatch",
        "sw_version": __version__,
    }
    payload = {
        "name": "History not writable",
        "state_topic": history,
        "value_template": "{{ value_json.problem }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
        "entity_category": "diagnostic",
        "json_attributes_topic": history,  # `reason`: why, in words
        "unique_id": f"{node}_history_problem",
        **_common(availability, device, qos),
    }
    return [(config_topic(discovery_prefix, "binary_sensor", node, "history_problem"), payload)]


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
    common = _common(topics.availability, device, qos)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "sensor",
            "species",
            {
                "name": "Species",
                "state_topic": topics.state,
                "value_template": "{{ value_json.species if value_json.species is not none else 'unknown' }}",
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
