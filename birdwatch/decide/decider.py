"""The decide stage: tracks and visits, snapshots, the outbox and each camera's state, in one thread.

Everything here runs on the decide thread (before it starts and after it ends, on the pipeline's),
so events of a camera reach the outbox in the order they happened: a visit's `end` before the
`new` of the next, and the state published after each is the latest. Nothing here takes a lock.

An event is told once (the visits have moved on): the outbox delivers it even when the history refuses
it, and keeps it in memory until the history takes it (deliver/outbox.py); the visits never wait for
the disk, and a history that cannot be read only starts them without last night's counts.

Each camera's state is published whenever `present` changes, not
only with events: a visit kept quiet by the cooldown is a bird at the feeder too.

Corrections made on the page (deliver/corrections.py) are told from here too, each tick: on their MQTT topic,
and in the camera's state when they rename its latest visit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from collections.abc import Iterable

from birdwatch.config import Config
from birdwatch.decide.memory import FeederMemory
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.visit import Told
from birdwatch.decide.visits import Visits
from birdwatch.deliver import corrections
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import StoreError
from birdwatch.deliver.outbox import Outbox
from birdwatch.deliver.sink import EventSink
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
        memory: FeederMemory | None = None,
    ) -> None:
        self.config = config
        self.memory = memory
        self.visits = visits
        self.store = store
        self.outbox = outbox
        self.sink = sink
        self.snapshots = snapshots
        self.cameras = [cam.name for cam in config.cameras]
        self._day = local_day(time.time())
        self._last_prune = time.monotonic()
        self._present: dict[str, bool] = {}  # camera -> `present` as last published
        self._history_problem: str | None = None  # as last published
        self._telling: set[tuple[int, bool]] = set()  # (correction, undo) handed to the sink, not yet marked told
        self._unmarked: dict[tuple[int, bool], float] = {}  # acknowledged (when), not yet marked told in the history
        self._renamed: dict[str, tuple[str, str]] = {}  # camera -> (its latest visit, the name a person gave it)
        self._novel: dict[str, bool | None] = {}  # visit -> its `novel`, while it is open

    def begin(self) -> None:
        """ "Last species" and "visits today" carry over a restart (from the history); old history goes."""
        for name in self.cameras:
            try:
                last, today = self.store.last_event(name), self.store.visits_on(name, self._day)
            except StoreError:  # the history said why: the camera starts afresh
                last, today = None, 0
            self.visits.seed(name, last, self._day, today)
            if last is not None:
                with contextlib.suppress(StoreError):
                    self._rename(
                        name,
                        last.visit_id,
                        self.store.run(functools.partial(corrections.name_of, visit_id=last.visit_id)),
                    )
        self._prune()
        if self.memory is not None:
            self.memory.refresh()
        self.sink.publish_history(self.store.problem)
        self._history_problem = self.store.problem
        self._publish_states(self.cameras)

    def decide(self, frames: list[Frame], found: list[Detections]) -> list[VisitEvent]:
        """Each frame's classified boxes, in the order the frames were read -> the events told."""
        told: list[Told] = []
        for frame, boxes in zip(frames, found, strict=True):
            told += self.visits.observe(frame, boxes)[1]
        return self._deliver(told, dict.fromkeys(frame.camera for frame in frames))

    def recall(self, frames: list[Frame], found: list[Detections]) -> list[Detections]:
        """Each frame's classified boxes with their top-k re-ranked by its camera's feeder memory."""
        if self.memory is None:
            return found
        return [self.memory.rerank(frame.camera, boxes) for frame, boxes in zip(frames, found, strict=True)]

    def tick(self, now: float | None = None) -> list[VisitEvent]:
        """Time passing: visits of birds that left end, heartbeats, midnight, retention, and what the
        publisher could not take before (its queue was full)."""
        events = self._deliver(self.visits.tick(now), self._cameras())
        day = local_day(time.time())
        if day != self._day:  # "visits today" falls back to 0 at midnight
            self._day = day
            self._publish_states(self.cameras)
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self._prune()
            if self.snapshots is not None:
                self.snapshots.prune_if_due()
        self.store.check()  # a history that refused writes, opened again when due
        self._tell_corrections()
        self.outbox.pump()  # what the publisher or the history refused before
        if self.memory is not None:
            self.memory.refresh()  # what the page's corrections taught it
        if self.store.problem != self._history_problem:
            self._history_problem = self.store.problem
            self.sink.publish_history(self.store.problem)
        return events

    def close(self) -> list[VisitEvent]:
        """birdwatch is stopping: the visits of birds still there end now."""
        return self._deliver(self.visits.close(), self._cameras())

    def _prune(self) -> None:
        with contextlib.suppress(StoreError):  # the history said why; the next prune is in an hour
            self.store.prune(self.config.store.retention_days)

    def _cameras(self) -> list[str]:
        return list(dict.fromkeys([*self.cameras, *self._present]))

    def _deliver(self, told: list[Told], cameras: Iterable[str]) -> list[VisitEvent]:
        """Snapshots first (the event names their files), then each event into the outbox (SQLite, then
        MQTT), then the states of the cameras with events or whose `present` changed."""
        events = [self._with_novelty(self._with_snapshot(t)) for t in told]
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
        for event in events:
            try:
                self.outbox.submit(event)
            except Exception as exc:  # delivered or held: the next tick hands it on
                log.warning("handing event %s to the publisher failed: %s", event.id[:8], exc)
        changed = [c for c in cameras if self.visits.present(c) != self._present.get(c)]
        self._publish_states(dict.fromkeys([*(e.camera for e in events), *changed]))
        return events

    def _with_snapshot(self, told: Told) -> VisitEvent:
        if told.picture is None or self.snapshots is None:
            return told.event
        snap = self.snapshots.save(told.event, told.picture)
        if snap is None:
            return told.event
        frame_path = str(snap.frame_path) if snap.frame_path else None
        return dataclasses.replace(told.event, snapshot=str(snap.crop_path), snapshot_frame=frame_path)

    def _with_novelty(self, event: VisitEvent) -> VisitEvent:
        """Judged on the visit's best crop, each time it brings a better one; its other events repeat the verdict."""
        if self.memory is None:
            return event
        if event.embedding is not None:
            self._novel[event.visit_id] = self.memory.novel(event.camera, event.embedding, event.score)
        novel = self._novel.pop(event.visit_id, None) if event.kind == "end" else self._novel.get(event.visit_id)
        return dataclasses.replace(event, novel=novel)

    def _tell_corrections(self) -> None:
        """What the page corrected since the last tick: on MQTT (marked told once the broker has it), and in the
        state of the camera whose latest visit it renames."""
        if not self.sink.online:
            return
        try:
            self._mark_unmarked()
            untold = self.store.run(corrections.untold)
            for correction, undo in untold:
                if not self._tell(correction, undo):
                    return  # the sink is full or offline: the rest wait, in order
        except StoreError:
            return  # the history said why; the next tick tries again

    def _tell(self, correction: corrections.Correction, undo: bool) -> bool:
        key = (correction.id, undo)
        if key in self._telling:
            return True
        if not undo and correction.undone_ts is not None:  # undone before anyone heard of it: nothing to tell
            self.store.run(functools.partial(corrections.skip, correction_id=correction.id), write=True)
            return True
        self._telling.add(key)  # before: a sink may acknowledge within the call
        if not self.sink.publish_correction(correction.camera, correction.message(undo), self._told(key)):
            self._telling.discard(key)
            return False
        # The camera's state shows the visit's standing name, whatever order the messages were made in.
        standing = self.store.run(functools.partial(corrections.name_of, visit_id=correction.visit_id))
        name = None if standing in (None, correction.model_species) else standing
        if self._rename(correction.camera, correction.visit_id, name):
            self._publish_states([correction.camera])
        return True

    def _told(self, key: tuple[int, bool]) -> Callable[[], None]:
        def told() -> None:  # the sink's delivery thread (the log sink: the decide thread, within the call)
            self._unmarked[key] = time.time()
            with contextlib.suppress(StoreError):  # kept in _unmarked: marked by a later tick
                self._mark(key)

        return told

    def _mark_unmarked(self) -> None:
        for key in list(self._unmarked):
            self._mark(key)

    def _mark(self, key: tuple[int, bool]) -> None:
        when = self._unmarked.get(key)
        if when is None:
            return
        self.store.run(lambda db: corrections.mark_told(db, key[0], key[1], when), write=True)
        self._unmarked.pop(key, None)
        self._telling.discard(key)

    def _rename(self, camera: str, visit_id: str, name: str | None) -> bool:
        """A person's name for a visit, shown in its camera's state while it is the latest; True if it is."""
        if self.visits.state(camera).visit_id != visit_id:
            return False
        if name is None:
            self._renamed.pop(camera, None)
        else:
            self._renamed[camera] = (visit_id, name)
        return True

    def _publish_states(self, cameras: Iterable[str]) -> None:
        for camera in cameras:
            state = self.visits.state(camera)
            renamed = self._renamed.get(camera)
            if renamed is not None and renamed[0] == state.visit_id:
                name = renamed[1]
                state = dataclasses.replace(state, species=None if name == corrections.NOT_A_BIRD else name)
            self.sink.publish_state(state)
            self._present[camera] = state.present
