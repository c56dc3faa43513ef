"""MQTT: the only module that talks to paho.

Topics under `<prefix>` (mqtt.topic_prefix):

| topic | payload | retained |
| --- | --- | --- |
| `<prefix>/status` | `online` / `offline` (also the last will) | yes |
| `<prefix>/<camera>/event` | visit event JSON (`new`, `update`, `end`) | no |
| `<prefix>/<camera>/snapshot` | the visit's best crop, raw JPEG bytes | yes |
| `<prefix>/<camera>/state` | camera state JSON for Home Assistant | yes |
| `<prefix>/stats` | periodic counters JSON (QoS 0) | no |
| `<discovery_prefix>/<component>/<node>/<object>/config` | Home Assistant discovery | yes |

TLS per `mqtt.tls`. paho's network thread reconnects by itself (connect_async + loop_start). QoS 1 messages published
while disconnected wait in paho's queue and go out on reconnect; the outbox (store.py) keeps the
authoritative copy of events and is told of each broker acknowledgement through `on_sent`.

Home Assistant keeps an entity as long as its retained discovery config exists, so on every connect
the sink reads the retained configs back and clears (empty retained payload) those that name this
instance's availability topic but belong to a camera no longer in the config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.config import MqttTlsConfig
from birdwatch.config.tls import ssl_reason as _ssl_reason
from birdwatch.config.tls import tls_context  # the load-time check (config/rules.py) builds the same context
from birdwatch.deliver.discovery import CameraTopics
from birdwatch.deliver.discovery import camera_configs
from birdwatch.deliver.discovery import is_birdwatch_config
from birdwatch.deliver.discovery import node_id
from birdwatch.types import CameraState

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # messages paho holds in memory while the broker is away (the outbox keeps fewer in flight)
_UNTRACKED = None  # a publish nobody waits for (status, discovery, state, snapshot)


class EventSink(Protocol):
    @property
    def online(self) -> bool: ...  # can events be delivered now
    def describe(self, cameras: list[str], model: str) -> None: ...
    def start(self) -> None: ...
    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool: ...
    def publish_state(self, state: CameraState) -> None: ...
    def publish_stats(self, payload: str) -> None: ...
    def stop(self) -> None: ...


class Topics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def event(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/event"

    def snapshot(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/snapshot"

    def state(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/state"


def stats_topic(prefix: str) -> str:
    return f"{prefix}/stats"


def configure_tls(client: mqtt.Client, tls: MqttTlsConfig | None) -> None:
    """TLS on `client` per `mqtt.tls` (no-op for None). tls_set_context rather than tls_set: our own
    context lets an encrypted key fail cleanly instead of prompting, and enforces TLS 1.2+."""
    if tls is None:
        return
    client.tls_set_context(tls_context(tls))
    if tls.insecure:
        client.tls_insecure_set(True)
        log.warning("mqtt.tls.insecure: the broker's host name is not checked against its certificate")


def tls_failure_hint(exc: BaseException | None) -> str | None:
    """One line for a failed TLS handshake, naming the config key to look at; None if `exc` is no TLS error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker's certificate was not accepted ({_ssl_reason(exc)}); check mqtt.tls.ca_file "
            "(the CA that signed the broker's certificate) and that mqtt.host is a name in that certificate"
        )
    if isinstance(exc, ssl.SSLError):
        reason = _ssl_reason(exc)
        if "certificate" in reason:  # e.g. tlsv13 alert certificate required, sslv3 alert bad certificate
            return f"TLS: the broker refused the client certificate ({reason}); check mqtt.tls.cert_file and key_file"
        if "wrong version" in reason or "record layer" in reason:
            return f"TLS handshake failed ({reason}); is mqtt.port the broker's TLS listener (usually 8883)?"
        return f"TLS handshake failed ({reason})"
    return None


