"""Config: YAML into typed objects; every mistake is one line naming the key path, value and expectation."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from birdwatch.config import Config
from birdwatch.config import load_config
from birdwatch.config import parse_config
from birdwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = "cameras:\n  - name: feeder\n    url: rtsp://cam.local/stream\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_minimal_config_gets_sensible_defaults() -> None:
    config = parse_config(MINIMAL)
    assert isinstance(config, Config)
    cam = config.cameras[0]
    assert (cam.name, cam.url, cam.rtsp_transport, cam.loop) == ("feeder", "rtsp://cam.local/stream", "tcp", False)
    assert config.model.name == "hgnet_v2_b2_danube-delta"
    assert config.mqtt.host is None and config.mqtt.topic_prefix == "birdwatch" and config.mqtt.qos == 1
    assert config.events.cooldown_s > 0 and config.tracking.min_hits >= 2 and config.tracking.timeout_s > 0
    assert config.store.path == "birdwatch.db" and config.snapshots.dir == "snapshots"  # relative: the working dir
    assert config.homeassistant.discovery and config.homeassistant.discovery_prefix == "homeassistant"


def test_several_cameras_of_every_kind(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"x")
    config = parse_config(
        f"""
cameras:
  - {{name: a, url: "rtsp://u:p@10.0.0.2:554/s", rtsp_transport: udp}}
  - {{name: b, url: "http://cam/mjpeg"}}
  - {{name: c, url: /dev/video0}}
  - {{name: d, url: 1}}
  - {{name: e, url: "{clip}", loop: true}}
"""
    )
    assert [c.url for c in config.cameras][2:4] == ["/dev/video0", 1]
    assert config.cameras[0].rtsp_transport == "udp"
    assert config.cameras[4].loop is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cameras: [\n", "c.yaml: line"),
        ("cameras:\n  - name: a\n\turl: x\n", "invalid YAML"),
        ("", "empty"),
        ("- 1\n", "top level: expected a mapping"),
        ("cameras: []\n", "cameras: the list is empty"),
        ("cameras: {}\n", "cameras: expected a list of mappings, got {} (dict)"),
        ("cameras:\n  - name: a\n", "cameras[0].url: required key is missing"),
        (MINIMAL + "    lop: true\n", "cameras[0].lop: unknown key; did you mean 'loop'?"),
        (MINIMAL + "colour: red\n", "colour: unknown key; expected one of: cameras, model"),
        ("cameras:\n  - {name: a, url: 5.5}\n", "cameras[0].url: expected a string or an integer, got 5.5 (float)"),
        (MINIMAL + "    loop: yes please\n", "cameras[0].loop: expected true or false, got 'yes please' (str)"),
        (MINIMAL + "mqtt: {port: '1883'}\n", "mqtt.port: expected an integer, got '1883' (str)"),
        (MINIMAL + "mqtt: {port: 70000}\n", "mqtt.port: 70000 is too large; expected at most 65535"),
        (MINIMAL + "events: {min_score: -0.1}\n", "events.min_score: -0.1 is too small; expected at least 0.0"),
        (MINIMAL + "events: {cooldown_s: .nan}\n", "events.cooldown_s: expected a number"),
        (MINIMAL + "events: {allow: Great Tit}\n", "events.allow: expected a list of a string"),
        (MINIMAL + "events: {allow: [Jay], block: [Jay]}\n", "'Jay' is in both events.allow and events.block"),
        (MINIMAL + "tracking: {min_hits: 0}\n", "tracking.min_hits: 0 is too small; expected at least 1"),
        (MINIMAL + "tracking: {iou_threshold: 1.5}\n", "tracking.iou_threshold: 1.5 is too large"),
        (MINIMAL + "snapshots: {quality: 101}\n", "snapshots.quality: 101 is too large; expected at most 100"),
        (MINIMAL + "homeassistant: {discovery_prefix: 'ha/#'}\n", "homeassistant.discovery_prefix: 'ha/#' is not"),
        (MINIMAL + "store: {retention_days: 0}\n", "store.retention_days: 0.0 is too small"),
        (
            MINIMAL + "localiser: yolo\n",
            "localiser: expected one of 'motion', 'detector', 'detector+motion', 'teacher', got 'yolo' (str)",
        ),
        (MINIMAL + "    rtsp_transport: http\n", "cameras[0].rtsp_transport: expected one of 'tcp', 'udp'"),
        (MINIMAL + "model: {device: gpu}\n", "model.device: 'gpu' is not a device"),
        ("cameras:\n  - {name: 'front door', url: rtsp://x/y}\n", "cameras[0].name: 'front door' is not a valid"),
        ("cameras:\n  - {name: a, url: 'ftp://x/y'}\n", "cameras[0].url: unsupported scheme 'ftp'"),
        (
            "cameras:\n  - {name: a, url: /no/such/clip.mp4}\n",
            "cameras[0].url: video file '/no/such/clip.mp4' does not",
        ),
        (
            "cameras:\n  - {name: a, url: rtsp://x/1}\n  - {name: a, url: rtsp://x/2}\n",
            "cameras[1].name: 'a' is already",
        ),
        (MINIMAL + "mqtt: {topic_prefix: 'birds/#'}\n", "mqtt.topic_prefix: 'birds/#' is not a usable"),
        (MINIMAL + "mqtt: {username: u, password: p, password_env: X}\n", "give only one of mqtt.password"),
        (MINIMAL + "mqtt: {password: p}\n", "mqtt.username: required when a password is given"),
    ],
)
def test_bad_input_is_one_clear_line(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_errors_never_echo_a_url_password() -> None:
    message = error_of("cameras:\n  - {name: a, url: 'rtmpx://admin:hunter2@cam/x'}\n")
    assert "hunter2" not in message and "admin:***@cam" in message


def test_password_from_environment_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BW_TEST_PW", "s3cret")
    config = parse_config(MINIMAL + "mqtt: {host: h, username: u, password_env: BW_TEST_PW}\n")
    assert config.mqtt.password_value() == "s3cret"

    secret = tmp_path / "mqtt.secret"
    secret.write_text("from-file\n")
    config = parse_config(MINIMAL + f"mqtt: {{host: h, username: u, password_file: {secret}}}\n")
    assert config.mqtt.password_value() == "from-file"

    monkeypatch.delenv("BW_TEST_PW")
    config = parse_config(MINIMAL + "mqtt: {host: h, username: u, password_env: BW_TEST_PW}\n")
    with pytest.raises(ConfigError, match="mqtt.password_env: environment variable BW_TEST_PW is not set"):
        config.mqtt.password_value()
    config = parse_config(MINIMAL + "mqtt: {host: h, username: u, password_file: /nonexistent/pw}\n")
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read '/nonexistent/pw'"):
        config.mqtt.password_value()


@pytest.mark.parametrize("name", ["danube-delta.yaml", "eu-common.yaml", "example.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert config.cameras


def test_shipped_configs_name_the_two_models() -> None:
    assert load_config(REPO / "configs/danube-delta.yaml").model.name == "hgnet_v2_b2_danube-delta"
    assert load_config(REPO / "configs/eu-common.yaml").model.name == "regnet_y_8g_intermediate-eu-common"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birdwatch", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(120)
def test_check_config_exit_codes_and_redaction(tmp_path: Path, small_weights: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "cameras:\n  - {name: a, url: 'rtsp://admin:hunter2@cam/x'}\n"
        "mqtt: {host: h, username: u, password: topsecret}\n"
        f"model: {{file: '{small_weights}'}}\n"  # check-config reads the weights' species too
    )
    result = run_cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK (1 camera(s)" in result.stdout
    assert "hunter2" not in result.stdout and "topsecret" not in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "    lop: true\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == f"birdwatch: error: {bad}: cameras[0].lop: unknown key; did you mean 'loop'?"
    assert "Traceback" not in result.stderr

    result = run_cli("check-config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr and "Traceback" not in result.stderr


def path_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[Any]]]:
    """(key path, field) of every field of the schema, nested sections walked."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append((key, f))
        for tp in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(tp):
                out += path_fields(tp, key + ".")
            elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                out += path_fields(typing.get_args(tp)[0], key + "[].")
    return out


