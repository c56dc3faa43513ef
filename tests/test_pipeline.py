"""The pipeline's stage threads: results reach the right camera and frame, a slow model costs old
frames (counted) rather than lag, no camera starves, and a broken model stops the service."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from birdwatch.classify.models import load_classifier
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.config import EngineConfig
from birdwatch.config import EventsConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import StoreConfig
from birdwatch.config import TrackingConfig
from birdwatch.deliver.history import EventStore
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.types import CameraState
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import VisitEvent

SIZES = {"small": (320, 240), "wide": (640, 360), "mid": (480, 272)}


class ListSink:
    """Keeps what the pipeline publishes, in this process; acknowledges at once."""

    online = True

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: list[CameraState] = []
        self.corrections: list[dict[str, Any]] = []
        self.refusing = False

    def describe(self, cameras: list[str], model: str) -> None: ...

    def start(self) -> None: ...

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        self.events.append(json.loads(payload))
        on_sent()
        return True

    def publish_correction(self, camera: str, payload: str, on_sent: Callable[[], None]) -> bool:
        if self.refusing:  # full, or the broker away: the decide thread tries again later
            return False
        self.corrections.append(json.loads(payload))
        on_sent()
        return True

    def publish_state(self, state: CameraState) -> None:
        self.states.append(state)

    def publish_history(self, problem: str | None) -> None: ...

    def publish_stats(self, payload: str) -> None: ...

    def stop(self, timeout: float = 3.0) -> None: ...


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        out[name] = tmp_path_factory.mktemp("clips") / f"{name}.avi"
        write_video(out[name], generate_frames(w, h, 60, n_birds=3, seed=20 + i, present_fraction=1.0), fps=25)
    return out


def config_for(clips: dict[str, Path], weights: Path, **engine: object) -> Config:
    state = next(iter(clips.values())).parent / "state"  # the history and snapshots, beside the clips
    cameras = [
        CameraConfig(name=name, url=str(path), loop=True, realtime=False, motion=MotionConfig(warmup_frames=3))
        for name, path in clips.items()
    ]
    return Config(
        cameras=cameras,
        model=ModelConfig(file=str(weights), device="cpu", batch_size=4),
        engine=EngineConfig(precision="fp32", **engine),  # type: ignore[arg-type]
        # Frames reach the model far apart here (readers outrun it): every box is a visit at once.
        tracking=TrackingConfig(min_hits=1),
        events=EventsConfig(min_score=0.0, cooldown_s=0.0),
        snapshots=SnapshotsConfig(dir=str(state / "snapshots")),
        store=StoreConfig(path=str(state / f"{'-'.join(clips)}.db")),
        stats_interval_s=3600,
    )


def run_for(pipeline: Pipeline, until: threading.Event | None = None, seconds: float = 6.0) -> int:
    stop = until or threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return pipeline.run(stop)
    finally:
        timer.cancel()
        pipeline.stop()


@pytest.mark.timeout(90)
def test_three_cameras_at_full_speed(clips: dict[str, Path], danube_weights: Path) -> None:
    sink = ListSink()
    pipeline = Pipeline(config_for(clips, danube_weights), sink=sink)
    pipeline.start()
    assert run_for(pipeline, seconds=8) == 0
    snap = pipeline.counters()

    # Every camera was served although the readers outrun the model by far.
    for name in SIZES:
        cam = snap["cameras"][name]
        assert cam["frames_processed"] > 0, f"{name} starved"
        assert cam["frames_dropped"] > 0, "the model is slower than the readers: old frames are dropped"
        assert cam["frames_classified"] > 0
        assert cam["frames_read"] >= cam["frames_processed"] >= cam["frames_classified"]
    by_camera = {name: [e for e in sink.events if e["camera"] == name] for name in SIZES}
    assert all(by_camera.values()), "every camera produced visits"

    # Results went back to the right camera and frame: boxes fit that camera's own frame size.
    for name, events in by_camera.items():
        width, height = SIZES[name]
        for event in events:
            x1, y1, x2, y2 = event["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (name, event["box"])
            assert 1 <= event["frames"] <= snap["cameras"][name]["frames_classified"]
    classify = snap["stages"]["classify"]
    assert classify["mean_batch"] >= 1 and classify["batches"] > 0
    assert snap["latency_ms"]["read_to_decision"]["p95"] is not None


@pytest.mark.timeout(90)
def test_a_model_that_keeps_failing_stops_the_service(
    clips: dict[str, Path], danube_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    classifier = load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))

    def broken(_x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    classifier.net.embedding = broken  # type: ignore[method-assign]
    # The broken pass is the torch module's (the engine runs embedding, then classify): an exported backend
    # would not call it.
    pipeline = Pipeline(config_for(clips, danube_weights, backend="torch"), classifier=classifier, sink=ListSink())
    pipeline.start()
    with caplog.at_level(logging.ERROR, logger="birdwatch"):
        code = run_for(pipeline, seconds=60)
    assert code == 1
    failures = [r for r in caplog.records if "classify stage failed on frames" in r.getMessage()]
    assert failures and "illegal memory access" in failures[0].getMessage()
    assert any("#" in r.getMessage() for r in failures), "the log names the frames (camera#seq)"
    assert any("failed 5 times in a row" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_file_sources_drain_and_end(tmp_path: Path, danube_weights: Path) -> None:
    clip = tmp_path / "once.avi"
    write_video(clip, generate_frames(320, 240, 30, n_birds=2, seed=3, present_fraction=1.0), fps=30)
    config = config_for({"once": clip}, danube_weights)
    config.cameras[0].loop = False
    config.cameras[0].realtime = True
    sink = ListSink()
    pipeline = Pipeline(config, sink=sink)
    pipeline.start()
    assert run_for(pipeline, seconds=50) == 0
    snap = pipeline.counters()
    assert snap["cameras"]["once"]["state"] == "finished"
    assert snap["stages"]["classify"]["queue_depth"] == 0 and snap["stages"]["locate"]["queue_depth"] == 0
    assert sink.events


@pytest.mark.timeout(90)
def test_classify_workers_run_side_by_side_and_decide_in_order(clips: dict[str, Path], danube_weights: Path) -> None:
    """Two workers classify batches at once, finishing in any order; tracking still sees each
    camera's frames in the order they were read."""
    pipeline = Pipeline(config_for(clips, danube_weights, workers=2, threads=1), sink=ListSink())
    classify, decide = pipeline.classify, pipeline.decide
    lock = threading.Lock()
    running, most_at_once = [0], [0]
    decided: dict[str, list[int]] = {}
    deciders: set[str] = set()
    rng = random.Random(0)

    def classify_slowly(frames: list[Frame], found: list[Detections]) -> list[Detections]:
        with lock:
            running[0] += 1
            most_at_once[0] = max(most_at_once[0], running[0])
            delay = rng.uniform(0, 0.2)  # batches finish out of order
        try:
            time.sleep(delay)
            return classify(frames, found)
        finally:
            with lock:
                running[0] -= 1

    def record(frames: list[Frame], found: list[Detections]) -> list[VisitEvent]:
        deciders.add(threading.current_thread().name)
        for frame in frames:
            decided.setdefault(frame.camera, []).append(frame.seq)
        return decide(frames, found)

    pipeline.classify = classify_slowly  # type: ignore[method-assign]
    pipeline.decide = record  # type: ignore[method-assign]
    pipeline.start()
    assert pipeline.plan is not None and pipeline.plan.workers == 2
    assert run_for(pipeline, seconds=8) == 0
    assert most_at_once[0] == 2, "the two workers classified at the same time"
    assert deciders == {"decide"}, "one thread decides"
    assert all(len(seqs) > 3 for seqs in decided.values()), decided
    for camera, seqs in decided.items():
        assert seqs == sorted(seqs), f"{camera}: frames decided out of order: {seqs}"


