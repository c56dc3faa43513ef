"""Where to look, from the detector: on whole frames, or only where motion says something moved.

`detector`: every frame of the step goes through the head in one batch (frames from several
cameras share a forward pass). `detector+motion`: the cheap motion gate runs first; a frame in
which nothing moved costs nothing more, and for one in which something did, only square regions
around the motion (grown by `region_padding`, at least `region_size` pixels so small birds are not
blown up, merged where they overlap) are cut from the full-resolution frame, resized to
`region_size` and detected in one batch, as Frigate does. Boxes come back in full-frame pixels;
boxes from overlapping regions are merged by NMS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from birder.net.detection.base import DetectionBaseNet
from torchvision.ops import batched_nms

from birdwatch.backends import Backend
from birdwatch.backends import Graph
from birdwatch.backends import RunOptions
from birdwatch.backends import open_runner
from birdwatch.backends.export import cache_dir_for
from birdwatch.classify.models import Classifier
from birdwatch.config import Config
from birdwatch.config import DetectorConfig
from birdwatch.errors import ModelError
from birdwatch.geometry import enclosing
from birdwatch.geometry import merge_overlapping
from birdwatch.geometry import square_around
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.head import PAD_MULTIPLE
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import HeadOutputs
from birdwatch.locate.head import round_up
from birdwatch.precision import Precision
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Source

log = logging.getLogger(__name__)


def load_detector(
    cfg: DetectorConfig,
    classifier: Classifier,
    *,
    canvas: int | None = None,
    backend: Backend | str = Backend.TORCH,
    cache_dir: Path | None = None,
    options: RunOptions | None = None,
) -> BirdDetector:
    """The configured head on the classifier's own (shared, frozen) backbone, run by `backend`.

    `canvas` is the fixed square an exported backend runs at: the region size for `detector+motion`,
    the frame size for `detector`."""
    if not cfg.file:
        raise ModelError("detector.file: not set; point it at a head from `birdwatch detector train`")
    precision = Precision.resolve(classifier.device, cfg.precision, cfg.channels_last)
    head, info = load_head(cfg.file, classifier, precision=precision.dtype)
    if precision.channels_last:
        # The backbone is shared: this changes the classifier's memory layout too (not its weights).
        classifier.net.to(memory_format=torch.channels_last)
    max_size = cfg.max_size or info.input_size
    # A multiple of the largest stride, as torch pads: FCOS's anchors take each level's stride as canvas // grid.
    canvas = round_up(canvas or max_size, PAD_MULTIPLE)
    runner = None
    if Backend(backend) is not Backend.TORCH:
        graph = detector_graph(head, classifier, Path(cfg.file), canvas)
        options = replace(options or RunOptions(), precision=precision, batch_size=min(4, graph.max_batch))
        runner = open_runner(graph, backend, cache_dir or Path(cfg.file).parent, options)
    detector = BirdDetector(
        head,
        rgb_stats=classifier.rgb_stats,
        device=classifier.device,
        max_size=max_size,
        score_threshold=cfg.score_threshold,
        nms_iou=cfg.nms_iou,
        max_detections=cfg.max_detections,
        channels_last=precision.channels_last,
        runner=runner,
        canvas=canvas,
    )
    log.info(
        "detector head %s on %s's backbone (%s, trained at %d px%s), frames at %d px, %s on %s",
        cfg.file,
        classifier.name,
        info.network,
        info.input_size,
        f", val mAP@.5 {info.trained['mAP50']:.3f}" if "mAP50" in info.trained else "",
        detector.max_size,
        runner.precision if runner else precision.dtype,
        runner.backend if runner else Backend.TORCH,
    )
    return detector


def detector_graph(head: DetectionBaseNet, classifier: Classifier, head_file: Path, canvas: int) -> Graph:
    """The detector's network part at its fixed canvas; its export is keyed by the classifier and the head."""
    return Graph(
        name=f"{classifier.name}-{head_file.stem}-detector",
        module=HeadOutputs(head),
        input_hw=(canvas, canvas),
        outputs=HeadOutputs.OUTPUTS,
        sources=(classifier.path, head_file),
        device=classifier.device,
        max_batch=64,  # regions of every camera in one step (TensorRT's profile; the others take any batch)
    )


