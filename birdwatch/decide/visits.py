"""Visits: a confirmed track is a bird's visit; its species is voted over every crop, and it speaks in a few events
(`new`, `update`, `end`) instead of one per frame.

The vote adds each frame's top-k probabilities per species; the winner is the species with the largest sum, and its
score is that sum over the visit's frames (the mean probability, counting a frame that did not have it in its top-k
as 0). So three confident crops outvote five unsure ones, and one odd frame cannot rename a visit. Two crops of one
frame on one track (a blob split at a wing) are one look at the bird: each species counts its better one, so a
score never exceeds 1.

A visit is *told* (`new`) once it is confirmed and its winner is allowed and scores at least `events.min_score`,
unless a visit of the same species on the same camera ended less than `cooldown_s` ago: then it stays quiet for its
whole life (it still shows as "bird present"). Once told, a visit is named by the best allowed species of its vote;
it sends `update` when that species changes or its score moves by `update_min_score_change` (at most every
`update_min_interval_s`), or every `heartbeat_s`, and `end` when its track times out.

A second track that would tell the species of a visit still open on the same camera is the same bird, found again
after a hop faster than the tracker follows: it joins that visit (one `new`, one count in "visits today"), which
ends when its last track does.

A track that the localiser calls something other than a bird (a teacher's cat) in at least half of the frames it
judged, or whose bird score is below `events.min_bird_score`, is no visit (until more frames make it a bird),
whatever the classifier says. The bird score, the localiser's mean over the visit's frames (a frame it called
something else counts 0), travels in every event (`bird_score`; none for motion regions, which cannot tell, and
which the bar therefore never holds back).

A visit keeps one whole frame: the one its picture comes from (the best crop of the species it is named by). Frames
are megabytes; a visit of a bird on a jittering feeder sees hundreds.

Time, for ending visits between frames (`tick`), is each camera's own: the newest frame decided, moved on by the
clock since. Frames wait in the classify queue before they come here; judged against the clock, a visit would end
while its frames are still on their way."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from birdwatch.config import EventsConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.species import SpeciesFilter
from birdwatch.decide.tracking import Track
from birdwatch.decide.tracking import Tracker
from birdwatch.decide.visit import Told
from birdwatch.decide.visit import Visit
from birdwatch.types import Box
from birdwatch.types import CameraState
from birdwatch.types import Detections
from birdwatch.types import Embedding
from birdwatch.types import EndReason
from birdwatch.types import EventKind
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

_MAX_LAG_S = 120.0  # beyond this the classify queue is not behind but stuck: visits end by the clock again


class Visits:
    """Tracks and visits of every camera; the only state behind visit events and camera states.
    Not thread-safe by design: the decide thread alone calls it."""

    def __init__(
        self,
        tracking: TrackingConfig,
        cfg: EventsConfig,
        model: str,
        top_k: int = 3,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        embedder: str | None = None,
    ) -> None:
        """`embedder` names the weights behind the embeddings (`Embedding.model`); the model's name by default."""
        self.tracking = tracking
        self.cfg = cfg
        self.model = model
        self.embedder = embedder or model
        self.top_k = top_k
        self.allowed = SpeciesFilter(cfg.allow, cfg.block)
        self._wall = wall
        self._mono = mono
        self._trackers: dict[str, Tracker] = {}
        self._visits: dict[str, dict[int, Visit]] = defaultdict(dict)  # camera -> track id -> visit
        self._cooldown: dict[tuple[str, str], float] = {}  # (camera, species) -> mono end of the last told visit
        self._last: dict[str, VisitEvent] = {}  # camera -> latest told event
        self._today: dict[str, tuple[str, int]] = {}  # camera -> (day, told visits that started that day)
        self._lag: dict[str, float] = {}  # camera -> how long its newest frame took to get here (mono s)
        self.quiet = 0  # visits kept quiet by the cooldown
        self.unnamed = 0  # confirmed visits that ended without a species good enough to tell
        self.not_birds = 0  # confirmed tracks that ended untold: the localiser did not call them a bird
        self.merged = 0  # tracks that joined a visit of the same species already open (one bird)

    # -- input --

    def observe(self, frame: Frame, found: Detections) -> tuple[Detections, list[Told]]:
        """One frame and its classified boxes -> the boxes with their track ids, and events, ends first."""
        if found.species is None:
            raise ValueError("Visits.observe: the detections are not classified yet")
        camera = frame.camera
        self._lag[camera] = min(max(0.0, self._mono() - frame.mono), _MAX_LAG_S)
        tracker = self._trackers.get(camera)
        if tracker is None:
            tracker = self._trackers[camera] = Tracker(self.tracking)
        step = tracker.update(found.boxes, frame.mono)
        tracked = found.with_tracks(step.assigned)
        told: list[Told] = []
        for track in step.ended:
            told += self._end(camera, track, frame.mono, frame.ts, EndReason.TIMEOUT)
        visits = self._visits[camera]
        touched: dict[int, Visit] = {}  # by id(): merged tracks share one visit
        birds = [None] * len(found) if found.birds is None else found.birds.tolist()
        embeddings = [None] * len(found) if found.embeddings is None else list(found.embeddings)
        rows = zip(found.int_boxes(), found.species, step.assigned, birds, embeddings, strict=True)
        for box, top_k, track_id, bird, embedding in rows:
            visit = visits.get(track_id)
            if visit is None:
                visit = Visit(uuid.uuid4().hex, camera, frame.ts, frame.ts, frame.mono, frame.mono, tracks={track_id})
                visits[track_id] = visit
            visit.add(frame, top_k, bird)
            lead = self._lead(visit)
            if lead is not None:
                visit.keep_picture(lead, frame, box, top_k, embedding)
            touched[id(visit)] = visit
        for track in step.confirmed:
            if track.id in visits:
                visits[track.id].confirmed = True
        for visit in touched.values():
            if visit.confirmed:
                event = self._decide(visit, frame.mono, frame.ts)
                if event is not None:
                    told.append(event)
        return tracked, told

    def tick(self, now: float | None = None, wall: float | None = None) -> list[Told]:
        """Time passes without frames (a quiet or dead camera): end timed-out visits, send heartbeats.
        Each camera's time is the clock less the lag of its newest frame: its later frames may still be
        waiting to be classified."""
        now = self._mono() if now is None else now
        wall = self._wall() if wall is None else wall
        told: list[Told] = []
        for camera, tracker in self._trackers.items():
            seen = now - self._lag.get(camera, 0.0)
            for track in tracker.sweep(seen):
                told += self._end(camera, track, seen, wall, EndReason.TIMEOUT)
            for visit in self._open(camera):
                if visit.told and self._heartbeat_due(visit, seen):
                    told.append(self._event(EventKind.UPDATE, visit, seen, wall))
        return told

    def close(self) -> list[Told]:
        """birdwatch is stopping: every told visit ends now."""
        now, wall = self._mono(), self._wall()
        told: list[Told] = []
        for camera, tracker in self._trackers.items():
            for track in list(tracker.tracks.values()):
                told += self._end(camera, track, now, wall, EndReason.SHUTDOWN)
            tracker.tracks.clear()
        return told

    def frames_held(self) -> tuple[int, int]:
        """(whole frames, their bytes) the open visits keep for their pictures. Safe to call from
        another thread (metrics): it reads copies of the dicts the decide thread changes."""
        images: dict[int, np.ndarray] = {}
        for visits in list(self._visits.values()):
            for visit in list(visits.values()):
                picture = visit.picture
                if picture is not None:
                    images[id(picture.image)] = picture.image
        return len(images), sum(image.nbytes for image in images.values())

    # -- camera state (Home Assistant) --

    def seed(self, camera: str, last: VisitEvent | None, day: str, visits_today: int) -> None:
        """Carry the last species and today's count over a restart (from the event history)."""
        if last is not None:
            self._last[camera] = last
        self._today[camera] = (day, visits_today)

    def state(self, camera: str, wall: float | None = None) -> CameraState:
        wall = self._wall() if wall is None else wall
        day = local_day(wall)
        counted_day, count = self._today.get(camera, (day, 0))
        last = self._last.get(camera)
        return CameraState(
            camera=camera,
            present=self.present(camera),
            species=last.species if last else None,
            score=last.score if last else None,
            visits_today=count if counted_day == day else 0,
            day=day,
            visit_id=last.visit_id if last else None,
            last_seen=last.last_seen if last else None,
        )

    def present(self, camera: str) -> bool:
        """A bird is at this camera: a visit is told, or kept quiet by the cooldown."""
        return any(v.told or v.quiet for v in self._visits.get(camera, {}).values())

    def _open(self, camera: str) -> list[Visit]:
        """The camera's open visits, each once (merged tracks share one)."""
        return list({id(v): v for v in self._visits.get(camera, {}).values()}.values())

    # -- rules --

    def _lead(self, visit: Visit) -> str | None:
        """The species the visit is named by: its best allowed one."""
        return next((name for name, _ in visit.ranked() if self.allowed(name)), None)

    def _report(self, visit: Visit) -> tuple[SpeciesScore, ...]:
        """The visit's voted top-k, led by its best allowed species."""
        ranked = [SpeciesScore(name, score) for name, score in visit.ranked()]
        allowed = [s for s in ranked if self.allowed(s.name)]
        if not allowed:
            return ()
        lead = allowed[0]
        return (lead, *[s for s in ranked if s.name != lead.name][: self.top_k - 1])

    def _decide(self, visit: Visit, now: float, wall: float) -> Told | None:
        if visit.quiet:
            return None
        if not visit.told:
            if visit.not_a_bird(self.cfg.min_bird_score):
                return None
            ranked = visit.ranked()
            if not ranked:
                return None
            winner, score = ranked[0]
            if not self.allowed(winner) or score < self.cfg.min_score:
                return None
            same = self._told_open(visit, winner)
            if same is not None:
                self._merge(visit, same)
                return None
            ended = self._cooldown.get((visit.camera, winner))
            if ended is not None and now - ended < self.cfg.cooldown_s:
                visit.quiet = True
                self.quiet += 1
                log.debug("visit %s on %s: %s again within the cooldown; quiet", visit.id, visit.camera, winner)
                return None
            visit.told = True
            day, count = self._today.get(visit.camera, (local_day(visit.first_seen), 0))
            first_day = local_day(visit.first_seen)
            self._today[visit.camera] = (first_day, count + 1 if day == first_day else 1)
            return self._event(EventKind.NEW, visit, now, wall)
        report = self._report(visit)
        if not report:
            return None
        lead, told = report[0], visit.named[0]
        material = lead.name != told.name or abs(lead.score - told.score) >= self.cfg.update_min_score_change
        if material and now - visit.last_event_mono >= self.cfg.update_min_interval_s:
            return self._event(EventKind.UPDATE, visit, now, wall)
        if self._heartbeat_due(visit, now):
            return self._event(EventKind.UPDATE, visit, now, wall)
        return None

    def _told_open(self, visit: Visit, species: str) -> Visit | None:
        """Another visit on the same camera, told and still open, named `species`, and not seen since
        `visit` began: the same bird, found again (two birds seen at once are two visits)."""
        candidates = [
            other
            for other in self._open(visit.camera)
            if other is not visit
            and other.told
            and other.named
            and other.named[0].name == species
            and other.last_mono < visit.first_mono
        ]
        return max(candidates, key=lambda other: other.last_mono, default=None)

    def _merge(self, visit: Visit, into: Visit) -> None:
        """`visit`'s tracks are the bird of `into`, found again: from now on they feed `into`."""
        into.absorb(visit)
        visits = self._visits[visit.camera]
        for track_id in visit.tracks:
            visits[track_id] = into
        self.merged += 1
        log.debug("visit %s on %s joins %s: the same %s", visit.id, visit.camera, into.id, into.named[0].name)

    def _heartbeat_due(self, visit: Visit, now: float) -> bool:
        return self.cfg.heartbeat_s > 0 and now - visit.last_event_mono >= self.cfg.heartbeat_s

    def _end(self, camera: str, track: Track, now: float, wall: float, reason: EndReason) -> list[Told]:
        visit = self._visits[camera].pop(track.id, None)
        if visit is None:
            return []
        visit.tracks.discard(track.id)
        if visit.tracks or not visit.confirmed:  # another track of the same bird keeps it open
            return []
        if not visit.told:
            if visit.quiet:  # counted when the cooldown quieted it
                pass
            elif visit.not_a_bird(self.cfg.min_bird_score):
                self.not_birds += 1
            else:
                self.unnamed += 1
            return []
        told = self._event(EventKind.END, visit, now, wall, reason)
        self._cooldown[(camera, told.event.species)] = now
        return [told]

    def _event(self, kind: EventKind, visit: Visit, now: float, wall: float, reason: EndReason | None = None) -> Told:
        report = self._report(visit) or visit.named
        lead = report[0]
        picture = visit.picture
        image = None
        embedding = None
        box: Box = (0, 0, 0, 0)
        if picture is not None:
            box = picture.box
            key = (picture.species, picture.seq)
            if key != visit.snapshot_key:  # a better picture than the one already sent
                image = picture.image
                visit.snapshot_key = key
                if picture.embedding is not None and picture.embedding.size:
                    embedding = Embedding.of(self.embedder, picture.embedding)
        visit.named = report
        visit.last_event_mono = now
        event = VisitEvent(
            kind=kind,
            visit_id=visit.id,
            camera=visit.camera,
            ts=wall,
            species=lead.name,
            score=lead.score,
            top_k=report,
            first_seen=visit.first_seen,
            last_seen=visit.last_seen,
            frames=visit.frames,
            box=box,
            model=self.model,
            end_reason=reason,
            bird_score=visit.bird_score,
            embedding=embedding,
        )
        self._last[visit.camera] = event
        return Told(event, image)