class SlowJournal(logging.Handler):
    """A log that sometimes takes its time, as writing to a busy journal does. It blocks the thread
    that logs, outside the handler lock, so other threads' records go by meanwhile."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def handle(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("end on"):
            time.sleep(self.seconds)
        return True


@pytest.mark.timeout(180)
def test_a_cameras_events_reach_the_outbox_in_visit_order(tmp_path: Path, danube_weights: Path) -> None:
    """Birds come and go while classification is randomly slow and the log now and then blocks: a
    visit that began after the previous bird had left is never told before that bird's `end`."""
    fps, timeout_s = 20, 0.8
    windows = [(5 + 80 * i, 25 + 80 * i) for i in range(4)]  # a bird for 1 s, then 3 s without
    clip = tmp_path / "comings.avi"
    write_video(clip, generate_frames(320, 240, windows[-1][1] + 40, n_birds=1, seed=3, presence=windows), fps=fps)
    config = config_for({"comings": clip}, danube_weights, workers=2, threads=1)
    config.cameras[0].realtime = True  # birds come and go in real time
    config.cameras[0].loop = False
    config.tracking.timeout_s = timeout_s
    pipeline = Pipeline(config, sink=ListSink())
    classify = pipeline.classify
    rng = random.Random(1)

    def classify_slowly(frames: list[Frame], found: list[Detections]) -> list[Detections]:
        time.sleep(rng.uniform(0, 0.3))
        return classify(frames, found)

    pipeline.classify = classify_slowly  # type: ignore[method-assign]
    journal = SlowJournal(3.0)  # longer than the rest of the gap after a bird's end
    logger = logging.getLogger("birdwatch")
    level = logger.level
    logger.addHandler(journal)
    logger.setLevel(logging.INFO)  # events are logged at INFO, as `birdwatch run` does
    try:
        pipeline.start()
        assert run_for(pipeline, seconds=60) == 0, "the clip ends"
    finally:
        logger.removeHandler(journal)
        logger.setLevel(level)
    store = EventStore(config.store.path, readonly=True)
    try:
        events = [row.data for row in reversed(store.recent(camera="comings", limit=1000))]  # outbox order
    finally:
        store.close()
    visits: dict[str, dict[str, Any]] = {}  # visit id -> where its new and end are in the outbox, when it was seen
    for position, event in enumerate(events):
        visit = visits.setdefault(event["visit_id"], {"new": None, "end": None})
        if event["kind"] in ("new", "end"):
            visit[event["kind"]] = position
        visit["first_seen"], visit["last_seen"] = event["first_seen"], event["last_seen"]
    told = sorted(visits.values(), key=lambda v: v["first_seen"])
    assert len(told) >= 3, f"birds were told: {events}"
    for earlier in told:
        for later in told:
            if later["first_seen"] > earlier["last_seen"] + timeout_s + 0.05:  # the earlier bird had left
                assert earlier["end"] is not None and earlier["end"] < later["new"], (
                    f"a new visit was told before the end of the one that came before it: {events}"
                )


