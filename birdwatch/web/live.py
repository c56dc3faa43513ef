"""The live picture: each camera's latest frame and the latest boxes named on it, for the page's *Now*.

The stage threads only put references here (a dict assignment, no copy, no lock held while encoding): the
page reads them from its own threads and draws and encodes a JPEG at most `MAX_FPS` times a second per
camera, whoever asks. The pipeline never waits on it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from birdwatch.decide.snapshots import annotate
from birdwatch.decide.snapshots import encode_jpeg
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Frame

MAX_FPS = 2.0  # pictures a second per camera, however many browsers poll
BOXES_FOR_S = 2.0  # boxes older than this are not drawn: the bird has likely moved
WIDTH = 960  # the picture is scaled down to at most this wide: a phone does not need 4K
QUALITY = 75


@dataclass(frozen=True)
class Named:
    ts: float
    boxes: Detections


class LatestFrames:
    def __init__(self) -> None:
        self._frames: dict[str, Frame] = {}
        self._named: dict[str, Named] = {}
        self._jpeg: dict[str, tuple[float, bytes]] = {}  # camera -> (monotonic, picture)
        self._encode = threading.Lock()

    def put_frame(self, frame: Frame) -> None:
        """The locate thread: every frame it looks at."""
        self._frames[frame.camera] = frame

    def put_boxes(self, frame: Frame, boxes: Detections) -> None:
        """The decide thread: the boxes of a classified frame, with their species."""
        self._named[frame.camera] = Named(frame.ts, boxes)

    def cameras(self) -> list[str]:
        return list(self._frames)

    def jpeg(self, camera: str) -> bytes | None:
        """The camera's latest picture with its boxes and names, or None before its first frame."""
        cached = self._jpeg.get(camera)
        if cached is not None and time.monotonic() - cached[0] < 1.0 / MAX_FPS:
            return cached[1]
        with self._encode:  # two browsers at once: one encodes, the other gets its picture
            cached = self._jpeg.get(camera)
            if cached is not None and time.monotonic() - cached[0] < 1.0 / MAX_FPS:
                return cached[1]
            frame = self._frames.get(camera)
            if frame is None:
                return None
            picture = encode_jpeg(self._draw(frame, self._named.get(camera)), QUALITY)
            self._jpeg[camera] = (time.monotonic(), picture)
            return picture

    def _draw(self, frame: Frame, named: Named | None) -> np.ndarray:
        image = frame.image
        if named is not None and frame.ts - named.ts <= BOXES_FOR_S:
            boxes = named.boxes
            for i in range(len(boxes)):
                top = boxes.species[i] if boxes.species is not None else ()
                label = f"{top[0].name} {top[0].score:.2f}" if top else "?"
                image = annotate(image, cast(Box, tuple(int(v) for v in boxes.boxes[i])), label)
        if image.shape[1] > WIDTH:
            height = round(image.shape[0] * WIDTH / image.shape[1])
            image = cv2.resize(image, (WIDTH, height), interpolation=cv2.INTER_AREA)
        return image


def placeholder_jpeg(text: str, size: tuple[int, int] = (640, 360)) -> bytes:
    """A grey picture saying why there is no live one (an <img> that fails would be a broken page)."""
    image = np.full((size[1], size[0], 3), 60, np.uint8)
    cv2.putText(image, text, (20, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (220, 220, 220), 1, cv2.LINE_AA)
    return encode_jpeg(image, QUALITY)
