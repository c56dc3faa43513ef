"""Talking to an MQTT broker, for the sink (mqtt.py) and for `birdwatch doctor`'s one-shot probe: the
topics, TLS on a paho client, the client id, the warning for a password sent in the clear.

Topics under `<prefix>` (mqtt.topic_prefix):

| topic | payload | retained |
| --- | --- | --- |
| `<prefix>/status` | `online` / `offline` (also the last will) | yes |
| `<prefix>/<camera>/event` | visit event JSON (`new`, `update`, `end`) | no |
| `<prefix>/<camera>/snapshot` | the visit's best crop, raw JPEG bytes (QoS 0, current value) | yes |
| `<prefix>/<camera>/state` | camera state JSON for Home Assistant (QoS 0, current value) | yes |
| `<prefix>/history` | `{"problem": "ON"/"OFF", "reason": ...}`: history not writable (QoS 0, current value) | yes |
| `<prefix>/stats` | periodic counters JSON (QoS 0) | no |
| `<discovery_prefix>/<component>/<node>/<object>/config` | Home Assistant discovery | yes |
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from birdwatch.config import MqttConfig
from birdwatch.config import MqttTlsConfig
from birdwatch.config.rules import is_loopback
from birdwatch.config.tls import ssl_reason as _ssl_reason
from birdwatch.config.tls import tls_context  # the load-time check (config/rules.py) builds the same context

log = logging.getLogger("birdwatch.deliver.mqtt")  # the name these lines have always had in the journal

RETAINED_QUIET_S = 1.0  # retained messages arrive together after the subscription; then a quiet second


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

    def correction(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/correction"

    @property
    def history(self) -> str:
        return f"{self.prefix}/history"


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


def warn_plain_password(cfg: MqttConfig, password: str | None) -> bool:
    """Warn (True) when the MQTT password would cross a network in the clear: no mqtt.tls, a broker elsewhere."""
    if not password or cfg.tls is not None or not cfg.host or is_loopback(cfg.host):
        return False
    log.warning(
        "mqtt: the password of %r goes to %s:%d unencrypted (mqtt.tls is not set); anyone on the network "
        "between can read it; set mqtt.tls (and the broker's TLS listener, usually port 8883)",
        cfg.username,
        cfg.host,
        cfg.port,
    )
    return True


def client_id(cfg: MqttConfig) -> str:
    """mqtt.client_id, or one unique per host and instance: a broker drops the older of two clients
    with the same id, so two birdwatch instances sharing one would knock each other off in turn."""
    return cfg.client_id or f"birdwatch-{socket.gethostname()}-{cfg.topic_prefix.replace('/', '-')}"


class BrokerProbe:
    """A short-lived MQTT v5 client: v5 because its PUBACK says whether the broker's ACL let a publish in
    (a 3.1.1 broker acknowledges a refused publish as if it were taken)."""

    def __init__(self, cfg: MqttConfig, password: str | None) -> None:
        self.connack = threading.Event()
        self.puback = threading.Event()
        self.subscribed = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.publish_reason: ReasonCode | None = None
        self.retained: list[str] = []
        self.last_message = time.monotonic()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"birdwatch-doctor-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        configure_tls(client, cfg.tls)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self.connect_reason = reason
        self.connack.set()

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, reason: ReasonCode, _p: object) -> None:
        self.publish_reason = reason
        self.puback.set()

    def _on_subscribe(self, *_args: object) -> None:
        self.last_message = time.monotonic()
        self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:  # only what is kept on the broker says who uses the prefix; no payload is parsed
            self.retained.append(msg.topic)
        self.last_message = time.monotonic()

    def wait_retained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.subscribed.wait(timeout)
        while time.monotonic() < deadline and time.monotonic() - self.last_message < RETAINED_QUIET_S:
            time.sleep(0.05)
