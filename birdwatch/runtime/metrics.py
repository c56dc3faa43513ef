"""Prometheus metrics, a /healthz endpoint and the periodic MQTT stats payload, all read from the
pipeline's `counters()` dict, so the numbers in the log, on MQTT and in Prometheus are the same.

The snapshot is read when asked (at scrape time), never pushed: no counter is kept twice. Keys it may
hold (missing optional keys leave their metrics out):

    elapsed_s: float                      seconds since start
    cameras: {name: {state, frames_read, frames_processed, frames_dropped, reconnects, regions}}
    crops: int                            crops classified
    events: int                           events the pipeline published (or `events_published`)
    ms_per_batch: float                   mean inference time per batch
    batches: int, infer_s: float          optional: batches and total inference seconds (the summary)
    queues: {stage: depth}                optional: items waiting between stages
    events_pending: int                   optional: events not yet acknowledged by the broker
    mqtt_connected: bool | None           optional: None (or absent) when no broker is configured

The HTTP server is off by default and binds to loopback unless `metrics.bind` says otherwise: the
numbers hold no secrets, but a service that is never asked to listen should not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.metrics_core import SummaryMetricFamily

from birdwatch.config import MetricsConfig
from birdwatch.errors import ConfigError

log = logging.getLogger(__name__)

Snapshot = Mapping[str, Any]
CAMERA_STATES = ("starting", "connecting", "streaming", "backoff", "finished", "failed", "stopped")
UP_STATE = "streaming"  # a camera is up while frames arrive; every other state is down


def camera_up(camera: Mapping[str, Any]) -> bool:
    return camera.get("state") == UP_STATE


# ---- Prometheus ------------------------------------------------------------------------------------


class SnapshotCollector:
    """A prometheus_client collector that turns one snapshot per scrape into metric families."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        cameras: Mapping[str, Mapping[str, Any]] = snap.get("cameras", {})
        per_camera = [
            ("frames_read", "Frames read from the camera since start."),
            ("frames_processed", "Frames the pipeline looked at since start."),
            ("frames_dropped", "Frames replaced by a newer one before the pipeline looked at them."),
            ("reconnects", "Times the camera was reopened after a failure or stall."),
        ]
        for key, doc in per_camera:
            family = CounterMetricFamily(f"birdwatch_camera_{key}", doc, labels=["camera"])
            for name, cam in cameras.items():
                family.add_metric([name], float(cam.get(key, 0)))
            yield family
        regions = CounterMetricFamily(
            "birdwatch_camera_motion_regions", "Motion regions found since start.", labels=["camera"]
        )
        up = GaugeMetricFamily("birdwatch_camera_up", "1 while the camera delivers frames, else 0.", labels=["camera"])
        state = GaugeMetricFamily(
            "birdwatch_camera_state", "1 for the camera's current reader state.", labels=["camera", "state"]
        )
        for name, cam in cameras.items():
            regions.add_metric([name], float(cam.get("regions", 0)))
            up.add_metric([name], 1.0 if camera_up(cam) else 0.0)
            for s in CAMERA_STATES:
                state.add_metric([name, s], 1.0 if cam.get("state") == s else 0.0)
        yield from (regions, up, state)

        if "batches" in snap and "infer_s" in snap:
            yield SummaryMetricFamily(
                "birdwatch_inference_seconds",
                "Time per classification batch (forward pass for the crops of every camera).",
                count_value=int(snap["batches"]),
                sum_value=float(snap["infer_s"]),
            )
        if "crops" in snap:
            yield CounterMetricFamily(
                "birdwatch_crops_classified", "Crops classified since start.", value=snap["crops"]
            )
        published = snap.get("events_published", snap.get("events"))
        if published is not None:
            yield CounterMetricFamily("birdwatch_events_published", "Events published since start.", value=published)
        if snap.get("events_pending") is not None:
            yield GaugeMetricFamily(
                "birdwatch_events_pending", "Events waiting for the broker.", value=snap["events_pending"]
            )
        queues: Mapping[str, int] = snap.get("queues") or {}
        if queues:
            depth = GaugeMetricFamily("birdwatch_queue_depth", "Items waiting between stages.", labels=["stage"])
            for stage, n in queues.items():
                depth.add_metric([stage], float(n))
            yield depth
        if snap.get("mqtt_connected") is not None:
            yield GaugeMetricFamily(
                "birdwatch_mqtt_connected",
                "1 while connected to the broker.",
                value=1.0 if snap["mqtt_connected"] else 0.0,
            )
        yield from _fault_metrics(snap)
        if "elapsed_s" in snap:
            yield GaugeMetricFamily(
                "birdwatch_uptime_seconds", "Seconds since the pipeline started.", value=snap["elapsed_s"]
            )


