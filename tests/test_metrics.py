"""Metrics over real HTTP on a loopback port: Prometheus text from the pipeline's snapshot, /healthz
with 200/503, the MQTT stats payload and the systemd status line from the same numbers."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from birdwatch.config import parse_config
from birdwatch.errors import ConfigError
from birdwatch.runtime.metrics import FAULT_METRICS
from birdwatch.runtime.metrics import MetricsServer
from birdwatch.runtime.metrics import StatsReport
from birdwatch.runtime.metrics import health
from birdwatch.runtime.metrics import summary_line
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.support.servers import free_port


def snapshot(**overrides: Any) -> dict[str, Any]:
    """The shape of Pipeline.counters(), with the keys the pipeline adds for metrics."""
    snap: dict[str, Any] = {
        "elapsed_s": 10.0,
        "cameras": {
            "feeder": {"state": "streaming", "frames_read": 100, "frames_processed": 80, "frames_dropped": 20,
                       "reconnects": 1, "regions": 30, "last_error": ""},
            "window": {"state": "backoff", "frames_read": 5, "frames_processed": 5, "frames_dropped": 0,
                       "reconnects": 3, "regions": 0, "last_error": "cannot connect"},
        },
        "crops": 40,
        "crops_per_s": 4.0,
        "events": 7,
        "ms_per_batch": 250.0,
        "batches": 10,
        "infer_s": 2.5,
        "queues": {"locate": 1, "classify": 2},
        "events_pending": 3,
        "mqtt_connected": True,
    }  # fmt: skip
    snap.update(overrides)
    return snap


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, dict[str, Any]]]:
    state = snapshot()
    server = MetricsServer(lambda: state, bind="127.0.0.1", port=0)
    server.start()
    yield server, state
    server.stop()


@pytest.mark.timeout(30)
def test_metrics_endpoint_serves_every_documented_metric(served: tuple[MetricsServer, dict[str, Any]]) -> None:
    server, _ = served
    code, content_type, text = get(server.url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=")
    got = samples(text)
    feeder, window = (("camera", "feeder"),), (("camera", "window"),)
    assert got[("birdwatch_camera_frames_read_total", feeder)] == 100
    assert got[("birdwatch_camera_frames_processed_total", feeder)] == 80
    assert got[("birdwatch_camera_frames_dropped_total", feeder)] == 20
    assert got[("birdwatch_camera_reconnects_total", window)] == 3
    assert got[("birdwatch_camera_motion_regions_total", feeder)] == 30
    assert got[("birdwatch_camera_up", feeder)] == 1 and got[("birdwatch_camera_up", window)] == 0
    assert got[("birdwatch_camera_state", (("camera", "window"), ("state", "backoff")))] == 1
    assert got[("birdwatch_camera_state", (("camera", "window"), ("state", "streaming")))] == 0
    assert got[("birdwatch_inference_seconds_count", ())] == 10
    assert got[("birdwatch_inference_seconds_sum", ())] == 2.5
    assert got[("birdwatch_queue_depth", (("stage", "classify"),))] == 2
    assert got[("birdwatch_events_published_total", ())] == 7
    assert got[("birdwatch_events_pending", ())] == 3
    assert got[("birdwatch_mqtt_connected", ())] == 1
    assert got[("birdwatch_crops_classified_total", ())] == 40
    assert got[("process_resident_memory_bytes", ())] > 0, "process metrics: RSS, fds, CPU"


@pytest.mark.timeout(30)
def test_metrics_are_read_at_scrape_time(served: tuple[MetricsServer, dict[str, Any]]) -> None:
    server, state = served
    state["cameras"]["feeder"]["frames_read"] = 555
    state["mqtt_connected"] = False
    got = samples(get(server.url + "/metrics")[2])
    assert got[("birdwatch_camera_frames_read_total", (("camera", "feeder"),))] == 555
    assert got[("birdwatch_mqtt_connected", ())] == 0


@pytest.mark.timeout(30)
def test_healthz_is_503_with_a_camera_down_and_200_when_all_is_up(
    served: tuple[MetricsServer, dict[str, Any]],
) -> None:
    server, state = served
    code, content_type, body = get(server.url + "/healthz")
    assert (code, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "degraded", "cameras": {"feeder": "up", "window": "down"}, "mqtt": "up"}

    state["cameras"]["window"]["state"] = "streaming"
    code, _, body = get(server.url + "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"

    state["mqtt_connected"] = False
    code, _, body = get(server.url + "/healthz")
    assert code == 503 and json.loads(body)["mqtt"] == "down"

    state["mqtt_connected"] = None  # no broker configured: not a fault
    code, _, body = get(server.url + "/healthz")
    assert code == 200 and json.loads(body)["mqtt"] == "disabled"


@pytest.mark.timeout(30)
def test_unknown_paths_404_and_a_failing_snapshot_is_a_500_not_a_dead_server() -> None:
    calls = {"n": 0}

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("pipeline not started")
        return snapshot()

    server = MetricsServer(flaky, port=0)
    server.start()
    try:
        assert get(server.url + "/")[0] == 404
        assert get(server.url + "/healthz")[0] == 500
        assert get(server.url + "/healthz")[0] == 503, "the next request is served as usual"
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics: cannot listen on 127.0.0.1:{port} .*metrics.port"):
            MetricsServer(snapshot, port=port).start()


@pytest.mark.timeout(30)
def test_ipv6_loopback() -> None:
    server = MetricsServer(snapshot, bind="::1", port=0)
    try:
        server.start()
    except ConfigError as exc:  # a host without IPv6 says so in one line too
        assert "cannot listen on ::1" in str(exc)
        return
    try:
        assert server.url.startswith("http://[::1]:")
        assert get(server.url + "/healthz")[0] == 503
    finally:
        server.stop()


def test_metrics_are_off_by_default_and_loopback_only() -> None:
    config = parse_config("cameras:\n  - {name: a, url: rtsp://cam/x}\n")
    assert config.metrics.enabled is False and config.metrics.bind == "127.0.0.1" and config.metrics.port == 9464
    assert MetricsServer.from_config(config.metrics, snapshot) is None
    config = parse_config("cameras:\n  - {name: a, url: rtsp://cam/x}\nmetrics: {enabled: true, port: 9999}\n")
    server = MetricsServer.from_config(config.metrics, snapshot)
    assert server is not None and (server.bind, server.requested_port) == ("127.0.0.1", 9999)


def test_stats_payload_gives_rates_over_the_interval_and_totals() -> None:
    report = StatsReport()
    first = report.payload(snapshot(), now=1000.0)
    assert first["cameras"]["feeder"] == {
        "state": "streaming", "up": True, "fps_read": 10.0, "fps_processed": 8.0, "fps_dropped": 2.0,
        "frames_dropped": 20, "reconnects": 1,
    }  # fmt: skip
    assert first["inference_ms"] == 250.0 and first["crops_per_s"] == 4.0
    assert first["queues"] == {"locate": 1, "classify": 2}
    assert (first["events_published"], first["events_pending"], first["mqtt"]) == (7, 3, "up")

    later = snapshot(elapsed_s=20.0, crops=60, batches=12, infer_s=3.5)
    later["cameras"]["feeder"] = {**later["cameras"]["feeder"], "frames_read": 150, "frames_processed": 100}
    second = json.loads(report.json(later, now=1010.0))
    assert second["interval_s"] == 10.0
    assert second["cameras"]["feeder"]["fps_read"] == 5.0 and second["cameras"]["feeder"]["fps_processed"] == 2.0
    assert second["crops_per_s"] == 2.0 and second["inference_ms"] == 500.0, "over the interval, not since start"


def test_summary_line_for_systemd_status() -> None:
    assert summary_line(snapshot()) == "1/2 cameras up (down: window), MQTT up, 4.0 crops/s, 7 events, 3 pending"
    assert health(snapshot(cameras={}))[0] is False, "no camera at all is not healthy"


# ---- with a real pipeline --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_real_pipeline_scraped_over_http(danube_weights: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_video(clip, generate_frames(320, 240, 30, n_birds=2, seed=3, present_fraction=0.8), fps=20)
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"
    config = parse_config(
        f"""
