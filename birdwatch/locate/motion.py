"""Motion regions: cheap background subtraction that tells the classifier where to look.

Runs on a grey, downscaled copy of each processed frame (about 1 ms at 320 px wide), so a CPU can
afford it on every camera. Regions come back as square-ish boxes in full-frame pixels, padded, so
the crop the classifier sees holds the whole bird rather than the part that moved.
"""

from __future__ import annotations

import cv2
import numpy as np

from birdwatch.config import MotionConfig
from birdwatch.geometry import square_around
from birdwatch.types import Detections
from birdwatch.types import Source


class MotionDetector:
    """One per camera: the background model is the camera's own."""

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self._bg = cv2.createBackgroundSubtractorMOG2(
            history=cfg.history, varThreshold=cfg.threshold, detectShadows=False
        )
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.frames_seen = 0

    def __call__(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        scale = min(1.0, self.cfg.width / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # By keyword: the third positional argument is `dst`. Area averaging keeps texture finer than the
        # analysis grid (leaves, gravel, sensor noise) from aliasing into motion when the camera shakes.
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        mask = self._bg.apply(grey)
        self.frames_seen += 1
        if self.frames_seen <= self.cfg.warmup_frames:
            return Detections.empty(Source.MOTION)
        # Opening drops sensor noise; dilation joins the parts of one moving bird into one blob.
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.cfg.min_area * mask.shape[0] * mask.shape[1]
        blobs: list[tuple[int, int, int, int, float]] = []  # x, y, w, h, fraction of the box that moved
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            if w * h >= min_area:
                blobs.append((x, y, w, h, float(np.count_nonzero(mask[y : y + h, x : x + w])) / (w * h)))
        blobs.sort(key=lambda b: b[2] * b[3], reverse=True)
        boxes = [
            square_around((x / scale, y / scale, (x + w) / scale, (y + h) / scale), self.cfg.padding, width, height)
            for x, y, w, h, _ in blobs[: self.cfg.max_regions]
        ]
        scores = [fill for *_, fill in blobs[: self.cfg.max_regions]]
        if not boxes:
            return Detections.empty(Source.MOTION)
        return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), Source.MOTION)
