"""Shared fixtures: a real Mosquitto broker, a real RTSP server, MQTT subscribers, a synthetic clip."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_jpeg_sequence
from tests.fixtures_detector import bird_backbone_weights  # noqa: F401  (fixtures)
from tests.fixtures_detector import bird_classifier  # noqa: F401
from tests.fixtures_detector import stand_ins  # noqa: F401
from tests.fixtures_detector import synthetic_birds  # noqa: F401
from tests.fixtures_detector import teacher_weights  # noqa: F401
from tests.fixtures_detector import trained_head  # noqa: F401
from tests.fixtures_detector import trained_teacher  # noqa: F401
from tests.fixtures_models import danube_weights  # noqa: F401
from tests.fixtures_models import eu_common_weights  # noqa: F401
from tests.fixtures_models import models_dir  # noqa: F401
from tests.fixtures_models import small_weights  # noqa: F401
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import RtspServer
from tests.support.servers import WeightsServer

RTSP_CLIP = {"width": 320, "height": 240, "n_frames": 60, "n_birds": 2, "seed": 7, "present_fraction": 0.75}


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker for the session. Tests may stop/restart it: `_restore_mosquitto` brings it back."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(autouse=True)
def _restore_mosquitto(request: pytest.FixtureRequest) -> Iterator[None]:
    # Only for tests that use the broker: asking for it otherwise would start one for every test.
    if "mosquitto" not in request.fixturenames:
        yield
        return
    broker: MosquittoBroker = request.getfixturevalue("mosquitto")
    broker.ensure_running()
    yield
    broker.ensure_running()  # the test stopped it (or it died): the next test gets a live one


@pytest.fixture
def mqtt_collector(mosquitto: MosquittoBroker) -> Iterator[Callable[..., MqttCollector]]:
    """Factory: `mqtt_collector("birdwatch/#", qos=1)` -> a subscribed MqttCollector, closed after the test."""
    made: list[MqttCollector] = []

    def make(topic: str = "#", qos: int = 1) -> MqttCollector:
        collector = MqttCollector(mosquitto.host, mosquitto.port, topic, qos).start()
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


@pytest.fixture(scope="session")
def rtsp_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 JPEGs (320x240, birds crossing in the middle 75 %) named 00000.jpg… for the RTSP server."""
    directory = tmp_path_factory.mktemp("rtsp_clip")
    write_jpeg_sequence(directory, generate_frames(**RTSP_CLIP))
    return directory


@pytest.fixture
def rtsp_server(rtsp_clip_dir: Path, tmp_path: Path) -> Iterator[RtspServer]:
    """A fresh RTSP server per test (about 0.2 s to start), at `rtsp_server.url`.

    Function scope because tests stop/restart it and the shared GStreamer media keeps state
    between clients; a fresh one keeps tests independent.
    """
    server = RtspServer(rtsp_clip_dir, tmp_path / "rtsp")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def weights_server(tmp_path: Path) -> Iterator[WeightsServer]:
    """A model hub on a loopback port, serving what a test publishes into it."""
    root = tmp_path / "hub"
    root.mkdir()
    server = WeightsServer(root).start()
    yield server
    server.stop()
