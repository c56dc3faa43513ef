"""`localiser: detector+motion` in the running pipeline: a clip file in, sightings whose boxes are the detector's."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from birdwatch.config import parse_config
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import render_scene
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Detections
from birdwatch.types import Frame
from tests.fixtures_detector import TrainedHead
from tests.test_pipeline import ListSink


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.timeout(1500)
def test_detector_plus_motion_gives_sightings_with_detector_boxes(trained_head: TrainedHead, tmp_path: Path) -> None:
    n_frames = 40
    clip = render_scene(
        320,
        240,
        n_frames,
        n_birds=2,
        seed=21,
        present_fraction=0.6,
        size_range=(0.18, 0.25),
        perch_fraction=0.5,
        varied=True,
    )
    video = tmp_path / "feeder.avi"
    write_video(video, clip.frames, fps=3)  # slow enough that few frames are dropped on two cores
    config = parse_config(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": str(video), "realtime": True, "motion": {"warmup_frames": 4}}],
                "model": {"file": str(trained_head.classifier_file), "device": "cpu"},
                "localiser": "detector+motion",
                # Regions resized to the head's training size, so birds appear at the scale it learnt.
                "detector": {"file": str(trained_head.result.head), "score_threshold": 0.5, "region_size": 128},
                "events": {"min_score": 0.0, "cooldown_s": 0.0},
                "store": {"path": str(tmp_path / "birdwatch.db")},
                "snapshots": {"dir": str(tmp_path / "snapshots")},
            }
        )
    )
    pipeline = Pipeline(config, sink=ListSink())  # type: ignore[arg-type]
    classified: list[tuple[int, tuple[int, int, int, int]]] = []  # (frame seq, box) of every crop classified
    classify = pipeline.classify

    def recording(frames: list[Frame], found: list[Detections]) -> list[Detections]:
        out = classify(frames, found)
        classified.extend(
            (frame.seq, box) for frame, boxes in zip(frames, out, strict=True) for box in boxes.int_boxes()
        )
        return out

    pipeline.classify = recording  # type: ignore[method-assign]
    pipeline.start()
    try:
        assert pipeline.run(threading.Event()) == 0
    finally:
        pipeline.stop()

    localiser = pipeline.localiser
    assert isinstance(localiser, MotionGatedLocaliser)
    processed = pipeline.counters()["cameras"]["feeder"]["frames_processed"]
    # Gating: the bird-free stretches at both ends of the clip never reach the detector.
    assert 0 < localiser.frames_detected < processed
    assert classified, "nothing classified"
    matched = []
    for seq, box in classified:
        truth = clip.boxes[seq - 1]  # the reader numbers frames from 1
        matched.append(max((iou(box, t) for t in truth), default=0.0))
    # Detector boxes are tight around the bird; motion regions are padded squares (IoU well below 0.5).
    assert np.mean([m >= 0.5 for m in matched]) >= 0.6, matched
    assert any(abs((b[2] - b[0]) - (b[3] - b[1])) > 4 for _, b in classified), "only square boxes"