class DetectorLocaliser:
    """The head on whole frames, all cameras in one batch."""

    needs_motion = False

    def __init__(self, detector: BirdDetector) -> None:
        self.detector = detector
        self.frames_detected = 0

    def __call__(self, images: Sequence[np.ndarray], motion: Sequence[Detections] | None = None) -> list[Detections]:
        self.frames_detected += len(images)
        return self.detector.detect(images)


class MotionGatedLocaliser:
    """The head only on regions around motion, cut at full resolution; no motion, no detector."""

    needs_motion = True

    def __init__(
        self, detector: BirdDetector, *, region_size: int = 320, padding: float = 1.0, max_regions: int = 4
    ) -> None:
        self.detector = detector
        self.region_size = region_size
        self.padding = padding
        self.max_regions = max_regions
        self.frames_detected = 0
        self.regions_detected = 0

    def regions(self, motion: Detections, width: int, height: int) -> list[Box]:
        """Padded squares around the motion boxes, merged where they overlap, inside the frame."""
        squares = [
            _rounded(square_around(box, self.padding, width, height, min_side=self.region_size))
            for box in motion.boxes.tolist()
        ]
        merged = merge_overlapping(squares)
        if len(merged) > self.max_regions:  # many moving things: one region around them all
            merged = [enclosing(merged)]
        return merged

    def __call__(self, images: Sequence[np.ndarray], motion: Sequence[Detections] | None = None) -> list[Detections]:
        if motion is None:
            raise ValueError("MotionGatedLocaliser needs the motion regions of every frame")
        crops: list[np.ndarray] = []
        owners: list[tuple[int, int, int]] = []  # frame index, x offset, y offset
        for i, (image, moved) in enumerate(zip(images, motion, strict=True)):
            if not len(moved):
                continue
            height, width = image.shape[:2]
            for x1, y1, x2, y2 in self.regions(moved, width, height):
                crops.append(image[y1:y2, x1:x2])
                owners.append((i, x1, y1))
        out = [Detections.empty(Source.DETECTOR) for _ in images]
        if not crops:
            return out
        self.frames_detected += len({i for i, _, _ in owners})
        self.regions_detected += len(crops)
        found = self.detector.detect(crops, max_size=self.region_size)
        per_frame: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for (i, dx, dy), det in zip(owners, found, strict=True):
            per_frame.setdefault(i, []).append((det.boxes + np.array([dx, dy, dx, dy], np.float32), det.scores))
        iou = float(self.detector.head.nms_thresh)
        for i, parts in per_frame.items():
            boxes = np.concatenate([b for b, _ in parts])
            scores = np.concatenate([s for _, s in parts])
            if len(parts) > 1 and len(boxes):  # a bird seen by two overlapping regions is one bird
                keep = batched_nms(
                    torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(len(boxes), dtype=torch.int64), iou
                ).numpy()
                boxes, scores = boxes[keep], scores[keep]
            out[i] = Detections(boxes, scores, Source.DETECTOR)
        return out


def _rounded(box: tuple[float, float, float, float]) -> Box:
    x1, y1, x2, y2 = box
    return round(x1), round(y1), round(x2), round(y2)


def build_localiser(
    config: Config, classifier: Classifier, options: RunOptions | None = None
) -> DetectorLocaliser | MotionGatedLocaliser | None:
    """What `Pipeline.localise` calls for `localiser: detector | detector+motion`; None for motion only.
    The detector runs on `engine.backend`, as the classifier does."""
    if config.localiser == "motion":
        return None
    cfg = config.detector
    canvas = cfg.region_size if config.localiser == "detector+motion" else None
    cache_dir = cache_dir_for(config.model.models_dir)
    detector = load_detector(
        cfg, classifier, canvas=canvas, backend=config.engine.backend, cache_dir=cache_dir, options=options
    )
    if config.localiser == "detector":
        return DetectorLocaliser(detector)
    return MotionGatedLocaliser(
        detector, region_size=cfg.region_size, padding=cfg.region_padding, max_regions=cfg.max_regions
    )
