"""Secrets: a file that holds one and is readable by others gets a one-line warning naming it and the
fix; check-config hides secrets; the log filter hides them from every log line, tracebacks included."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from birdwatch.config import load_config
from birdwatch.config import secrets as config_secrets
from birdwatch.redact import SecretFilter
from birdwatch.redact import install_log_redaction
from tests.support.pki import make_pki

MINIMAL = "cameras:\n  - name: feeder\n    url: rtsp://cam.local/stream\n"


@pytest.fixture(autouse=True)
def _forget_warnings() -> None:
    config_secrets._warned_exposed.clear()  # each test sees its own warnings


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o644, "its group and others"), (0o640, "its group"), (0o604, "others")],
)
def test_inline_password_in_a_readable_file_warns_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, who: str
) -> None:
    path = write(tmp_path / "config.yaml", MINIMAL + "mqtt: {host: h, username: u, password: hunter2}\n", mode)
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        load_config(path)
    (warning,) = warnings_of(caplog)
    assert warning == (
        f"{path} holds mqtt.password and can be read by {who} (mode {mode:04o}); restrict it: chmod 600 {path}"
    )
    assert "hunter2" not in warning


def test_a_camera_url_password_counts_as_a_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "cameras:\n  - {name: a, url: 'rtsp://admin:pw@cam/x'}\n  - {name: b, url: 'rtsp://cam/y'}\n"
    path = write(tmp_path / "config.yaml", text, 0o644)
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        load_config(path)
    (warning,) = warnings_of(caplog)
    assert "holds cameras[0].url and" in warning


def test_no_warning_for_a_private_file_or_a_file_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = write(tmp_path / "private.yaml", MINIMAL + "mqtt: {host: h, username: u, password: hunter2}\n", 0o600)
    public = write(tmp_path / "public.yaml", MINIMAL + "mqtt: {host: h, username: u, password_env: X}\n", 0o644)
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        load_config(secret)
        load_config(public)
    assert warnings_of(caplog) == []


def test_a_readable_password_file_and_client_key_warn_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path / "pki")  # real PEM files: the config load checks that they are usable
    password = write(tmp_path / "mqtt.secret", "pw\n", 0o644)
    key = write(tmp_path / "client.key", pki.client_key.read_text(), 0o644)
    cert = write(tmp_path / "client.crt", pki.client_cert.read_text(), 0o644)
    path = write(
        tmp_path / "config.yaml",
        MINIMAL + f"mqtt: {{host: h, username: u, password_file: {password}, "
        f"tls: {{cert_file: {cert}, key_file: {key}}}}}\n",
        0o644,
    )
    with caplog.at_level(logging.WARNING, logger="birdwatch"):
        config = load_config(path)
        assert config.mqtt.password_value() == "pw"
        config.mqtt.password_value()  # read again at start-up: still one warning
    assert warnings_of(caplog) == [
        f"{key} holds the MQTT client key and can be read by its group and others (mode 0644); "
        f"restrict it: chmod 600 {key}",
        f"{password} holds the MQTT password and can be read by its group and others (mode 0644); "
        f"restrict it: chmod 600 {password}",
    ]


@pytest.mark.timeout(120)
def test_check_config_warns_on_stderr_and_prints_no_secret(tmp_path: Path, small_weights: Path) -> None:
    path = write(
        tmp_path / "config.yaml",
        "cameras:\n  - {name: a, url: 'rtsp://admin:cam-pw@cam/x'}\nmqtt: {host: h, username: u, password: mq-pw}\n"
        f"model: {{file: '{small_weights}'}}\n",
        0o644,
    )
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"chmod 600 {path}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for secret in ("cam-pw", "mq-pw"):
        assert secret not in result.stdout and secret not in result.stderr


def test_log_filter_hides_secrets_in_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    logger = logging.getLogger("birdwatch.test_redaction")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        install_log_redaction(["mq-pw", ""], logger=logger)
        logger.warning("connecting with %s to %s", "mq-pw", "rtsp://admin:cam-pw@cam/x")
        try:
            raise RuntimeError("could not open rtsp://admin:cam-pw@cam/x with password mq-pw")
        except RuntimeError:
            logger.exception("camera failed")
        logger.info("plain %d%%", 5)
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert "mq-pw" not in text and "cam-pw" not in text
    assert "connecting with *** to rtsp://admin:***@cam/x" in text
    assert "RuntimeError: could not open rtsp://admin:***@cam/x with password ***" in text


def test_log_filter_leaves_ordinary_records_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "fps %.1f", (9.5,), None)
    assert SecretFilter(["s3cret"]).filter(record) is True
    assert (record.msg, record.args) == ("fps %.1f", (9.5,))
