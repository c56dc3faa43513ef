"""The pipeline from decoded video to the subscriber: a clip with birds coming and going, decoded by
OpenCV, through motion regions, a real birder network, tracks and visits, the SQLite outbox and a
real mosquitto. Frames are fed to `Pipeline.process` one by one, each stamped at the clip's frame
rate, so what the tracker sees does not depend on how busy the machine is.

The untrained network names every crop about alike: these tests count visits, not species.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.config import EventsConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import MqttConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import StoreConfig
from birdwatch.config import TrackingConfig
from birdwatch.pipeline import Pipeline
from birdwatch.store import EventStore
from birdwatch.synthetic import generate_frames
from birdwatch.synthetic import write_video
from birdwatch.types import Frame
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

FPS = 10
THREE_VISITS = [(10, 40), (70, 100), (130, 160)]  # one bird each, 3 s apart
SIX_VISITS = [(10, 35), (55, 80), (100, 125), (145, 170), (190, 215), (235, 260)]


def clip(path: Path, presence: list[tuple[int, int]], seed: int = 1) -> Path:
    frames = generate_frames(320, 240, presence[-1][1] + 20, n_birds=1, seed=seed, presence=presence)
    write_video(path, frames, fps=FPS)
    return path


def decoded(path: Path, camera: str) -> Iterator[Frame]:
    """The clip's frames as a camera reader would make them, at the clip's own pace."""
    cap = cv2.VideoCapture(str(path))
    mono, wall, seq = time.monotonic(), time.time(), 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            seq += 1
            yield Frame(camera, seq, wall + seq / FPS, image, mono + seq / FPS)
    finally:
        cap.release()


def config(tmp_path: Path, video: Path, weights: Path, broker: MosquittoBroker, prefix: str) -> Config:
    return Config(
        cameras=[CameraConfig(name="clip", url=str(video), motion=MotionConfig(warmup_frames=5))],
        model=ModelConfig(file=str(weights), device="cpu"),
        mqtt=MqttConfig(host=broker.host, port=broker.port, topic_prefix=prefix, client_id=prefix, reconnect_max_s=1),
        tracking=TrackingConfig(timeout_s=1.0),
        events=EventsConfig(min_score=0.0, cooldown_s=0.0),  # untrained: unsure, and the same species every time
        snapshots=SnapshotsConfig(dir=str(tmp_path / "snapshots")),
        store=StoreConfig(path=str(tmp_path / "birdwatch.db")),
    )


def stored(db: Path) -> list[dict[str, Any]]:
    store = EventStore(db, readonly=True)
    try:
        assert store.count_pending() == 0, "every event acknowledged"
        return [row.data for row in reversed(store.recent(limit=10_000))]
    finally:
        store.close()


def visits_of(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = defaultdict(list)
    for e in events:
        kinds[e["visit_id"]].append(e["kind"])
    return kinds


@pytest.mark.timeout(300)
def test_birds_coming_and_going_are_one_new_and_one_end_per_visit(
    mosquitto: MosquittoBroker, mqtt_collector: Callable[..., MqttCollector], small_weights: Path, tmp_path: Path
) -> None:
    video = clip(tmp_path / "clip.avi", THREE_VISITS)
    collector = mqtt_collector("pv/#")
    pipeline = Pipeline(config(tmp_path, video, small_weights, mosquitto, "pv"))
    pipeline.start()
    try:
        start_wall = None
        for frame in decoded(video, "clip"):
            start_wall = start_wall or frame.ts - frame.seq / FPS
            pipeline.process([frame])
    finally:
        pipeline.stop()

    events = stored(tmp_path / "birdwatch.db")
    visits = visits_of(events)
    assert len(visits) == len(THREE_VISITS), visits
    for kinds in visits.values():
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == kinds.count("end") == 1, kinds
    ends = [e for e in events if e["kind"] == "end"]
    assert all(e["end_reason"] == "timeout" for e in ends), "each bird left before the clip ended"
    assert start_wall is not None
    starts = sorted(round((e["first_seen"] - start_wall) * FPS) for e in events if e["kind"] == "new")
    for first_frame, (a, b) in zip(starts, THREE_VISITS, strict=True):
        assert a <= first_frame < b, f"a visit starts inside its bird's window: frame {first_frame} in {(a, b)}"

    # Snapshots: on disk per visit, and the last one retained on MQTT as JPEG.
    for e in events:
        if e["kind"] == "new":
            crop = Path(e["snapshot"])
            assert crop.is_file() and cv2.imread(str(crop)) is not None
            assert crop.with_name(crop.name.replace("_crop", "_frame")).is_file()
    assert len(list((tmp_path / "snapshots").rglob("*_crop.jpg"))) == len(THREE_VISITS)
    got = collector.wait_for(lambda m: m.topic == "pv/clip/event", timeout=20, count=len(events))
    assert [json.loads(m.payload)["id"] for m in got] == [e["id"] for e in events], "all, in order"
    snaps = [m for m in collector.messages if m.topic == "pv/clip/snapshot"]
    assert len(snaps) >= len(THREE_VISITS) and all(m.payload[:2] == b"\xff\xd8" for m in snaps)
    state = mqtt_collector("pv/clip/state").wait_for(lambda m: m.retain, timeout=10)[-1]
    assert json.loads(state.payload)["visits_today"] == len(THREE_VISITS)
    assert json.loads(state.payload)["present"] == "OFF"


@pytest.mark.timeout(400)
def test_no_event_is_lost_across_a_broker_restart(small_weights: Path, tmp_path: Path) -> None:
    """The broker stops mid-run, birds come and go meanwhile, the broker comes back: the subscriber
    gets every event (at least once), in order.

    Broker and subscriber are set up as a Home Assistant install that must miss nothing would be:
    the broker keeps sessions across its restart, the subscriber has a persistent session at QoS 1.
    """
    broker = MosquittoBroker(tmp_path / "broker", persistent=True).start()
    subscriber = MqttCollector(broker.host, broker.port, "restart/+/event", 1, client_id="ha", clean_session=False)
    subscriber.start()
    video = clip(tmp_path / "clip.avi", SIX_VISITS)
    db = tmp_path / "birdwatch.db"
    pipeline = Pipeline(config(tmp_path, video, small_weights, broker, "restart"))
    pipeline.start()
    phase = "up"
    made_while_down: list[str] = []
    try:
        for frame in decoded(video, "clip"):
            events = pipeline.process([frame])
            if phase == "down":
                made_while_down += [e.id for e in events]
            if phase == "up" and any(e.kind == "end" for e in events):
                # The first visit is over and acknowledged; now the broker goes away mid-run.
                assert pipeline.outbox is not None and pipeline.outbox.flush(10)
                subscriber.wait_for(lambda m: json.loads(m.payload)["kind"] == "end", timeout=10)
                broker.stop()
                phase = "down"
            elif phase == "down" and sum(1 for e in events if e.kind == "end") and len(made_while_down) >= 4:
                assert pipeline.store is not None and pipeline.store.count_pending() >= 4, "kept, not sent"
                broker.start()
                phase = "back"
    finally:
        pipeline.stop()
        if not broker.running:
            broker.start()
    try:
        assert phase == "back", f"the clip ended in phase {phase!r}"
        events = stored(db)
        assert len(visits_of(events)) == len(SIX_VISITS)
        assert set(made_while_down) <= {e["id"] for e in events}
        got = subscriber.wait_for(lambda m: True, timeout=30, count=len(events))
        ids = list(dict.fromkeys(json.loads(m.payload)["id"] for m in got))  # duplicates dropped, as documented
        assert ids == [e["id"] for e in events], "every event, in the order made"
    finally:
        subscriber.close()
        broker.stop()
