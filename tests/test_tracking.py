"""Tracks on synthetic box sequences: association by IoU with a constant-velocity prediction,
confirmation after min_hits, timeout, and the motion-mask quirks (split blobs, stopped birds)."""

from __future__ import annotations

import numpy as np

from birdwatch.config import MotionConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.tracking import Tracker
from birdwatch.locate.motion import MotionDetector
from birdwatch.tools.synthetic import Scene


def box(x: float, y: float, size: float = 40) -> list[float]:
    return [x, y, x + size, y + size]


def test_two_birds_crossing_keep_their_tracks() -> None:
    tracker = Tracker(TrackingConfig(iou_threshold=0.2, min_hits=3, timeout_s=1.0))
    ids: list[list[int]] = []
    for i in range(12):
        t = i * 0.1
        a = box(10 + 25 * i, 100)  # flies right
        b = box(300 - 25 * i, 125)  # flies left, a little lower: the boxes overlap while they pass
        ids.append(tracker.update(np.array([a, b]), t).assigned)
    assert all(step == ids[0] for step in ids), ids
    assert len(set(ids[0])) == 2


def test_prediction_bridges_dropped_frames() -> None:
    """Four frames lost in a row: the last box no longer overlaps, the predicted one does."""
    tracker = Tracker(TrackingConfig(min_hits=2, timeout_s=2.0))
    first = [tracker.update(np.array([box(15 * i, 50)]), 0.1 * i).assigned[0] for i in range(4)]
    later = tracker.update(np.array([box(15 * 8, 50)]), 0.8).assigned[0]
    assert len(set(first)) == 1 and later == first[0]


def test_confirmed_after_min_hits_and_not_before() -> None:
    tracker = Tracker(TrackingConfig(min_hits=3, timeout_s=1.0))
    confirmed = []
    for i in range(4):
        step = tracker.update(np.array([box(100 + 2 * i, 100)]), 0.1 * i)
        confirmed.append([t.hits for t in step.confirmed])
    assert confirmed == [[], [], [3], []]


def test_track_ends_after_timeout_and_not_before() -> None:
    tracker = Tracker(TrackingConfig(min_hits=1, timeout_s=2.0))
    tracker.update(np.array([box(0, 0)]), 10.0)
    assert tracker.sweep(12.0) == []
    (gone,) = tracker.sweep(12.01)
    assert gone.last_seen == 10.0 and tracker.tracks == {}


def test_a_new_box_far_away_is_a_new_track() -> None:
    tracker = Tracker(TrackingConfig(min_hits=1))
    (a,) = tracker.update(np.array([box(0, 0)]), 0.0).assigned
    a2, b = tracker.update(np.array([box(2, 0), box(200, 150)]), 0.1).assigned
    assert a2 == a and b != a


def test_a_split_blob_stays_one_bird() -> None:
    """Motion masks split at a wing or tail: a second box inside the bird's region is not a second bird."""
    tracker = Tracker(TrackingConfig(min_hits=2))
    for i in range(3):
        tracker.update(np.array([[100 + 5 * i, 100, 180 + 5 * i, 180]]), 0.1 * i)
    body, tail = [125, 100, 185, 180], [112, 150, 128, 170]
    step = tracker.update(np.array([body, tail]), 0.3)
    assert len(set(step.assigned)) == 1 and len(tracker.tracks) == 1
    step = tracker.update(np.array([body, tail]), 0.4)  # it sits there; still one
    assert len(set(step.assigned)) == 1 and len(tracker.tracks) == 1


def test_a_bird_that_stops_is_found_where_it_sat() -> None:
    """A landing bird drops out of the motion mask; when it moves again it is where it stopped, not
    where its old velocity would have carried it."""
    tracker = Tracker(TrackingConfig(min_hits=2, timeout_s=3.0))
    ids = {tracker.update(np.array([box(20 * i, 80)]), 0.1 * i).assigned[0] for i in range(6)}
    again = tracker.update(np.array([box(100, 80)]), 1.5).assigned[0]  # 1 s without a box, same place
    assert ids == {again}


def test_tracks_are_capped() -> None:
    tracker = Tracker(TrackingConfig(min_hits=5, max_tracks=3))
    step = tracker.update(np.array([box(60 * i, 0) for i in range(5)]), 0.0)
    assert len(tracker.tracks) == 3 and len(step.ended) == 2


def test_one_track_per_bird_on_synthetic_motion() -> None:
    """Motion regions of a rendered clip: each bird that comes and goes is one confirmed track."""
    presence = [(10, 40), (70, 100), (130, 160)]
    for seed in range(6):
        scene = Scene(320, 240, 180, n_birds=1, seed=seed, presence=presence, perch_fraction=0.5)
        motion = MotionDetector(MotionConfig(warmup_frames=5))
        tracker = Tracker(TrackingConfig(min_hits=3, timeout_s=1.0))
        confirmed = 0
        for t in range(len(scene)):
            image, _ = scene.render(t)
            confirmed += len(tracker.update(motion(image).boxes, t / 10).confirmed)
        assert confirmed == len(presence), f"seed {seed}"
