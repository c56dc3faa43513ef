"""MQTT: events as JSON under `<prefix>/<camera>/...`, an availability topic with a last will.

paho-mqtt's network thread reconnects by itself (connect_async + loop_start), so a broker that is
down at start or restarts later costs a log line, never the service. QoS 1 messages published
while disconnected wait in paho's queue (bounded) and go out on reconnect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
import threading
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from birdwatch.config import MqttConfig
from birdwatch.config import MqttTlsConfig
from birdwatch.errors import ConfigError
from birdwatch.types import Event

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # events held in memory while the broker is away; past that, new ones are refused and logged


class EventSink(Protocol):
    def start(self) -> None: ...
    def publish(self, event: Event) -> None: ...
    def publish_stats(self, payload: str) -> None: ...
    def stop(self) -> None: ...


def topic_for(prefix: str, event: Event) -> str:
    return f"{prefix}/{event.camera}/{event.kind}"


def status_topic(prefix: str) -> str:
    return f"{prefix}/status"


def stats_topic(prefix: str) -> str:
    return f"{prefix}/stats"


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """A client context: the broker's chain verified against `ca_file` (or the system CAs), our own
    certificate and key when given. Unreadable or mismatched PEM files are config errors, at start-up."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"mqtt.tls.ca_file: {tls.ca_file!r} holds no usable CA certificate ({_ssl_reason(exc)}); give a PEM file"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file:

        def no_passphrase() -> str:
            # OpenSSL would otherwise prompt on the terminal, or hang a service that has none.
            raise ConfigError(
                f"mqtt.tls.key_file: {tls.key_file!r} is encrypted; birdwatch needs it unencrypted "
                "(openssl pkey -in KEY -out KEY.plain; chmod 600 KEY.plain)"
            )

        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls.cert_file/key_file: cannot load {tls.cert_file!r} with {tls.key_file!r} "
                f"({_ssl_reason(exc)}); give the PEM client certificate and its own private key"
            ) from None
    if tls.insecure:
        context.check_hostname = False  # the chain is still verified (verify_mode stays CERT_REQUIRED)
    return context


def configure_tls(client: mqtt.Client, tls: MqttTlsConfig | None) -> None:
    """TLS on `client` per `mqtt.tls` (no-op for None). tls_set_context rather than tls_set: our own
    context lets an encrypted key fail cleanly instead of prompting, and enforces TLS 1.2+."""
    if tls is None:
        return
    client.tls_set_context(tls_context(tls))
    if tls.insecure:
        client.tls_insecure_set(True)
        log.warning("mqtt.tls.insecure: the broker's host name is not checked against its certificate")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc)


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
    """No broker configured: events are only logged (the pipeline logs every event anyway)."""

    def start(self) -> None:
        log.info("no MQTT broker configured (mqtt.host); events are logged only")

    def publish(self, event: Event) -> None:
        pass

    def publish_stats(self, payload: str) -> None:
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
        configure_tls(client, cfg.tls)
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

    def publish_stats(self, payload: str) -> None:
        """Periodic counters on `<prefix>/stats`: QoS 0 and not retained, a stale figure is worthless."""
        if self.connected.is_set():
            self.client.publish(stats_topic(self.prefix), payload, qos=0)

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
