"""`birdwatch run` as a real child process, the way systemd starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import yaml

from tests.support.servers import free_port

if TYPE_CHECKING:
    from tests.support.servers import MosquittoBroker


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """Poll `predicate` until it is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def service_config(
    weights: Path,
    cameras: list[dict[str, Any]],
    broker: MosquittoBroker | None = None,
    *,
    prefix: str = "birdwatch",
    tracking: dict[str, Any] | None = None,
    cooldown_s: float = 0,
) -> dict[str, Any]:
    """The config a test service runs with. Untrained weights are unsure of everything and name every
    bird alike, so every visit is told (no minimum score); a short track timeout ends visits soon."""
    config: dict[str, Any] = {
        "cameras": cameras,
        "model": {"file": str(weights), "device": "cpu"},
        "tracking": {"timeout_s": 1.0, **(tracking or {})},
        "events": {"min_score": 0.0, "cooldown_s": cooldown_s},
        "stats_interval_s": 2,
        "web": {"port": free_port()},  # the page is on by default: each service its own port
    }
    if broker is not None:
        config["mqtt"] = {"host": broker.host, "port": broker.port, "topic_prefix": prefix, "reconnect_max_s": 2}
    return config


class BirdwatchProcess:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.workdir / "birdwatch.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # extra environment, e.g. NOTIFY_SOCKET as systemd sets it

    def start(self) -> BirdwatchProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "birdwatch", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log
            if text in log:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in birdwatch's log:\n{self.log[-4000:]}")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"birdwatch did not stop within {timeout} s of SIGTERM:\n{self.log[-4000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)
