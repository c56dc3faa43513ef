"""`birdwatch record`: the cameras of a config, motion on each, frames where something moved kept by the
Recorder (capture/recorder.py), without a model. `record.enabled` in the config does the same inside
`birdwatch run`; this is for a first week before any head exists, or for a machine that only records.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from birdwatch.capture.reader import CameraReader
from birdwatch.capture.recorder import Recorder
from birdwatch.config import Config
from birdwatch.locate.motion import MotionDetector
from birdwatch.runtime.batching import Batcher
from birdwatch.types import Frame

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class RecordResult:
    root: Path
    offered: int  # frames read and looked at
    kept: int
    similar: int  # moved, but looked like a frame kept recently
    evicted: int  # removed again to stay within the budget
    frames: int  # in the recording now
    megabytes: float


def record(
    config: Config, *, minutes: float | None = None, stop: threading.Event | None = None, progress: bool = False
) -> RecordResult:
    """Record until `minutes` have passed, `stop` is set, or every source has ended (files)."""
    stop = stop or threading.Event()
    recorder = Recorder.from_config(config.record)
    frames: Batcher[Frame] = Batcher(max_batch=len(config.cameras), max_wait_s=0.0, capacity_per_key=2)
    readers = [CameraReader(cam, frames.inlet(cam.name), config.secrets()) for cam in config.cameras]
    motion = {cam.name: MotionDetector(cam.motion) for cam in config.cameras}
    deadline = time.monotonic() + minutes * 60 if minutes else float("inf")
    bar = tqdm(desc="recording", unit=" kept", disable=not progress)
    logged = time.monotonic()
    for reader in readers:
        reader.start()
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            batch = frames.get_batch(timeout=0.5)
            if not batch and all(r.done for r in readers):
                break
            before = recorder.kept
            recorder.offer_all(batch, [motion[f.camera](f.image) for f in batch])
            if recorder.stopped:
                break
            bar.update(recorder.kept - before)
            if not progress and time.monotonic() - logged >= LOG_EVERY_S:
                logged = time.monotonic()
                log.info(
                    "recording: %d frames kept of %d read, %.0f MB",
                    recorder.kept,
                    recorder.offered,
                    recorder.bytes / 1e6,
                )
    finally:
        bar.close()
        for reader in readers:
            reader.request_stop()
        deadline_join = time.monotonic() + 5.0
        for reader in readers:
            reader.join(deadline_join)
        recorder.close()
    return RecordResult(
        recorder.root,
        recorder.offered,
        recorder.kept,
        recorder.similar,
        recorder.evicted,
        len(recorder.frames),
        recorder.bytes / 1e6,
    )