# What months of unattended running meet and get over: (snapshot key, metric kind, help).
FAULT_METRICS = (
    ("history_writable", GaugeMetricFamily, "1 while the event history takes writes; 0 while it refuses them."),
    (
        "events_unsaved",
        GaugeMetricFamily,
        "Events the history has not taken yet (delivered meanwhile, held in memory).",
    ),
    ("event_save_failures", CounterMetricFamily, "Event writes the history refused since start (each retried)."),
    ("events_lost", CounterMetricFamily, "Events the history never took (held beyond the cap, or at stop)."),
    ("events_unmarked", GaugeMetricFamily, "Events the broker acknowledged that SQLite has not marked sent yet."),
    ("event_mark_failures", CounterMetricFamily, "Marking an acknowledged event sent failed (retried)."),
    ("mqtt_callback_errors", CounterMetricFamily, "Exceptions caught in MQTT client callbacks."),
    ("mqtt_loop_restarts", CounterMetricFamily, "Times the MQTT network loop had ended and was started again."),
    ("visits_merged", CounterMetricFamily, "Second tracks of one bird joined to its open visit."),
    (
        "tracks_not_birds",
        CounterMetricFamily,
        "Confirmed tracks the localiser called not a bird, or below events.min_bird_score: no visit.",
    ),
    ("snapshots_failed", CounterMetricFamily, "Snapshots the disk refused (the visit was told without them)."),
    ("frames_held", GaugeMetricFamily, "Whole frames the open visits keep for their snapshots."),
    ("frames_held_bytes", GaugeMetricFamily, "Bytes of the whole frames the open visits keep."),
    ("memory_visits", GaugeMetricFamily, "Corrected or confirmed visits in the feeder memory, all cameras."),
    ("memory_reranked", CounterMetricFamily, "Crops whose leading species the feeder memory changed."),
)


def _fault_metrics(snap: Snapshot) -> Iterator[Metric]:
    for key, family, doc in FAULT_METRICS:
        if snap.get(key) is not None:
            yield family(f"birdwatch_{key}", doc, value=float(snap[key]))


def make_registry(snapshot: Callable[[], Snapshot], *, process: bool = True) -> CollectorRegistry:
    """A registry of birdwatch's metrics, plus process_* (RSS, fds, CPU) from /proc when `process`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
    return registry


# ---- health --------------------------------------------------------------------------------------


def health(snap: Snapshot) -> tuple[bool, dict[str, Any]]:
    """(healthy, body): healthy when every camera is up and the broker, if one is configured, too."""
    cameras = {name: "up" if camera_up(cam) else "down" for name, cam in snap.get("cameras", {}).items()}
    connected = snap.get("mqtt_connected")
    mqtt = "disabled" if connected is None else ("up" if connected else "down")
    ok = bool(cameras) and all(v == "up" for v in cameras.values()) and mqtt != "down"
    return ok, {"status": "ok" if ok else "degraded", "cameras": cameras, "mqtt": mqtt}


def summary_line(snap: Snapshot) -> str:
    """One line for systemd's STATUS= and the log, e.g. '2/2 cameras up, MQTT up, 3.1 crops/s, 12 events'."""
    cameras = snap.get("cameras", {})
    up = sum(camera_up(cam) for cam in cameras.values())
    down = [name for name, cam in cameras.items() if not camera_up(cam)]
    parts = [f"{up}/{len(cameras)} cameras up" + (f" (down: {', '.join(down)})" if down else "")]
    connected = snap.get("mqtt_connected")
    if connected is not None:
        parts.append("MQTT up" if connected else "MQTT down")
    if "crops_per_s" in snap:
        parts.append(f"{snap['crops_per_s']} crops/s")
    parts.append(f"{snap.get('events_published', snap.get('events', 0))} events")
    if snap.get("events_pending"):
        parts.append(f"{snap['events_pending']} pending")
    return ", ".join(parts)