def test_every_key_that_names_a_file_or_folder_is_a_path_whose_tilde_is_expanded() -> None:
    """A key added later named *file, *dir or *path is caught here if it is not marked a path."""
    named = [key for key, _ in path_fields(Config) if re.search(r"(^|[._])(\w*_)?(file|dir|path)$", key)]
    unmarked = [key for key, f in path_fields(Config) if key in named and not f.metadata.get("path")]
    assert len(named) >= 10 and unmarked == []


def test_tilde_means_the_home_folder_in_every_path_once_the_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("head.pt", "teacher.pt", "clip.mp4", "pw", "ca.pem"):
        (tmp_path / name).write_text("x")
    config = parse_config(
        "cameras: [{name: feeder, url: ~/clip.mp4}, {name: cam, url: 'rtsp://cam/~x'}]\n"
        "model: {file: ~/m.pt, models_dir: ~/models}\n"
        "localiser: detector+motion\ndetector: {file: ~/head.pt}\nteacher: {file: ~/teacher.pt}\n"
        "mqtt: {host: h, username: u, password_file: ~/pw}\n"
        "snapshots: {dir: ~/snaps}\nstore: {path: ~/bw.db}\nrecord: {dir: ~/rec}\n"
    )
    home = str(tmp_path)
    assert config.cameras[0].url == f"{home}/clip.mp4" and config.cameras[1].url == "rtsp://cam/~x"
    assert (config.model.file, config.model.models_dir) == (f"{home}/m.pt", f"{home}/models")
    assert (config.detector.file, config.teacher.file) == (f"{home}/head.pt", f"{home}/teacher.pt")
    assert config.mqtt.password_file == f"{home}/pw"
    assert (config.snapshots.dir, config.store.path, config.record.dir) == (
        f"{home}/snaps",
        f"{home}/bw.db",
        f"{home}/rec",
    )


def test_check_config_hides_credentials_in_every_url_it_prints(tmp_path: Path, small_weights: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "cameras:\n  - {name: a, url: 'rtsp://cam/x'}\n"
        f"model: {{file: '{small_weights}', url: 'https://nas/m.pt?token=s3cret1', sha256: '{'a' * 64}', "
        "mirror: 'https://bob:s3cret2@nas/birder', verify_sha256: false}\n"
        "teacher: {file: t.pt, url: 'https://nas/t.pt?access_token=s3cret3', sha256: '" + "b" * 64 + "'}\n"
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "https://nas/m.pt?token=***" in result.stdout and "https://bob:***@nas/birder" in result.stdout