class LogSink:
    """No broker configured: events are only logged (the pipeline logs each) and kept in the history."""

    @property
    def online(self) -> bool:
        return True

    def describe(self, cameras: list[str], model: str) -> None:
        pass

    def start(self) -> None:
        log.info("no MQTT broker configured (mqtt.host); events are logged and kept in the history only")

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        on_sent()  # delivered as far as it goes: nothing would ever send it later
        return True

    def publish_state(self, state: CameraState) -> None:
        pass

    def publish_stats(self, payload: str) -> None:
        pass

    def stop(self) -> None:
        pass


class MqttSink:
    def __init__(
        self,
        cfg: MqttConfig,
        password: str | None,
        homeassistant: HomeAssistantConfig | None = None,
        snapshots: bool = True,
    ) -> None:
        assert cfg.host, "MqttSink needs mqtt.host"
        self.cfg = cfg
        self.topics = Topics(cfg.topic_prefix)
        self.homeassistant = homeassistant or HomeAssistantConfig()
        self.snapshots = snapshots
        self.connected = threading.Event()
        self.published = 0
        self.refused = 0
        self._warned_down = False
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None] | None] = {}  # mid -> on_sent, until the broker acks
        self._acked_early: set[int] = set()  # acks that beat publish() back to us
        self._retained: dict[str, str | bytes] = {}  # discovery configs and states, re-sent on every connect
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id(cfg))
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=int(cfg.reconnect_max_s))
        client.max_queued_messages_set(MAX_QUEUED)
        configure_tls(client, cfg.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    @property
    def online(self) -> bool:
        return self.connected.is_set()

    @property
    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def describe(self, cameras: list[str], model: str) -> None:
        """Home Assistant discovery for these cameras, published (retained) on every connect."""
        if not self.homeassistant.discovery:
            return
        for camera in cameras:
            topics = CameraTopics(
                camera,
                state=self.topics.state(camera),
                snapshot=self.topics.snapshot(camera) if self.snapshots else None,
                availability=self.topics.status,
            )
            node = node_id(self.cfg.topic_prefix, camera)
            for topic, payload in camera_configs(
                topics, discovery_prefix=self.homeassistant.discovery_prefix, node=node, model=model
            ):
                self._retained[topic] = _json(payload)

    def start(self) -> None:
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            log.warning("MQTT broker %s: %s; retrying in the background", self.where, exc)
        self.client.loop_start()

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        # The picture first, so whoever reacts to the event finds the new image already there.
        if (
            snapshot is not None
            and self.snapshots
            and not self._publish(self.topics.snapshot(camera), snapshot, retain=True)
        ):
            return False
        if not self._publish(self.topics.event(camera), payload, on_sent=on_sent, qos=self.cfg.qos):
            return False
        self.published += 1
        return True

    def publish_state(self, state: CameraState) -> None:
        topic = self.topics.state(state.camera)
        payload = _json(state.to_payload())
        with self._lock:
            self._retained[topic] = payload
        self._publish(topic, payload, retain=True)

    def publish_stats(self, payload: str) -> None:
        """Periodic counters on `<prefix>/stats`: QoS 0 and not retained, a stale figure is worthless."""
        if self.connected.is_set():
            self._publish(stats_topic(self.topics.prefix), payload, qos=0, warn=False)

    def stop(self, timeout: float = 3.0) -> None:
        """Say `offline` (retained) before leaving, so Home Assistant shows it at once, not after the keepalive."""
        if self.connected.is_set():
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not connected after all
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        on_sent: Callable[[], None] | None = _UNTRACKED,
        warn: bool = True,
    ) -> bool:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE or (qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS):
            self.refused += 1
            if warn:
                log.warning("MQTT: %s not queued (%s; broker %s)", topic, mqtt.error_string(info.rc), self.where)
            return False
        # Every publish is registered, so an early ack can always be matched to its own message and
        # a message id reused later (paho wraps at 65535) never finds a stale entry.
        with self._lock:
            early = info.mid in self._acked_early
            if early:
                self._acked_early.discard(info.mid)
            else:
                self._waiting[info.mid] = on_sent
        if early and on_sent is not None:
            on_sent()
        return True

    # -- paho callbacks (network thread) --

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT broker %s refused the connection: %s; check mqtt.username/password", self.where, reason)
            return
        self.connected.set()
        self._warned_down = False
        with self._lock:
            retained = list(self._retained.items())
        # Discovery before availability before states: Home Assistant creates the entities, marks them
        # available, then gets their values (all retained, so order only matters for a live HA).
        for topic, payload in sorted(retained, key=lambda kv: not kv[0].endswith("/config")):
            if topic.endswith("/config"):
                self._publish(topic, payload, retain=True)
        self._publish(self.topics.status, "online", retain=True)
        for topic, payload in retained:
            if not topic.endswith("/config"):
                self._publish(topic, payload, retain=True)
        if self.homeassistant.discovery:  # the broker answers with every retained config: see _on_message
            client.subscribe(f"{self.homeassistant.discovery_prefix}/+/+/+/config", qos=0)
        log.info("MQTT connected to %s; topics under %s/", self.where, self.topics.prefix)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: Any, props: object) -> None:
        with self._lock:
            if mid in self._waiting:
                on_sent = self._waiting.pop(mid)
            else:
                self._acked_early.add(mid)
                return
        if getattr(reason, "is_failure", False):  # MQTT 5 brokers can refuse a message (e.g. ACL)
            log.warning("MQTT broker %s refused message %d: %s; it stays in the outbox", self.where, mid, reason)
            return
        if on_sent is not None:
            on_sent()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        """A retained discovery config: clear it if it is ours but its camera has gone from the config."""
        if not msg.retain or not msg.payload:
            return
        with self._lock:
            current = msg.topic in self._retained
        if current:
            return
        try:
            payload = json.loads(msg.payload)
        except (UnicodeDecodeError, ValueError):
            return  # someone else's, in a format of their own
        if is_birdwatch_config(payload, self.topics.status):
            log.info("Home Assistant: removing %s, its camera is no longer in the config", msg.topic)
            self._publish(msg.topic, b"", retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was:
            log.warning("MQTT connection to %s lost (%s); reconnecting, events are queued", self.where, reason)
        elif getattr(reason, "is_failure", False) and not self._warned_down:
            # Dropped before CONNACK: typically TLS expected by the listener, or our certificate refused
            # after a TLS 1.3 handshake (which the client sees only on its first read).
            self._warned_down = True
            log.error(
                "MQTT broker %s closed the connection before accepting it (%s); %s",
                self.where,
                reason,
                self._tls_hint(),
            )

    def _tls_hint(self) -> str:
        if self.cfg.tls is None:
            return "if its listener uses TLS, set mqtt.tls (and cert_file/key_file if it requires client certificates)"
        if not self.cfg.tls.cert_file:
            return "if it requires client certificates, set mqtt.tls.cert_file and key_file"
        return "check that it accepts the client certificate in mqtt.tls.cert_file (signed by a CA it trusts)"

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its `except OSError:` block, so the failure itself is at hand.
        hint = tls_failure_hint(sys.exc_info()[1])
        if hint and not self._warned_down:
            self._warned_down = True
            log.error("MQTT broker %s: %s; retrying every %d s", self.where, hint, int(self.cfg.reconnect_max_s))
        elif not self._warned_down:
            self._warned_down = True
            log.warning(
                "MQTT broker %s unreachable; retrying every %d s at most, events are queued",
                self.where,
                int(self.cfg.reconnect_max_s),
            )


def client_id(cfg: MqttConfig) -> str:
    """mqtt.client_id, or one unique per host and instance: a broker drops the older of two clients
    with the same id, so two birdwatch instances sharing one would knock each other off in turn."""
    return cfg.client_id or f"birdwatch-{socket.gethostname()}-{cfg.topic_prefix.replace('/', '-')}"


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
