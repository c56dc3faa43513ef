"""`birdwatch doctor` as a user runs it: a real process against a real mosquitto (with a password file
and an ACL), a real RTSP server, an unreachable camera and a folder the service cannot write. One line
per check, what to do when one fails, exit 0 only when every check passes, and no secret printed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.pki import make_pki
from tests.support.servers import MosquittoBroker
from tests.support.servers import RtspServer
from tests.support.servers import broker_with_users
from tests.support.servers import free_port
from tests.test_mqtt_security import TlsBroker

PASSWORD = "doctor-s3cret"
CAMERA_PASSWORD = "cam-s3cret"


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Anonymous clients refused; user `feeder` may write only under birds/ (and read the HA prefix)."""
    broker = broker_with_users(
        tmp_path / "broker",
        {"feeder": PASSWORD, "homeassistant": "ha"},
        acl="user feeder\ntopic readwrite birds/#\ntopic read homeassistant/#\n"
        "user homeassistant\ntopic readwrite homeassistant/#\n",
    )
    broker.start()
    yield broker
    broker.stop()


def publish_retained(broker: MosquittoBroker, topic: str, payload: str) -> None:
    """As another device on the broker (Home Assistant's own discovery, a Zigbee bridge, ...) would."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="other-device")
    client.username_pw_set("homeassistant", "ha")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def doctor(config: dict[str, Any], workdir: Path, *extra: str) -> tuple[int, list[str]]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)  # it holds a password
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "doctor", "--config", str(path), "--seconds", "1.5", *extra],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=120,
        check=False,
    )
    everything = result.stdout + result.stderr
    print(result.stdout)  # pytest shows it when a test fails
    assert "Traceback" not in everything, everything
    assert PASSWORD not in everything and CAMERA_PASSWORD not in everything, "no secret is printed"
    return result.returncode, result.stdout.strip().splitlines()


def line_for(lines: list[str], what: str) -> str:
    found = [line for line in lines if line[6:].startswith(what)]
    assert len(found) == 1, f"one line for {what!r} in:\n" + "\n".join(lines)
    return found[0]


def setup(weights: Path, broker: MosquittoBroker, camera_url: str, **mqtt_overrides: Any) -> dict[str, Any]:
    return {
        "cameras": [{"name": "feeder", "url": camera_url, "open_timeout_s": 5}],
        "model": {"file": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "device": "cpu"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "username": "feeder",
            "password": PASSWORD,
            "topic_prefix": "birds",
        }
        | mqtt_overrides,
        "store": {"path": "data/birdwatch.db"},
    }


def with_credentials(url: str) -> str:
    return url.replace("rtsp://", f"rtsp://viewer:{CAMERA_PASSWORD}@")


@pytest.mark.timeout(150)
def test_a_good_setup_passes_every_check(
    acl_broker: MosquittoBroker, rtsp_server: RtspServer, danube_weights: Path, tmp_path: Path
) -> None:
    publish_retained(acl_broker, "homeassistant/sensor/kitchen/config", '{"name": "kitchen"}')

    code, lines = doctor(setup(danube_weights, acl_broker, with_credentials(rtsp_server.url)), tmp_path)

    assert code == 0, "\n".join(lines)
    assert lines[-1] == "all checks passed"
    assert all(line.startswith(("ok ", "skip ")) for line in lines[:-1]), "\n".join(lines)
    assert "368 species, SHA-256 matches model.sha256" in line_for(lines, "weights")
    assert "torch " in line_for(lines, "inference") and "on cpu" in line_for(lines, "inference")
    camera = line_for(lines, "camera feeder")
    assert "rtsp://viewer:***@127.0.0.1" in camera and "320x240" in camera and "frames/s" in camera
    assert "as feeder: connected, may publish under birds/" in line_for(lines, "broker")
    assert "1 retained topic(s) under homeassistant/ from others" in line_for(lines, "home assistant")
    assert "writable" in line_for(lines, "store.path")


@pytest.mark.timeout(150)
def test_a_broken_setup_says_what_is_wrong_and_what_to_do(
    acl_broker: MosquittoBroker, danube_weights: Path, tmp_path: Path
) -> None:
    unreachable = f"rtsp://viewer:{CAMERA_PASSWORD}@127.0.0.1:{free_port()}/feeder"
    config = setup(danube_weights, acl_broker, unreachable, password="not-it")
    config["snapshots"] = {"dir": str(tmp_path / "locked" / "snapshots")}
    with read_only(tmp_path / "locked"):
        code, lines = doctor(config, tmp_path / "run")

    assert code == 1
    assert lines[-1] == "3 check(s) failed", "\n".join(lines)
    camera = line_for(lines, "camera feeder")
    assert camera.startswith("FAIL") and "check the URL" in camera and "viewer:***@" in camera
    broker = line_for(lines, "broker")
    assert broker.startswith("FAIL") and "refused the connection" in broker and "mqtt.username" in broker
    snapshots = line_for(lines, "snapshots.dir")
    assert (
        snapshots.startswith("FAIL")
        and "is not writable" in snapshots
        and "or set snapshots.dir elsewhere" in snapshots
    )
    assert line_for(lines, "weights").startswith("ok")


@pytest.mark.timeout(150)
def test_a_broker_that_refuses_the_topic_prefix_is_named(
    acl_broker: MosquittoBroker, rtsp_server: RtspServer, danube_weights: Path, tmp_path: Path
) -> None:
    config = setup(danube_weights, acl_broker, rtsp_server.url, topic_prefix="garden")
    code, lines = doctor(config, tmp_path)
    assert code == 1
    broker = line_for(lines, "broker")
    assert broker.startswith("FAIL") and "publishing under garden/ refused (Not authorized)" in broker
    assert "garden/# in the broker's ACL" in broker


@pytest.mark.timeout(120)
def test_a_usb_camera_needs_the_service_user_in_the_video_group(danube_weights: Path, tmp_path: Path) -> None:
    unit = tmp_path / "birdwatch.service"
    unit.write_text("[Unit]\nDescription=x\n\n[Service]\nUser=nobody\nExecStart=/bin/true\n")
    config = {
        "cameras": [{"name": "feeder", "url": "/dev/video-birdwatch-test", "open_timeout_s": 1}],
        "model": {"file": str(danube_weights), "device": "cpu"},
    }
    code, lines = doctor(config, tmp_path, "--unit", str(unit))
    assert code == 1
    group = line_for(lines, "video group")
    assert group.startswith("FAIL") and "nobody (User= of" in group and "sudo usermod -aG video nobody" in group
    assert line_for(lines, "camera feeder").startswith("FAIL")
    assert line_for(lines, "broker").startswith("skip")

    unit.write_text(unit.read_text().replace("User=nobody", "User=nobody\nSupplementaryGroups=video"))
    _, lines = doctor(config, tmp_path, "--unit", str(unit))
    assert line_for(lines, "video group").startswith("ok")


@pytest.mark.timeout(60)
def test_a_config_that_does_not_load_is_the_one_line(tmp_path: Path) -> None:
    code, lines = doctor({"cameras": [{"name": "feeder", "url": "rtsp://h/x", "colour": "red"}]}, tmp_path)
    assert code == 1
    assert lines[0].startswith("FAIL  config") and "cameras[0].colour: unknown key" in lines[0]
    assert lines[-1] == "1 check(s) failed"


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """A folder nobody may write into, root included: mode 0555, and immutable when we are root
    (root ignores the mode; chattr +i binds it too)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(folder)], check=True, timeout=10)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True, timeout=10)
        folder.chmod(0o755)


@pytest.mark.timeout(120)
def test_the_broker_check_uses_the_tls_settings(rtsp_server: RtspServer, danube_weights: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_broker = TlsBroker(tmp_path / "tls-broker", pki)
    tls_broker.broker.start()
    try:
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        config = {
            "cameras": [{"name": "feeder", "url": rtsp_server.url}],
            "model": {"file": str(danube_weights), "device": "cpu"},
            "mqtt": {"host": tls_broker.host, "port": tls_broker.port, "tls": tls},
        }
        _, lines = doctor(config, tmp_path / "right")
        assert line_for(lines, "broker").startswith(
            f"ok    broker            {tls_broker.host}:{tls_broker.port} (TLS)"
        )

        config["mqtt"]["tls"] = tls | {"ca_file": str(pki.rogue_ca)}
        code, lines = doctor(config, tmp_path / "rogue")
        broker = line_for(lines, "broker")
        assert code == 1 and broker.startswith("FAIL") and "certificate was not accepted" in broker
        assert "mqtt.tls.ca_file" in broker
    finally:
        tls_broker.broker.stop()