cameras:
  - {{name: clip, url: "{clip}", loop: true, realtime: true, motion: {{warmup_frames: 3}}}}
  - {{name: gate, url: "{dead}", open_timeout_s: 1, reconnect: {{initial_s: 0.5, max_s: 1}}}}
model: {{file: "{danube_weights}", device: cpu}}
events: {{min_score: 0.0}}
store: {{path: "{tmp_path / "birdwatch.db"}"}}
snapshots: {{dir: "{tmp_path / "snapshots"}"}}
"""
    )
    pipeline = Pipeline(config)
    stop = threading.Event()
    pipeline.start()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    server = MetricsServer(pipeline.counters, port=0)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = samples(get(server.url + "/metrics")[2])
            if got.get(("birdwatch_camera_frames_processed_total", (("camera", "clip"),)), 0) >= 10:
                break
            time.sleep(0.5)
        assert got[("birdwatch_camera_frames_processed_total", (("camera", "clip"),))] >= 10
        assert got[("birdwatch_camera_frames_read_total", (("camera", "clip"),))] >= 10
        assert got[("birdwatch_camera_up", (("camera", "clip"),))] == 1
        assert got[("birdwatch_camera_up", (("camera", "gate"),))] == 0
        for key, family, _ in FAULT_METRICS:  # served from the first scrape, 0 while nothing has gone wrong
            name = f"birdwatch_{key}" + ("_total" if family is CounterMetricFamily else "")
            healthy = 1 if key == "history_writable" else 0
            assert got[(name, ())] == healthy or key.startswith("frames_held"), name
        code, _, body = get(server.url + "/healthz")
        assert code == 503 and json.loads(body)["cameras"] == {"clip": "up", "gate": "down"}
    finally:
        server.stop()
        stop.set()
        runner.join(30)
        pipeline.stop()
