"""Capture: one reader per camera keeps only the newest frame, reconnects with capped backoff, and
judges a stall by the stream's own frame interval. Real video decoded by OpenCV; a scripted
capture only where a real source cannot be made to misbehave on cue (a read that hangs)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from birdwatch.capture.reader import CameraReader
from birdwatch.capture.reader import CameraStatus
from birdwatch.capture.reader import source_kind
from birdwatch.config import CameraConfig
from birdwatch.config import ReconnectConfig
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Frame
from tests.support.servers import RtspServer
from tests.support.servers import free_port


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class LatestFrameSlot:
    """The reader's sink in these tests: holds the newest frame; putting over an untaken one drops it (counted).
    The pipeline gives readers its bounded per-camera queue instead (runtime.batching)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    write_video(path, generate_frames(160, 120, 30, n_birds=1, seed=3), fps=30)
    return path


class Collector:
    """Takes every frame from a slot as fast as it comes (a model with no cost)."""

    def __init__(self, slot: LatestFrameSlot) -> None:
        self.frames: list[Frame] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(slot,), daemon=True)
        self._thread.start()

    def _run(self, slot: LatestFrameSlot) -> None:
        while not self._stop.is_set():
            frame = slot.take()
            if frame is not None:
                self.frames.append(frame)
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def test_source_kinds() -> None:
    assert source_kind("rtsp://h/x") == "rtsp"
    assert source_kind("HTTP://h/mjpeg") == "http"
    assert source_kind("/dev/video2") == "usb"
    assert source_kind(0) == "usb"
    assert source_kind("/srv/clip.mp4") == "file"


@pytest.mark.timeout(30)
def test_file_source_reads_every_frame_and_finishes(clip: Path) -> None:
    slot = LatestFrameSlot()
    reader = CameraReader(CameraConfig(name="f", url=str(clip), realtime=True), slot)
    collector = Collector(slot)
    reader.start()
    assert wait_until(lambda: reader.done, 10)
    collector.stop()
    reader.stop()
    leftover = [f for f in [slot.take()] if f is not None]  # the last frame may not have been taken yet
    assert reader.stats.status is CameraStatus.FINISHED and reader.stats.status == "finished"  # a StrEnum
    assert reader.stats.frames_read == 30
    assert len(collector.frames) + len(leftover) + slot.dropped == 30
    assert collector.frames[0].image.shape == (120, 160, 3)
    # Paced at the file's 30 fps, not read flat out (~1 ms a frame); loose, the machine is shared.
    assert 1 / 60 < reader.stats.interval_s < 1 / 10


@pytest.mark.timeout(30)
def test_file_source_loops(clip: Path) -> None:
    slot = LatestFrameSlot()
    reader = CameraReader(CameraConfig(name="f", url=str(clip), loop=True, realtime=False), slot)
    reader.start()
    assert wait_until(lambda: reader.stats.frames_read > 75, 10)
    reader.stop()
    assert reader.stats.status == "stopped" and reader.stats.reconnects == 0


@pytest.mark.timeout(30)
def test_slow_consumer_never_builds_lag(clip: Path) -> None:
    """Nobody takes frames: the reader still reads at full speed and the slot holds only the newest."""
    slot = LatestFrameSlot()
    reader = CameraReader(CameraConfig(name="f", url=str(clip), loop=True, realtime=False), slot)
    reader.start()
    assert wait_until(lambda: reader.stats.frames_read >= 100, 10)
    reader.stop()
    newest = slot.take()
    assert newest is not None and newest.seq == reader.stats.frames_read
    assert slot.dropped == reader.stats.frames_read - 1


