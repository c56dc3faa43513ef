"""Box maths shared by the stages: boxes are (x1, y1, x2, y2) in pixels, x2/y2 exclusive (`types.Box`)."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

from birdwatch.types import Box


def clip_box(box: Sequence[float], size: tuple[int, int]) -> Box:
    """Clamp to a (width, height) frame and keep at least one pixel each way, so a crop is never empty."""
    width, height = size
    x1 = min(max(0, int(box[0])), width - 1)
    y1 = min(max(0, int(box[1])), height - 1)
    x2 = min(max(x1 + 1, int(box[2])), width)
    y2 = min(max(y1 + 1, int(box[3])), height)
    return (x1, y1, x2, y2)


def square_around(
    box: Sequence[float], padding: float, width: int, height: int, min_side: float = 0.0
) -> tuple[float, float, float, float]:
    """A square on the box's centre, its side the box's longer side grown by `padding` (a fraction) and
    at least `min_side`, shifted to lie inside the frame (and no larger than it)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + padding)
    side = min(max(side, float(min_side)), float(width), float(height))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(0.0, cx - side / 2), width - side)
    top = min(max(0.0, cy - side / 2), height - side)
    return left, top, left + side, top + side


def overlaps(a: Box, b: Box) -> bool:
    """True when the two share some area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def enclosing(boxes: Iterable[Box]) -> Box:
    """The smallest box holding all of them."""
    boxes = list(boxes)
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def merge_overlapping(boxes: Iterable[Box]) -> list[Box]:
    """Replace overlapping boxes by their enclosing box until none overlap."""
    regions = list(boxes)
    merged = True
    while merged:
        merged = False
        for a in range(len(regions)):
            for b in range(a + 1, len(regions)):
                if overlaps(regions[a], regions[b]):
                    regions[a] = enclosing((regions[a], regions[b]))
                    del regions[b]
                    merged = True
                    break
            if merged:
                break
    return regions


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest xyxy box holding both (float arrays)."""
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def inter_over_min(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection area over the smaller of the two areas."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    overlap: np.ndarray = inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-6)
    return overlap
