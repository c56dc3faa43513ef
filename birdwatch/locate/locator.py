"""The locate stage: where to look in each frame, by the configured `localiser`.

`motion`: each camera's own background model gives regions. `detector`: the head finds birds in
whole frames. `detector+motion`: the head looks only where motion is. `teacher`: a generic detector
finds birds and other animals, where motion is on a CPU.

What the classifier sees of a box is the same whichever found it: a square on the box, grown by the
camera's `motion.padding`, inside the frame. Motion regions are made that way already; detector and
teacher boxes are tight around the bird (and stay so for tracks, events and snapshots), so their crops are
squared here: stretched to the network's square input, a tight box would distort the bird.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

from birdwatch.config import CameraConfig
from birdwatch.geometry import square_around
from birdwatch.locate.localiser import Localiser
from birdwatch.locate.motion import MotionDetector
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Source

OnMotion = Callable[[Sequence[Frame], Sequence[Detections]], None]


class Locator:
    def __init__(
        self, cameras: Sequence[CameraConfig], localiser: Localiser, on_motion: OnMotion | None = None
    ) -> None:
        self.localiser = localiser
        self.on_motion = on_motion  # also told what moved in every frame (the recorder)
        self.motion = {cam.name: MotionDetector(cam.motion) for cam in cameras}
        self.padding = {cam.name: cam.motion.padding for cam in cameras}

    def __call__(self, frames: Sequence[Frame]) -> list[Detections]:
        """One Detections per frame, in order; frames of several cameras share the head's batch."""
        moving = None
        if self.localiser.needs_motion or self.on_motion is not None:
            moving = [self.motion[frame.camera](frame.image) for frame in frames]
            if self.on_motion is not None:
                self.on_motion(frames, moving)
        return self.localiser(frames, moving if self.localiser.needs_motion else None)

    def crop_boxes(self, frame: Frame, found: Detections) -> list[Box]:
        """The crop of each box the classifier is given: a padded square, detector and motion alike."""
        if found.source is Source.MOTION:
            return found.int_boxes()  # motion regions are padded squares already (MotionDetector)
        width, height = frame.size
        padding = self.padding.get(frame.camera, 0.0)
        return [_rounded(square_around(box, padding, width, height)) for box in found.boxes.tolist()]


def _rounded(box: tuple[float, float, float, float]) -> Box:
    x1, y1, x2, y2 = box
    return round(x1), round(y1), round(x2), round(y2)
