"""End to end, with real parts only: a generated clip with moving birds served over RTSP by
GStreamer, `birdwatch run` as a child process with untrained birder weights loaded by the real
loader, and a subscriber on a real mosquitto that receives the events."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_models import DANUBE
from tests.support.process import BirdwatchProcess
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import RtspServer
from tests.support.servers import free_port


def base_config(weights: Path, cameras: list[dict[str, Any]], broker: MosquittoBroker | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cameras": cameras,
        "model": {"file": str(weights), "device": "cpu"},
        # Untrained weights are not confident about anything: let every sighting through the score
        # gate, and keep the throttle long so the test can count on it.
        "events": {"min_score": 0.0, "throttle_s": 3600},
        "stats_interval_s": 2,
    }
    if broker is not None:
        config["mqtt"] = {"host": broker.host, "port": broker.port, "topic_prefix": "e2e", "reconnect_max_s": 2}
    return config


@pytest.mark.timeout(120)
def test_rtsp_clip_to_mqtt_events(
    rtsp_server: RtspServer,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    danube_weights: Path,
    tmp_path: Path,
) -> None:
    collector = mqtt_collector("e2e/#")
    cameras = [{"name": "feeder", "url": rtsp_server.url, "rtsp_transport": "tcp", "motion": {"warmup_frames": 5}}]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, mosquitto), tmp_path).start()
    try:
        collector.wait_for(lambda m: m.topic == "e2e/status" and m.payload == b"online", timeout=60)
        got = collector.wait_for(lambda m: m.topic == "e2e/feeder/sighting", timeout=60)
        event = json.loads(got[0].payload)
        assert event["camera"] == "feeder" and event["kind"] == "sighting"
        assert event["species"].startswith("Test species") and event["model"] == danube_weights.stem
        x1, y1, x2, y2 = event["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
        assert event["top_k"][0]["species"] == event["species"] and len(event["top_k"]) == 3
        bw.wait_log("stats:", timeout=30)
    finally:
        code = bw.terminate()
    assert code == 0, bw.log[-3000:]
    collector.wait_for(lambda m: m.topic == "e2e/status" and m.payload == b"offline", timeout=10)
    sightings = [json.loads(m.payload) for m in collector.messages if m.topic.endswith("/sighting")]
    species = [s["species"] for s in sightings]
    assert len(species) == len(set(species)), "throttled: one event per camera and species per interval"
    assert len({s["id"] for s in sightings}) == len(sightings)
    log = bw.log
    assert "final stats:" in log and "Traceback" not in log


@pytest.mark.timeout(120)
def test_two_cameras_one_unreachable(
    rtsp_server: RtspServer,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    danube_weights: Path,
    tmp_path: Path,
) -> None:
    """A camera that cannot be reached is retried and explained; the other one carries on."""
    collector = mqtt_collector("e2e/+/sighting")
    dead = f"rtsp://viewer:hunter2@127.0.0.1:{free_port()}/nothing"
    cameras = [
        {"name": "gate", "url": dead, "open_timeout_s": 2, "reconnect": {"initial_s": 0.5, "max_s": 2}},
        {"name": "feeder", "url": rtsp_server.url, "motion": {"warmup_frames": 5}},
    ]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, mosquitto), tmp_path).start()
    try:
        collector.wait_for(lambda m: m.topic == "e2e/feeder/sighting", timeout=60)
        log = bw.wait_log("camera gate: cannot connect to rtsp://viewer:***@127.0.0.1", timeout=30)
    finally:
        assert bw.terminate() == 0
    assert "hunter2" not in bw.log and "Traceback" not in log


@pytest.mark.timeout(120)
def test_broker_down_at_start_then_up(
    rtsp_server: RtspServer,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    danube_weights: Path,
    tmp_path: Path,
) -> None:
    mosquitto.stop()
    cameras = [{"name": "feeder", "url": rtsp_server.url, "motion": {"warmup_frames": 5}}]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, mosquitto), tmp_path).start()
    try:
        bw.wait_log(f"MQTT broker {mosquitto.host}:{mosquitto.port} unreachable", timeout=60)
        bw.wait_log("sighting on feeder", timeout=60)  # it works on without the broker
        mosquitto.start()
        collector = mqtt_collector("e2e/#")
        collector.wait_for(lambda m: m.topic == "e2e/feeder/sighting", timeout=30)
    finally:
        assert bw.terminate() == 0
    assert "Traceback" not in bw.log


@pytest.mark.timeout(120)
def test_file_camera_runs_to_the_end_without_a_broker(danube_weights: Path, tmp_path: Path) -> None:
    from birdwatch.synthetic import generate_frames
    from birdwatch.synthetic import write_video

    clip = tmp_path / "clip.avi"
    write_video(clip, generate_frames(320, 240, 40, n_birds=2, seed=5, present_fraction=0.8), fps=20)
    cameras = [{"name": "clip", "url": str(clip), "motion": {"warmup_frames": 3}}]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, None), tmp_path).start()
    assert bw.wait(90) == 0, bw.log[-3000:]
    log = bw.log
    assert "no MQTT broker configured" in log
    assert "sighting on clip" in log
    assert "every source has ended" in log and "final stats:" in log


# ---- what a user gets wrong: one line, exit 2, no traceback ------------------------------------


def run_to_exit(config: dict[str, Any] | str, tmp_path: Path) -> tuple[int, str]:
    if isinstance(config, str):
        (tmp_path / "config.yaml").write_text(config)
        bw = BirdwatchProcess({}, tmp_path)
        bw.config_path.write_text(config)
    else:
        bw = BirdwatchProcess(config, tmp_path)
    bw.start()
    return bw.wait(90), bw.log


@pytest.mark.timeout(120)
def test_shipped_default_config_without_weights_says_how_to_get_them(tmp_path: Path) -> None:
    shutil.copy(Path(__file__).resolve().parents[1] / "configs/danube-delta.yaml", tmp_path / "shipped.yaml")
    bw = BirdwatchProcess({}, tmp_path)
    bw.config_path.write_text((tmp_path / "shipped.yaml").read_text())
    code = bw.start().wait(90)
    last = bw.log.strip().splitlines()[-1]
    assert code == 2
    assert last == (
        "birdwatch: error: model weights 'models/hgnet_v2_b2_danube-delta.pt' not found; fetch them with "
        "`birdwatch models pull hgnet_v2_b2_danube-delta --models-dir models` (38 MB, needs internet once)"
    )
    assert "Traceback" not in bw.log


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("cameras:\n  - name: feeder\n    url: [rtsp\n", "invalid YAML"),
        ("cameras:\n  - {name: feeder, url: rtsp://h/x, colour: red}\n", "cameras[0].colour: unknown key"),
        ("cameras:\n  - {name: feeder, url: rtsp://h/x}\nmodel: {top_k: three}\n", "model.top_k: expected an integer"),
        ("cameras:\n  - {name: feeder, url: rtsp://h/x}\nmodel: {name: hgnet_v9_nope}\n", "'hgnet_v9_nope' is not a birder pretrained model"),
        (
            "cameras:\n  - {name: feeder, url: rtsp://h/x}\nmqtt: {host: h, username: u, password_env: BW_NOPE_UNSET}\n",
            "mqtt.password_env: environment variable BW_NOPE_UNSET is not set",
        ),
    ],
)
def test_bad_input_stops_with_one_line(config: str, expected: str, tmp_path: Path) -> None:
    code, log = run_to_exit(config, tmp_path)
    assert code == 2
    last = log.strip().splitlines()[-1]
    assert last.startswith("birdwatch: error: ") and expected in last
    assert "Traceback" not in log


def test_untrained_weights_name_matches_fixture() -> None:
    assert DANUBE["network"] == "hgnet_v2_b2"
