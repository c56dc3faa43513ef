"""Faults of the decide stage a feeder box meets over months (issue 10, faults 3 and 13-18): SQLite
refusing a write, two crops of one frame, lag in the classify queue, quiet visits, a bird hopping
faster than its track, frames held by visits, and what the classifier is shown of a detector box.

Visits are driven with constructed classified boxes (as in test_visits); where a user would meet
the fault on MQTT, the decider publishes through a real MqttSink to the session's mosquitto."""

from __future__ import annotations

import gc
import json
import re
import types
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.config import EventsConfig
from birdwatch.config import HomeAssistantConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import MqttConfig
from birdwatch.config import ReconnectConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import StoreConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.decider import Decider
from birdwatch.decide.visits import Visits
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import HistoryUnavailable
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.outbox import Outbox
from birdwatch.geometry import square_around
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.runtime.stats import delivery_counters
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Source
from birdwatch.types import SpeciesScore
from tests.support.process import wait_until
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector
from tests.support.servers import Received
from tests.support.servers import free_port
from tests.test_pipeline import ListSink
from tests.test_visits import BLUE_TIT
from tests.test_visits import FPS
from tests.test_visits import T0
from tests.test_visits import Feeder
from tests.test_visits import make

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "birdwatch.service"
GREAT_TIT = "Great Tit"
BIRD = [100, 80, 160, 140]
WING = [110, 90, 150, 130]  # a second blob of the same bird, inside its box (a split at the wing)


# -- the decider against a real broker --------------------------------------------------------------


@dataclass
class Rig:
    """A decider as `birdwatch run` builds it (visits, SQLite outbox, MqttSink), fed by the test; its
    clock is the frames' (10 a second), moved on by the test."""

    decider: Decider
    store: EventStore
    outbox: Outbox
    sink: MqttSink
    clock: list[float]
    seq: int = 0

    def frame(self, *crops: tuple[list[float], list[tuple[str, float]]]) -> None:
        self.seq += 1
        self.clock[0] = self.seq / FPS
        image = np.zeros((240, 320, 3), np.uint8)
        found = Detections(
            np.array([box for box, _ in crops], np.float32).reshape(-1, 4), np.ones(len(crops), np.float32)
        ).with_species([tuple(SpeciesScore(n, s) for n, s in top) for _, top in crops])
        self.decider.decide([Frame("feeder", self.seq, T0 + self.clock[0], image, self.clock[0])], [found])

    def wait(self, seconds: float) -> None:
        """Time passes, no frames (nothing moves): the decide thread ticks every 0.25 s."""
        for _ in range(round(seconds * 4)):
            self.clock[0] += 0.25
            self.decider.tick(self.clock[0])


