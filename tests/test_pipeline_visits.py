"""The pipeline from decoded video to the subscriber: a clip with birds coming and going, decoded by
OpenCV, through motion regions, a real birder network, tracks and visits, the SQLite outbox and a
real mosquitto. Every frame is fed to `Pipeline.process`, paced at the clip's frame rate and
stamped when it is fed, as a camera reader would; none is dropped, so the visits do not depend on
how busy the machine is. (The configured camera never connects: the frames come from the test.)

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
from birdwatch.config import ReconnectConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import StoreConfig
from birdwatch.config import TrackingConfig
from birdwatch.deliver.history import EventStore
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Frame
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import free_port

FPS = 10
TIMEOUT_S = 2.0  # longer than a busy machine takes for one frame; shorter than the gaps between birds
THREE_VISITS = [(10, 40), (90, 120), (170, 200)]  # one bird each, 5 s apart
SIX_VISITS = [(10, 35), (70, 95), (130, 155), (190, 215), (250, 275), (310, 335)]  # 3.5 s apart


def clip(path: Path, presence: list[tuple[int, int]], seed: int = 1) -> Path:
    frames = generate_frames(320, 240, presence[-1][1] + 40, n_birds=1, seed=seed, presence=presence)
    write_video(path, frames, fps=FPS)
    return path


def paced(path: Path, camera: str) -> Iterator[Frame]:
    """The clip's frames, each at least a frame interval after the last (a reader that fell behind
    does not burst to catch up), stamped when handed over."""
    cap = cv2.VideoCapture(str(path))
    last, seq = time.monotonic(), 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            seq += 1
            wait = last + 1 / FPS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            yield Frame(camera, seq, time.time(), image, last)
    finally:
        cap.release()


def config(tmp_path: Path, weights: Path, broker: MosquittoBroker, prefix: str) -> Config:
    nowhere = f"rtsp://127.0.0.1:{free_port()}/none"  # the test hands the frames over itself
    camera = CameraConfig(
        name="clip", url=nowhere, open_timeout_s=1, reconnect=ReconnectConfig(initial_s=3600, max_s=3600),
        motion=MotionConfig(warmup_frames=5),
    )  # fmt: skip
    return Config(
        cameras=[camera],
        model=ModelConfig(file=str(weights), device="cpu"),
        mqtt=MqttConfig(host=broker.host, port=broker.port, topic_prefix=prefix, client_id=prefix, reconnect_max_s=1),
        tracking=TrackingConfig(timeout_s=TIMEOUT_S),
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
    pipeline = Pipeline(config(tmp_path, small_weights, mosquitto, "pv"))
    pipeline.start()
    seq_at: dict[float, int] = {}
    try:
        for frame in paced(video, "clip"):
            seq_at[round(frame.ts, 3)] = frame.seq
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
    starts = sorted(seq_at[e["first_seen"]] - 1 for e in events if e["kind"] == "new")
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
    # The camera's state settles on "no bird, three visits today" (retained, or live if it was still on its way).
    mqtt_collector("pv/clip/state").wait_for(
        lambda m: (
            json.loads(m.payload)["present"] == "OFF" and json.loads(m.payload)["visits_today"] == len(THREE_VISITS)
        ),
        timeout=10,
    )


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
    pipeline = Pipeline(config(tmp_path, small_weights, broker, "restart"))
    pipeline.start()
    store, outbox = pipeline.store, pipeline.outbox
    assert store is not None and outbox is not None
    phase = "up"
    down_after = 0  # the outbox sequence number when the broker went away
    made_while_down: list[str] = []
    try:
        for frame in paced(video, "clip"):
            pipeline.process([frame])
            ended = [r for r in store.recent(kind="end", limit=100)]
            if phase == "up" and ended:
                # The first visit is over and acknowledged; now the broker goes away mid-run.
                assert outbox.flush(10)
                subscriber.wait_for(lambda m: json.loads(m.payload)["kind"] == "end", timeout=10)
                down_after = store.recent(limit=1)[0].seq
                broker.stop()
                phase = "down"
            elif phase == "down":
                waiting = store.pending(after_seq=down_after)
                if sum(r.kind == "end" for r in waiting) >= 2:  # two more birds came and went meanwhile
                    made_while_down = [r.id for r in waiting]
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
        assert len(made_while_down) >= 4 and set(made_while_down) <= {e["id"] for e in events}
        got = subscriber.wait_for(lambda m: True, timeout=30, count=len(events))
        ids = list(dict.fromkeys(json.loads(m.payload)["id"] for m in got))  # duplicates dropped, as documented
        assert ids == [e["id"] for e in events], "every event, in the order made"
    finally:
        subscriber.close()
        broker.stop()
