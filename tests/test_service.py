"""The `birdwatch run` process as systemd drives it: SIGTERM drains and exits promptly, SIGHUP
reloads the config (a bad one is reported and the running one kept)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.support.process import BirdwatchProcess
from tests.test_systemd import NotifyListener


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


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, NotifyListener]]:
    directory = tempfile.mkdtemp(prefix="bw-notify-")  # socket paths are limited to 107 bytes
    path = os.path.join(directory, "notify")
    listener = NotifyListener(path)
    yield path, listener
    listener.close()
    shutil.rmtree(directory)


def messages_until(
    listener: NotifyListener, done: Callable[[list[dict[str, str]]], bool], timeout: float
) -> list[dict[str, str]]:
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"systemd saw only {got}"
        with contextlib.suppress(TimeoutError):
            got.append(listener.receive()[0])
    return got


@pytest.mark.timeout(120)
def test_systemd_hears_ready_watchdog_status_and_stopping(
    clip: Path, danube_weights: Path, tmp_path: Path, notify_socket: tuple[str, NotifyListener]
) -> None:
    path, listener = notify_socket
    bw = BirdwatchProcess(looping_config(clip, danube_weights, ["a"]), tmp_path / "run")
    bw.env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    bw.start()
    try:
        seen = messages_until(
            listener,
            lambda got: (
                sum(m.get("WATCHDOG") == "1" for m in got) >= 3 and any("STATUS" in m and "READY" not in m for m in got)
            ),
            timeout=60,
        )
        ready = next(i for i, m in enumerate(seen) if m.get("READY") == "1")
        assert "camera" in seen[ready]["STATUS"]
        assert all(m.get("WATCHDOG") != "1" for m in seen[:ready]), "no watchdog pings before READY"
        assert bw.proc is not None
        bw.proc.send_signal(signal.SIGTERM)
        messages_until(listener, lambda got: any(m.get("STOPPING") == "1" for m in got), timeout=20)
    finally:
        assert bw.terminate() == 0


@pytest.mark.timeout(60)
def test_a_hung_stage_withholds_the_watchdog(
    clip: Path,
    danube_weights: Path,
    notify_socket: tuple[str, NotifyListener],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from birdwatch.classify.models import load_classifier
    from birdwatch.config import parse_config
    from birdwatch.runtime import health as health_module
    from birdwatch.runtime.pipeline import Pipeline

    path, listener = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setattr(health_module, "STAGE_HUNG_S", 2.0)
    config = parse_config(yaml.safe_dump(looping_config(clip, danube_weights, ["a"])))
    config.store.path = str(clip.parent / "hung.db")  # in this process: keep its state out of the cwd
    config.snapshots.dir = str(clip.parent / "snapshots")
    config.engine.backend = "torch"  # the hung forward is the torch module's: an exported backend would not call it
    classifier = load_classifier(config.model)
    release = threading.Event()

    def hang(_x: torch.Tensor) -> torch.Tensor:
        release.wait(30)  # a driver call that never returns
        raise RuntimeError("released")

    classifier.net.embedding = hang  # type: ignore[method-assign]  # the engine runs embedding, then classify
    pipeline = Pipeline(config, classifier=classifier)
    pipeline.start()
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,))
    with caplog.at_level(logging.ERROR, logger="birdwatch"):
        runner.start()
        try:
            messages_until(listener, lambda got: any(m.get("WATCHDOG") == "1" for m in got), timeout=20)
            deadline = time.monotonic() + 20
            while not any("made no progress" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the hang was never noticed"
                time.sleep(0.1)
            drained = []
            with contextlib.suppress(TimeoutError):
                listener.sock.settimeout(0.5)
                while True:  # what was sent before the hang was noticed
                    drained.append(listener.receive()[0])
            after = []
            until = time.monotonic() + 2.0  # several watchdog intervals
            with contextlib.suppress(TimeoutError):
                while time.monotonic() < until:
                    after.append(listener.receive()[0])
            # STATUS lines go on; the pings stop, so systemd kills and restarts birdwatch.
            assert not any(m.get("WATCHDOG") == "1" for m in after), after
        finally:
            release.set()
            stop.set()
            runner.join(10)
            pipeline.stop()
    hung = [r.getMessage() for r in caplog.records if "made no progress" in r.getMessage()]
    assert hung and hung[0].startswith("the classify stage (thread classify-"), hung
