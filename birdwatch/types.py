"""The vocabulary every stage speaks. Stages import this module, never each other."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np

# (x1, y1, x2, y2) in pixels of the full-resolution frame, x2/y2 exclusive.
Box = tuple[int, int, int, int]


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
class Detections:
    """Where something worth classifying is in one frame (from motion or the detector)."""

    boxes: np.ndarray  # (N, 4) float32 xyxy in full-frame pixels
    scores: np.ndarray  # (N,) float32, 0..1
    source: str = "motion"

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(scores)} scores")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, source: str = "motion") -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), source)

    def int_boxes(self) -> list[Box]:
        return [tuple(int(v) for v in row) for row in np.rint(self.boxes)]  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class SpeciesScore:
    name: str
    score: float


@dataclass(frozen=True, slots=True)
class Sighting:
    """One classified crop: a box in a frame and the classifier's top-k species, best first."""

    camera: str
    seq: int
    ts: float
    mono: float
    box: Box
    top_k: tuple[SpeciesScore, ...]
    box_score: float = 1.0

    @property
    def species(self) -> SpeciesScore:
        return self.top_k[0]


@dataclass(frozen=True, slots=True)
class Event:
    """What goes out over MQTT and into the log. `id` is unique so subscribers can drop duplicates."""

    kind: str  # "sighting" for now; visits add "new" / "update" / "end"
    camera: str
    ts: float
    species: str
    score: float
    top_k: tuple[SpeciesScore, ...]
    box: Box
    frame_seq: int
    model: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_payload(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.ts)) + _utc_offset(self.ts)
        payload["score"] = round(self.score, 4)
        payload["top_k"] = [{"species": s.name, "score": round(s.score, 4)} for s in self.top_k]
        payload["box"] = list(self.box)
        return payload


def _utc_offset(ts: float) -> str:
    offset = time.strftime("%z", time.localtime(ts))  # +0100
    return f"{offset[:3]}:{offset[3:]}" if offset else "Z"
