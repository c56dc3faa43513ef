"""Service faults of a box nobody watches, with a real `birdwatch run`, real signals and a real notify
socket: a reload must never leave the service down, a stop must fit systemd's TimeoutStopSec however
many cameras are stalled, and the watchdog must be fed exactly while the service is healthy."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from birdwatch.deliver.sink import LogSink
from tests.support.process import BirdwatchProcess
from tests.support.servers import WeightsServer
from tests.test_service import clip  # noqa: F401 (a fixture)
from tests.test_service import looping_config
from tests.test_systemd import NotifyListener

Message = tuple[float, dict[str, str]]  # when it arrived (monotonic), its KEY=VALUE fields


class NotifyLog:
    """systemd's side of the notify socket: every datagram, with the time it arrived."""

    def __init__(self, path: str) -> None:
        self.listener = NotifyListener(path)
        self.listener.sock.settimeout(0.2)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                fields, _pid = self.listener.receive()
            except (TimeoutError, OSError):
                continue
            with self._cond:
                self.messages.append((time.monotonic(), fields))
                self._cond.notify_all()

    def wait_for(self, done: Callable[[list[Message]], bool], timeout: float) -> list[Message]:
        with self._cond:
            if not self._cond.wait_for(lambda: done(self.messages), timeout):
                raise AssertionError(f"systemd never saw it; got {[m for _, m in self.messages][-20:]}")
            return list(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.listener.close()


@pytest.fixture
def notify() -> Iterator[tuple[str, NotifyLog]]:
    directory = tempfile.mkdtemp(prefix="bw-notify-")  # socket paths are limited to 107 bytes
    path = os.path.join(directory, "notify")
    log = NotifyLog(path)
    yield path, log
    log.close()
    shutil.rmtree(directory)


class SilentCamera:
    """An RTSP camera that, once `listen()` is called, accepts the connection and never answers: the
    open blocks inside FFmpeg until its own timeout (a camera booting, a half-dead Wi-Fi bridge).
    Until then a connection is refused, so the cameras that work open first: OpenCV opens one FFmpeg
    source at a time, and a stuck open holds up every other camera's."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.sock.getsockname()[1]}/live"
        self.connected = threading.Event()
        self._held: list[socket.socket] = []

    def listen(self) -> None:
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._held.append(self.sock.accept()[0])
                self.connected.set()

    def close(self) -> None:
        """The camera goes away: a stuck open ends (FFmpeg reads EOF), new ones are refused."""
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent_camera() -> Iterator[SilentCamera]:
    camera = SilentCamera()
    yield camera
    camera.close()


def stalled(name: str, url: str, open_timeout_s: float = 60) -> dict[str, Any]:
    return {"name": name, "url": url, "open_timeout_s": open_timeout_s, "reconnect": {"initial_s": 0.2, "max_s": 0.5}}


def wait_count(bw: BirdwatchProcess, text: str, count: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = bw.log
        if log.count(text) >= count:
            return log
        assert bw.proc is not None and bw.proc.poll() is None, f"birdwatch exited:\n{log[-4000:]}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not {count} times in birdwatch's log:\n{bw.log[-4000:]}")


def status_lines(messages: list[Message]) -> list[str]:
    return [m["STATUS"] for _, m in messages if "STATUS" in m]


# -- fault 1: a reload never leaves the service down --------------------------------------------------


@pytest.mark.timeout(180)
def test_a_reload_that_fails_a_check_of_the_weights_or_the_port_keeps_the_running_pipeline(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    tmp_path: Path,
    notify: tuple[str, NotifyLog],
) -> None:
    """Unknown species in events.allow, missing weights, a metrics port another program holds: each
    only shows once the new config is checked against the weights or the port. The running config is
    kept (as the README promises), the log and systemd's STATUS= say why, and the service goes on;
    a config that passes every check and still fails to start brings the previous one back."""
    path, systemd = notify
    good = looping_config(clip, danube_weights, ["a"])
    taken = socket.create_server(("127.0.0.1", 0))  # another program's port
    bad = [
        ({**good, "events": {**good["events"], "allow": ["Not A Bird"]}}, "events.allow[0]: 'Not A Bird'"),
        ({**good, "model": {**good["model"], "file": str(tmp_path / "gone.pt")}}, "gone.pt' does not exist"),
        ({**good, "metrics": {"enabled": True, "port": taken.getsockname()[1]}}, "metrics: cannot listen"),
    ]
    bw = BirdwatchProcess(good, tmp_path / "run")
    bw.env = {"NOTIFY_SOCKET": path}
    bw.start()
    try:
        bw.wait_log("birdwatch running: 1 camera(s)", timeout=60)
        assert bw.proc is not None
        for n, (config, why) in enumerate(bad, start=1):
            bw.config_path.write_text(yaml.safe_dump(config))
            bw.proc.send_signal(signal.SIGHUP)
            log = wait_count(bw, "config reload failed, keeping the running config", n, timeout=60)
            assert why in log.rsplit("config reload failed", 1)[1], log[-3000:]
            seen = systemd.wait_for(
                lambda got, why=why: any(m.get("READY") == "1" and why in m.get("STATUS", "") for _, m in got),
                timeout=20,
            )
            assert any(s.startswith("reload failed, kept the running config") for s in status_lines(seen))
        assert "the reloaded config does not start" not in bw.log
        # What no check finds before the old pipeline is gone (a database path that is a directory):
        # the previous config is started again.
        bw.config_path.write_text(yaml.safe_dump({**good, "store": {"path": str(tmp_path)}}))
        bw.proc.send_signal(signal.SIGHUP)
        log = bw.wait_log("starting the previous config again", timeout=60)
        assert "is a folder; name a file in it" in log.rsplit("the reloaded config does not start", 1)[1]
        systemd.wait_for(
            lambda got: any(
                m.get("READY") == "1" and m.get("STATUS", "").startswith("reload failed, running the previous config")
                for _, m in got
            ),
            timeout=60,
        )
        stats = bw.log.count("stats:")
        wait_count(bw, "stats:", stats + 2, timeout=20)  # and it runs
    finally:
        taken.close()
        code = bw.terminate(timeout=20)
    assert code == 0 and "Traceback" not in bw.log


@pytest.mark.timeout(180)
def test_a_reload_while_a_camera_is_stuck_opening_keeps_the_service_running(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    tmp_path: Path,
    silent_camera: SilentCamera,
) -> None:
    """A camera whose open hangs inside FFmpeg cannot be stopped at a reload; the reload must go on
    without it, not exit 0 (which Restart=on-failure takes for a stop and leaves down)."""
    config = looping_config(clip, danube_weights, ["a"])
    # FFmpeg gives up after open_timeout_s even on a closed connection; till then no other camera opens.
    config["cameras"].append(stalled("gate", silent_camera.url, open_timeout_s=8))
    bw = BirdwatchProcess(config, tmp_path / "run").start()
    try:
        bw.wait_log("new on a", timeout=60)
        silent_camera.listen()
        assert silent_camera.connected.wait(20), "the camera never tried again"
        assert bw.proc is not None
        config["cameras"].append({**config["cameras"][0], "name": "b"})
        bw.config_path.write_text(yaml.safe_dump(config))
        bw.proc.send_signal(signal.SIGHUP)
        log = bw.wait_log("config reloaded: 3 camera(s)", timeout=60)
        assert "still blocked in FFmpeg; going on without it" in log
        silent_camera.close()  # once the stuck open times out, the new pipeline's gate is refused at once
        wait_count(bw, "new on b", 1, timeout=60)  # the new pipeline works
        assert bw.proc.poll() is None
    finally:
        sent = time.monotonic()
        code = bw.terminate(timeout=20)
    assert code == 0, bw.log[-3000:]
    assert time.monotonic() - sent < 12
    assert "Traceback" not in bw.log


# -- fault 7: one deadline for every camera at stop ---------------------------------------------------


@pytest.mark.timeout(180)
def test_sigterm_with_four_stalled_cameras_ends_the_visits_within_the_stop_timeout(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    tmp_path: Path,
    silent_camera: SilentCamera,
) -> None:
    """systemd's TimeoutStopSec=15 ends in SIGKILL. Four cameras stuck in FFmpeg must not cost 4 s each
    before the visits still open get their `end` events."""
    config = looping_config(clip, danube_weights, ["feeder"])
    config["cameras"] += [stalled(f"stalled{i}", silent_camera.url) for i in range(4)]
    bw = BirdwatchProcess(config, tmp_path / "run").start()
    try:
        bw.wait_log("new on feeder", timeout=60)
        silent_camera.listen()
        # One open is inside FFmpeg, the other three wait for OpenCV's open lock: all four are stuck.
        assert silent_camera.connected.wait(20), "the cameras never tried again"
    finally:
        sent = time.monotonic()
        code = bw.terminate(timeout=30)
        took = time.monotonic() - sent
    log = bw.log
    assert code == 0, log[-3000:]
    assert took < 8, f"stopping took {took:.1f} s"
    assert "end on feeder" in log.split("SIGTERM received", 1)[1], log[-3000:]


# -- fault 8: the watchdog is fed exactly while the service works -------------------------------------


@pytest.mark.timeout(60)
class BrokenDeliverySink(LogSink):
    """A sink whose delivery thread or network loop has ended and does not come back, once `broken` is set."""

    def __init__(self) -> None:
        self.broken = threading.Event()

    @property
    def problem(self) -> str | None:
        return "the MQTT delivery thread has ended" if self.broken.is_set() else None


@pytest.mark.timeout(90)
def test_delivery_that_cannot_go_on_by_itself_withholds_the_watchdog(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    notify: tuple[str, NotifyLog],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every stage alive and busy, but nothing can reach the broker again until a restart: the pings
    stop once that has lasted SINK_PROBLEM_S, so systemd restarts the service."""
    from birdwatch.config import parse_config
    from birdwatch.runtime import health as health_module
    from birdwatch.runtime import pipeline as pipeline_module

    path, systemd = notify
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setattr(health_module, "SINK_PROBLEM_S", 1.0)
    config = parse_config(yaml.safe_dump(looping_config(clip, danube_weights, ["a"])))
    config.store.path = str(clip.parent / "sink.db")
    config.snapshots.dir = str(clip.parent / "snapshots")
    sink = BrokenDeliverySink()
    pipeline = pipeline_module.Pipeline(config, sink=sink)
    pipeline.start()
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,))
    runner.start()
    try:
        systemd.wait_for(lambda got: any(m.get("WATCHDOG") == "1" for _, m in got), timeout=20)
        sink.broken.set()
        broken_at = time.monotonic()
        time.sleep(3.0)  # a window in which no ping may come (pings are every 0.2 s while all is well)
        # The last may leave up to SINK_PROBLEM_S after the break, read a little late.
        late = [at for at, m in systemd.messages if at > broken_at + 1.5 and m.get("WATCHDOG") == "1"]
        assert not late, f"the watchdog was fed {len(late)} time(s) with delivery stuck for good"
        sink.broken.clear()
        mended = time.monotonic()
        systemd.wait_for(lambda got: any(at > mended and m.get("WATCHDOG") == "1" for at, m in got), timeout=10)
    finally:
        stop.set()
        runner.join(10)
        pipeline.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected bug's traceback
