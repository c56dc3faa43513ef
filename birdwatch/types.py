"""The vocabulary every stage speaks: what flows from capture to delivery, and the closed sets
its fields take. Every room imports this module; it imports none of them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from typing import Any

import numpy as np

# (x1, y1, x2, y2) in pixels of the full-resolution frame, x2/y2 exclusive.
Box = tuple[int, int, int, int]


class EventKind(StrEnum):
    """What a visit event says: `new` once confirmed and named, `update` on a change or heartbeat, `end` once."""

    NEW = "new"
    UPDATE = "update"
    END = "end"


class EndReason(StrEnum):
    TIMEOUT = "timeout"  # the bird left: its track saw no box for tracking.timeout_s
    SHUTDOWN = "shutdown"  # birdwatch stopped while the bird was there


class Source(StrEnum):
    """Which localiser found a box."""

    MOTION = "motion"
    DETECTOR = "detector"  # the head on the shared backbone
    TEACHER = "teacher"  # a generic pretrained detector


@dataclass(frozen=True, slots=True)
class Part:
    """A network a stage runs (classifier, detector, teacher), the backend that runs it, in what precision."""

    name: str
    backend: str
    precision: str


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded image from a camera. `seq` counts frames read from the source, so gaps are drops."""

    camera: str
    seq: int
    ts: float  # wall clock (time.time()) when read, for events
    image: np.ndarray  # H x W x 3, BGR uint8, as OpenCV decodes it
    mono: float = field(default_factory=time.monotonic)  # monotonic read time, for latency

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return (self.image.shape[1], self.image.shape[0])


@dataclass(frozen=True, slots=True)
class SpeciesScore:
    name: str
    score: float


@dataclass(frozen=True, slots=True)
class Detections:
    """A frame's boxes, passed stage to stage: the localiser gives boxes and scores, the classifier
    adds each box's species (top-k, best first), the tracker each box's track id. Validated on
    construction; indexing with a mask, indices or a slice filters every field together
    (`found[found.scores > 0.5]`)."""

    boxes: np.ndarray  # (N, 4) float32 xyxy in full-frame pixels
    scores: np.ndarray  # (N,) float32, 0..1: how sure the localiser is that something is there
    source: Source = Source.MOTION
    species: tuple[tuple[SpeciesScore, ...], ...] | None = None  # per box, once classified
    track_ids: np.ndarray | None = None  # (N,) int64, once tracked
    # (N,) float32, 0..1: how sure the localiser is that the box is a bird; 0 for a box it calls something
    # else (a cat); None when it cannot tell (motion regions).
    birds: np.ndarray | None = None
    # (N, D) float32: each classified box's embedding from the classifier's backbone (zeros for a box not
    # classified); None before classification.
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(scores)} scores")
        if self.species is not None and len(self.species) != len(boxes):
            raise ValueError(f"Detections: {len(boxes)} boxes but species for {len(self.species)}")
        if self.track_ids is not None:
            ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(ids) != len(boxes):
                raise ValueError(f"Detections: {len(boxes)} boxes but {len(ids)} track ids")
            object.__setattr__(self, "track_ids", ids)
        if self.birds is not None:
            birds = np.asarray(self.birds, dtype=np.float32).reshape(-1)
            if len(birds) != len(boxes):
                raise ValueError(f"Detections: {len(boxes)} boxes but {len(birds)} bird scores")
            object.__setattr__(self, "birds", birds)
        if self.embeddings is not None and len(self.embeddings) != len(boxes):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(self.embeddings)} embeddings")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: np.ndarray | Sequence[int] | slice | int) -> Detections:
        rows = np.arange(len(self))[index].reshape(-1)  # a mask, indices, a slice or one index -> positions
        return Detections(
            self.boxes[rows],
            self.scores[rows],
            self.source,
            None if self.species is None else tuple(self.species[i] for i in rows),
            None if self.track_ids is None else self.track_ids[rows],
            None if self.birds is None else self.birds[rows],
            None if self.embeddings is None else self.embeddings[rows],
        )

    @classmethod
    def empty(cls, source: Source = Source.MOTION) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), source)

    def int_boxes(self) -> list[Box]:
        return [tuple(int(v) for v in row) for row in np.rint(self.boxes)]  # type: ignore[misc]

    def with_species(
        self, species: Sequence[tuple[SpeciesScore, ...]], embeddings: np.ndarray | None = None
    ) -> Detections:
        return Detections(self.boxes, self.scores, self.source, tuple(species), self.track_ids, self.birds, embeddings)

    def with_tracks(self, track_ids: Sequence[int] | np.ndarray) -> Detections:
        tracks = np.asarray(track_ids, np.int64)
        return Detections(self.boxes, self.scores, self.source, self.species, tracks, self.birds, self.embeddings)

    def not_birds(self) -> np.ndarray:
        """(N,) bool: the boxes the localiser calls something other than a bird."""
        return np.zeros(len(self), bool) if self.birds is None else self.birds <= 0.0


@dataclass(frozen=True, slots=True)
class Named:
    """The classifier's word on one frame's boxes: each box's top-k species (best first) and its embedding,
    the backbone's summary of the crop that the feeder memory compares (rows in box order)."""

    species: tuple[tuple[SpeciesScore, ...], ...]
    embeddings: np.ndarray  # (N, D) float32

    @classmethod
    def empty(cls) -> Named:
        return cls((), np.zeros((0, 0), np.float32))


