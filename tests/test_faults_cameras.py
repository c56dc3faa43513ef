"""Camera faults of a box nobody watches: a camera off for a night, credentials in a camera CGI's query
string, stable udev names for USB cameras. Real readers and a real `birdwatch check-config`; a
scripted capture only where a real source cannot fail a thousand times in a second."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from birdwatch.capture.reader import CameraReader
from birdwatch.capture.reader import CameraStatus
from birdwatch.capture.reader import source_kind
from birdwatch.config import CameraConfig
from birdwatch.config import ReconnectConfig
from birdwatch.redact import redact_text
from birdwatch.redact import redact_url
from tests.support.servers import free_port
from tests.test_capture import LatestFrameSlot
from tests.test_capture import wait_until


class NeverOpens:
    """A camera that is switched off: every open fails at once (as a refused connection does)."""

    def isOpened(self) -> bool:
        return False

    def release(self) -> None:
        pass


@pytest.mark.timeout(60)
def test_a_camera_off_all_night_is_still_retried(caplog: pytest.LogCaptureFixture) -> None:
    """About 17 hours of failures at the default backoff are over a thousand reconnects: the backoff
    exponent must not overflow and kill the supervisor (the camera would then never come back)."""
    cfg = CameraConfig(name="solar", url="rtsp://cam/x", reconnect=ReconnectConfig(initial_s=1e-5, max_s=1e-4))
    reader = CameraReader(cfg, LatestFrameSlot(), open_capture=lambda _c: NeverOpens())  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.ERROR, logger="birdwatch"):
        reader.start()
        try:
            assert wait_until(lambda: reader.stats.reconnects >= 1200, 45, step=0.1), (
                f"retrying stopped at {reader.stats.reconnects} reconnects ({reader.stats.status})"
            )
            assert reader.stats.status in (CameraStatus.CONNECTING, CameraStatus.BACKOFF)
        finally:
            reader.stop()
    assert not [r for r in caplog.records if "supervisor error" in r.getMessage()]


def test_credentials_in_a_query_string_are_hidden() -> None:
    assert (
        redact_url("http://192.168.1.30/videostream.cgi?user=admin&pwd=hunter2")
        == "http://192.168.1.30/videostream.cgi?user=admin&pwd=***"
    )
    assert redact_url("rtsp://nvr/live?channel=1&password=hunter2") == "rtsp://nvr/live?channel=1&password=***"
    assert (
        redact_url("https://cloud.example/stream.m3u8?token=hunter2#x")
        == "https://cloud.example/stream.m3u8?token=***#x"
    )
    assert redact_url("rtsp://admin:hunter2@cam/live?PWD=hunter2") == "rtsp://admin:***@cam/live?PWD=***"
    assert redact_url("http://cam/snap.cgi?monkey=1&channel=2") == "http://cam/snap.cgi?monkey=1&channel=2"
    # The log filter's pass over free text (an OpenCV or FFmpeg message with the URL in it).
    assert "hunter2" not in redact_text("cannot open http://cam/v.cgi?user=admin&pwd=hunter2: refused", [])


@pytest.mark.timeout(60)
def test_an_unreachable_camera_with_a_query_password_never_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/videostream.cgi?user=admin&pwd=hunter2"
    cfg = CameraConfig(name="gate", url=url, open_timeout_s=2, reconnect=ReconnectConfig(0.1, 0.2))
    reader = CameraReader(cfg, LatestFrameSlot())  # no secrets list: the URL alone must be enough
    with caplog.at_level(logging.INFO, logger="birdwatch"):
        reader.start()
        assert wait_until(lambda: reader.stats.reconnects >= 2, 20)
        reader.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("reconnecting to http://127.0.0.1" in m and "pwd=***" in m for m in messages), messages
    assert not [m for m in messages if "hunter2" in m]
    assert "hunter2" not in reader.display_url + reader.stats.last_error


@pytest.mark.timeout(90)
def test_check_config_hides_a_query_password_and_warns_the_file_is_readable(
    danube_weights: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    url = "http://192.168.1.30/videostream.cgi?user=admin&pwd=hunter2"
    config.write_text(
        yaml.safe_dump({"cameras": [{"name": "feeder", "url": url}], "model": {"file": str(danube_weights)}})
    )
    config.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "birdwatch", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "videostream.cgi?user=admin&pwd=***" in done.stdout
    assert "holds cameras[0].url and can be read by its group and others" in done.stderr, done.stderr


def test_stable_usb_names_are_usb_cameras(tmp_path: Path) -> None:
    """udev's /dev/v4l/by-id/... links and a rule's SYMLINK+="video-feeder" keep a camera's name across
    replugs; any path that is a character device is a device too, not a video file."""
    assert source_kind("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_8F4B-video-index0") == "usb"
    assert source_kind("/dev/v4l/by-path/platform-xhci-hcd.0-usb-0:1:1.0-video-index0") == "usb"
    assert source_kind("/dev/video-feeder") == "usb"
    link = tmp_path / "feeder-camera"
    link.symlink_to("/dev/null")  # a character device, as /dev/video0 is
    assert source_kind(str(link)) == "usb"
    assert source_kind(str(tmp_path / "clip.mp4")) == "file"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["/dev/v4l/by-id/usb-Missing_Camera-video-index0", "/dev/video-feeder"])
def test_a_missing_usb_camera_by_its_stable_name_is_retried(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Unplugged: retried with the USB reason, not failed for good as a missing file, nor a ValueError."""
    assert not os.path.exists(url)
    reader = CameraReader(CameraConfig(name="usb", url=url, reconnect=ReconnectConfig(0.1, 0.2)), LatestFrameSlot())
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        reader.start()
        assert wait_until(lambda: reader.stats.reconnects >= 2, 15), reader.stats
        reader.stop()
    assert reader.stats.status == "stopped"
    assert f"cannot open USB camera {url}" in reader.stats.last_error
