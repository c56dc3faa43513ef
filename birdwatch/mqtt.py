"""MQTT: events as JSON under `<prefix>/<camera>/...`, an availability topic with a last will.

paho-mqtt's network thread reconnects by itself (connect_async + loop_start), so a broker that is
down at start or restarts later costs a log line, never the service. QoS 1 messages published
while disconnected wait in paho's queue (bounded) and go out on reconnect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from birdwatch.config import MqttConfig
from birdwatch.types import Event

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # events held in memory while the broker is away; past that, new ones are refused and logged


class EventSink(Protocol):
    def start(self) -> None: ...
    def publish(self, event: Event) -> None: ...
    def stop(self) -> None: ...


def topic_for(prefix: str, event: Event) -> str:
    return f"{prefix}/{event.camera}/{event.kind}"


def status_topic(prefix: str) -> str:
    return f"{prefix}/status"


class LogSink:
    """No broker configured: events are only logged (the pipeline logs every event anyway)."""

    def start(self) -> None:
        log.info("no MQTT broker configured (mqtt.host); events are logged only")

    def publish(self, event: Event) -> None:
        pass

    def stop(self) -> None:
        pass


class MqttSink:
    def __init__(self, cfg: MqttConfig, password: str | None) -> None:
        assert cfg.host, "MqttSink needs mqtt.host"
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.connected = threading.Event()
        self.published = 0
        self.refused = 0
        self._warned_down = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        client.will_set(status_topic(self.prefix), "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=int(cfg.reconnect_max_s))
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client

    @property
    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def start(self) -> None:
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            log.warning("MQTT broker %s: %s; retrying in the background", self.where, exc)
        self.client.loop_start()

    def publish(self, event: Event) -> None:
        payload = json.dumps(event.to_payload(), separators=(",", ":"))
        info = self.client.publish(topic_for(self.prefix, event), payload, qos=self.cfg.qos)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.refused += 1
            log.warning("MQTT queue full (%d waiting for %s); event %s dropped", MAX_QUEUED, self.where, event.id)
        else:
            self.published += 1

    def stop(self, timeout: float = 3.0) -> None:
        """Say `offline` (retained) before leaving, so Home Assistant shows it at once, not after the keepalive."""
        if self.connected.is_set():
            info = self.client.publish(status_topic(self.prefix), "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not connected after all
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) --

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT broker %s refused the connection: %s; check mqtt.username/password", self.where, reason)
            return
        self.connected.set()
        self._warned_down = False
        client.publish(status_topic(self.prefix), "online", qos=1, retain=True)
        log.info("MQTT connected to %s; topics under %s/", self.where, self.prefix)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            log.warning("MQTT connection to %s lost (%s); reconnecting, events are queued", self.where, reason)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        if not self._warned_down:
            self._warned_down = True
            log.warning(
                "MQTT broker %s unreachable; retrying every %d s at most, events are queued",
                self.where,
                int(self.cfg.reconnect_max_s),
            )
