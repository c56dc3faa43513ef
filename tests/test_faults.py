"""Faults a feeder box meets, with real processes: the stream server dies and comes back, a video
file is corrupt or cut short, one camera fails while the others go on."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import RtspServer


def config(weights: Path, cameras: list[dict[str, Any]], broker: MosquittoBroker | None = None) -> dict[str, Any]:
    # every bird told at once, every loop of the clip a new visit
    return service_config(weights, cameras, broker, prefix="faults", tracking={"min_hits": 1})


@pytest.mark.timeout(180)
def test_rtsp_server_killed_mid_stream_then_back(
    rtsp_server: RtspServer,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    danube_weights: Path,
    tmp_path: Path,
) -> None:
    collector = mqtt_collector("faults/+/event")
    camera = {
        "name": "feeder",
        "url": rtsp_server.url,
        "stall_timeout_s": 3,
        "open_timeout_s": 3,
        "reconnect": {"initial_s": 0.5, "max_s": 2},
        "motion": {"warmup_frames": 5},
    }
    bw = BirdwatchProcess(config(danube_weights, [camera], mosquitto), tmp_path).start()
    try:
        collector.wait_for(timeout=60)
        assert rtsp_server.proc is not None
        rtsp_server.proc.send_signal(signal.SIGKILL)  # a crash, not a polite shutdown
        rtsp_server.proc.wait(5)
        bw.wait_log("reconnecting to rtsp://", timeout=30)
        collector.clear()
        rtsp_server.start()
        got = collector.wait_for(timeout=60)  # events resume
        assert json.loads(got[0].payload)["camera"] == "feeder"
    finally:
        assert bw.terminate() == 0
    assert "Traceback" not in bw.log


@pytest.mark.timeout(120)
def test_corrupt_and_truncated_files_next_to_a_good_camera(danube_weights: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.avi"
    write_video(good, generate_frames(320, 240, 40, n_birds=2, seed=9, present_fraction=1.0), fps=20)
    truncated = tmp_path / "truncated.avi"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # a recording cut off by a full card or a power cut
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64)
    cameras = [
        {"name": "good", "url": str(good), "loop": True, "motion": {"warmup_frames": 3}},
        {"name": "truncated", "url": str(truncated), "motion": {"warmup_frames": 3}},
        {"name": "corrupt", "url": str(corrupt)},
    ]
    bw = BirdwatchProcess(config(danube_weights, cameras), tmp_path / "run").start()
    try:
        bw.wait_log("camera corrupt: cannot open video file", timeout=60)
        bw.wait_log("camera truncated: end of file after", timeout=60)
        marker = bw.log.count("new on good")
        deadline = time.monotonic() + 30
        while bw.log.count("new on good") <= marker and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bw.log.count("new on good") > marker, "the good camera goes on"
        assert bw.proc is not None and bw.proc.poll() is None
    finally:
        assert bw.terminate() == 0
    log = bw.log
    assert "this camera stops, the others go on" in log and "Traceback" not in log
