"""The `birdwatch run` process as systemd drives it: SIGTERM drains and exits promptly, SIGHUP
reloads the config (a bad one is reported and the running one kept)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from birdwatch.synthetic import generate_frames
from birdwatch.synthetic import write_video
from tests.support.process import BirdwatchProcess


def looping_config(clip: Path, weights: Path, names: list[str]) -> dict[str, Any]:
    return {
        "cameras": [{"name": n, "url": str(clip), "loop": True, "motion": {"warmup_frames": 3}} for n in names],
        "model": {"file": str(weights), "device": "cpu"},
        "tracking": {"min_hits": 1},
        "events": {"min_score": 0.0, "cooldown_s": 3600},
        "stats_interval_s": 1,
    }


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    write_video(path, generate_frames(320, 240, 40, n_birds=2, seed=8, present_fraction=1.0), fps=15)
    return path


@pytest.mark.timeout(120)
def test_sigterm_drains_and_exits_within_ten_seconds(clip: Path, danube_weights: Path, tmp_path: Path) -> None:
    bw = BirdwatchProcess(looping_config(clip, danube_weights, ["a", "b"]), tmp_path / "run").start()
    bw.wait_log("new on", timeout=60)
    sent = time.monotonic()
    code = bw.terminate(timeout=15)
    took = time.monotonic() - sent
    assert code == 0, bw.log[-3000:]
    assert took < 10, f"exit took {took:.1f} s"
    log = bw.log
    assert "SIGTERM received; stopping" in log and "final stats:" in log
    assert "Traceback" not in log


@pytest.mark.timeout(180)
def test_sighup_reloads_and_keeps_running_on_a_bad_config(clip: Path, danube_weights: Path, tmp_path: Path) -> None:
    bw = BirdwatchProcess(looping_config(clip, danube_weights, ["a"]), tmp_path / "run").start()
    try:
        bw.wait_log("birdwatch running: 1 camera(s)", timeout=60)
        assert bw.proc is not None

        bw.config_path.write_text("cameras:\n  - {name: a, url: rtsp://h/x, lop: true}\n")
        bw.proc.send_signal(signal.SIGHUP)
        bw.wait_log("config reload failed, keeping the running config", timeout=30)
        assert "cameras[0].lop: unknown key" in bw.log
        before = bw.log.count("stats:")
        deadline = time.monotonic() + 15
        while bw.log.count("stats:") <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert bw.log.count("stats:") > before, "the old pipeline is still running after the bad reload"

        bw.config_path.write_text(yaml.safe_dump(looping_config(clip, danube_weights, ["a", "b"])))
        bw.proc.send_signal(signal.SIGHUP)
        bw.wait_log("config reloaded: 2 camera(s)", timeout=60)
        bw.wait_log("birdwatch running: 2 camera(s)", timeout=60)
    finally:
        code = bw.terminate(timeout=15)
    assert code == 0 and "Traceback" not in bw.log
