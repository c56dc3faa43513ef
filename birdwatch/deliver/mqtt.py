"""MQTT: the sink that delivers events to a broker. deliver/ is the only room that talks to paho: this module, and
broker.py (the topics, TLS, client ids, and the one-shot probe `birdwatch doctor` uses).

TLS per `mqtt.tls`. paho's network thread reconnects by itself (connect_async + loop_start). What keeps a box
nobody watches delivering:

- Events (mqtt.qos, 1: at least once) are handed to paho at most EVENT_WINDOW unacknowledged at a
  time; the rest wait in the outbox (outbox.py, SQLite), so a long outage costs no memory. paho keeps
  the handed ones across reconnects; the outbox is told of each broker acknowledgement via `on_sent`.
- State and snapshot topics carry a current value: the sink keeps the latest per topic, publishes it
  only while connected, at QoS 0 so paho never holds or replays an old one, and sends it again after
  every connect once the events paho held meanwhile are acknowledged. The broker never ends on an
  old value, and `visits_today` never goes back.
- paho ends its network loop when a callback raises, so every callback here is guarded (logged,
  never raised) and quick: acknowledgements go to the sink's delivery thread, which runs `on_sent`
  (the outbox's database work) and restarts a network loop that ended anyway (`online` and
  `problem` show it meanwhile).

Home Assistant keeps an entity as long as its retained discovery config exists, so on every connect the sink reads
the retained configs back and clears (empty retained payload) those that name this instance's availability topic
but belong to a camera no longer in the config."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from birdwatch.config import HomeAssistantConfig
from birdwatch.config import MqttConfig
from birdwatch.deliver.broker import Topics
from birdwatch.deliver.broker import client_id
from birdwatch.deliver.broker import configure_tls
from birdwatch.deliver.broker import stats_topic
from birdwatch.deliver.broker import tls_failure_hint
from birdwatch.deliver.broker import warn_plain_password
from birdwatch.deliver.discovery import discovery_configs
from birdwatch.deliver.discovery import is_birdwatch_config
from birdwatch.types import CameraState

log = logging.getLogger(__name__)

EVENT_WINDOW = 100  # events handed to paho and not yet acknowledged, at most; the rest wait in SQLite
MAX_QUEUED = 1000  # paho's cap on the QoS 1 messages it holds (events, discovery, status): a last guard
MAX_CONFIG_BYTES = 64 * 1024  # a retained discovery config bigger than this is nobody's we made
BACKLOG_WAIT_S = 5.0  # after a connect, the current state waits at most this long for the backlog's acks
TICK_S = 0.5  # how often the delivery thread looks at paho's network loop when nothing else happens


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
        self.refused = 0  # publishes paho would not take (its queue full)
        self.deferred = 0  # events left in the outbox because EVENT_WINDOW were unacknowledged
        self.callback_errors = 0
        self.ack_errors = 0
        self.loop_restarts = 0
        self._warned_down = False
        self._warned_full = False
        # One lock for what is published and what is waited for, held across client.publish: an
        # acknowledgement (resolved on the delivery thread, under it) always finds its message
        # registered, and of two publishes of one topic the later carries the later value. paho calls
        # on_publish under its message lock, which client.publish needs: so on_publish only queues.
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None]] = {}  # mid -> on_sent, events until the broker acks
        # Events paho held over an outage, as the last connect found them: paho sends them only after
        # on_connect returns, so a newer event handed over before they are acknowledged would overtake them.
        self._held_at_connect: set[int] = set()
        self._configs: dict[str, str] = {}  # discovery configs, published on every connect
        self._latest: dict[str, str | bytes] = {}  # state and snapshot topics -> the current value
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()  # paho's thread -> delivery thread
        self._stopping = threading.Event()
        self._loop_lock = threading.Lock()  # starting, restarting and stopping paho's network loop
        self._started = False
        self._worker: threading.Thread | None = None
        self._loop_ended: float | None = None  # monotonic: when the network loop was found ended
        self._restart_after_s = 1.0
        self._error_logged: dict[str, float] = {}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id(cfg))
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=int(cfg.reconnect_max_s))
        client.max_queued_messages_set(MAX_QUEUED)
        # No second queue inside paho: what it takes goes out in the order taken, so a QoS 0 snapshot
        # never overtakes the events before its own (paho would hold QoS 1 messages beyond 20 back).
        client.max_inflight_messages_set(MAX_QUEUED)
        client.suppress_exceptions = True  # a second net: paho then logs a callback's exception, not re-raise it
        configure_tls(client, cfg.tls)
        client.on_connect = self._guarded("on_connect", self._on_connect)
        client.on_disconnect = self._guarded("on_disconnect", self._on_disconnect)
        client.on_connect_fail = self._guarded("on_connect_fail", self._on_connect_fail)
        client.on_publish = self._guarded("on_publish", self._on_publish)
        client.on_message = self._guarded("on_message", self._on_message)
        self.client = client
        warn_plain_password(cfg, password)

    @property
    def online(self) -> bool:
        """Connected, and paho's network loop runs: without it no acknowledgement is read again."""
        return self.connected.is_set() and self.network_alive

    @property
    def network_alive(self) -> bool:
        # paho names no public way to ask: loop_start's thread is `_thread`, set back to None when it ends.
        thread = getattr(self.client, "_thread", None)
        return isinstance(thread, threading.Thread) and thread.is_alive()

    @property
    def problem(self) -> str | None:
        """Why delivery cannot go on by itself now (for health and the watchdog), or None. A broker that is
        away is no problem here: paho reconnects."""
        if not self._started or self._stopping.is_set():
            return None
        if self._worker is None or not self._worker.is_alive():
            return "the MQTT delivery thread has ended"
        if not self.network_alive:
            return "the MQTT network loop has ended (restarting it)"
        return None

    @property
    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def describe(self, cameras: list[str], model: str) -> None:
        """Home Assistant discovery for these cameras and the instance, published (retained) on every connect."""
        if not self.homeassistant.discovery:
            return
        configs = discovery_configs(self.topics, cameras, model, self.homeassistant.discovery_prefix, self.snapshots)
        with self._lock:
            self._configs.update((topic, _json(payload)) for topic, payload in configs)

    def start(self) -> None:
        with self._loop_lock:
            self._started = True
            self._worker = threading.Thread(target=self._deliver, name="mqtt-deliver", daemon=True)
            self._worker.start()
            self._connect_async()
            self.client.loop_start()

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        with self._lock:
            if self._held_at_connect and not self._held_at_connect.isdisjoint(self._waiting):
                self.deferred += 1
                return False  # it waits in the outbox until the events held over the outage are through
            if len(self._waiting) >= EVENT_WINDOW:
                self.deferred += 1
                return False  # it waits in the outbox, on disk, until acknowledgements make room
            # The picture first, so whoever reacts to the event finds the new image already there.
            if snapshot is not None and self.snapshots:
                self._set_latest(self.topics.snapshot(camera), snapshot)
            if not self._publish(self.topics.event(camera), payload, qos=self.cfg.qos, on_sent=on_sent):
                return False
            self.published += 1
        return True

    def publish_correction(self, camera: str, payload: str, on_sent: Callable[[], None]) -> bool:
        """A person's correction of a visit (deliver/corrections.py), at the events' QoS; False: try later."""
        with self._lock:
            topic = self.topics.correction(camera)
            return self.online and self._publish(topic, payload, qos=self.cfg.qos, on_sent=on_sent)

    def publish_state(self, state: CameraState) -> None:
        with self._lock:
            self._set_latest(self.topics.state(state.camera), _json(state.to_payload()))

    def publish_history(self, problem: str | None) -> None:
        """Whether the history takes writes (Home Assistant's problem sensor); the current value, retained."""
        payload = {"problem": "ON" if problem else "OFF", "reason": problem}
        with self._lock:
            self._set_latest(self.topics.history, _json(payload))

    def publish_stats(self, payload: str) -> None:
        """Periodic counters on `<prefix>/stats`: QoS 0 and not retained, a stale figure is worthless."""
        if self.online:
            with self._lock:
                self._publish(stats_topic(self.topics.prefix), payload, qos=0, quiet=True)

    def stop(self, timeout: float = 3.0) -> None:
        """Say `offline` (retained) before leaving, so Home Assistant shows it at once, not after the
        keepalive; then let the delivery thread hand over the acknowledgements already read."""
        with self._loop_lock:
            self._stopping.set()
            if self.online:
                info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):  # not connected after all
                    info.wait_for_publish(timeout)
            self.client.disconnect()
            self.client.loop_stop()
        if self._worker is not None:
            self._inbox.put(("stop",))
            self._worker.join(timeout)

    # -- publishing (self._lock held) --

    def _publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        retain: bool = False,
        qos: int = 1,
        on_sent: Callable[[], None] | None = None,
        quiet: bool = False,
    ) -> bool:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE or (qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS):
            self.refused += 1
            if not quiet and not self._warned_full:  # once per outage: a refusal per publish would flood the log
                self._warned_full = True
                log.warning(
                    "MQTT: %s not queued (%s; broker %s); events wait in the outbox, and this is not said again "
                    "until the broker is back",
                    topic,
                    mqtt.error_string(info.rc),
                    self.where,
                )
            return False
        if on_sent is not None:
            self._waiting[info.mid] = on_sent
        return True

    def _set_latest(self, topic: str, payload: str | bytes) -> None:
        """Keep the current value of a retained topic; publish it now only if connected (else on connect)."""
        self._latest[topic] = payload
        if self.connected.is_set():
            self._publish(topic, payload, retain=True, qos=0, quiet=True)

    # -- the delivery thread --

    def _deliver(self) -> None:
        """Acknowledgements to `on_sent`, the current state after each connect's backlog, and a watch on
        paho's network loop. Nothing raised here ends it."""
        backlog: set[int] | None = None  # events paho held at the last connect, not yet acknowledged
        state_due = 0.0
        while True:
            try:
                item = self._inbox.get(timeout=TICK_S)
            except queue.Empty:
                item = ("tick",)
            try:
                if item[0] == "stop":
                    return
                if item[0] == "ack":
                    self._acked(item[1], item[2])
                elif item[0] == "connected":
                    backlog, state_due = item[1], time.monotonic() + BACKLOG_WAIT_S
                if backlog is not None and (time.monotonic() >= state_due or not self._any_waiting(backlog)):
                    backlog = None
                    self._send_latest()
                self._watch_loop()
            except Exception as exc:  # this thread must outlive any one failure
                self._error("delivery", exc)

    def _acked(self, mid: int, refused: bool) -> None:
        with self._lock:
            on_sent = self._waiting.pop(mid, None)
        if on_sent is None:
            return  # a message nobody waits for (status, discovery)
        if refused:  # MQTT 5 brokers can refuse a message (e.g. ACL)
            log.warning("MQTT broker %s refused message %d; it stays in the outbox", self.where, mid)
            return
        try:
            on_sent()
        except Exception as exc:  # the outbox keeps the event; the next ones must still be told
            self.ack_errors += 1
            self._error("handling an acknowledgement", exc)

    def _any_waiting(self, mids: set[int]) -> bool:
        with self._lock:
            return any(mid in self._waiting for mid in mids)

    def _send_latest(self) -> None:
        with self._lock:
            if self.connected.is_set():
                for topic, payload in self._latest.items():
                    self._publish(topic, payload, retain=True, qos=0, quiet=True)

    def _watch_loop(self) -> None:
        """A network loop that ended leaves nobody to read acknowledgements or reconnect: say so, show it
        (offline), and start it again on a fresh connection."""
        if not self._started or self._stopping.is_set() or self.network_alive:
            self._loop_ended = None
            return
        now = time.monotonic()
        if self._loop_ended is None:
            self._loop_ended = now
            self.connected.clear()
            log.error(
                "MQTT: the network loop for broker %s ended; events wait in the outbox; restarting it in %.0f s",
                self.where,
                self._restart_after_s,
            )
            return
        if now - self._loop_ended < self._restart_after_s:
            return
        with self._loop_lock:
            if self._stopping.is_set() or self.network_alive:
                return
            self.loop_restarts += 1
            self._restart_after_s = min(2 * self._restart_after_s, self.cfg.reconnect_max_s)
            self._loop_ended = None
            self._connect_async()  # a fresh connection: the old socket may hold half a packet
            self.client.loop_start()

    def _connect_async(self) -> None:
        assert self.cfg.host  # a sink without a host is the log sink
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as exc:
            log.warning("MQTT broker %s: %s; retrying in the background", self.where, exc)

    def _error(self, where: str, exc: BaseException) -> None:
        """One line per kind of failure a minute: a failure on every message must not flood the journal."""
        now = time.monotonic()
        if now - self._error_logged.get(where, -3600.0) < 60:
            log.debug("MQTT: %s failed again: %s: %s", where, type(exc).__name__, exc)
            return
        self._error_logged[where] = now
        log.error("MQTT: %s failed (%s: %s); delivery goes on", where, type(exc).__name__, exc)

    def _guarded(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """paho re-raises what a callback raises, and its network loop ends: nothing gets through."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.callback_errors += 1
                self._error(f"paho's {name} callback", exc)

        return guarded

    # -- paho callbacks (network thread): quick, and they only queue what takes time --

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT broker %s refused the connection: %s; check mqtt.username/password", self.where, reason)
            return
        self._warned_down = self._warned_full = False
        self._restart_after_s = 1.0
        # Discovery before availability: Home Assistant creates the entities, then marks them available.
        # Their values (state, snapshot) follow from the delivery thread, after the events paho held.
        with self._lock:
            for topic, payload in self._configs.items():
                self._publish(topic, payload, retain=True)
            self._publish(self.topics.status, "online", retain=True)
            backlog = self._held_at_connect = set(self._waiting)
            self.connected.set()
        if self.homeassistant.discovery:  # the broker answers with every retained config: see _on_message
            client.subscribe(f"{self.homeassistant.discovery_prefix}/+/+/+/config", qos=0)
        self._inbox.put(("connected", backlog))
        log.info("MQTT connected to %s; topics under %s/", self.where, self.topics.prefix)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: Any, props: object) -> None:
        # Called under paho's message lock: only queue it, the outbox's database work is not for this thread.
        self._inbox.put(("ack", mid, bool(getattr(reason, "is_failure", False))))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        """A retained discovery config: clear it if it is ours but its camera has gone from the config."""
        if not msg.retain or not msg.payload or len(msg.payload) > MAX_CONFIG_BYTES:
            return  # too big to be one of ours
        with self._lock:
            current = msg.topic in self._configs
        if current:
            return
        try:
            payload = json.loads(msg.payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return  # someone else's, in a format (or a depth) of their own
        if is_birdwatch_config(payload, self.topics.status):
            log.info("Home Assistant: removing %s, its camera is no longer in the config", msg.topic)
            with self._lock:
                self._publish(msg.topic, b"", retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._stopping.is_set():
            return
        if was:
            log.warning(
                "MQTT connection to %s lost (%s); reconnecting, events are queued in the outbox", self.where, reason
            )
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
                "MQTT broker %s unreachable; retrying every %d s at most, events are queued in the outbox",
                self.where,
                int(self.cfg.reconnect_max_s),
            )


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
