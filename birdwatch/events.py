"""Event rules: which sightings become events. A bird visit is a few events, not one per frame."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable

from birdwatch.config import EventsConfig
from birdwatch.types import Event
from birdwatch.types import Sighting


class Throttle:
    """At most one event per (camera, species) per interval, and none below the minimum score."""

    def __init__(self, cfg: EventsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self.suppressed = 0

    def admit(self, sightings: Iterable[Sighting], model: str) -> list[Event]:
        events = []
        # Best first, so the event for a species carries the most confident crop of this batch.
        for s in sorted(sightings, key=lambda s: s.species.score, reverse=True):
            if s.species.score < self.cfg.min_score:
                continue
            key = (s.camera, s.species.name)
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self.cfg.throttle_s:
                self.suppressed += 1
                continue
            self._last[key] = now
            events.append(
                Event(
                    kind="sighting",
                    camera=s.camera,
                    ts=s.ts,
                    species=s.species.name,
                    score=s.species.score,
                    top_k=s.top_k,
                    box=s.box,
                    frame_seq=s.seq,
                    model=model,
                )
            )
        return events
