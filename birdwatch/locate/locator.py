"""The locate stage: where to look in each frame, by the configured `localiser`.

`motion`: each camera's own background model gives regions. `detector`: the head finds birds in
whole frames. `detector+motion`: the head looks only where motion is.
"""

from __future__ import annotations

from collections.abc import Sequence

from birdwatch.config import CameraConfig
from birdwatch.locate.localiser import DetectorLocaliser
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.locate.motion import MotionDetector
from birdwatch.types import Detections
from birdwatch.types import Frame


class Locator:
    def __init__(
        self, cameras: Sequence[CameraConfig], localiser: DetectorLocaliser | MotionGatedLocaliser | None
    ) -> None:
        self.localiser = localiser  # None: motion regions only
        self.motion = {cam.name: MotionDetector(cam.motion) for cam in cameras}

    def __call__(self, frames: Sequence[Frame]) -> list[Detections]:
        """One Detections per frame, in order; frames of several cameras share the head's batch."""
        images = [frame.image for frame in frames]
        if self.localiser is not None and not self.localiser.needs_motion:
            return self.localiser(images)
        moving = [self.motion[frame.camera](frame.image) for frame in frames]
        return moving if self.localiser is None else self.localiser(images, moving)