def test_a_dead_stage_thread_withholds_the_watchdog_and_stops_the_pipeline(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    notify: tuple[str, NotifyLog],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stage thread ended by an exception it did not catch never goes stale, so a hang check alone
    keeps pinging while nothing is decided. It must stop the pings and end the pipeline (exit 1)."""
    from birdwatch.config import parse_config
    from birdwatch.runtime.pipeline import Pipeline

    path, systemd = notify
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    config = parse_config(yaml.safe_dump(looping_config(clip, danube_weights, ["a"])))
    config.store.path = str(clip.parent / "dead.db")  # in this process: keep its state out of the cwd
    config.snapshots.dir = str(clip.parent / "snapshots")
    pipeline = Pipeline(config)
    pipeline.start()
    died = threading.Event()

    def broken(_batch: object) -> None:  # a bug in the decide thread's own code, outside every guard
        died.set()
        raise RuntimeError("a bug")

    pipeline._decide_batch = broken  # type: ignore[method-assign]
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(pipeline.run(stop)))
    runner.start()
    try:
        systemd.wait_for(lambda got: any(m.get("WATCHDOG") == "1" for _, m in got), timeout=20)
        assert died.wait(30), "no batch reached the decide thread"
        assert pipeline._decide_thread is not None
        pipeline._decide_thread.join(5)
        dead_at = time.monotonic()
        runner.join(10)
        assert result == [1], "the pipeline went on with its decide thread dead"
        # Pings come every 0.2 s; 0.3 s covers one sent just before the thread ended, read a little late.
        late = [m for at, m in systemd.messages if at > dead_at + 0.3 and m.get("WATCHDOG") == "1"]
        assert not late, f"the watchdog was fed {len(late)} time(s) with the decide thread dead"
    finally:
        stop.set()
        runner.join(10)
        pipeline.stop()


@pytest.mark.timeout(180)
def test_the_watchdog_is_fed_through_a_long_reload(
    clip: Path,  # noqa: F811
    danube_weights: Path,
    tmp_path: Path,
    notify: tuple[str, NotifyLog],
    weights_server: WeightsServer,
) -> None:
    """A reload drains the old pipeline and loads the model again (fetching it first when it is new, and
    on a Jetson SHA-256 and CUDA init): seconds in which the main loop does not turn. WatchdogSec= must
    not run out meanwhile. Here the new model comes over a slow line, so the reload outlasts it."""
    path, systemd = notify
    config = looping_config(clip, danube_weights, ["a"])
    bw = BirdwatchProcess(config, tmp_path / "run")
    bw.env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}  # pings every 1 s; 2 s without one: killed
    sha256 = weights_server.publish(danube_weights, "hgnet_v2_b2_next.pt")
    weights_server.bytes_per_s = danube_weights.stat().st_size / 4.0  # about 4 s to fetch
    bw.start()
    try:
        systemd.wait_for(lambda got: sum(m.get("WATCHDOG") == "1" for _, m in got) >= 3, timeout=60)
        assert bw.proc is not None
        next_model = {"file": str(tmp_path / "hgnet_v2_b2_next.pt"), "url": f"{weights_server.url}/hgnet_v2_b2_next.pt"}
        config["model"] |= next_model | {"sha256": sha256}
        config["cameras"].append({**config["cameras"][0], "name": "b"})
        bw.config_path.write_text(yaml.safe_dump(config))
        bw.proc.send_signal(signal.SIGHUP)
        seen = systemd.wait_for(
            lambda got: (
                any(m.get("RELOADING") == "1" for _, m in got)
                and sum(m.get("WATCHDOG") == "1" for _, m in got[next_ready_after_reload(got) :]) >= 2
            ),
            timeout=60,
        )
        bw.wait_log("config reloaded: 2 camera(s)", timeout=10)
    finally:
        code = bw.terminate(timeout=20)
    assert code == 0
    reload_at = next(at for at, m in seen if m.get("RELOADING") == "1")
    pings = [at for at, m in seen if m.get("WATCHDOG") == "1"]
    ready_at = next(at for at, m in seen if at > reload_at and m.get("READY") == "1")
    before = max(at for at in pings if at < reload_at)
    first_after = min(at for at in pings if at > ready_at)
    gaps = [b - a for a, b in itertools.pairwise(at for at in pings if before <= at <= first_after)]
    assert ready_at - reload_at > 3.0, "the reload was too quick to show anything"
    assert max(gaps) < 2.0, f"{max(gaps):.1f} s without a watchdog ping during a {ready_at - reload_at:.1f} s reload"


def next_ready_after_reload(got: list[Message]) -> int:
    """Index of the READY=1 that ends the reload, or past the end while it goes on."""
    reload = next((i for i, (_, m) in enumerate(got) if m.get("RELOADING") == "1"), None)
    if reload is None:
        return len(got)
    return next((i for i in range(reload, len(got)) if got[i][1].get("READY") == "1"), len(got))