@dataclass(frozen=True, slots=True)
class Embedding:
    """A crop's embedding as the history keeps it: float16, with the weights that made it (another model's
    embeddings mean nothing beside these)."""

    model: str  # `<model name>@<the first 12 hex digits of its weights' SHA-256>`
    vector: np.ndarray  # (D,) float16, of length 1

    @classmethod
    def of(cls, model: str, vector: np.ndarray) -> Embedding:
        """Scaled to length 1 first: the memory compares directions only, and float16 would round the tiny
        embeddings of some networks to zero (an untrained MobileNet's are about 1e-8)."""
        norm = float(np.linalg.norm(vector))
        return cls(model, (vector / norm if norm > 0 else vector).astype(np.float16))

    def to_bytes(self) -> bytes:
        return np.ascontiguousarray(self.vector, dtype="<f2").tobytes()


@dataclass(frozen=True, slots=True)
class VisitEvent:
    """One message about a visit: `new` once confirmed and named, `update` on a material change or
    heartbeat, `end` once. `id` is unique per event so subscribers can drop duplicates (QoS 1 is
    at least once); `visit_id` is the same for every event of one visit."""

    kind: EventKind
    visit_id: str
    camera: str
    ts: float  # wall clock of the event
    species: str  # the voted species of the visit so far
    score: float  # its voted score: the mean probability over the visit's crops
    top_k: tuple[SpeciesScore, ...]  # voted top-k, best first
    first_seen: float  # wall clock of the visit's first and latest crop
    last_seen: float
    frames: int  # crops (frames with this bird) so far
    box: Box  # the best crop's box, full-frame pixels
    model: str
    end_reason: EndReason | None = None  # end only
    snapshot: str | None = None  # path of the best crop's JPEG, when one was written for this event
    snapshot_frame: str | None = None  # path of the full frame with the box drawn
    # The localiser's mean bird score over the visit's frames; None when it cannot tell (motion).
    bird_score: float | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The best crop's embedding, when this event brings a new best crop: kept in the history (the feeder
    # memory's material), never published.
    embedding: Embedding | None = field(default=None, repr=False, compare=False)
    # Like none of the birds people named at this camera, and unsure of its species: worth a look. None while
    # the camera's memory is empty (nothing to compare with).
    novel: bool | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "visit_id": self.visit_id,
            "camera": self.camera,
            "ts": round(self.ts, 3),
            "time": iso_time(self.ts),
            "species": self.species,
            "score": round(self.score, 4),
            "bird_score": None if self.bird_score is None else round(self.bird_score, 4),
            "top_k": [{"species": s.name, "score": round(s.score, 4)} for s in self.top_k],
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "duration_s": round(max(0.0, self.last_seen - self.first_seen), 1),
            "frames": self.frames,
            "box": list(self.box),
            "snapshot": self.snapshot,
            "end_reason": self.end_reason,
            "model": self.model,
            "novel": self.novel,
        }

    def to_json(self) -> str:
        """The payload as published and stored."""
        return json.dumps(self.to_payload(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> VisitEvent:
        """A stored payload back as a VisitEvent (for state carried over a restart)."""
        return cls(
            kind=EventKind(p["kind"]),
            visit_id=p["visit_id"],
            camera=p["camera"],
            ts=p["ts"],
            species=p["species"],
            score=p["score"],
            top_k=tuple(SpeciesScore(s["species"], s["score"]) for s in p["top_k"]),
            first_seen=p["first_seen"],
            last_seen=p["last_seen"],
            frames=p["frames"],
            box=(p["box"][0], p["box"][1], p["box"][2], p["box"][3]),
            model=p["model"],
            end_reason=EndReason(p["end_reason"]) if p.get("end_reason") else None,
            snapshot=p.get("snapshot"),
            bird_score=p.get("bird_score"),  # absent in events stored before it was told
            novel=p.get("novel"),
            id=p["id"],
        )


@dataclass(frozen=True, slots=True)
class CameraState:
    """What Home Assistant shows per camera: retained on `<prefix>/<camera>/state`."""

    camera: str
    present: bool  # a confirmed visit is going on
    species: str | None  # the species of the latest told visit
    score: float | None
    visits_today: int  # told visits that started today (local time)
    day: str  # YYYY-MM-DD, local
    visit_id: str | None
    last_seen: float | None  # wall clock

    def to_payload(self) -> dict[str, Any]:
        return {
            "present": "ON" if self.present else "OFF",
            "species": self.species,
            "score": None if self.score is None else round(self.score, 4),
            "visits_today": self.visits_today,
            "day": self.day,
            "visit_id": self.visit_id,
            "last_seen": None if self.last_seen is None else iso_time(self.last_seen),
        }


def iso_time(ts: float) -> str:
    """Local ISO 8601 with the UTC offset, e.g. 2026-11-24T18:00:00+01:00."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + _utc_offset(ts)


def local_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _utc_offset(ts: float) -> str:
    offset = time.strftime("%z", time.localtime(ts))  # +0100
    return f"{offset[:3]}:{offset[3:]}" if offset else "Z"
