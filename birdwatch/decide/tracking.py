"""Tracks: the same bird across frames of one camera, by box overlap with a constant-velocity motion model.

Each track predicts where its box is now from its last box and velocity (pixels per second, so a
dropped frame does not break the prediction), and new boxes are matched to predictions greedily by
IoU (torchvision.ops.box_iou), best pair first. A track becomes *confirmed* after `min_hits`
matched boxes and ends `timeout_s` after its last one. Time is the frames' monotonic read time.

Greedy matching instead of Hungarian: at a feeder there are a handful of boxes per frame, where
best-pair-first gives the same answer in practice and needs no scipy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from dataclasses import field

import numpy as np
import torch
from torchvision.ops import box_iou

from birdwatch.config import TrackingConfig
from birdwatch.geometry import inter_over_min
from birdwatch.geometry import union

# How much of a new measurement to take; the rest is the old estimate. Motion boxes jitter and
# split, so one frame's displacement or size alone overshoots.
_GAIN = 0.5
# Prediction horizon cap: after this long without a box, a track is assumed to have stopped
# (a bird that lands stops moving), so the prediction does not run off the frame.
_MAX_PREDICT_S = 1.0
# Second-chance match: a box that mostly lies inside a prediction, or holds it (a blob that split
# into parts, or merged with its shadow), measured as intersection over the smaller area.
_CONTAINMENT = 0.5


@dataclass
class Track:
    """Constant velocity of the box centre; the size is smoothed, not extrapolated."""

    id: int
    box: np.ndarray  # (4,) float xyxy, the last matched box
    first_seen: float  # monotonic seconds
    last_seen: float
    centre: np.ndarray = field(init=False)
    size: np.ndarray = field(init=False)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px/s of the centre
    hits: int = 1
    confirmed: bool = False

    def __post_init__(self) -> None:
        self.centre, self.size = _centre_size(self.box)

    def predict(self, now: float) -> np.ndarray:
        dt = min(max(0.0, now - self.last_seen), _MAX_PREDICT_S)
        c = self.centre + self.velocity * dt
        return np.concatenate([c - self.size / 2, c + self.size / 2]).astype(np.float32)

    def update(self, box: np.ndarray, now: float) -> None:
        centre, size = _centre_size(box)
        dt = now - self.last_seen
        if dt > 1e-3:
            measured = (centre - self.centre) / dt
            # The first displacement is all there is to go on; after that, smooth.
            gain = 1.0 if self.hits == 1 else _GAIN
            self.velocity = (gain * measured + (1 - gain) * self.velocity).astype(np.float32)
        self.centre = centre
        self.size = (_GAIN * size + (1 - _GAIN) * self.size).astype(np.float32)
        self.box = np.asarray(box, np.float32)
        self.last_seen = now
        self.hits += 1

    def absorb(self, fragment: np.ndarray) -> None:
        """Another box of the same bird in this frame: the track covers both."""
        self.box = union(self.box, np.asarray(fragment, np.float32))
        self.centre, self.size = _centre_size(self.box)


@dataclass
class TrackStep:
    """What one frame did to the tracks of its camera."""

    assigned: list[int]  # per input box: the id of its track (a new one when nothing matched)
    confirmed: list[Track]  # tracks that reached min_hits with this frame
    ended: list[Track]  # tracks that timed out before this frame, or were dropped (confirmed or not)


class Tracker:
    """Tracks of one camera."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.tracks: dict[int, Track] = {}
        self._ids = itertools.count(1)

    def sweep(self, now: float) -> list[Track]:
        """Remove and return the tracks with no box for longer than timeout_s."""
        gone = [t for t in self.tracks.values() if now - t.last_seen > self.cfg.timeout_s]
        for t in gone:
            del self.tracks[t.id]
        return gone

    def update(self, boxes: np.ndarray, now: float) -> TrackStep:
        """Match this frame's boxes (N, 4 xyxy) to the tracks; unmatched boxes start tracks."""
        ended = self.sweep(now)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        tracks = list(self.tracks.values())
        assigned: list[int | None] = [None] * len(boxes)
        matched: list[Track] = []
        regions: list[np.ndarray] = []  # per matched track: where it was expected and where it was found
        confirmed: list[Track] = []
        if tracks and len(boxes):
            predicted = np.stack([t.predict(now) for t in tracks])
            last = np.stack([t.box for t in tracks])
            # Moving on as before, or stopped where it was last seen (a bird that lands drops out
            # of the motion mask and reappears where it sat): whichever fits better.
            det = torch.from_numpy(boxes)
            iou = torch.maximum(box_iou(torch.from_numpy(predicted), det), box_iou(torch.from_numpy(last), det)).numpy()
            pairs = _greedy_pairs(iou, self.cfg.iou_threshold)
            # Second pass, for what the first left: containment either way.
            rows = [r for r in range(len(tracks)) if r not in {p[0] for p in pairs}]
            cols = [c for c in range(len(boxes)) if c not in {p[1] for p in pairs}]
            if rows and cols:
                contain = np.maximum(
                    inter_over_min(predicted[rows], boxes[cols]), inter_over_min(last[rows], boxes[cols])
                )
                pairs += [(rows[r], cols[c]) for r, c in _greedy_pairs(contain, _CONTAINMENT)]
            for ti, bi in pairs:
                track = tracks[ti]
                regions.append(union(union(predicted[ti], last[ti]), boxes[bi]))
                track.update(boxes[bi], now)
                assigned[bi] = track.id
                matched.append(track)
                if not track.confirmed and track.hits >= self.cfg.min_hits:
                    track.confirmed = True
                    confirmed.append(track)
        for bi, box in enumerate(boxes):
            if assigned[bi] is not None:
                continue
            # A fragment of a bird that already matched a box this frame (motion blobs split at a
            # wing or a tail) belongs to that bird, not to a new one.
            if matched:
                contain = inter_over_min(np.stack(regions), box[None])[:, 0]
                best = int(np.argmax(contain))
                if contain[best] >= _CONTAINMENT:
                    matched[best].absorb(box)
                    assigned[bi] = matched[best].id
                    continue
            track = Track(next(self._ids), box.copy(), now, now)
            if self.cfg.min_hits <= 1:
                track.confirmed = True
                confirmed.append(track)
            self.tracks[track.id] = track
            assigned[bi] = track.id
        ended.extend(self._cap())
        return TrackStep([a for a in assigned if a is not None], confirmed, ended)

    def _cap(self) -> list[Track]:
        """Keep at most max_tracks: drop the stalest, unconfirmed before confirmed (bounded memory)."""
        extra = len(self.tracks) - self.cfg.max_tracks
        if extra <= 0:
            return []
        order = sorted(self.tracks.values(), key=lambda t: (t.confirmed, t.last_seen))
        for t in order[:extra]:
            del self.tracks[t.id]
        return order[:extra]


def _centre_size(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = np.asarray(box, np.float32)
    return (box[:2] + box[2:]) / 2, np.maximum(box[2:] - box[:2], 1.0)


def _greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(row, col) pairs, highest IoU first, each row and column used once, IoU >= threshold."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs
