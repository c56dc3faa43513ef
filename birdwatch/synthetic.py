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
import math
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Box = tuple[int, int, int, int]
"""(x1, y1, x2, y2) in pixels, inclusive-exclusive: x2 - x1 is the width."""

FrameLike = np.ndarray | tuple[np.ndarray, Sequence[Box]]

__all__ = [
    "Box",
    "Scene",
    "SceneClip",
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


def _paint_bird(
    length: int,
    body: np.ndarray,
    head: np.ndarray,
    wing: np.ndarray,
    beak: np.ndarray,
    wings_up: bool,
) -> _Sprite:
    u = float(length)  # every coordinate below is in units of body length
    size = int(2 * u) + 4
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cx, cy = size / 2, size / 2
    hx, hy = cx + 0.35 * u, cy - 0.18 * u

    def poly(colour: np.ndarray, *xy: tuple[float, float]) -> None:
        p = np.round(np.array(xy)).astype(np.int32)
        for canvas, c in ((img, colour), (mask, 255)):
            cv2.fillPoly(canvas, [p], _bgr(c), cv2.LINE_8)

    def ellipse(colour: np.ndarray, x: float, y: float, ax: float, ay: float, angle: float) -> None:
        for canvas, c in ((img, colour), (mask, 255)):
            cv2.ellipse(canvas, (round(x), round(y)), (round(ax), round(ay)), angle, 0, 360, _bgr(c), -1, cv2.LINE_8)

    # Each shape goes onto the image and the mask alike, without anti-aliasing, so the mask is
    # exactly the bird's pixels and the boxes derived from it are exact.
    poly(wing, (cx - 0.3 * u, cy), (cx - 0.78 * u, cy - 0.12 * u), (cx - 0.75 * u, cy + 0.14 * u))  # tail
    ellipse(body, cx, cy, 0.38 * u, 0.22 * u, -10)
    if wings_up:
        ellipse(wing, cx - 0.05 * u, cy - 0.15 * u, 0.26 * u, 0.1 * u, -35)
    else:
        ellipse(wing, cx - 0.05 * u, cy + 0.02 * u, 0.26 * u, 0.1 * u, 10)
    ellipse(head, hx, hy, 0.15 * u, 0.15 * u, 0)
    eye = max(1.0, 0.03 * u)
    ellipse(np.zeros(3), hx + 0.06 * u, hy - 0.03 * u, eye, eye, 0)
    poly(beak, (hx + 0.12 * u, hy - 0.05 * u), (hx + 0.12 * u, hy + 0.05 * u), (hx + 0.32 * u, hy + 0.01 * u))
    ys, xs = np.nonzero(mask)
    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _Sprite(img[crop].copy(), mask[crop] > 0)


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Sky-to-foliage gradient, low-frequency texture, a branch and a hanging feeder."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky, leaves = np.array([225, 200, 170], np.float32), np.array([70, 130, 90], np.float32)
    img = np.broadcast_to(sky * (1 - t) + leaves * t, (height, width, 3)).copy()
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
    return img


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
    ) -> None:
        if width < 16 or height < 16 or n_frames < 0 or n_birds < 0:
            raise ValueError("need width, height >= 16 and non-negative n_frames, n_birds")
        self.width, self.height, self.n_frames, self.seed = width, height, n_frames, seed
        self.noise_sigma = noise_sigma
        self.presence = (
            [(int(a), int(b)) for a, b in presence] if presence is not None else _windows(n_frames, present_fraction)
        )
        rng = np.random.default_rng(seed)
        self.background = _background(width, height, rng)
        self._flights = [
            self._plan(rng, a, b, perch_fraction, size_range) for a, b in self.presence if b > a for _ in range(n_birds)
        ]

    def _plan(
        self, rng: np.random.Generator, a: int, b: int, perch_fraction: float, size_range: tuple[float, float]
    ) -> _Flight:
        w, h = self.width, self.height
        length = max(8, int(h * rng.uniform(*size_range)))
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

    def render(self, t: int) -> tuple[np.ndarray, list[Box]]:
        """Frame t (BGR uint8) and the boxes of every bird with at least one visible pixel."""
        img = self.background.copy()
        boxes: list[Box] = []
        for flight in self._flights:
            c = flight.centre(t)
            if c is not None and (box := _paste(img, flight.sprite(t), c)) is not None:
                boxes.append(box)
        if self.noise_sigma > 0:
            noise = np.random.default_rng([self.seed, t]).normal(0, self.noise_sigma, img.shape).astype(np.float32)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
        return img, boxes


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
