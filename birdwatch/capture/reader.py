"""Camera readers: one thread per camera that hands every frame it reads to a sink that never blocks.

A reader reads as fast as the source delivers; the sink (the pipeline's bounded per-camera queue)
drops the oldest frames when the model falls behind, so a slow model never builds up stream lag:
frames it could not look at are dropped and counted there. A supervisor thread per
camera opens the source, reconnects with capped exponential backoff, and runs the stall watchdog,
which judges a stream by its own frame interval (a 1 fps camera is not stalled after 5 s).
A read that hangs inside FFmpeg cannot be interrupted safely, so the watchdog abandons that
session (its thread exits when FFmpeg's read timeout fires) and opens a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import cv2

from birdwatch.config import CameraConfig
from birdwatch.redact import redact_text
from birdwatch.redact import redact_url
from birdwatch.types import Frame

log = logging.getLogger(__name__)

_MIN_STALL_S = 5.0
_STALL_INTERVALS = 10.0
_MAX_DOUBLINGS = 64  # the backoff exponent stops growing here: 2**64 times any initial_s is past every max_s
_V4L2_INDEX = re.compile(r"/dev/video(\d+)")


def source_kind(url: str | int) -> str:
    """usb for a device index or a device path (/dev/video0, udev's /dev/v4l/by-id/... and /dev/video-feeder
    names, or any path that is a character device); the URL scheme for a URL; file otherwise."""
    if isinstance(url, int):
        return "usb"
    if "://" in url:
        return url.split("://", 1)[0].lower()
    if url.startswith("/dev/") or _is_char_device(url):
        return "usb"
    return "file"


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(Path(path).expanduser()).st_mode)
    except (OSError, ValueError):
        return False


class FrameSink(Protocol):
    """Where a reader puts frames; `put` must not block (the pipeline's queue drops the oldest instead)."""

    def put(self, frame: Frame) -> None: ...


class CameraStatus(StrEnum):
    """A reader's state; a StrEnum, so it equals (and serialises as) its string."""

    STARTING = "starting"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"  # waiting to reconnect
    FINISHED = "finished"  # a file without loop has ended
    FAILED = "failed"  # a file that cannot be read: this camera stops for good
    STOPPED = "stopped"


@dataclass
class CameraStats:
    frames_read: int = 0
    reconnects: int = 0
    status: CameraStatus = CameraStatus.STARTING
    last_error: str = ""
    interval_s: float = 0.0  # smoothed time between frames from the source
    last_frame_mono: float = 0.0


class CameraReader:
    """Reads one camera into a sink until stopped (or, for a file without loop, until its end)."""

    def __init__(
        self,
        cfg: CameraConfig,
        sink: FrameSink,
        secrets: list[str] | None = None,
        open_capture: Callable[[CameraConfig], cv2.VideoCapture] | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.stats = CameraStats()
        self.kind = source_kind(cfg.url)
        self.display_url = redact_url(cfg.url)
        self._secrets = list(secrets or [])
        self._open = open_capture or open_capture_for
        self._stop = threading.Event()
        self._session = 0  # bumped to abandon a reading session (stall, stop)
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._worker: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"camera-{self.cfg.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading; False if a read is still blocked inside FFmpeg after `timeout`."""
        self.request_stop()
        return self.join(time.monotonic() + timeout)

    def request_stop(self) -> None:
        """Ask the threads to end, without waiting: the pipeline asks every camera at once, then joins them
        against one deadline, so stalled cameras do not add up."""
        self._stop.set()
        self._session += 1
        if not self.done:
            self.stats.status = CameraStatus.STOPPED

    def join(self, deadline: float) -> bool:
        """Wait until the monotonic `deadline` for the threads; False if a read is still blocked in FFmpeg."""
        for thread in (self._thread, self._worker):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if not self.done:
            self.stats.status = CameraStatus.STOPPED  # the supervisor may have set another on its way out
        return not any(t is not None and t.is_alive() for t in (self._thread, self._worker))

    @property
    def done(self) -> bool:
        """True once a source has ended for good (a file without loop, or a file that cannot be read)."""
        return self.stats.status in (CameraStatus.FINISHED, CameraStatus.FAILED)

    def stall_timeout(self) -> float:
        if self.cfg.stall_timeout_s is not None:
            return self.cfg.stall_timeout_s
        return max(_MIN_STALL_S, _STALL_INTERVALS * (self.stats.interval_s or 1.0))

    # -- supervisor --

    def _supervise(self) -> None:
        """Open, watch, back off, again, until stopped. Never ends on an exception: a camera whose
        supervisor died would stay `connecting` for good, while everything else looks healthy."""
        failures = 0
        while not self._stop.is_set():
            try:
                failures = self._session_then_backoff(failures)
            except Exception as exc:
                log.exception("camera %s: supervisor error (%s); retrying", self.cfg.name, exc)
                self.stats.status = CameraStatus.BACKOFF
                self._stop.wait(self.cfg.reconnect.max_s)
            if self.done:
                return

    def _session_then_backoff(self, failures: int) -> int:
        """One reading session, then the wait before the next; returns the failures so far."""
        self._session += 1
        session = self._session
        self.stats.status = CameraStatus.CONNECTING
        started = time.monotonic()
        frames_before = self.stats.frames_read
        worker = threading.Thread(
            target=self._read_session, args=(session,), name=f"reader-{self.cfg.name}-{session}", daemon=True
        )
        self._worker = worker
        worker.start()
        self._watch(worker, session)
        if self._stop.is_set() or self.done:
            return failures
        streamed = self.stats.frames_read - frames_before
        # A session that delivered frames for a while resets the backoff: this is a new outage.
        if streamed > 0 and time.monotonic() - started > 2 * self.cfg.reconnect.initial_s:
            failures = 0
        delay = backoff_delay(self.cfg.reconnect.initial_s, self.cfg.reconnect.max_s, failures)
        failures = min(failures + 1, _MAX_DOUBLINGS)
        self.stats.reconnects += 1
        self.stats.status = CameraStatus.BACKOFF
        log.warning(
            "camera %s: %s; reconnecting to %s in %.1f s",
            self.cfg.name,
            self.stats.last_error or "stream ended",
            self.display_url,
            delay,
        )
        self._stop.wait(delay)
        return failures

    def _watch(self, worker: threading.Thread, session: int) -> None:
        """Wait for a session to end, or abandon it when the stream stalls or opening hangs."""
        opened_by = time.monotonic() + self.cfg.open_timeout_s + 5.0
        while worker.is_alive() and not self._stop.is_set():
            worker.join(0.25)
            now = time.monotonic()
            if self.stats.status == CameraStatus.CONNECTING and now > opened_by:
                self.stats.last_error = f"no answer within {self.cfg.open_timeout_s:.0f} s while opening"
                self._session += 1
                return
            if self.stats.status == CameraStatus.STREAMING:
                silent = now - self.stats.last_frame_mono
                if silent > self.stall_timeout():
                    self.stats.last_error = (
                        f"stalled: no frame for {silent:.1f} s (stream interval {self.stats.interval_s:.2f} s)"
                    )
                    self._session += 1
                    return

    # -- reading --

    def _read_session(self, session: int) -> None:
        try:
            if self._session != session:
                return
            cap = self._open(self.cfg)
            try:
                if self._session != session:
                    return  # abandoned while opening (OpenCV opens one FFmpeg source at a time)
                if not cap.isOpened():
                    self.stats.last_error = self._open_failure()
                    if self.kind == "file":
                        self._finish(CameraStatus.FAILED, self.stats.last_error)
                    return
                self._read_frames(cap, session)
            finally:
                cap.release()
        except cv2.error as exc:  # OpenCV raises on some broken streams; the supervisor reconnects
            self.stats.last_error = redact_text(f"OpenCV error: {exc}".splitlines()[0], self._secrets)
        except Exception as exc:  # anything else is a reason to reconnect too, not a thread's traceback
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.stats.last_error = redact_text(f"{type(exc).__name__}: {first}", self._secrets)

    def _read_frames(self, cap: cv2.VideoCapture, session: int) -> None:
        fps = cap.get(cv2.CAP_PROP_FPS)
        nominal = 1.0 / fps if 0 < fps < 1000 else 0.0
        if nominal and not self.stats.interval_s:
            self.stats.interval_s = nominal
        pace = self.kind == "file" and self.cfg.realtime
        next_due = time.monotonic()
        last = 0.0
        got_any = False
        log.info("camera %s: reading %s (%s)", self.cfg.name, self.display_url, self.kind)
        while self._session == session and not self._stop.is_set():
            ok, image = cap.read()
            if self._session != session:
                return  # abandoned while blocked in read(): the new session owns the sink now
            if not ok or image is None:
                if self.kind == "file" and got_any and self.cfg.loop:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    got_any = False
                    continue
                if self.kind == "file":
                    if got_any:
                        self._finish(CameraStatus.FINISHED, "end of file")
                    else:
                        self._finish(CameraStatus.FAILED, f"cannot decode any frame from {self.display_url}")
                    return
                self.stats.last_error = "stream ended or read failed"
                return
            now = time.monotonic()
            if pace:
                next_due += nominal or 0.04
                if next_due > now:
                    time.sleep(next_due - now)
                    now = time.monotonic()
                else:
                    next_due = now  # behind (slow disk, busy CPU): do not burst to catch up
            if last:
                gap = now - last
                self.stats.interval_s = gap if not self.stats.interval_s else 0.9 * self.stats.interval_s + 0.1 * gap
            last = now
            got_any = True
            self._seq += 1
            self.stats.frames_read += 1
            self.stats.last_frame_mono = now
            if self.stats.status != CameraStatus.STREAMING:
                self.stats.status = CameraStatus.STREAMING
                self.stats.last_error = ""
            self.sink.put(Frame(self.cfg.name, self._seq, time.time(), image, now))

    def _finish(self, state: CameraStatus, why: str) -> None:
        self.stats.status = state
        self.stats.last_error = why
        if state == CameraStatus.FAILED:
            log.error("camera %s: %s; this camera stops, the others go on", self.cfg.name, why)
        else:
            log.info("camera %s: %s after %d frames", self.cfg.name, why, self.stats.frames_read)

    def _open_failure(self) -> str:
        if self.kind == "usb":
            return (
                f"cannot open USB camera {self.display_url} (missing, busy, or no permission: "
                "is the service user in the 'video' group?)"
            )
        if self.kind == "file":
            if not Path(str(self.cfg.url)).is_file():
                return f"video file {self.display_url} does not exist"
            return f"cannot open video file {self.display_url} (not a video OpenCV can decode)"
        return f"cannot connect to {self.display_url} (unreachable, wrong path or credentials)"


def backoff_delay(initial_s: float, max_s: float, failures: int) -> float:
    """The wait before reconnect number `failures` + 1: doubling from initial_s, capped at max_s, with
    10 % jitter so cameras that fail together do not retry in lockstep. The exponent is capped too: a
    camera off for a night (thousands of failures) must not overflow a float."""
    delay = min(max_s, initial_s * 2.0 ** min(failures, _MAX_DOUBLINGS))
    return delay * random.uniform(0.9, 1.1)


def open_capture_for(cfg: CameraConfig) -> cv2.VideoCapture:
    """Open a source with the backend it needs."""
    url = cfg.url
    if cfg.decoder != "ffmpeg":
        return cv2.VideoCapture(gstreamer_pipeline(cfg), cv2.CAP_GSTREAMER)
    kind = source_kind(url)
    if kind == "usb":
        if isinstance(url, int):
            return cv2.VideoCapture(url, cv2.CAP_V4L2)
        # A stable udev name (/dev/v4l/by-id/..., /dev/video-feeder) is a link to /dev/videoN: resolved at
        # every open, so the camera is found again when it comes back under another number.
        path = os.path.realpath(Path(url).expanduser())
        numbered = _V4L2_INDEX.fullmatch(path)
        if numbered:
            return cv2.VideoCapture(int(numbered[1]), cv2.CAP_V4L2)
        return cv2.VideoCapture(path, cv2.CAP_V4L2)  # a device node of another name: V4L2 opens it by path
    if kind == "file":
        return cv2.VideoCapture(str(Path(str(url)).expanduser()), cv2.CAP_FFMPEG)
    open_ms = int(cfg.open_timeout_s * 1000)
    # FFmpeg's own read timeout frees a blocked read soon after the watchdog gave up on it.
    read_ms = int(max(cfg.stall_timeout_s or 30.0, 5.0) * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
    if kind not in ("rtsp", "rtsps"):
        return cv2.VideoCapture(str(url), cv2.CAP_FFMPEG, params)
    with _FFMPEG_OPTIONS.use(f"rtsp_transport;{cfg.rtsp_transport}"):
        return cv2.VideoCapture(str(url), cv2.CAP_FFMPEG, params)


def gstreamer_pipeline(cfg: CameraConfig) -> str:
    """The GStreamer pipeline for `decoder: gstreamer | jetson` (cameras; files use FFmpeg, the config says so):
    decodebin picks the decoder (nvv4l2decoder on a Jetson, VA-API where installed); appsink keeps one frame
    and drops the rest, as the readers do."""
    url = cfg.url
    if isinstance(url, int) or source_kind(url) == "usb":
        device = f"/dev/video{url}" if isinstance(url, int) else os.path.realpath(Path(url).expanduser())
        source = f"v4l2src device={device} ! decodebin"
    else:
        source = f'uridecodebin uri="{url}"'
        if source_kind(url) in ("rtsp", "rtsps"):
            source += f" source::protocols={cfg.rtsp_transport} source::latency=200"
    convert = "nvvidconv ! video/x-raw,format=BGRx ! " if cfg.decoder == "jetson" else ""
    return f"{source} ! {convert}videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"


class _EnvGate:
    """OpenCV reads FFmpeg options from one process-wide variable when a capture opens.

    Opens that want the same value run together (an unreachable camera must not hold up the
    others); an open that wants another value waits until those are done.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._value: str | None = None
        self._users = 0

    @contextlib.contextmanager
    def use(self, value: str) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._users == 0 or self._value == value)
            if self._users == 0:
                self._value = value
                os.environ[self.name] = value
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()


_FFMPEG_OPTIONS = _EnvGate("OPENCV_FFMPEG_CAPTURE_OPTIONS")
