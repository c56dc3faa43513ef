"""What travels between the stage threads, and the failure policy each stage applies to its batches.

A classify `Batch` is created the moment its jobs leave the classify queue and goes straight into
the decide queue, so the decide thread meets batches in the order they were formed, whichever
worker finishes first. Its `result` is a future the classifying worker fills in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from dataclasses import field
from typing import TypeVar

import numpy as np

from birdwatch.runtime.stats import StageStats
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Named
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
MAX_CONSECUTIVE_FAILURES = 5  # a stage that fails this often in a row is broken, not unlucky


@dataclass
class ClassifyJob:
    frame: Frame
    found: Detections
    queued: float  # monotonic, when the locate stage handed it on


@dataclass
class Batch:
    """Jobs classified together. The worker fills `result` (classified detections per job) and the
    timings; the decide thread reads them, and fills `decided` for whoever waits on the events."""

    jobs: list[ClassifyJob]
    taken: float = field(default_factory=time.monotonic)
    started: float = 0.0
    finished: float = 0.0
    result: Future[list[Detections]] = field(default_factory=Future)
    decided: Future[list[VisitEvent]] = field(default_factory=Future)

    @property
    def frames(self) -> list[Frame]:
        return [job.frame for job in self.jobs]

    @property
    def crops(self) -> int:
        return sum(len(job.found) for job in self.jobs)

    def run(self, classify: Callable[[list[Frame], list[Detections]], list[Detections]]) -> None:
        """Classify on the calling thread; success or failure goes to the future, never up the stack."""
        self.started = time.monotonic()
        try:
            found = classify(self.frames, [job.found for job in self.jobs])
        except Exception as exc:  # the decide thread logs and counts it, with the frames
            self.finished = time.monotonic()
            self.result.set_exception(exc)
        else:
            self.finished = time.monotonic()
            self.result.set_result(found)


class Guard:
    """One stage's failure policy: a failed batch is logged with its frames and skipped; failing
    MAX_CONSECUTIVE_FAILURES times in a row means the stage is broken, and `fatal` says so (the
    pipeline then exits 1 and systemd restarts it rather than spinning on a broken model).
    Used by one thread only."""

    def __init__(self, stage: str, stats: StageStats) -> None:
        self.stage = stage
        self.stats = stats
        self.consecutive = 0
        self.fatal: str | None = None

    def call(self, frames: list[Frame], work: Callable[[T], R], arg: T) -> R | None:
        try:
            result = work(arg)
        except Exception as exc:  # the boundary of a stage thread: anything else would kill it silently
            self.failed(frames, exc)
            return None
        self.succeeded()
        return result

    def succeeded(self) -> None:
        self.consecutive = 0

    def failed(self, frames: list[Frame], exc: BaseException) -> None:
        self.stats.failures += 1
        self.consecutive += 1
        which = ", ".join(f"{f.camera}#{f.seq}" for f in frames[:8])
        log.error("%s stage failed on frames %s: %s", self.stage, which, exc, exc_info=exc)
        if self.consecutive >= MAX_CONSECUTIVE_FAILURES and self.fatal is None:
            self.fatal = f"the {self.stage} stage failed {self.consecutive} times in a row (last: {exc})"


def spread(named: Named, keep: np.ndarray) -> tuple[list[tuple[SpeciesScore, ...]], np.ndarray]:
    """The classified boxes' species and embeddings back in place among all the boxes; () and zeros for the
    boxes not classified."""
    given = iter(named.species)
    species = [next(given) if bird else () for bird in keep.tolist()]
    embeddings = np.zeros((len(keep), named.embeddings.shape[1]), np.float32)
    if keep.any():
        embeddings[keep] = named.embeddings
    return species, embeddings
