"""End to end, with real parts only: a generated clip with moving birds served over RTSP by
GStreamer (or read from a file), `birdwatch run` as a child process with untrained birder weights
loaded by the real loader, and a subscriber on a real mosquitto that receives the visit events,
snapshots and Home Assistant discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from birdwatch.deliver.history import EventStore
from tests.fixtures_models import DANUBE
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import RtspServer
from tests.support.servers import free_port


def base_config(weights: Path, cameras: list[dict[str, Any]], broker: MosquittoBroker | None) -> dict[str, Any]:
    return service_config(weights, cameras, broker, prefix="e2e")


def payloads(collector: MqttCollector, suffix: str = "/event") -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages if m.topic.endswith(suffix)]


@pytest.mark.timeout(180)
def test_rtsp_clip_to_visit_events_snapshots_and_discovery(
    rtsp_server: RtspServer,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    danube_weights: Path,
    tmp_path: Path,
) -> None:
    collector = mqtt_collector("#")
    cameras = [{"name": "feeder", "url": rtsp_server.url, "rtsp_transport": "tcp", "motion": {"warmup_frames": 5}}]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, mosquitto), tmp_path).start()
    try:
        collector.wait_for(lambda m: m.topic == "e2e/status" and m.payload == b"online", timeout=60)
        got = collector.wait_for(lambda m: m.topic == "e2e/feeder/event", timeout=90)
        event = json.loads(got[0].payload)
        assert event["camera"] == "feeder" and event["kind"] == "new"
        assert event["species"].startswith("Test species") and event["model"] == danube_weights.stem
        x1, y1, x2, y2 = event["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
        assert event["top_k"][0]["species"] == event["species"] and len(event["top_k"]) == 3
        snap = collector.wait_for(lambda m: m.topic == "e2e/feeder/snapshot", timeout=10)[0]
        assert snap.payload[:2] == b"\xff\xd8"
        mqtt_collector("e2e/feeder/snapshot").wait_for(lambda m: m.retain, timeout=10)  # the last one is kept
        assert (tmp_path / event["snapshot"]).is_file(), "the crop is on disk, relative to the working directory"
        bw.wait_log("stats:", timeout=30)
    finally:
        code = bw.terminate()
    assert code == 0, bw.log[-3000:]
    collector.wait_for(lambda m: m.topic == "e2e/status" and m.payload == b"offline", timeout=10)
    events = payloads(collector)
    assert len({e["id"] for e in events}) == len(events)
    by_visit: dict[str, list[str]] = {}
    for e in events:
        by_visit.setdefault(e["visit_id"], []).append(e["kind"])
    for kinds in by_visit.values():  # stopping ends the visits still going on
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == kinds.count("end") == 1, kinds
    late = mqtt_collector("homeassistant/+/e2e_feeder/+/config")  # retained for Home Assistant starting later
    configs = late.wait_for(lambda m: m.retain, timeout=10, count=4)
    assert {m.topic.split("/")[1] for m in configs} == {"sensor", "binary_sensor", "image"}
    history = subprocess.run(
        [sys.executable, "-m", "birdwatch", "events", "--config", "config.yaml", "--json", "--limit", "1000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert {json.loads(line)["id"] for line in history.stdout.splitlines()} == {e["id"] for e in events}
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
    collector = mqtt_collector("e2e/+/event")
    dead = f"rtsp://viewer:hunter2@127.0.0.1:{free_port()}/nothing"
    cameras = [
        {"name": "gate", "url": dead, "open_timeout_s": 2, "reconnect": {"initial_s": 0.5, "max_s": 2}},
        {"name": "feeder", "url": rtsp_server.url, "motion": {"warmup_frames": 5}},
    ]
    bw = BirdwatchProcess(base_config(danube_weights, cameras, mosquitto), tmp_path).start()
    try:
        collector.wait_for(lambda m: m.topic == "e2e/feeder/event", timeout=90)
        log = bw.wait_log("camera gate: cannot connect to rtsp://viewer:***@127.0.0.1", timeout=30)
    finally:
        assert bw.terminate() == 0
    assert "hunter2" not in bw.log and "Traceback" not in log


@pytest.mark.timeout(150)
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
        bw.wait_log("new on feeder", timeout=90)  # it works on without the broker
        mosquitto.start()
        collector = mqtt_collector("e2e/#")
        collector.wait_for(lambda m: m.topic == "e2e/feeder/event", timeout=30)
    finally:
        assert bw.terminate() == 0
    assert "Traceback" not in bw.log


@pytest.mark.timeout(300)
def test_events_pending_at_exit_are_sent_by_the_next_start(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], small_weights: Path, tmp_path: Path
) -> None:
    """The broker is away for a whole run: its events wait in SQLite, and the next `birdwatch run`
    (a new process on the same working directory) sends them before anything new."""
    from birdwatch.tools.synthetic import generate_frames
    from birdwatch.tools.synthetic import write_video

    clip = tmp_path / "clip.avi"
    presence = [(4, 28), (44, 68)]  # two visits, 2 s apart at 8 fps
    write_video(clip, generate_frames(320, 240, 72, n_birds=1, seed=1, presence=presence), fps=8)
    cameras = [{"name": "clip", "url": str(clip), "motion": {"warmup_frames": 3}}]
    config = base_config(small_weights, cameras, mosquitto)
    config["tracking"] = {"timeout_s": 1.5}
    mosquitto.stop()
    first = BirdwatchProcess(config, tmp_path).start()
    assert first.wait(150) == 0, first.log[-3000:]
    assert "not acknowledged by the broker yet; those in the history are sent at the next start" in first.log
    store = EventStore(tmp_path / "birdwatch.db", readonly=True)
    pending = [r.id for r in reversed(store.recent(limit=1000))]
    assert pending and store.count_pending() == len(pending), "nothing was sent: the broker was away"
    store.close()

    mosquitto.start()
    collector = mqtt_collector("e2e/+/event")
    second = BirdwatchProcess(config, tmp_path).start()
    try:
        second.wait_log(f"{len(pending)} event(s) from before this start not yet delivered; sending them first", 60)
        got = collector.wait_for(lambda m: True, timeout=60, count=len(pending))
        assert [json.loads(m.payload)["id"] for m in got[: len(pending)]] == pending, "first, in order"
    finally:
        second.terminate()
    assert "Traceback" not in first.log + second.log


@pytest.mark.timeout(150)
def test_file_camera_runs_to_the_end_without_a_broker(small_weights: Path, tmp_path: Path) -> None:
    from birdwatch.tools.synthetic import generate_frames
    from birdwatch.tools.synthetic import write_video

    clip = tmp_path / "clip.avi"
    write_video(clip, generate_frames(320, 240, 60, n_birds=1, seed=5, present_fraction=0.8), fps=10)
    cameras = [{"name": "clip", "url": str(clip), "motion": {"warmup_frames": 3}}]
    config = base_config(small_weights, cameras, None)
    config["tracking"] = {"timeout_s": 1.0, "min_hits": 2}
    bw = BirdwatchProcess(config, tmp_path).start()
    assert bw.wait(120) == 0, bw.log[-3000:]
    log = bw.log
    assert "no MQTT broker configured" in log
    assert "new on clip" in log and "end on clip" in log
    assert "every source has ended" in log and "final stats:" in log
    store = EventStore(tmp_path / "birdwatch.db", readonly=True)
    assert store.count_pending() == 0, "without a broker, logged counts as delivered"
    store.close()


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
def test_shipped_default_config_offline_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    """The first start fetches the weights; with no way out (a proxy that refuses), one line says
    which file, from where, and where to put it."""
    bw = BirdwatchProcess({}, tmp_path)
    bw.config_path.write_text((Path(__file__).resolve().parents[1] / "configs/danube-delta.yaml").read_text())
    bw.env = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    code = bw.start().wait(90)
    last = bw.log.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith(
        "birdwatch: error: cannot download hgnet_v2_b2_danube-delta.pt from "
        "https://huggingface.co/birder-project/hgnet_v2_b2_danube-delta/resolve/main/hgnet_v2_b2_danube-delta.pt: "
    )
    assert last.endswith("check the internet connection, or fetch that file on another machine and put it into models")
    assert "Traceback" not in bw.log
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.timeout(120)
def test_shipped_default_config_that_may_not_download_says_how_to_get_the_weights(tmp_path: Path) -> None:
    shipped = (Path(__file__).resolve().parents[1] / "configs/danube-delta.yaml").read_text()
    bw = BirdwatchProcess({}, tmp_path)
    bw.config_path.write_text(shipped.replace("  models_dir: models", "  download: never\n  models_dir: models"))
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
        (
            "cameras:\n  - {name: feeder, url: rtsp://h/x}\nmodel: {name: hgnet_v9_nope}\n",
            "'hgnet_v9_nope' is not a birder pretrained model",
        ),
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


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"events": {"block": ["Test specis 042"]}},
            "events.block[0]: 'Test specis 042' is not a species of model hgnet_v2_b2_untrained-danube; "
            "did you mean 'Test species 042'?",
        ),
        ({"store": {"path": "."}}, "store.path: . is a folder; name a file in it"),
    ],
)
def test_what_needs_the_model_or_the_disk_stops_with_one_line(
    extra: dict[str, Any], expected: str, danube_weights: Path, tmp_path: Path
) -> None:
    cameras = [{"name": "feeder", "url": "rtsp://127.0.0.1:9/none"}]
    code, log = run_to_exit({**base_config(danube_weights, cameras, None), **extra}, tmp_path)
    assert code == 2, log[-2000:]
    assert log.strip().splitlines()[-1].startswith(f"birdwatch: error: {expected}")
    assert "Traceback" not in log and "cannot connect" not in log, "it stops before opening any camera"


def test_untrained_weights_name_matches_fixture() -> None:
    assert DANUBE["network"] == "hgnet_v2_b2"
