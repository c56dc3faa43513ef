"""Synthetic feeder-like video with ground-truth bird boxes, for tests and benchmarks.

Everything is drawn with numpy + OpenCV and is deterministic for a given seed, so a test can
regenerate a clip instead of shipping one. Each frame is random-access (`Scene.render(t)`): the
per-frame sensor noise is seeded by (seed, t), not by how many frames came before.

A scene has a static background (gradient sky/foliage, blurred noise, a branch and a feeder) and
birds that cross it during *presence windows*; outside the windows no bird is on screen, which
gives motion gating something to measure (e.g. a 60 % window leaves 20 % empty frames at each
end). Boxes are the bounds of each bird's visible pixels, clipped to the frame.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels, inclusive-exclusive: x2 - x1 is the width."""

FrameLike = np.ndarray | tuple[np.ndarray, Sequence[Box]]

__all__ = [
    "Box",
    "Scene",
    "SceneClip",
    "feeder_with_distractors",
    "generate_frames",
    "render_scene",
    "write_jpeg_sequence",
    "write_video",
]


@dataclass(frozen=True)
class _Sprite:
    image: np.ndarray  # BGR, cropped to the mask's bounds
    mask: np.ndarray  # bool, same height/width as image


@dataclass(frozen=True)
class _Flight:
    """One bird crossing the frame: fly in to a point, optionally sit still, fly out."""

    sprites: tuple[_Sprite, _Sprite]  # wings up / wings down
    t_enter: int
    t_perch: int  # arrives at the perch point
    t_leave: int  # leaves the perch point
    t_exit: int  # fully off-screen again
    start: tuple[float, float]  # sprite centre, off-screen
    perch: tuple[float, float]
    end: tuple[float, float]
    bob: float  # vertical bob amplitude in flight, pixels
    flap_period: int  # frames per wing-beat half cycle

    def centre(self, t: int) -> tuple[float, float] | None:
        if not self.t_enter <= t < self.t_exit:
            return None
        if t < self.t_perch:
            a, b, s = self.start, self.perch, (t - self.t_enter) / max(1, self.t_perch - self.t_enter)
        elif t < self.t_leave:
            return self.perch
        else:
            a, b, s = self.perch, self.end, (t - self.t_leave) / max(1, self.t_exit - self.t_leave)
        x = a[0] + (b[0] - a[0]) * s
        y = a[1] + (b[1] - a[1]) * s + self.bob * math.sin(math.pi * 2 * s)
        return x, y

    def sprite(self, t: int) -> _Sprite:
        flying = not self.t_perch <= t < self.t_leave
        # Perched birds keep their wings folded; flying ones flap, which changes the silhouette.
        return self.sprites[(t // self.flap_period) % 2 if flying else 1]


def _bird_sprites(length: int, rng: np.random.Generator) -> tuple[_Sprite, _Sprite]:
    """One right-facing bird of body length `length`, wings up and wings down."""
    body = rng.integers(30, 230, 3)
    colours = (
        body,
        np.clip(body + rng.integers(-80, 80, 3), 0, 255),  # head
        np.clip(body * 0.6, 0, 255),  # wing and tail
        np.array([0, rng.integers(120, 220), 240]),  # beak: yellow..orange in BGR
    )
    return _paint_bird(length, *colours, wings_up=True), _paint_bird(length, *colours, wings_up=False)


def _bgr(c: np.ndarray | int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(c))


@dataclass(frozen=True)
class _Shape:
    """Proportions of a bird in units of body length; the defaults are the classic test bird."""

    body: tuple[float, float] = (0.38, 0.22)  # half axes of the body ellipse
    body_angle: float = -10.0
    tail: tuple[float, float, float] = (0.78, 0.12, 0.14)  # tip distance behind the centre, upper, lower spread
    head: float = 0.15  # radius
    head_at: tuple[float, float] = (0.35, -0.18)  # head centre relative to the body centre
    beak: float = 0.2  # length
    wing: tuple[float, float] = (0.26, 0.1)  # half axes
    belly: bool = False  # a lighter patch under the body


def _paint_bird(
    length: int,
    body: np.ndarray,
    head: np.ndarray,
    wing: np.ndarray,
    beak: np.ndarray,
    wings_up: bool,
    shape: _Shape = _Shape(),
) -> _Sprite:
    u = float(length)  # every coordinate below is in units of body length
    size = int(2 * u) + 4
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cx, cy = size / 2, size / 2
    hx, hy = cx + shape.head_at[0] * u, cy + shape.head_at[1] * u

    def poly(colour: np.ndarray, *xy: tuple[float, float]) -> None:
        p = np.round(np.array(xy)).astype(np.int32)
        for canvas, c in ((img, colour), (mask, 255)):
            cv2.fillPoly(canvas, [p], _bgr(c), cv2.LINE_8)

    def ellipse(colour: np.ndarray, x: float, y: float, ax: float, ay: float, angle: float) -> None:
        for canvas, c in ((img, colour), (mask, 255)):
            cv2.ellipse(canvas, (round(x), round(y)), (round(ax), round(ay)), angle, 0, 360, _bgr(c), -1, cv2.LINE_8)

    # Each shape goes onto the image and the mask alike, without anti-aliasing, so the mask is
    # exactly the bird's pixels and the boxes derived from it are exact.
    tip, up_spread, down_spread = shape.tail
    poly(wing, (cx - 0.3 * u, cy), (cx - tip * u, cy - up_spread * u), (cx - (tip - 0.03) * u, cy + down_spread * u))
    ellipse(body, cx, cy, shape.body[0] * u, shape.body[1] * u, shape.body_angle)
    if shape.belly:
        belly = np.clip(body.astype(np.float32) * 0.5 + 120, 0, 255)
        ellipse(
            belly, cx + 0.05 * u, cy + 0.08 * u, shape.body[0] * 0.6 * u, shape.body[1] * 0.55 * u, shape.body_angle
        )
    if wings_up:
        ellipse(wing, cx - 0.05 * u, cy - 0.15 * u, shape.wing[0] * u, shape.wing[1] * u, -35)
    else:
        ellipse(wing, cx - 0.05 * u, cy + 0.02 * u, shape.wing[0] * u, shape.wing[1] * u, 10)
    ellipse(head, hx, hy, shape.head * u, shape.head * u, 0)
    eye = max(1.0, 0.03 * u)
    ellipse(np.zeros(3), hx + 0.06 * u, hy - 0.03 * u, eye, eye, 0)
    bx = hx + (shape.head - 0.03) * u
    poly(beak, (bx, hy - 0.05 * u), (bx, hy + 0.05 * u), (bx + shape.beak * u, hy + 0.01 * u))
    ys, xs = np.nonzero(mask)
    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Sprite(img[crop].copy(), mask[crop] > 0)


def _background(
    width: int,
    height: int,
    rng: np.random.Generator,
    sky: tuple[float, float, float] = (225, 200, 170),
    leaves: tuple[float, float, float] = (70, 130, 90),
) -> np.ndarray:
    """Sky-to-foliage gradient, low-frequency texture, a branch and a hanging feeder."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky_c, leaves_c = np.array(sky, np.float32), np.array(leaves, np.float32)
    img = np.broadcast_to(sky_c * (1 - t) + leaves_c * t, (height, width, 3)).copy()
    # Blurred noise at a fraction of the size gives blotchy texture, not per-pixel grain.
    coarse = rng.normal(0, 1, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    texture = cv2.GaussianBlur(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), 3)
    img += 18 * texture
    img = np.clip(img, 0, 255).astype(np.uint8)

    s = min(width, height)
    brown = (30, 60, 95)
    y0 = int(height * rng.uniform(0.55, 0.75))
    branch = np.array(
        [(int(x), int(y0 + 0.08 * s * math.sin(x / width * 3 + rng.uniform(0, 6)))) for x in np.linspace(0, width, 9)],
        np.int32,
    )
    cv2.polylines(img, [branch], False, brown, max(2, s // 30), cv2.LINE_AA)
    for x, y in branch[1:-1:2]:  # a few twigs
        tip = (int(x + rng.uniform(-0.1, 0.1) * s), int(y - rng.uniform(0.05, 0.15) * s))
        cv2.line(img, (int(x), int(y)), tip, brown, max(1, s // 80), cv2.LINE_AA)
    # Feeder: a tube with a roof and a perch, hung from the top edge.
    fx, fw, fh = int(width * rng.uniform(0.6, 0.85)), max(6, s // 10), max(12, s // 4)
    fy = int(height * 0.2)
    cv2.line(img, (fx, 0), (fx, fy), (40, 40, 40), 1, cv2.LINE_AA)
    cv2.rectangle(img, (fx - fw // 2, fy), (fx + fw // 2, fy + fh), (150, 170, 175), -1)
    cv2.fillPoly(img, [np.array([(fx - fw, fy), (fx + fw, fy), (fx, fy - fw // 2)], np.int32)], (40, 60, 120))
    cv2.line(img, (fx - fw, fy + fh - 3), (fx + fw, fy + fh - 3), (60, 60, 60), max(1, s // 100))
    drawn: np.ndarray = img
    return drawn


# ---- varied looks: shapes, colours, poses, backgrounds and clutter, for the detector -----------


def _hsv_colour(rng: np.random.Generator, s: tuple[int, int] = (0, 255), v: tuple[int, int] = (30, 240)) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*s), rng.integers(*v)]]], np.uint8)
    bgr: np.ndarray = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.int64)
    return bgr


def _varied_bird_sprites(length: int, rng: np.random.Generator) -> tuple[_Sprite, _Sprite]:
    """A bird of random proportions and plumage, wings up and wings down."""
    shape = _Shape(
        body=(rng.uniform(0.3, 0.45), rng.uniform(0.15, 0.27)),
        body_angle=rng.uniform(-30, 10),
        tail=(rng.uniform(0.6, 0.95), rng.uniform(0.04, 0.2), rng.uniform(0.04, 0.2)),
        head=rng.uniform(0.11, 0.19),
        head_at=(rng.uniform(0.28, 0.4), rng.uniform(-0.25, -0.08)),
        beak=rng.uniform(0.08, 0.35),
        wing=(rng.uniform(0.18, 0.32), rng.uniform(0.07, 0.14)),
        belly=bool(rng.random() < 0.5),
    )
    # Many real feeder birds are brown or grey; some are bright. Draw muted colours more often.
    body = _hsv_colour(rng, s=(0, 90) if rng.random() < 0.6 else (90, 255))
    head = body if rng.random() < 0.4 else _hsv_colour(rng)
    wing = np.clip(body * rng.uniform(0.4, 1.4), 0, 255) if rng.random() < 0.7 else _hsv_colour(rng)
    beak = _hsv_colour(rng, s=(0, 255), v=(20, 230))
    return (
        _paint_bird(length, body, head, wing, beak, wings_up=True, shape=shape),
        _paint_bird(length, body, head, wing, beak, wings_up=False, shape=shape),
    )


def _posed(sprite: _Sprite, angle: float, mirror: bool) -> _Sprite:
    """Rotate (degrees) and optionally mirror a sprite; nearest-neighbour keeps the mask exact."""
    image, mask = (sprite.image[:, ::-1], sprite.mask[:, ::-1]) if mirror else (sprite.image, sprite.mask)
    h, w = mask.shape
    side = math.ceil(math.hypot(h, w)) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += ((side - w) / 2, (side - h) / 2)
    flags = cv2.INTER_NEAREST
    image = cv2.warpAffine(np.ascontiguousarray(image), m, (side, side), flags=flags)
    mask = cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), m, (side, side), flags=flags) > 0
    ys, xs = np.nonzero(mask)
    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Sprite(image[crop].copy(), mask[crop].copy())


# Figures that move like birds but are not: what a generic detector must tell apart (a teacher's classes).
OTHER_CLASSES = ("cat", "leaf")


def _other_sprite(name: str, length: int, rng: np.random.Generator) -> _Sprite:
    sprite = _cat_sprite(length, rng) if name == "cat" else _leaf_sprite(length, rng)
    return _posed(sprite, float(rng.uniform(-20, 20)), bool(rng.integers(2)))


def _canvas_sprite(size: int, draw: Callable[[np.ndarray, np.ndarray], None]) -> _Sprite:
    """Draw onto a square image and mask alike (`draw(img, mask)`), cropped to the mask."""
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    draw(img, mask)
    ys, xs = np.nonzero(mask)
    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Sprite(img[crop].copy(), mask[crop] > 0)


def _cat_sprite(length: int, rng: np.random.Generator) -> _Sprite:
    """A cat side on: long body, round head with pointed ears, four legs and a raised tail."""
    u = float(length)
    fur = _hsv_colour(rng, s=(0, 160), v=(25, 200))
    dark = np.clip(fur * 0.6, 0, 255)
    c = int(1.6 * u) + 4

    def draw(img: np.ndarray, mask: np.ndarray) -> None:
        cx, cy = c / 2, c / 2
        for canvas, col, col2 in ((img, _bgr(fur), _bgr(dark)), (mask, 255, 255)):
            for dx in (-0.3, -0.18, 0.18, 0.3):  # legs
                x = round(cx + dx * u)
                cv2.rectangle(
                    canvas, (x - round(0.03 * u), round(cy)), (x + round(0.03 * u), round(cy + 0.3 * u)), col2, -1
                )
            cv2.ellipse(canvas, (round(cx), round(cy)), (round(0.4 * u), round(0.14 * u)), 0, 0, 360, col, -1)
            tail = np.array(
                [(cx - 0.38 * u, cy - 0.02 * u), (cx - 0.6 * u, cy - 0.2 * u), (cx - 0.55 * u, cy - 0.45 * u)]
            )
            cv2.polylines(canvas, [np.round(tail).astype(np.int32)], False, col2, max(2, round(0.05 * u)))
            hx, hy = cx + 0.45 * u, cy - 0.14 * u
            cv2.circle(canvas, (round(hx), round(hy)), round(0.13 * u), col, -1)
            for ex in (-0.08, 0.06):  # ears
                ear = np.array(
                    [
                        (hx + ex * u, hy - 0.08 * u),
                        (hx + (ex + 0.05) * u, hy - 0.24 * u),
                        (hx + (ex + 0.1) * u, hy - 0.08 * u),
                    ]
                )
                cv2.fillPoly(canvas, [np.round(ear).astype(np.int32)], col)
        cv2.circle(img, (round(cx + 0.5 * u), round(cy - 0.16 * u)), max(1, round(0.02 * u)), (40, 200, 200), -1)

    return _canvas_sprite(c, draw)


def _leaf_sprite(length: int, rng: np.random.Generator) -> _Sprite:
    """A large leaf, pointed at both ends, with a midrib and a stalk: green, yellow or autumn brown."""
    u = float(length)
    hsv = np.array([[[rng.integers(15, 85), rng.integers(120, 256), rng.integers(60, 220)]]], np.uint8)
    colour = (
        cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.int64) if rng.random() < 0.7 else np.array([30, 80, 150])
    )
    c = int(1.2 * u) + 4

    def draw(img: np.ndarray, mask: np.ndarray) -> None:
        cx, cy = c / 2, c / 2
        t = np.linspace(0, math.pi, 24)
        upper = [(cx - 0.5 * u * math.cos(a), cy - 0.2 * u * math.sin(a)) for a in t]
        lower = [(cx + 0.5 * u * math.cos(a), cy + 0.2 * u * math.sin(a)) for a in t]
        outline = np.round(np.array(upper + lower)).astype(np.int32)
        for canvas, col in ((img, _bgr(colour)), (mask, 255)):
            cv2.fillPoly(canvas, [outline], col)
            cv2.line(canvas, (round(cx + 0.5 * u), round(cy)), (round(cx + 0.62 * u), round(cy + 0.05 * u)), col, 2)
        cv2.line(
            img,
            (round(cx - 0.45 * u), round(cy)),
            (round(cx + 0.5 * u), round(cy)),
            _bgr(np.clip(colour * 0.6, 0, 255)),
            1,
        )

    return _canvas_sprite(c, draw)


def _texture(width: int, height: int, rng: np.random.Generator, cell: int, blur: float) -> np.ndarray:
    coarse = rng.normal(0, 1, (max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
    return cv2.GaussianBlur(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), (0, 0), blur)


def _varied_background(width: int, height: int, rng: np.random.Generator, clutter: int) -> np.ndarray:
    """One of several feeder settings (garden, foliage, fence, lawn, wall) with `clutter` objects."""
    s = min(width, height)
    style = int(rng.integers(5))
    if style == 0:  # the classic garden, in random colours
        img = _background(width, height, rng, tuple(_hsv_colour(rng, v=(140, 250))), tuple(_hsv_colour(rng)))
    else:
        base = _hsv_colour(rng, v=(60, 220)).astype(np.float32)
        img = np.full((height, width, 3), base, np.float32)
        if style == 1:  # dense foliage: blotches at two scales
            img = img + 40 * _texture(width, height, rng, 24, 4) + 25 * _texture(width, height, rng, 6, 1.5)
        elif style == 2:  # planks of a fence or a table
            plank = max(8, int(s * rng.uniform(0.08, 0.2)))
            vertical = bool(rng.integers(2))
            n = (width if vertical else height) // plank + 1
            shades = rng.normal(0, 18, n).astype(np.float32)
            idx = (np.arange(width) if vertical else np.arange(height)) // plank
            band = shades[idx][None, :, None] if vertical else shades[idx][:, None, None]
            img = img + band + 10 * _texture(width, height, rng, 4, 1)
            for i in range(1, n):
                pos = i * plank
                pt1, pt2 = ((pos, 0), (pos, height)) if vertical else ((0, pos), (width, pos))
                cv2.line(img, pt1, pt2, _bgr(np.clip(base * 0.5, 0, 255)), max(1, plank // 12))
        elif style == 3:  # lawn below a horizon, sky above
            horizon = int(height * rng.uniform(0.2, 0.6))
            grass = _hsv_colour(rng, s=(80, 255), v=(60, 180)).astype(np.float32)
            img[horizon:] = grass + 30 * _texture(width, height - horizon, rng, 3, 0.8)
        else:  # brick or stone wall
            bh = max(6, int(s * rng.uniform(0.05, 0.12)))
            bw = bh * 2
            mortar = _bgr(np.clip(base * 1.4 + 30, 0, 255))
            img = img + 15 * _texture(width, height, rng, 8, 2)
            for row, y in enumerate(range(0, height, bh)):
                cv2.line(img, (0, y), (width, y), mortar, max(1, bh // 6))
                for x in range(-(row % 2) * bw // 2, width, bw):
                    cv2.line(img, (x, y), (x, y + bh), mortar, max(1, bh // 6))
        img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 3))):  # branches
        y0 = rng.uniform(0.1, 0.95) * height
        pts = np.array([(x, y0 + rng.normal(0, 0.04) * s) for x in np.linspace(-10, width + 10, 7)], np.int32)
        cv2.polylines(
            img,
            [pts],
            False,
            _bgr(_hsv_colour(rng, s=(40, 160), v=(30, 110))),
            max(2, int(s * rng.uniform(0.01, 0.04))),
        )
    for _ in range(int(rng.integers(0, 2))):  # a feeder
        fx, fy = int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.05, 0.5) * height)
        fw, fh = max(6, int(s * rng.uniform(0.06, 0.14))), max(12, int(s * rng.uniform(0.15, 0.35)))
        cv2.line(img, (fx, 0), (fx, fy), (40, 40, 40), 1, cv2.LINE_AA)
        cv2.rectangle(img, (fx - fw // 2, fy), (fx + fw // 2, fy + fh), _bgr(_hsv_colour(rng)), -1)
        cv2.fillPoly(
            img, [np.array([(fx - fw, fy), (fx + fw, fy), (fx, fy - fw // 2)], np.int32)], _bgr(_hsv_colour(rng))
        )
    _clutter(img, rng, clutter)
    return img


def _clutter(img: np.ndarray, rng: np.random.Generator, n: int, labels: np.ndarray | None = None) -> None:
    """Things that are not birds: leaves, stones, seeds, sticks, bright blobs and cones.

    With `labels`, the objects are in front of the birds: the pixels they cover stop belonging to a bird.
    """
    height, width = img.shape[:2]
    s = min(width, height)
    for _ in range(n):
        kind = int(rng.integers(6))
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = max(2, int(s * rng.uniform(0.015, 0.08)))
        colour = _bgr(_hsv_colour(rng))
        shape_mask = np.zeros((height, width), np.uint8)
        if kind == 0:  # leaf
            colour = _bgr(_hsv_colour(rng, s=(80, 255), v=(40, 200)))
            axes, angle = (size, max(1, size // 3)), float(rng.uniform(0, 180))
            for canvas, c in ((img, colour), (shape_mask, 255)):
                cv2.ellipse(canvas, (x, y), axes, angle, 0, 360, c, -1)
        elif kind == 1:  # stone
            grey = int(rng.integers(70, 200))
            axes = (size, max(1, int(size * rng.uniform(0.5, 0.9))))
            for canvas, c in ((img, (grey, grey, grey)), (shape_mask, 255)):
                cv2.ellipse(canvas, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        elif kind == 2:  # a scatter of seeds
            for _ in range(int(rng.integers(5, 20))):
                px, py = int(x + rng.normal(0, size)), int(y + rng.normal(0, size / 2))
                for canvas, c in ((img, colour), (shape_mask, 255)):
                    cv2.circle(canvas, (px, py), max(1, size // 8), c, -1)
        elif kind == 3:  # stick
            dx, dy = rng.normal(0, 2 * size, 2)
            for canvas, c in ((img, _bgr(_hsv_colour(rng, s=(40, 160), v=(30, 120)))), (shape_mask, 255)):
                cv2.line(canvas, (x, y), (int(x + dx), int(y + dy)), c, max(1, size // 6))
        elif kind == 4:  # a bright blob or label: colour alone must not say "bird"
            w2, h2 = size, max(1, int(size * rng.uniform(0.3, 1.0)))
            for canvas, c in ((img, colour), (shape_mask, 255)):
                if rng.random() < 0.5:
                    cv2.rectangle(canvas, (x - w2, y - h2), (x + w2, y + h2), c, -1)
                else:
                    cv2.circle(canvas, (x, y), size, c, -1)
        else:  # pine cone: a brown oval with scales
            axes = (max(1, size // 2), size)
            for canvas, c in ((img, (30, 60, 100)), (shape_mask, 255)):
                cv2.ellipse(canvas, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
            for k in range(-2, 3):
                cv2.line(img, (x - axes[0], y + k * size // 3), (x + axes[0], y + k * size // 3), (20, 40, 70), 1)
        if labels is not None:
            labels[shape_mask > 0] = 0


def _paste_labelled(
    img: np.ndarray, labels: np.ndarray, sprite: _Sprite, centre: tuple[float, float], label: int
) -> None:
    sh, sw = sprite.mask.shape
    x, y = round(centre[0] - sw / 2), round(centre[1] - sh / 2)
    fx1, fy1 = max(x, 0), max(y, 0)
    fx2, fy2 = min(x + sw, img.shape[1]), min(y + sh, img.shape[0])
    if fx1 >= fx2 or fy1 >= fy2:
        return
    m = sprite.mask[fy1 - y : fy2 - y, fx1 - x : fx2 - x]
    img[fy1:fy2, fx1:fx2][m] = sprite.image[fy1 - y : fy2 - y, fx1 - x : fx2 - x][m]
    labels[fy1:fy2, fx1:fx2][m] = label


# What the tests train and evaluate on: birds large enough for a head on a barely trained backbone.
EASY_STILLS: dict[str, Any] = {
    "n_birds": (1, 3),
    "size_range": (0.15, 0.35),
    "clutter": (0, 3),
    "noise_sigma": (0.0, 3.0),
}


def render_still(
    width: int,
    height: int,
    seed: int,
    *,
    n_birds: tuple[int, int] = (0, 4),
    size_range: tuple[float, float] = (0.08, 0.35),
    clutter: tuple[int, int] = (4, 16),
    noise_sigma: tuple[float, float] = (0.0, 8.0),
) -> tuple[np.ndarray, list[Box]]:
    """One feeder-like still with birds of varied shape, colour, size and pose, and its boxes.

    `n_birds`, `clutter` (objects that are not birds) and `noise_sigma` are drawn uniformly from their
    (low, high) ranges; bird body length is a fraction `size_range` of the shorter side. A few objects
    are drawn in front of the birds, so boxes are the bounds of what is still visible of each bird.
    """
    image, labelled = render_labelled_still(
        width, height, seed, n_birds=n_birds, size_range=size_range, clutter=clutter, noise_sigma=noise_sigma
    )
    return image, [box for box, name in labelled if name == "bird"]


def render_labelled_still(
    width: int,
    height: int,
    seed: int,
    *,
    n_birds: tuple[int, int] = (0, 4),
    size_range: tuple[float, float] = (0.08, 0.35),
    clutter: tuple[int, int] = (4, 16),
    noise_sigma: tuple[float, float] = (0.0, 8.0),
    others: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, list[tuple[Box, str]]]:
    """`render_still` with figures that are not birds but move like them: `others` (low, high) cats and
    big leaves (OTHER_CLASSES), each with its box and class name, as a generic detector labels them."""
    rng = np.random.default_rng([seed, width, height])
    s = min(width, height)
    img = _varied_background(width, height, rng, int(rng.integers(clutter[0], clutter[1] + 1)))
    labels = np.zeros((height, width), np.int32)
    placed: list[tuple[float, float, float, float]] = []
    n = int(rng.integers(n_birds[0], n_birds[1] + 1))
    for label in range(1, n + 1):
        length = max(8, int(s * rng.uniform(*size_range)))
        up, down = _varied_bird_sprites(length, rng)
        sprite = _posed(up if rng.random() < 0.4 else down, float(rng.uniform(-35, 35)), bool(rng.integers(2)))
        sh, sw = sprite.mask.shape
        # Keep most of each bird inside the frame and birds from hiding each other completely.
        for _ in range(20):
            cx = rng.uniform(sw * 0.3, width - sw * 0.3) if sw * 0.6 < width else width / 2
            cy = rng.uniform(sh * 0.3, height - sh * 0.3) if sh * 0.6 < height else height / 2
            box = (cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2)
            if not placed or float(box_iou(torch.tensor([box]), torch.tensor(placed)).max()) < 0.2:
                break
        placed.append(box)
        _paste_labelled(img, labels, sprite, (cx, cy), label)
    names = ["bird"] * n
    if others[1] > 0:  # drawn only when asked, so that bird-only stills stay as they were
        for _ in range(int(rng.integers(others[0], others[1] + 1))):
            name = OTHER_CLASSES[int(rng.integers(len(OTHER_CLASSES)))]
            length = max(10, int(s * rng.uniform(size_range[0] * 1.3, size_range[1] * 1.3)))
            sprite = _other_sprite(name, length, rng)
            sh, sw = sprite.mask.shape
            cx, cy = rng.uniform(sw * 0.3, max(sw * 0.3 + 1, width - sw * 0.3)), rng.uniform(0, height)
            names.append(name)
            _paste_labelled(img, labels, sprite, (cx, cy), len(names))
    _clutter(img, rng, int(rng.integers(0, 3)), labels)  # in front of the birds
    labelled: list[tuple[Box, str]] = []
    for label, name in enumerate(names, start=1):
        ys, xs = np.nonzero(labels == label)
        if len(xs) >= 12:  # a few stray pixels are not a bird anyone could box
            labelled.append(((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), name))
    # Camera: exposure, focus and sensor noise.
    out: np.ndarray = img.astype(np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
    sigma = rng.uniform(*noise_sigma)
    if sigma > 0:
        out += rng.normal(0, sigma, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8), labelled


def write_coco_dataset(
    directory: str | Path,
    n_images: int,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    *,
    quality: int = 90,
    **still_kwargs: Any,
) -> Path:
    """A COCO-format bird dataset of `render_still` images: DIR/images/*.jpg and DIR/annotations.json.

    Image i uses seed (seed, i), so datasets with different seeds share no image. With `others`
    (see `render_labelled_still`) the cats and leaves are labelled too, as categories of their own.
    Returns the annotations file.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    classes = ["bird", *OTHER_CLASSES] if still_kwargs.get("others", (0, 0))[1] > 0 else ["bird"]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n_images):
        img, labelled = render_labelled_still(width, height, seed * 1_000_003 + i, **still_kwargs)
        name = f"{i:06d}.jpg"
        if not cv2.imwrite(str(directory / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cv2.imwrite failed for {directory / 'images' / name}")
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for (x1, y1, x2, y2), name in labelled:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": classes.index(name) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i, "name": name, "supercategory": "plant" if name == "leaf" else "animal"}
        for i, name in enumerate(classes, start=1)
    ]
    path = directory / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _windows(n_frames: int, present_fraction: float) -> list[tuple[int, int]]:
    """One centred presence window: equal bird-free stretches before and after."""
    if not 0.0 <= present_fraction <= 1.0:
        raise ValueError(f"present_fraction must be in [0, 1], got {present_fraction}")
    n = round(n_frames * present_fraction)
    start = (n_frames - n) // 2
    return [(start, start + n)] if n else []


class Scene:
    """A lazily rendered clip: `render(t)` gives frame t and its boxes, in any order.

    Args:
        width, height: frame size in pixels.
        n_frames: clip length.
        n_birds: birds per presence window; each crosses the frame once per window.
        seed: everything (background, birds, paths, noise) follows from it.
        present_fraction: share of frames inside the single centred presence window.
        presence: explicit [start, stop) windows instead of `present_fraction`.
        perch_fraction: each bird spends between half of this and this share of its crossing
            sitting still, as birds at a feeder do; 0 keeps every bird moving.
        size_range: bird body length as a fraction of the frame height.
        noise_sigma: per-frame Gaussian sensor noise (grey levels); 0 for exact frames.
        varied: draw the background, clutter and birds with the varied looks of `render_still`.
        others: figures that are not birds, as (class, start, stop): a cat walks across the lower part
            of the frame, a leaf drifts down through it, during [start, stop).
        sway: a branch in front of the background sways by this fraction of the height (wind).
        light: passing cloud shadows darken the frame by up to this fraction (0.3: 30 %).
    """

    def __init__(
        self,
        width: int,
        height: int,
        n_frames: int,
        n_birds: int = 2,
        seed: int = 0,
        *,
        present_fraction: float = 0.6,
        presence: Sequence[tuple[int, int]] | None = None,
        perch_fraction: float = 0.0,
        size_range: tuple[float, float] = (0.12, 0.22),
        noise_sigma: float = 2.0,
        varied: bool = False,
        others: Sequence[tuple[str, int, int]] = (),
        sway: float = 0.0,
        light: float = 0.0,
    ) -> None:
        if width < 16 or height < 16 or n_frames < 0 or n_birds < 0:
            raise ValueError("need width, height >= 16 and non-negative n_frames, n_birds")
        self.width, self.height, self.n_frames, self.seed = width, height, n_frames, seed
        self.noise_sigma = noise_sigma
        self.presence = (
            [(int(a), int(b)) for a, b in presence] if presence is not None else _windows(n_frames, present_fraction)
        )
        rng = np.random.default_rng(seed)
        self.varied = varied
        # varied: a background, clutter and birds as `render_still` draws them (the detector's training look).
        self.background = (
            _varied_background(width, height, rng, int(rng.integers(0, 4)))
            if varied
            else _background(width, height, rng)
        )
        self._flights = [
            self._plan(rng, a, b, perch_fraction, size_range) for a, b in self.presence if b > a for _ in range(n_birds)
        ]
        self.sway, self.light = sway, light
        # Drawn from their own generator: the birds of a scene stay as they were with or without them.
        others_rng = np.random.default_rng([seed, 1])
        self._others = [(self._plan_other(others_rng, name, a, b), name) for name, a, b in others]

    def _plan(
        self, rng: np.random.Generator, a: int, b: int, perch_fraction: float, size_range: tuple[float, float]
    ) -> _Flight:
        w, h = self.width, self.height
        length = max(8, int(h * rng.uniform(*size_range)))
        if self.varied:
            angle = float(rng.uniform(-20, 20))
            up, down = (_posed(sprite, angle, False) for sprite in _varied_bird_sprites(length, rng))
        else:
            up, down = _bird_sprites(length, rng)
        rightward = bool(rng.integers(2))
        if not rightward:
            up, down = (_Sprite(s.image[:, ::-1].copy(), s.mask[:, ::-1].copy()) for s in (up, down))
        # Start/end far enough outside the frame that no pixel shows, whatever the wing pose.
        margin = length
        x0, x1 = (-margin, w + margin) if rightward else (w + margin, -margin)
        ys = rng.uniform(0.15 * h, 0.85 * h, 3)
        perch = (rng.uniform(0.2 * w, 0.8 * w), ys[1])
        # Each crossing uses 50-100 % of the window, at a random offset within it.
        dur = max(2, round((b - a) * rng.uniform(0.5, 1.0)))
        t_enter = a + int(rng.integers(0, max(1, b - a - dur + 1)))
        t_exit = min(b, t_enter + dur)
        sit = round((t_exit - t_enter) * rng.uniform(perch_fraction / 2, perch_fraction))
        t_perch = t_enter + (t_exit - t_enter - sit) // 2
        return _Flight(
            sprites=(up, down),
            t_enter=t_enter,
            t_perch=t_perch,
            t_leave=t_perch + sit,
            t_exit=t_exit,
            start=(x0, ys[0]),
            perch=perch,
            end=(x1, ys[2]),
            bob=float(rng.uniform(0, 0.05 * h)),
            flap_period=int(rng.integers(1, 4)),
        )

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[Box]]]:
        return (self.render(t) for t in range(self.n_frames))

    def _plan_other(self, rng: np.random.Generator, name: str, a: int, b: int) -> _Flight:
        """A cat walking along the lower part of the frame, or a leaf drifting down through it."""
        w, h = self.width, self.height
        length = max(10, int(h * rng.uniform(0.18, 0.28)))
        sprite = _other_sprite(name, length, rng)
        margin = 2 * length
        if name == "cat":
            y = rng.uniform(0.7, 0.85) * h
            start, end = (float(-margin), y), (float(w + margin), y)
        else:
            x = rng.uniform(0.2, 0.8) * w
            start, end = (x, float(-margin)), (x + rng.uniform(-0.3, 0.3) * w, float(h + margin))
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        return _Flight((sprite, sprite), a, (a + b) // 2, (a + b) // 2, b, start, middle, end, 0.0, 1)

    def _weather(self, img: np.ndarray, t: int) -> np.ndarray:
        """The swaying branch and the cloud shadows of frame t, drawn over the background."""
        w, h = self.width, self.height
        if self.sway > 0:
            shift = self.sway * h * math.sin(2 * math.pi * t / 17)
            pts = np.array(
                [(x, 0.3 * h + shift * (x / w) + 0.05 * h * math.sin(x / w * 5)) for x in np.linspace(0, w, 12)]
            )
            cv2.polylines(img, [np.round(pts).astype(np.int32)], False, (35, 70, 60), max(3, h // 40), cv2.LINE_AA)
            for x, y in pts[2:-1:2]:
                cv2.ellipse(
                    img, (round(x), round(y + h * 0.03)), (h // 30 + 2, h // 60 + 1), 30, 0, 360, (50, 120, 70), -1
                )
        if self.light > 0:
            cx = (t * 0.02 * w) % (2 * w) - w / 2  # a shadow the size of the frame drifting across
            xs = np.arange(w, dtype=np.float32)[None, :]
            ys = np.arange(h, dtype=np.float32)[:, None]
            shade = np.exp(-(((xs - cx) / (0.4 * w)) ** 2 + ((ys - h / 2) / (0.8 * h)) ** 2))
            img = (img.astype(np.float32) * (1 - self.light * shade)[..., None]).astype(np.uint8)
        return img

    def render(self, t: int) -> tuple[np.ndarray, list[Box]]:
        """Frame t (BGR uint8) and the boxes of every bird with at least one visible pixel."""
        img, labelled = self.render_labelled(t)
        return img, [box for box, name in labelled if name == "bird"]

    def render_labelled(self, t: int) -> tuple[np.ndarray, list[tuple[Box, str]]]:
        """Frame t and the boxes of every figure in it, birds and others, with their class."""
        img = self._weather(self.background.copy(), t)
        boxes: list[tuple[Box, str]] = []
        for flight, name in [*((f, "bird") for f in self._flights), *self._others]:
            c = flight.centre(t)
            if c is not None and (box := _paste(img, flight.sprite(t), c)) is not None:
                boxes.append((box, name))
        if self.noise_sigma > 0:
            noise = np.random.default_rng([self.seed, t]).normal(0, self.noise_sigma, img.shape).astype(np.float32)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
        return img, boxes


def feeder_with_distractors(side: int, seed: int, visits: int, *, gap: int = 40, length: int = 40) -> Scene:
    """A square feeder clip of `visits` bird visits (one bird each, perching), with wind in a branch, cloud
    shadows, and a cat walking through after every other visit and a leaf falling during the others: what
    motion alone tells as birds, and a teacher must not."""
    windows = [(10 + i * (length + gap), 10 + i * (length + gap) + length) for i in range(visits)]
    others = [("cat", b + 2, b + gap - 2) if i % 2 == 0 else ("leaf", a + 5, b - 5) for i, (a, b) in enumerate(windows)]
    return Scene(
        side,
        side,
        windows[-1][1] + 30,
        n_birds=1,
        seed=seed,
        presence=windows,
        perch_fraction=0.6,
        size_range=(0.22, 0.3),
        varied=True,
        others=others,
        sway=0.03,
        light=0.25,
    )


def _paste(img: np.ndarray, sprite: _Sprite, centre: tuple[float, float]) -> Box | None:
    """Draw the sprite centred at `centre`, clipped to the frame; return its visible bounds."""
    sh, sw = sprite.mask.shape
    x, y = round(centre[0] - sw / 2), round(centre[1] - sh / 2)
    fx1, fy1 = max(x, 0), max(y, 0)
    fx2, fy2 = min(x + sw, img.shape[1]), min(y + sh, img.shape[0])
    if fx1 >= fx2 or fy1 >= fy2:
        return None
    m = sprite.mask[fy1 - y : fy2 - y, fx1 - x : fx2 - x]
    if not m.any():
        return None
    img[fy1:fy2, fx1:fx2][m] = sprite.image[fy1 - y : fy2 - y, fx1 - x : fx2 - x][m]
    ys, xs = np.nonzero(m)
    return fx1 + int(xs.min()), fy1 + int(ys.min()), fx1 + int(xs.max()) + 1, fy1 + int(ys.max()) + 1


@dataclass(frozen=True)
class SceneClip:
    """A fully rendered clip: frames[i] with boxes[i]."""

    frames: list[np.ndarray]
    boxes: list[list[Box]]
    presence: list[tuple[int, int]]
    background: np.ndarray

    @property
    def has_birds(self) -> list[bool]:
        """Per frame: is any bird visible (the ground truth for motion gating)."""
        return [bool(b) for b in self.boxes]


def render_scene(width: int, height: int, n_frames: int, n_birds: int = 2, seed: int = 0, **kwargs: Any) -> SceneClip:
    """Render a whole `Scene` into memory; keyword arguments as for `Scene`."""
    scene = Scene(width, height, n_frames, n_birds, seed, **kwargs)
    frames, boxes = zip(*scene, strict=True) if n_frames else ((), ())
    return SceneClip(list(frames), list(boxes), list(scene.presence), scene.background)


def generate_frames(
    width: int, height: int, n_frames: int, n_birds: int = 2, seed: int = 0, **kwargs: Any
) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """Yield (BGR uint8 frame, boxes) one at a time; keyword arguments as for `Scene`."""
    return iter(Scene(width, height, n_frames, n_birds, seed, **kwargs))


def _images(frames: Iterable[FrameLike]) -> Iterator[np.ndarray]:
    # Accept bare frames or the (frame, boxes) pairs that generate_frames yields.
    for f in frames:
        yield f[0] if isinstance(f, tuple) else f


def write_video(path: str | Path, frames: Iterable[FrameLike], fps: float = 10.0) -> int:
    """Write an MJPG .avi (the pip OpenCV wheel cannot encode H.264); return the frame count."""
    images = _images(frames)
    first = next(images, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter could not open {path} (MJPG, {size[0]}x{size[1]})")
    n = 0
    try:
        for img in itertools.chain([first], images):
            if (img.shape[1], img.shape[0]) != size:
                raise ValueError(f"frame {n} is {img.shape[1]}x{img.shape[0]}, expected {size[0]}x{size[1]}")
            writer.write(img)
            n += 1
    finally:
        writer.release()
    return n


def write_jpeg_sequence(directory: str | Path, frames: Iterable[FrameLike], quality: int = 90) -> int:
    """Write frames as DIR/00000.jpg, 00001.jpg, …; return the count."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, img in enumerate(_images(frames), start=1):
        if not cv2.imwrite(str(directory / f"{n - 1:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cv2.imwrite failed for {directory / f'{n - 1:05d}.jpg'}")
    return n
