"""One visit: a bird's votes, frames, bird score and best picture, as the crops of its tracks arrive (the rules of
when it speaks are the visits' own, in visits.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from birdwatch.types import Box
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent


@dataclass
class _Picture:
    """The visit's best crop of `species`: the whole frame it is in, and where."""

    species: str
    score: float
    seq: int
    box: Box
    image: np.ndarray
    embedding: np.ndarray | None  # the crop's, (D,) float32; None from a classifier that gave none


@dataclass(frozen=True)
class Told:
    """An event to tell, with the picture it carries when better than the visit's last (the best crop's frame)."""

    event: VisitEvent
    picture: np.ndarray | None = None


@dataclass
class Visit:
    id: str
    camera: str
    first_seen: float  # wall clock
    last_seen: float
    first_mono: float
    last_mono: float
    tracks: set[int] = field(default_factory=set)  # its tracks still open (more than one after a merge)
    frames: int = 0
    votes: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    last_seq: int = -1
    this_frame: dict[str, float] = field(default_factory=dict)  # per species, the best score in frame last_seq
    picture: _Picture | None = None
    confirmed: bool = False
    told: bool = False
    quiet: bool = False  # confirmed and named, but inside its species' cooldown: no events
    named: tuple[SpeciesScore, ...] = ()  # what the last event said: the reported top-k
    last_event_mono: float = 0.0
    snapshot_key: tuple[str, int] | None = None  # (species, frame seq) of the last snapshot sent
    judged: int = 0  # frames whose localiser said bird or not (motion cannot tell)
    bird_frames: int = 0  # of those, the frames it called this a bird
    bird_sum: float = 0.0  # their bird scores, each frame's best box
    this_bird: float | None = None  # the best bird score in frame last_seq

    def add(self, frame: Frame, top_k: tuple[SpeciesScore, ...], bird: float | None = None) -> None:
        """One crop's vote: per frame, each species counts its best crop only, and so does the bird score."""
        if frame.seq != self.last_seq:
            self.frames += 1
            self.last_seq = frame.seq
            self.this_frame = {}
            self.this_bird = None
        if bird is not None:
            self._judge(bird)
        self.last_seen = max(self.last_seen, frame.ts)
        self.last_mono = max(self.last_mono, frame.mono)
        for sp in top_k:
            counted = self.this_frame.get(sp.name, 0.0)
            if sp.score > counted:
                self.votes[sp.name] += sp.score - counted
                self.this_frame[sp.name] = sp.score

    def _judge(self, bird: float) -> None:
        held = self.this_bird
        if held is None:
            self.judged += 1
        elif bird <= held:
            return
        self.bird_sum += bird - (held or 0.0)
        if bird > 0 >= (held or 0.0):
            self.bird_frames += 1
        self.this_bird = bird

    @property
    def bird_score(self) -> float | None:
        return self.bird_sum / self.judged if self.judged else None

    def not_a_bird(self, min_bird_score: float) -> bool:
        """The localiser called it something else in at least as many frames as it called it a bird, or
        its mean bird score is below `min_bird_score`: a leaf a weak detector half-believes is a bird."""
        if not self.judged:
            return False
        return self.judged - self.bird_frames >= self.bird_frames or self.bird_sum / self.judged < min_bird_score

    def absorb(self, other: Visit) -> None:
        """`other` is this bird too, seen only since this visit last was: its votes, frames and picture
        join this visit's."""
        self.frames += other.frames
        self.judged += other.judged
        self.bird_frames += other.bird_frames
        self.bird_sum += other.bird_sum
        self.this_bird = other.this_bird
        for name, score in other.votes.items():
            self.votes[name] += score
        self.last_seq, self.this_frame = other.last_seq, other.this_frame
        self.last_seen = max(self.last_seen, other.last_seen)
        self.last_mono = max(self.last_mono, other.last_mono)
        self.tracks |= other.tracks
        mine, theirs = self.picture, other.picture
        if theirs is not None and (mine is None or (theirs.species == mine.species and theirs.score > mine.score)):
            self.picture = theirs

    def ranked(self) -> list[tuple[str, float]]:
        """(species, mean probability over the visit's frames), best first."""
        n = max(1, self.frames)
        return sorted(((k, v / n) for k, v in self.votes.items()), key=lambda kv: (-kv[1], kv[0]))

    def keep_picture(
        self, lead: str, frame: Frame, box: Box, top_k: tuple[SpeciesScore, ...], embedding: np.ndarray | None = None
    ) -> None:
        """This crop becomes the visit's picture if it is the best crop yet of the species leading it.
        Only that frame is kept (bounded memory: whole frames are megabytes)."""
        score = next((sp.score for sp in top_k if sp.name == lead), None)
        if score is None:
            return
        held = self.picture
        if held is None or held.species != lead or score > held.score:
            self.picture = _Picture(lead, score, frame.seq, box, frame.image, embedding)
