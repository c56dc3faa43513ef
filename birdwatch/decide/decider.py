"""The decide stage: tracks and visits, snapshots, the outbox and each camera's state, in one thread.

Everything here runs on the decide thread (before it starts and after it ends, on the pipeline's),
so events of a camera reach the outbox in the order they happened: a visit's `end` before the
`new` of the next, and the state published after each is the latest. Nothing here takes a lock.

An event is told once (the visits have moved on), so one that SQLite refuses (a full disk, a lock
held too long) is kept here, in order, and written before any later one at the next tick; the
visits never wait for the disk. Each camera's state is published whenever `present` changes, not
only with events: a visit kept quiet by the cooldown is a bird at the feeder too.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable

from birdwatch.config import Config
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.visits import Told
from birdwatch.decide.visits import Visits
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.outbox import Outbox
from birdwatch.deliver.sink import EventSink
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0  # event history and snapshot retention
MAX_UNSAVED = 10_000  # events held while SQLite refuses them (a few MB); beyond, the oldest are lost, counted


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
        self._unsaved: deque[VisitEvent] = deque()  # told, not yet in SQLite: written first, in order
        self._present: dict[str, bool] = {}  # camera -> `present` as last published
        self.save_failures = 0  # writes SQLite refused (each retry counts)
        self._failing = False  # said so in the log already
        self.lost = 0  # events given up: beyond MAX_UNSAVED, or still unsaved at stop

    @property
    def unsaved(self) -> int:
        """Events told but not in the outbox yet (SQLite refused them; retried every tick)."""
        return len(self._unsaved)

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
        return self._deliver(told, dict.fromkeys(frame.camera for frame in frames))

    def tick(self, now: float | None = None) -> list[VisitEvent]:
        """Time passing: visits of birds that left end, heartbeats, midnight, retention, and what the
        publisher could not take before (its queue was full)."""
        self._save()  # what SQLite refused before goes first
        events = self._deliver(self.visits.tick(now), self._cameras())
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
        events = self._deliver(self.visits.close(), self._cameras())
        if self._unsaved:
            self.lost += len(self._unsaved)
            log.error("%d event(s) could not be written to %s and are lost", len(self._unsaved), self.store.path)
            self._unsaved.clear()
        return events

    def _cameras(self) -> list[str]:
        return list(dict.fromkeys([*self.cameras, *self._present]))

    def _deliver(self, told: list[Told], cameras: Iterable[str]) -> list[VisitEvent]:
        """Snapshots first (the event names their files), then each event into the outbox (SQLite, then
        MQTT), then the states of the cameras with events or whose `present` changed."""
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
        self._hold(events)
        self._save()
        changed = [c for c in cameras if self.visits.present(c) != self._present.get(c)]
        self._publish_states(dict.fromkeys([*(e.camera for e in events), *changed]))
        return events

    def _hold(self, events: list[VisitEvent]) -> None:
        self._unsaved.extend(events)
        extra = len(self._unsaved) - MAX_UNSAVED
        if extra > 0:
            for _ in range(extra):
                self._unsaved.popleft()
            self.lost += extra
            log.error("%d event(s) lost: SQLite has refused events for too long (%d held)", extra, MAX_UNSAVED)

    def _save(self) -> None:
        """Write the held events into the outbox, oldest first, until one is refused; then hand them on."""
        saved = 0
        while self._unsaved:
            event = self._unsaved[0]
            try:
                self.store.add(event)
            except sqlite3.IntegrityError:  # its id is stored already: the write went through after all
                log.warning("event %s was stored already", event.id)
            except Exception as exc:  # a full disk, a lock held too long: kept, and tried again next tick
                self.save_failures += 1
                if not self._failing:
                    self._failing = True
                    log.error(
                        "cannot write events to %s (%s); %d held in memory, retried every tick",
                        self.store.path,
                        exc,
                        len(self._unsaved),
                    )
                break
            self._unsaved.popleft()
            saved += 1
        if self._failing and not self._unsaved:
            self._failing = False
            log.info("the held events are written to %s", self.store.path)
        if saved:
            try:
                self.outbox.pump()
            except Exception as exc:  # stored: the next tick hands them on
                log.warning("handing events to the publisher failed: %s", exc)

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
            state = self.visits.state(camera)
            self.sink.publish_state(state)
            self._present[camera] = state.present
