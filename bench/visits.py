"""Visits: how well tracks match birds on synthetic clips, and what tracks, the outbox and snapshots cost.

1. Motion regions of rendered clips (320x240, frames stamped at 10 fps, three presence windows)
   through the tracker with the default min_hits and a 1 s timeout: confirmed tracks minus birds,
   per seed, for flying birds, perching birds, and two birds per window.
2. Cost per frame of tracks + visits (two crops), per event of the SQLite outbox write and
   acknowledgement (synchronous=FULL, in a temp dir on this disk), and per snapshot (256 px crop and
   a 1280x720 annotated frame).

    PYTHONPATH=. python bench/visits.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from birdwatch.config import EventsConfig
from birdwatch.config import MotionConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.tracking import Tracker
from birdwatch.decide.visits import Visits
from birdwatch.deliver.history import EventStore
from birdwatch.locate.motion import MotionDetector
from birdwatch.tools.synthetic import Scene
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore

WINDOWS = [(10, 40), (70, 100), (130, 160)]


def confirmed_tracks(seed: int, n_birds: int, perch: float) -> int:
    scene = Scene(320, 240, WINDOWS[-1][1] + 20, n_birds, seed, presence=WINDOWS, perch_fraction=perch)
    motion = MotionDetector(MotionConfig(warmup_frames=5))
    tracker = Tracker(TrackingConfig(timeout_s=1.0))
    n = 0
    for t in range(len(scene)):
        n += len(tracker.update(motion(scene.render(t)[0]).boxes, t / 10).confirmed)
    return n


def accuracy(seeds: int) -> None:
    for label, birds, perch in [
        ("1 bird per window, flying", 1, 0.0),
        ("1 bird per window, perching", 1, 0.5),
        ("2 birds per window, flying", 2, 0.0),
    ]:
        truth = len(WINDOWS) * birds
        off = Counter(confirmed_tracks(seed, birds, perch) - truth for seed in range(seeds))
        spread = dict(sorted(off.items()))
        print(f"{label}: {truth} birds per clip; confirmed tracks minus birds over {seeds} seeds: {spread}")


def costs() -> None:
    image = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
    visits = Visits(TrackingConfig(), EventsConfig(min_score=0.0, cooldown_s=0), "m")
    top = (SpeciesScore("A", 0.6), SpeciesScore("B", 0.3), SpeciesScore("C", 0.1))
    n, events = 2000, []
    started = time.perf_counter()
    for i in range(n):
        frame = Frame("cam", i, 1e9 + i / 10, image, i / 10)
        x = 100 + 3 * (i % 50)
        found = Detections(np.array([(x, 200, x + 200, 400), (800, 100, 1000, 300)], np.float32), np.ones(2))
        events += [told.event for told in visits.observe(frame, found.with_species([top, top]))[1]]
    print(f"tracks + visits: {1e6 * (time.perf_counter() - started) / n:.0f} us per frame with 2 crops")
    with tempfile.TemporaryDirectory() as tmp:
        store = EventStore(Path(tmp) / "bw.db")
        k = 200
        started = time.perf_counter()
        for i in range(k):
            store.add(dataclasses.replace(events[0], id=f"e{i}"))
        add_ms = 1000 * (time.perf_counter() - started) / k
        started = time.perf_counter()
        for i in range(k):
            store.mark_sent(f"e{i}")
        sent_ms = 1000 * (time.perf_counter() - started) / k
        print(f"outbox: {add_ms:.2f} ms per event written, {sent_ms:.2f} ms per acknowledgement (synchronous=FULL)")
        writer = SnapshotWriter(SnapshotsConfig(dir=str(Path(tmp) / "snapshots")))
        started = time.perf_counter()
        for _ in range(50):
            writer.save(dataclasses.replace(events[0], box=(400, 200, 656, 456)), image)
        print(f"snapshot: {1000 * (time.perf_counter() - started) / 50:.1f} ms per 256 px crop + 1280x720 frame")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    accuracy(args.seeds)
    costs()


if __name__ == "__main__":
    main()