@pytest.fixture
def rig(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    prefix = f"bwv{uuid.uuid4().hex[:6]}"
    mqtt = MqttConfig(
        host=mosquitto.host, port=mosquitto.port, topic_prefix=prefix, client_id=prefix, reconnect_max_s=1
    )
    config = Config(
        cameras=[CameraConfig(name="feeder", url=f"rtsp://127.0.0.1:{free_port()}/none")],
        mqtt=mqtt,
        store=StoreConfig(path=str(tmp_path / "birdwatch.db")),
        snapshots=SnapshotsConfig(enabled=False),
    )
    clock = [0.0]
    events = EventsConfig(min_score=0.3, cooldown_s=30.0, update_min_interval_s=0.0, heartbeat_s=0.0)
    visits = Visits(TrackingConfig(min_hits=3, timeout_s=1.0), events, "test-model", mono=lambda: clock[0])
    store = EventStore(config.store.path)
    sink = MqttSink(mqtt, None, HomeAssistantConfig(discovery=False), snapshots=False)
    outbox = Outbox(store, sink)
    decider = Decider(config, visits, store, outbox, sink, None)
    decider.begin()  # the states as they are at start: nobody there
    sink.start()
    assert sink.connected.wait(10), "no CONNACK from mosquitto"
    try:
        yield Rig(decider, store, outbox, sink, clock)
    finally:
        sink.stop()
        store.close()


def prefix_of(rig: Rig) -> str:
    return rig.sink.cfg.topic_prefix


# -- 3: a failed SQLite write ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_events_the_history_refuses_are_told_at_once_and_stored_once_it_takes_them(
    rig: Rig, mqtt_collector: Callable[..., MqttCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery never waits on the disk: told live, held in memory, stored with its delivery recorded."""
    collector = mqtt_collector(f"{prefix_of(rig)}/+/event")
    add = EventStore.add
    full = [True]

    def disk_full(store: EventStore, event: Any, sent_ts: float | None = None) -> int:
        if full[0]:
            raise HistoryUnavailable("event history: the disk is full (database or disk is full)")
        return add(store, event, sent_ts)

    monkeypatch.setattr(EventStore, "add", disk_full)
    for _ in range(6):  # confirmed at the third frame: `new`, refused by the history
        rig.frame((BIRD, BLUE_TIT))
    rig.wait(2)  # the bird left: `end`, refused too
    got = collector.wait_for(count=2, timeout=10)
    assert [json.loads(m.payload)["kind"] for m in got] == ["new", "end"], "told at once, in order"
    counters = delivery_counters(rig.outbox)
    assert counters["events_unsaved"] == 2 and counters["event_save_failures"] >= 2
    assert rig.store.count_pending() == 0, "nothing in the history yet"

    full[0] = False  # space again: the next tick stores both, oldest first, already delivered
    wait_until(lambda: (rig.wait(0.25), rig.outbox.held)[1] == 0, timeout=10, what="the held events stored")
    assert rig.outbox.flush(5), "every acknowledgement in"
    stored = rig.store.recent(limit=10)
    assert [r.kind for r in reversed(stored)] == ["new", "end"]
    assert all(r.sent_ts is not None for r in stored), "stored with their delivery recorded"
    assert len(collector.messages) == 2, "told once"
    assert delivery_counters(rig.outbox)["events_lost"] == 0


# -- 13: two crops of one frame --------------------------------------------------------------------


def test_two_crops_of_one_frame_on_one_track_are_one_vote() -> None:
    feeder = Feeder(make())
    for _ in range(3):
        feeder.bird([(GREAT_TIT, 0.75)])
    for _ in range(10):  # the blob splits at the wing: two boxes, one bird
        feeder.frame((BIRD, [(GREAT_TIT, 0.75)]), (WING, [(GREAT_TIT, 0.75)]))
    feeder.wait(2)
    assert all(len(set(ids)) == 1 for ids in feeder.tracks if ids), "the two boxes are one track"
    assert feeder.kinds() == ["new", "end"], "the score did not move"
    assert max(e.score for e in feeder.events) <= 1.0
    assert feeder.events[-1].score == pytest.approx(0.75) and feeder.events[-1].frames == 13


def test_two_unsure_crops_of_one_frame_do_not_pass_min_score() -> None:
    visits = make(min_score=0.5)
    feeder = Feeder(visits)
    feeder.bird([(GREAT_TIT, 0.3)])
    for _ in range(10):
        feeder.frame((BIRD, [(GREAT_TIT, 0.3)]), (WING, [(GREAT_TIT, 0.3)]))
    feeder.wait(2)
    assert feeder.events == [] and visits.unnamed == 1


# -- 14: lag in the classify queue -----------------------------------------------------------------


def test_frames_late_from_the_classify_queue_do_not_end_the_visit_early() -> None:
    """The classifier is 3 s behind the camera (a slow model on a CPU): each frame reaches the visits
    3 s after it was read, and the decide thread ticks in between. The track's 1 s timeout is judged
    by that camera's frames, not by the clock."""
    lag = 3.0
    clock = [0.0]
    cfg = EventsConfig(min_score=0.3, cooldown_s=0.0, heartbeat_s=0.0)
    visits = Visits(TrackingConfig(min_hits=3, timeout_s=1.0), cfg, "m", wall=lambda: T0, mono=lambda: clock[0])
    feeder = Feeder(visits)
    for _ in range(40):  # 4 s of a bird, every frame 3 s late
        clock[0] = (feeder.seq + 1) / FPS + lag
        feeder.bird(BLUE_TIT)
        for _ in range(2):
            clock[0] += 0.04
            feeder.keep(visits.tick())
    assert feeder.kinds() == ["new"], "the bird is still there in every frame"
    left = feeder.now  # the last frame's read time; from here the camera is quiet (no motion, no frames)
    while feeder.events[-1].kind != "end" and clock[0] < left + lag + 5:
        clock[0] += 0.25
        feeder.keep(visits.tick())
    assert feeder.kinds() == ["new", "end"], "a quiet camera's visits still end"
    assert clock[0] == pytest.approx(left + lag + 1.0, abs=0.6), "timeout after the last frame, lag included"
    assert feeder.events[-1].frames == 40


# -- 15: `present` on every change -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_present_follows_a_quiet_visit_on_the_retained_state(
    rig: Rig, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    topic = f"{prefix_of(rig)}/feeder/state"
    collector = mqtt_collector(topic)

    def present(m: Received) -> bool:
        return bool(json.loads(m.payload)["present"] == "ON")

    def present_now() -> bool:
        with MqttCollector(rig.sink.cfg.host, rig.sink.cfg.port, topic) as retained:  # Home Assistant starting
            return present(retained.wait_for(timeout=5)[0])

    for _ in range(5):
        rig.frame((BIRD, BLUE_TIT))
    rig.wait(2)  # told, then ended: the cooldown starts
    collector.wait_for(lambda m: not present(m), count=2, timeout=5)  # at start, and at the end
    collector.clear()
    for _ in range(5):  # back within the cooldown: a quiet visit, no event
        rig.frame((BIRD, BLUE_TIT))
    collector.wait_for(present, timeout=5)
    assert present_now() is True, "a bird is at the feeder"
    rig.wait(2)  # it leaves, quietly
    collector.wait_for(lambda m: not present(m), timeout=5)
    assert present_now() is False, "present does not stick on"
    assert [present(m) for m in collector.messages] == [True, False], "published on each change, once"


# -- 16: one bird, two tracks ----------------------------------------------------------------------


def test_a_bird_that_hops_faster_than_its_track_is_one_visit() -> None:
    visits = make()
    feeder = Feeder(visits)
    visits.seed("feeder", None, "2023-11-14", 0)
    for _ in range(5):
        feeder.frame(([20, 20, 80, 80], BLUE_TIT))
    for _ in range(5):  # one hop across the feeder: no overlap, a new track while the first is open
        feeder.frame(([220, 140, 280, 200], BLUE_TIT))
    assert len({ids[0] for ids in feeder.tracks}) == 2, "two tracks"
    assert visits.state("feeder", wall=T0).visits_today == 1
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]
    new, end = feeder.events
    assert new.visit_id == end.visit_id and end.frames == 10
    assert visits.state("feeder", wall=T0).visits_today == 1
    assert not visits.state("feeder", wall=T0).present


def test_the_merged_visit_ends_when_its_last_track_does() -> None:
    feeder = Feeder(make())
    for _ in range(5):
        feeder.frame(([20, 20, 80, 80], BLUE_TIT))
    for _ in range(25):  # the first track times out (1 s) while the bird stays, hopped
        feeder.frame(([220, 140, 280, 200], BLUE_TIT))
    assert feeder.kinds() == ["new"]
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"] and feeder.events[-1].frames == 30


def test_two_birds_of_one_species_seen_at_once_are_two_visits() -> None:
    feeder = Feeder(make())
    for _ in range(5):
        feeder.frame(([20, 20, 80, 80], BLUE_TIT))
    for _ in range(5):  # a second blue tit lands while the first is still seen
        feeder.frame(([20, 20, 80, 80], BLUE_TIT), ([220, 140, 280, 200], BLUE_TIT))
    feeder.wait(2)
    assert feeder.kinds().count("new") == 2 and feeder.visits.merged == 0


def test_another_species_beside_an_open_visit_is_its_own_visit() -> None:
    feeder = Feeder(make())
    for _ in range(5):
        feeder.frame(([20, 20, 80, 80], BLUE_TIT))
    for _ in range(5):
        feeder.frame(([220, 140, 280, 200], [(GREAT_TIT, 0.8)]))
    feeder.wait(2)
    assert sorted((e.kind, e.species) for e in feeder.events if e.kind == "new") == [
        ("new", "Eurasian Blue Tit"),
        ("new", GREAT_TIT),
    ]


# -- 17: frames held by visits ---------------------------------------------------------------------


def arrays_of_shape(root: object, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Every distinct array of this shape reachable from `root` through its data (not through functions,
    modules or classes, which lead to everything)."""
    seen: set[int] = set()
    found: dict[int, np.ndarray] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (types.FunctionType, types.ModuleType, type, types.MethodType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj if obj.base is None else obj.base
            if isinstance(base, np.ndarray) and base.shape == shape:
                found[id(base)] = base
            continue
        todo.extend(gc.get_referents(obj))
    return list(found.values())


def open_visits(visits: Visits) -> list[object]:
    return list({id(v): v for vs in visits._visits.values() for v in vs.values()}.values())


def test_a_visit_keeps_one_whole_frame_however_long_it_lasts() -> None:
    """A bird on a jittering feeder: its crops rank the candidate species differently frame after frame
    (each a best crop of some species), and loose regions start tracks all around it."""
    visits = make()
    feeder = Feeder(visits)
    species = [f"Species {i}" for i in range(12)]
    rng = np.random.default_rng(3)
    shape = (240, 320, 3)
    for i in range(60):
        top = [(species[i % 12], 0.5 + i / 200), (species[(i + 5) % 12], 0.3 + i / 400)]
        jitter = [[float(x), float(y), float(x) + 30, float(y) + 30] for x, y in rng.integers(0, 280, (3, 2))]
        feeder.frame((BIRD, top), *[(box, [(species[(i + 7) % 12], 0.4)]) for box in jitter])
        per_visit = [len(arrays_of_shape(v, shape)) for v in open_visits(visits)]
        assert max(per_visit) == 1, f"frame {i}: a visit holds {max(per_visit)} whole frames"
        assert len(arrays_of_shape(visits, shape)) <= len(per_visit) <= visits.tracking.max_tracks
    frames, held_bytes = visits.frames_held()  # what /metrics shows
    assert 1 <= frames <= visits.tracking.max_tracks and held_bytes == frames * 240 * 320 * 3
    feeder.wait(2)
    assert arrays_of_shape(visits, shape) == [], "an ended visit lets its frame go"


def test_the_snapshot_still_comes_from_the_best_crop_of_the_named_species() -> None:
    feeder = Feeder(make())
    feeder.bird([("Eurasian Jay", 0.6), ("Common Magpie", 0.3)])
    feeder.bird([("Common Magpie", 0.5), ("Eurasian Jay", 0.4)], x=104)
    feeder.bird([("Eurasian Jay", 0.9), ("Common Magpie", 0.05)], x=108)  # the jay's best: told with it
    feeder.wait(2)
    assert [(e.kind, e.species, e.box) for e in feeder.pictures] == [("new", "Eurasian Jay", (108, 80, 168, 140))]


def test_the_unit_caps_the_service_memory() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    assert re.fullmatch(r"\d+(\.\d+)?[KMGT]", settings.get("MemoryMax", "")), "MemoryMax= with a size"


# -- 18: what the classifier sees of detector and motion boxes -------------------------------------


@pytest.mark.timeout(120)
def test_detector_and_motion_boxes_reach_the_classifier_squared_and_padded_alike(
    small_weights: Path, tmp_path: Path
) -> None:
    padding = 0.2
    camera = CameraConfig(
        name="feeder", url=f"rtsp://127.0.0.1:{free_port()}/none", open_timeout_s=1,
        reconnect=ReconnectConfig(initial_s=3600, max_s=3600), motion=MotionConfig(padding=padding),
    )  # fmt: skip
    config = Config(
        cameras=[camera],
        model=ModelConfig(file=str(small_weights), device="cpu"),
        store=StoreConfig(path=str(tmp_path / "birdwatch.db")),
        snapshots=SnapshotsConfig(enabled=False),
    )
    pipeline = Pipeline(config, sink=ListSink())  # type: ignore[arg-type]
    pipeline.start()
    try:
        assert pipeline.parts is not None
        engine = pipeline.parts.engine
        shown: list[list[tuple[int, int, int, int]]] = []
        classify = engine.classify

        def recording(frames: Any, boxes: Any) -> Any:
            shown.extend(list(b) for b in boxes)
            return classify(frames, boxes)

        engine.classify = recording  # type: ignore[method-assign]
        frame = Frame("feeder", 1, T0, np.zeros((240, 320, 3), np.uint8), 0.0)
        tight = [100.0, 60.0, 180.0, 100.0]  # a bird on a perch: wide, not tall
        region = square_around(tight, padding, 320, 240)  # what MotionDetector makes of the same bird
        detector = Detections(np.array([tight], np.float32), np.ones(1, np.float32), Source.DETECTOR)
        motion = Detections(np.array([region], np.float32), np.ones(1, np.float32), Source.MOTION)
        out = pipeline.classify([frame, frame], [detector, motion])
    finally:
        pipeline.stop()
    (from_detector,), (from_motion,) = shown
    x1, y1, x2, y2 = from_detector
    assert x2 - x1 == y2 - y1 == round(80 * (1 + padding)), f"a padded square, not {from_detector}"
    assert from_detector == from_motion, "the same bird is shown alike, whichever found it"
    assert out[0].int_boxes() == [(100, 60, 180, 100)], "the detector's box itself stays tight (events, tracks)"
