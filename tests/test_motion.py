"""Motion regions: nothing on a still scene, boxes around what moves, in full-frame pixels."""

from __future__ import annotations

import numpy as np

from birdwatch.config import MotionConfig
from birdwatch.locate.motion import MotionDetector
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import render_scene


def covered(inner: tuple[int, int, int, int], outer: np.ndarray, slack: float = 0.8) -> bool:
    """At least `slack` of the inner box's area lies inside the outer box."""
    x1, y1 = max(inner[0], outer[0]), max(inner[1], outer[1])
    x2, y2 = min(inner[2], outer[2]), min(inner[3], outer[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter >= slack * (inner[2] - inner[0]) * (inner[3] - inner[1])


def test_still_scene_has_no_regions() -> None:
    scene = Scene(640, 360, 60, n_birds=0, seed=1)
    motion = MotionDetector(MotionConfig())
    found = [len(motion(scene.render(t)[0])) for t in range(60)]
    assert sum(found) == 0


def test_regions_cover_the_moving_birds_in_full_frame_pixels() -> None:
    clip = render_scene(1280, 720, 80, n_birds=2, seed=4, present_fraction=0.7, size_range=(0.12, 0.18))
    motion = MotionDetector(MotionConfig(warmup_frames=10))
    hits = total = 0
    for image, truth in zip(clip.frames, clip.boxes, strict=True):
        regions = motion(image)
        for box in regions.boxes:
            assert 0 <= box[0] < box[2] <= 1280 and 0 <= box[1] < box[3] <= 720
            assert abs((box[2] - box[0]) - (box[3] - box[1])) < 1.0, "square crops for the classifier"
        if motion.frames_seen <= 10:
            continue
        for bird in truth:
            if (bird[2] - bird[0]) * (bird[3] - bird[1]) < 400:
                continue  # a sliver at the frame edge
            total += 1
            hits += any(covered(bird, r) for r in regions.boxes)
    assert total > 50
    assert hits / total >= 0.85, f"{hits}/{total} birds inside a motion region"


def test_no_regions_during_warmup_and_at_most_max_regions() -> None:
    clip = render_scene(320, 240, 40, n_birds=6, seed=2, present_fraction=1.0)
    motion = MotionDetector(MotionConfig(warmup_frames=5, max_regions=2))
    counts = [len(motion(image)) for image in clip.frames]
    assert counts[:5] == [0] * 5
    assert max(counts) <= 2 and sum(counts) > 0


def test_a_one_pixel_shake_over_fine_texture_is_not_motion() -> None:
    """Foliage or gravel finer than the analysis grid, and the camera shakes one pixel in the wind: the
    downscale averages that texture away (area interpolation), so nothing moved at the analysis size."""
    rng = np.random.default_rng(0)
    texture = np.repeat((rng.random((1080, 1921)) > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2)
    motion = MotionDetector(MotionConfig(warmup_frames=10))
    still = [len(motion(np.ascontiguousarray(texture[:, :1920]))) for _ in range(30)]
    shaken = [len(motion(np.ascontiguousarray(texture[:, 1:]))) for _ in range(5)]
    assert sum(still) == 0
    assert sum(shaken) == 0, f"a one-pixel shake found regions {shaken}"
