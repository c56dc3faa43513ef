"""Tests of the test infrastructure itself: if these fail, the servers or the clip generator lie."""

from __future__ import annotations

import itertools
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import render_scene
from birdwatch.tools.synthetic import write_jpeg_sequence
from birdwatch.tools.synthetic import write_video
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import RtspServer
from tests.support.servers import free_port
from tests.support.servers import port_open

Collector = Callable[..., MqttCollector]


def publish(broker: MosquittoBroker, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
    """Publish with a throwaway client and wait for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def unique_topic() -> str:
    return f"test/{uuid.uuid4().hex[:8]}"


# --- MQTT broker and collector ----------------------------------------------------------------


@pytest.mark.timeout(20)
def test_collector_receives_qos1_publish(mosquitto: MosquittoBroker, mqtt_collector: Collector) -> None:
    topic = unique_topic()
    collector = mqtt_collector(f"{topic}/#")
    publish(mosquitto, f"{topic}/a", b"hello", qos=1)
    publish(mosquitto, "elsewhere/a", b"not for us", qos=1)
    (msg,) = collector.wait_for(lambda m: m.topic == f"{topic}/a")
    assert (msg.payload, msg.qos, msg.retain) == (b"hello", 1, False)
    assert all(m.topic.startswith(topic) for m in collector.messages)


@pytest.mark.timeout(20)
def test_retained_message_reaches_late_subscriber(mosquitto: MosquittoBroker, mqtt_collector: Collector) -> None:
    topic = f"{unique_topic()}/state"
    publish(mosquitto, topic, b"online", qos=1, retain=True)
    try:
        late = mqtt_collector(topic)  # subscribes only now
        (msg,) = late.wait_for(lambda m: m.topic == topic)
        assert (msg.payload, msg.retain, msg.qos) == (b"online", True, 1)
    finally:
        publish(mosquitto, topic, b"", retain=True)  # an empty retained payload clears it


@pytest.mark.timeout(20)
def test_wait_for_raises_with_what_it_saw(mosquitto: MosquittoBroker, mqtt_collector: Collector) -> None:
    topic = unique_topic()
    collector = mqtt_collector(f"{topic}/#")
    publish(mosquitto, f"{topic}/x", b"seen")
    collector.wait_for(lambda m: True)
    with pytest.raises(AssertionError, match=rf"(?s)0/1 matching.*{topic}/x.*seen"):
        collector.wait_for(lambda m: m.topic.endswith("/never"), timeout=0.3)


@pytest.mark.timeout(30)
def test_broker_stop_refuses_and_restart_serves_again(mosquitto: MosquittoBroker, mqtt_collector: Collector) -> None:
    topic = unique_topic()
    collector = mqtt_collector(f"{topic}/#")
    port = mosquitto.port

    mosquitto.stop()
    assert not mosquitto.running
    assert not port_open(mosquitto.host, port)
    with pytest.raises(ConnectionRefusedError):
        mqtt.Client(CallbackAPIVersion.VERSION2).connect(mosquitto.host, port)

    mosquitto.start()
    assert mosquitto.port == port
    # The collector connected before the outage must reconnect and re-subscribe by itself.
    deadline = time.monotonic() + 10
    while not collector.messages and time.monotonic() < deadline:
        publish(mosquitto, f"{topic}/after", b"back")
        time.sleep(0.2)
    collector.wait_for(lambda m: m.payload == b"back")
    fresh = mqtt_collector(f"{topic}/#")
    publish(mosquitto, f"{topic}/fresh", b"new")
    fresh.wait_for(lambda m: m.payload == b"new")


@pytest.mark.timeout(20)
def test_a_broker_a_test_left_stopped_is_running_again_on_its_port_for_the_next(
    mosquitto: MosquittoBroker, mqtt_collector: Collector
) -> None:
    port = mosquitto.port
    mosquitto.stop()

    mosquitto.ensure_running()  # what the autouse guard in conftest runs after every test that used it

    assert mosquitto.running and mosquitto.port == port and port_open(mosquitto.host, port)
    collector = mqtt_collector("guard/#")
    publish(mosquitto, "guard/x", b"ok")
    collector.wait_for(lambda m: m.payload == b"ok")


@pytest.mark.timeout(20)
def test_broker_fails_loudly_when_port_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = MosquittoBroker(tmp_path, port=squatter.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match=r"(?s)exited with status.*Address already in use"):
                broker.start(timeout=5)
            assert not broker.running
        finally:
            broker.stop()


def test_missing_binary_raises_instead_of_skipping(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not found"):
        MosquittoBroker(tmp_path, binary=str(tmp_path / "no-mosquitto")).start()
    with pytest.raises(RuntimeError, match="not found"):
        RtspServer(tmp_path, tmp_path, python=str(tmp_path / "no-python")).start()


# --- RTSP server --------------------------------------------------------------------------------


def read_frames(url: str, n: int, timeout: float) -> list[np.ndarray]:
    """Read up to n frames through OpenCV's FFmpeg backend, giving up after `timeout` seconds."""
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    try:
        assert cap.isOpened(), f"OpenCV could not open {url}"
        while len(frames) < n and time.monotonic() < deadline:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames


def psnr_to_nearest(frame: np.ndarray, clip_dir: Path) -> float:
    """PSNR of `frame` against the most similar source JPEG: high only if it is our clip."""
    best = min(
        float(np.mean((cv2.imread(str(p)).astype(np.float32) - frame.astype(np.float32)) ** 2))
        for p in sorted(clip_dir.glob("*.jpg"))
    )
    return 10 * np.log10(255.0**2 / max(best, 1e-9))


@pytest.mark.timeout(60)
# Unset, OpenCV itself asks FFmpeg for TCP; any value replaces that, so "udp" is tested explicitly.
@pytest.mark.parametrize("options", [None, "rtsp_transport;tcp", "rtsp_transport;udp"], ids=["default", "tcp", "udp"])
def test_rtsp_stream_decodes_in_opencv(
    rtsp_server: RtspServer, rtsp_clip_dir: Path, monkeypatch: pytest.MonkeyPatch, options: str | None
) -> None:
    # OpenCV reads this variable on every open, so setting it per test is enough.
    if options is None:
        monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    else:
        monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", options)
    frames = read_frames(rtsp_server.url, n=5, timeout=20)
    assert len(frames) >= 5
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    assert psnr_to_nearest(frames[-1], rtsp_clip_dir) > 25  # H.264 of our frames, not garbage


@pytest.mark.timeout(60)
def test_rtsp_server_restarts_on_same_port(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url
    rtsp_server.stop()
    assert not port_open(rtsp_server.host, rtsp_server.port)
    rtsp_server.restart()
    assert rtsp_server.url == url
    assert len(read_frames(url, n=3, timeout=20)) == 3


@pytest.mark.timeout(20)
def test_rtsp_server_fails_loudly_without_frames(tmp_path: Path) -> None:
    server = RtspServer(tmp_path / "empty", tmp_path, port=free_port())
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with status 2.*00000\.jpg"):
            server.start(timeout=10)
    finally:
        server.stop()


# --- synthetic clips ----------------------------------------------------------------------------


def test_synthetic_is_deterministic_for_a_seed() -> None:
    a = render_scene(160, 120, 20, n_birds=3, seed=5, present_fraction=1.0)
    b = render_scene(160, 120, 20, n_birds=3, seed=5, present_fraction=1.0)
    c = render_scene(160, 120, 20, n_birds=3, seed=6, present_fraction=1.0)
    assert a.boxes == b.boxes
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.frames, c.frames, strict=True))
    # Random access gives the same frame as sequential generation.
    frame, boxes = Scene(160, 120, 20, 3, 5, present_fraction=1.0).render(13)
    assert np.array_equal(frame, a.frames[13]) and boxes == a.boxes[13]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_boxes_are_inside_frame_and_cover_sprites(seed: int) -> None:
    w, h = 200, 150
    scene = Scene(w, h, 40, n_birds=3, seed=seed, present_fraction=0.5, noise_sigma=0)
    n_boxes = 0
    for t, (frame, boxes) in enumerate(scene):
        assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
        changed = np.any(frame != scene.background, axis=2)
        covered = np.zeros_like(changed)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (t, boxes)
            covered[y1:y2, x1:x2] = True
            # Tight: sprite pixels touch all four edges. Only checked for a box that overlaps no
            # other, since a bird in front can hide another's edge.
            others = boxes[:i] + boxes[i + 1 :]
            if not any(a < x2 and x1 < c and b < y2 and y1 < d for a, b, c, d in others):
                inside = changed[y1:y2, x1:x2]
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), t
        n_boxes += len(boxes)
        assert not (changed & ~covered).any(), f"frame {t}: sprite pixels outside every box"
    assert n_boxes > 0


