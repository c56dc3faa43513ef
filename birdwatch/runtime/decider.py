"""The decide stage: tracks and visits, snapshots, the outbox and each camera's state, in one thread.

Everything here runs on the decide thread (before it starts and after it ends, on the pipeline's),
so events of a camera reach the outbox in the order they happened: a visit's `end` before the
`new` of the next, and the state published after each is the latest. Nothing here takes a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable

from birdwatch.config import Config
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.visits import Told
from birdwatch.decide.visits import Visits
from birdwatch.deliver.mqtt import EventSink
from birdwatch.deliver.store import EventStore
from birdwatch.deliver.store import Outbox
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0  # event history and snapshot retention


class Decider:
    def __init__(
        self,
        config: Config,
        visits: Visits,
        store: EventStore,
        outbox: Outbox,
        sink: EventSink,
        snapshots: SnapshotWriter | None,
    ) -> None:
        self.config = config
        self.visits = visits
        self.store = store
        self.outbox = outbox
        self.sink = sink
        self.snapshots = snapshots
        self.cameras = [cam.name for cam in config.cameras]
        self._day = local_day(time.time())
        self._last_prune = time.monotonic()

    def begin(self) -> None:
        """ "Last species" and "visits today" carry over a restart (from the history); old history goes."""
        for name in self.cameras:
            self.visits.seed(name, self.store.last_event(name), self._day, self.store.visits_on(name, self._day))
        self.store.prune(self.config.store.retention_days)
        self._publish_states(self.cameras)

    def decide(self, frames: list[Frame], found: list[Detections]) -> list[VisitEvent]:
        """Each frame's classified boxes, in the order the frames were read -> the events told."""
        told: list[Told] = []
        for frame, boxes in zip(frames, found, strict=True):
            told += self.visits.observe(frame, boxes)[1]
        return self._deliver(told)

    def tick(self, now: float | None = None) -> list[VisitEvent]:
        """Time passing: visits of birds that left end, heartbeats, midnight, retention, and what the
        publisher could not take before (its queue was full)."""
        events = self._deliver(self.visits.tick(now))
        day = local_day(time.time())
        if day != self._day:  # "visits today" falls back to 0 at midnight
            self._day = day
            self._publish_states(self.cameras)
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.store.prune(self.config.store.retention_days)
            if self.snapshots is not None:
                self.snapshots.prune_if_due()
        self.outbox.pump()
        return events

    def close(self) -> list[VisitEvent]:
        """birdwatch is stopping: the visits of birds still there end now."""
        return self._deliver(self.visits.close())

    def _deliver(self, told: list[Told]) -> list[VisitEvent]:
        """Snapshots first (the event names their files), then each event into the outbox (SQLite, then
        MQTT), then the states of the cameras concerned."""
        events = [self._with_snapshot(t) for t in told]
        for event in events:
            log.info(
                "%s on %s: %s (%.2f) visit %s, %d frame(s)",
                event.kind,
                event.camera,
                event.species,
                event.score,
                event.visit_id[:8],
                event.frames,
            )
            self.outbox.submit(event)
        self._publish_states(dict.fromkeys(e.camera for e in events))
        return events

    def _with_snapshot(self, told: Told) -> VisitEvent:
        if told.picture is None or self.snapshots is None:
            return told.event
        snap = self.snapshots.save(told.event, told.picture)
        if snap is None:
            return told.event
        frame_path = str(snap.frame_path) if snap.frame_path else None
        return dataclasses.replace(told.event, snapshot=str(snap.crop_path), snapshot_frame=frame_path)

    def _publish_states(self, cameras: Iterable[str]) -> None:
        for camera in cameras:
            self.sink.publish_state(self.visits.state(camera))