@pytest.mark.timeout(90)
def test_a_correction_made_on_the_page_is_told_once_and_renames_the_cameras_latest_visit(
    tmp_path: Path, small_weights: Path
) -> None:
    import sqlite3

    from birdwatch.deliver import corrections
    from tests.support.process import wait_until

    clip = tmp_path / "feeder.avi"  # one bird, then 20 s of an empty feeder: its visit stays the camera's latest
    frames = [frame for frame, _ in Scene(320, 240, 40, n_birds=1, seed=4, presence=[(2, 20)])]
    write_video(clip, [*frames, *[frames[-1]] * 500], fps=25)
    config = config_for({"feeder": clip}, small_weights)
    config.cameras[0].realtime = True
    sink = ListSink()
    pipeline = Pipeline(config, sink=sink)
    pipeline.start()
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: sink.events, timeout=60, what="a visit")
        visit = sink.events[-1]["visit_id"]
        wait_until(lambda: sink.states and sink.states[-1].visit_id == visit, timeout=10, what="its state")
        name = next(s for s in pipeline.parts.classifier.class_names if s != sink.events[-1]["species"])
        with sqlite3.connect(config.store.path) as db:  # what the page does, through its own connection
            corrections.correct(db, [visit], name, "Anna")
        wait_until(lambda: sink.corrections, timeout=10, what="the correction told")
        [told] = sink.corrections
        assert (told["visit_id"], told["species"], told["by"], told["undo"]) == (visit, name, "Anna", False)
        wait_until(lambda: sink.states[-1].species == name, timeout=10, what="the state renamed")
        with sqlite3.connect(config.store.path) as db:
            assert corrections.untold(db) == [], "marked told once the sink had it: not told again"

        # The broker away: a correction, its undo and another correction. Back, only the one that stands is told,
        # and the state shows it, whatever order they were made in.
        sink.refusing = True
        others = [s for s in pipeline.parts.classifier.class_names if s not in (name, sink.events[-1]["species"])]
        with sqlite3.connect(config.store.path) as db:
            [passing] = corrections.correct(db, [visit], others[0], "Anna")
            corrections.undo(db, [passing.id])
            corrections.correct(db, [visit], others[1], "Ben")
        sink.refusing = False
        wait_until(lambda: len(sink.corrections) == 2, timeout=10, what="the standing correction told")
        assert (sink.corrections[1]["species"], sink.corrections[1]["was"]) == (others[1], name)
        wait_until(lambda: sink.states[-1].species == others[1], timeout=10, what="the state renamed again")
        with sqlite3.connect(config.store.path) as db:
            wait_until(lambda: corrections.untold(db) == [], timeout=10, what="all marked told")
    finally:
        stop.set()
        runner.join(30)
        pipeline.stop()
    assert len(sink.corrections) == 2, "the correction undone while the broker was away was never told"