def test_synthetic_presence_schedule_leaves_empty_stretches() -> None:
    clip = render_scene(160, 120, 50, n_birds=2, seed=3, present_fraction=0.4)
    assert clip.presence == [(15, 35)]
    present = clip.has_birds
    assert not any(present[:15]) and not any(present[35:])
    assert sum(present) >= 10
    explicit = render_scene(160, 120, 30, n_birds=1, seed=3, presence=[(0, 10), (20, 30)])
    assert not any(explicit.has_birds[10:20]) and any(explicit.has_birds[:10]) and any(explicit.has_birds[20:])
    assert not any(render_scene(64, 48, 10, seed=1, present_fraction=0).has_birds)


def test_synthetic_perching_birds_hold_still() -> None:
    still = render_scene(160, 120, 40, n_birds=1, seed=4, present_fraction=1.0, perch_fraction=0.8)
    runs = [a == b and bool(a) for a, b in itertools.pairwise(still.boxes)]
    assert sum(runs) >= 5  # the same box frame after frame while perched
    moving = render_scene(160, 120, 40, n_birds=1, seed=4, present_fraction=1.0)
    assert not any(a == b and bool(a) for a, b in itertools.pairwise(moving.boxes))


def test_synthetic_writers_round_trip(tmp_path: Path) -> None:
    n = write_jpeg_sequence(tmp_path / "seq", generate_frames(96, 64, 5, seed=1))
    assert n == 5
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == [f"{i:05d}.jpg" for i in range(5)]
    assert cv2.imread(str(tmp_path / "seq" / "00004.jpg")).shape == (64, 96, 3)

    avi = tmp_path / "clip.avi"
    assert write_video(avi, generate_frames(96, 64, 7, seed=1), fps=10) == 7
    cap = cv2.VideoCapture(str(avi))
    got = []
    while (r := cap.read())[0]:
        got.append(r[1])
    cap.release()
    assert len(got) == 7 and got[0].shape == (64, 96, 3)
