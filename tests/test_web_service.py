"""The page as the service runs it: on by default and on its port, absent when turned off, a guest that a
taken port cannot stop; and `birdwatch web` over a history alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from birdwatch.deliver.history import EventStore
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.process import wait_until
from tests.support.servers import free_port
from tests.test_store import event


def clip(tmp_path: Path) -> Path:
    from birdwatch.tools.synthetic import generate_frames
    from birdwatch.tools.synthetic import write_video

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "clip.avi"
    write_video(path, generate_frames(320, 240, 20, n_birds=1, seed=5, present_fraction=0.8), fps=10)
    return path


def config(weights: Path, tmp_path: Path, **web: Any) -> dict[str, Any]:
    cameras = [{"name": "feeder", "url": str(clip(tmp_path)), "loop": True, "motion": {"warmup_frames": 3}}]
    out = service_config(weights, cameras)
    out["web"].update(web)
    return out


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on: its socket inodes matched against the kernel's LISTEN table."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.timeout(120)
def test_the_page_is_served_on_its_port_by_default_and_opens_no_port_when_off(
    small_weights: Path, tmp_path: Path
) -> None:
    on = BirdwatchProcess(config(small_weights, tmp_path / "on"), tmp_path / "on").start()
    port = yaml.safe_load(on.config_path.read_text())["web"]["port"]
    try:
        on.wait_log("the page: http://127.0.0.1", timeout=60)
        assert on.proc is not None and port in listening_ports(on.proc.pid)
        wait_until(lambda: get(f"http://127.0.0.1:{port}/") == 200, timeout=10, what="the page answers")
    finally:
        assert on.terminate() == 0, on.log[-3000:]
    off = BirdwatchProcess(config(small_weights, tmp_path / "off", enabled=False), tmp_path / "off").start()
    try:
        off.wait_log("birdwatch running", timeout=60)
        assert off.proc is not None and listening_ports(off.proc.pid) == set(), "web.enabled: false listens nowhere"
    finally:
        assert off.terminate() == 0, off.log[-3000:]
    assert "the page" not in off.log


@pytest.mark.timeout(120)
def test_a_port_someone_else_holds_turns_the_page_off_in_one_line_and_the_service_runs_on(
    small_weights: Path, tmp_path: Path
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    bw = BirdwatchProcess(config(small_weights, tmp_path, port=taken), tmp_path).start()
    try:
        bw.wait_log(f"the page is off: web.port: cannot listen on 127.0.0.1:{taken}", timeout=60)
        bw.wait_log("new on feeder", timeout=60)
    finally:
        code = bw.terminate()
        holder.close()
    assert code == 0 and "Traceback" not in bw.log
    assert bw.log.count("the page is off") == 1


@pytest.mark.timeout(60)
def test_birdwatch_web_serves_a_history_alone_and_stops_cleanly(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "birdwatch.db")
    store.add(event("new", "Great Tit", visit="v1"), sent_ts=1.0)
    store.close()
    port = free_port()
    cfg = {"cameras": [{"name": "feeder", "url": "rtsp://cam/1"}], "model": {"file": str(tmp_path / "none.pt")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "birdwatch", "web", "--config", "config.yaml", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/visit/v1") == 200 or proc.poll() is not None, timeout=40)
        assert proc.poll() is None, proc.communicate()[0]
        assert get(f"http://127.0.0.1:{port}/species/Great%20Tit") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "searching the history's own names" in out and "Traceback" not in out


def test_birdwatch_web_without_a_history_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"cameras": [{"name": "feeder", "url": "rtsp://cam/1"}]}))
    done = subprocess.run(
        [sys.executable, "-m", "birdwatch", "web", "--config", "config.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no event history at birdwatch.db" in done.stderr