# ---- HTTP ----------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
            elif path == "/healthz":
                ok, body = health(self.server.snapshot())
                self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")
        except Exception as exc:  # a scrape must never take the service down; say why and go on
            log.warning("metrics: %s failed: %s: %s", path, type(exc).__name__, exc)
            with contextlib.suppress(OSError):
                self._send(500, "text/plain; charset=utf-8", f"{type(exc).__name__}\n".encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib names it `format`
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client must not hold up shutdown
    registry: CollectorRegistry
    snapshot: Callable[[], Snapshot]


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /healthz (JSON; 200 when all is up, 503 if not).

    `start()` binds (a taken port is a ConfigError naming metrics.port) and serves from a daemon thread;
    `stop()` closes the socket. Port 0 picks a free port (tests); `port` then tells which.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], bind: str = "127.0.0.1", port: int = 9464) -> None:
        self.snapshot, self.bind, self.requested_port = snapshot, bind, port
        self.registry = make_registry(snapshot)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: MetricsConfig, snapshot: Callable[[], Snapshot]) -> MetricsServer | None:
        return cls(snapshot, cfg.bind, cfg.port) if cfg.enabled else None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        server_cls = _Server6 if ":" in self.bind else _Server
        try:
            server = server_cls((self.bind, self.requested_port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self.bind}:{self.requested_port} ({exc.strerror or exc}); "
                "choose another metrics.port or metrics.bind"
            ) from None
        server.registry, server.snapshot = self.registry, self.snapshot
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        if self.bind not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics on %s: readable by anyone who can reach this address", self.url)
        log.info("metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


# ---- the MQTT stats topic ---------------------------------------------------------------------------


class StatsReport:
    """Builds the JSON payload for `<prefix>/stats` from successive snapshots: rates over the interval
    since the previous call (since start for the first), totals since start."""

    def __init__(self) -> None:
        self._prev: Snapshot | None = None

    def payload(self, snap: Snapshot, now: float | None = None) -> dict[str, Any]:
        prev = self._prev or {"elapsed_s": 0.0, "cameras": {}, "crops": 0, "batches": 0, "infer_s": 0.0}
        span = max(1e-9, float(snap.get("elapsed_s", 0.0)) - float(prev.get("elapsed_s", 0.0)))
        cameras = {}
        for name, cam in snap.get("cameras", {}).items():
            was = prev["cameras"].get(name, {})

            def rate(key: str, cam: Mapping[str, Any] = cam, was: Mapping[str, Any] = was) -> float:
                return round(float(cam.get(key, 0) - was.get(key, 0)) / span, 2)

            cameras[name] = {
                "state": cam.get("state"),
                "up": camera_up(cam),
                "fps_read": rate("frames_read"),
                "fps_processed": rate("frames_processed"),
                "fps_dropped": rate("frames_dropped"),
                "frames_dropped": cam.get("frames_dropped", 0),
                "reconnects": cam.get("reconnects", 0),
            }
        if "batches" in snap and "infer_s" in snap:
            batches = snap["batches"] - prev.get("batches", 0)
            infer_s = snap["infer_s"] - prev.get("infer_s", 0.0)
            inference_ms = round(1000 * infer_s / batches, 1) if batches else None
        else:
            inference_ms = snap.get("ms_per_batch")
        connected = snap.get("mqtt_connected")
        out = {
            "ts": round(time.time() if now is None else now, 3),
            "uptime_s": snap.get("elapsed_s"),
            "interval_s": round(span, 2),
            "cameras": cameras,
            "crops_per_s": round((snap.get("crops", 0) - prev.get("crops", 0)) / span, 2),
            "inference_ms": inference_ms,
            "queues": dict(snap.get("queues") or {}),
            "events_published": snap.get("events_published", snap.get("events", 0)),
            "events_pending": snap.get("events_pending"),
            "mqtt": "disabled" if connected is None else ("up" if connected else "down"),
        }
        self._prev = snap
        return out

    def json(self, snap: Snapshot, now: float | None = None) -> str:
        return json.dumps(self.payload(snap, now), separators=(",", ":"))
