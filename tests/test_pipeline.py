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
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.types import CameraState
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Sighting
from birdwatch.types import VisitEvent

SIZES = {"small": (320, 240), "wide": (640, 360), "mid": (480, 272)}


class ListSink:
    """Keeps what the pipeline publishes, in this process; acknowledges at once."""

    online = True

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.states: list[CameraState] = []

    def describe(self, cameras: list[str], model: str) -> None: ...

    def start(self) -> None: ...

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        self.events.append(json.loads(payload))
        on_sent()
        return True

    def publish_state(self, state: CameraState) -> None:
        self.states.append(state)

    def publish_stats(self, payload: str) -> None: ...

    def stop(self) -> None: ...


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
    snap = pipeline.snapshot()

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

    classifier.net.forward = broken  # type: ignore[method-assign]
    pipeline = Pipeline(config_for(clips, danube_weights), classifier=classifier, sink=ListSink())
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
    snap = pipeline.snapshot()
    assert snap["cameras"]["once"]["state"] == "finished"
    assert snap["stages"]["classify"]["queue_depth"] == 0 and snap["stages"]["detect"]["queue_depth"] == 0
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
    rng = random.Random(0)

    def classify_slowly(frames: list[Frame], detections: list[Detections]) -> list[Sighting]:
        with lock:
            running[0] += 1
            most_at_once[0] = max(most_at_once[0], running[0])
            delay = rng.uniform(0, 0.2)  # batches finish out of order
        try:
            time.sleep(delay)
            return classify(frames, detections)
        finally:
            with lock:
                running[0] -= 1

    def record(sightings: list[Sighting], frames: list[Frame]) -> list[VisitEvent]:
        for frame in frames:
            decided.setdefault(frame.camera, []).append(frame.seq)
        return decide(sightings, frames)

    pipeline.classify = classify_slowly  # type: ignore[method-assign]
    pipeline.decide = record  # type: ignore[method-assign]
    pipeline.start()
    assert pipeline.plan.workers == 2
    assert run_for(pipeline, seconds=8) == 0
    assert most_at_once[0] == 2, "the two workers classified at the same time"
    assert all(len(seqs) > 3 for seqs in decided.values()), decided
    for camera, seqs in decided.items():
        assert seqs == sorted(seqs), f"{camera}: frames decided out of order: {seqs}"