@pytest.mark.timeout(30)
def test_corrupt_file_fails_that_camera_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    reader = CameraReader(CameraConfig(name="broken", url=str(bad)), LatestFrameSlot())
    with caplog.at_level(logging.ERROR):
        reader.start()
        assert wait_until(lambda: reader.done, 15)
    reader.stop()
    assert reader.stats.status == "failed"
    assert any("camera broken" in r.getMessage() and "others go on" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_rtsp_stream_is_read(rtsp_server: RtspServer) -> None:
    slot = LatestFrameSlot()
    reader = CameraReader(CameraConfig(name="rtsp", url=rtsp_server.url), slot)
    reader.start()
    try:
        assert wait_until(lambda: reader.stats.frames_read >= 10, 20), reader.stats
        frame = slot.take()
        assert frame is not None and frame.image.shape == (240, 320, 3)
        assert reader.stats.status == "streaming"
    finally:
        reader.stop()


@pytest.mark.timeout(60)
def test_unreachable_camera_retries_with_capped_backoff_and_hides_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens here
    cfg = CameraConfig(
        name="gate",
        url=f"rtsp://admin:hunter2@127.0.0.1:{port}/stream",
        open_timeout_s=2,
        reconnect=ReconnectConfig(initial_s=0.1, max_s=0.4),
    )
    reader = CameraReader(cfg, LatestFrameSlot(), secrets=["hunter2"])
    with caplog.at_level(logging.INFO, logger="birdwatch"):
        reader.start()
        assert wait_until(lambda: reader.stats.reconnects >= 4, 20)
        reader.stop()
    messages = [r.getMessage() for r in caplog.records]
    retries = [m for m in messages if "reconnecting to" in m]
    assert retries and "cannot connect to rtsp://admin:***@127.0.0.1" in retries[0]
    delays = [float(m.rsplit(" in ", 1)[1].split()[0]) for m in retries]
    assert delays[0] == pytest.approx(0.1, abs=0.02)
    assert max(delays) <= 0.4 * 1.1 + 1e-9  # capped (with its 10 % jitter)
    assert all("hunter2" not in m for m in messages)


@pytest.mark.timeout(60)
def test_rtsp_server_restart_reconnects(rtsp_server: RtspServer) -> None:
    cfg = CameraConfig(
        name="rtsp", url=rtsp_server.url, stall_timeout_s=2, reconnect=ReconnectConfig(initial_s=0.2, max_s=1)
    )
    reader = CameraReader(cfg, LatestFrameSlot())
    reader.start()
    try:
        assert wait_until(lambda: reader.stats.frames_read >= 5, 20)
        rtsp_server.stop()
        assert wait_until(lambda: reader.stats.reconnects >= 1, 15)
        before = reader.stats.frames_read
        rtsp_server.start()
        assert wait_until(lambda: reader.stats.frames_read > before + 5, 30), reader.stats
        assert reader.stats.status == "streaming"
    finally:
        reader.stop()


class ScriptedCapture:
    """Stands in for cv2.VideoCapture: frames at a set interval, then a read that hangs (a dead Wi-Fi link)."""

    def __init__(self, interval: float, frames_before_hang: int) -> None:
        self.interval = interval
        self.left = frames_before_hang
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left <= 0:
            self.released.wait(30)  # hangs until abandoned and released
            return False, None
        self.left -= 1
        time.sleep(self.interval)
        return True, np.zeros((4, 4, 3), np.uint8)

    def release(self) -> None:
        self.released.set()


@pytest.mark.timeout(60)
def test_watchdog_abandons_a_hung_read_and_reconnects() -> None:
    opened: list[ScriptedCapture] = []

    def open_capture(_cfg: CameraConfig) -> ScriptedCapture:
        opened.append(ScriptedCapture(interval=0.05, frames_before_hang=5))
        return opened[-1]

    cfg = CameraConfig(name="wifi", url="rtsp://cam/x", stall_timeout_s=0.6, reconnect=ReconnectConfig(0.1, 0.2))
    reader = CameraReader(cfg, LatestFrameSlot(), open_capture=open_capture)  # type: ignore[arg-type]
    reader.start()
    assert wait_until(lambda: len(opened) >= 3, 15)
    reader.stop()
    assert reader.stats.frames_read >= 10
    assert "stalled: no frame for" in reader.stats.last_error


@pytest.mark.timeout(60)
def test_stall_is_judged_by_the_streams_own_interval() -> None:
    """A 1 fps camera is not stalled after 5 s of silence between frames 1 s apart; a 20 fps one would be."""
    cfg = CameraConfig(name="slow", url="rtsp://cam/x")

    def run(interval: float) -> CameraReader:
        reader = CameraReader(cfg, LatestFrameSlot(), open_capture=lambda _c: ScriptedCapture(interval, 3))  # type: ignore[arg-type,return-value]
        reader.start()
        wait_until(lambda: reader.stats.frames_read >= 3, 10)
        reader.stop()
        return reader

    slow, fast = run(1.0), run(0.05)
    assert slow.stall_timeout() == pytest.approx(10.0, rel=0.15)  # 10 intervals of 1 s
    assert fast.stall_timeout() == 5.0  # never below 5 s
    assert (
        CameraReader(CameraConfig(name="x", url="rtsp://c/x", stall_timeout_s=2.5), LatestFrameSlot()).stall_timeout()
        == 2.5
    )


@pytest.mark.timeout(30)
def test_usb_camera_that_is_missing_is_retried_with_a_clear_reason(caplog: pytest.LogCaptureFixture) -> None:
    cfg = CameraConfig(name="usb", url="/dev/video42", reconnect=ReconnectConfig(0.1, 0.2))
    reader = CameraReader(cfg, LatestFrameSlot())
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        reader.start()
        assert wait_until(lambda: reader.stats.reconnects >= 2, 10)
        reader.stop()
    assert "cannot open USB camera /dev/video42" in reader.stats.last_error
    assert "'video' group" in reader.stats.last_error
