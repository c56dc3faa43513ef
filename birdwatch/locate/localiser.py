"""Where to look, from a detector: on whole frames, or only where motion says something moved.

`detector`: every frame of the step goes through the head in one batch (frames from several
cameras share a forward pass). `detector+motion`: the cheap motion gate runs first; a frame in
which nothing moved costs nothing more, and for one in which something did, only square regions
around the motion (grown by `region_padding`, at least `region_size` pixels so small birds are not
blown up, merged where they overlap) are cut from the full-resolution frame, resized to
`region_size` and detected in one batch, as Frigate does. Boxes come back in full-frame pixels;
boxes from overlapping regions are merged by NMS. `teacher`: a generic pretrained detector (teacher.py)
on whole frames; on a CPU, where a pass costs seconds, only on frames in which something moved and at
most `teacher.max_fps` a second per camera.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

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
from birdwatch.config.schema import TEACHER_CPU_FPS
from birdwatch.errors import ModelError
from birdwatch.geometry import enclosing
from birdwatch.geometry import merge_overlapping
from birdwatch.geometry import square_around
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.head import PAD_MULTIPLE
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import HeadOutputs
from birdwatch.locate.head import round_up
from birdwatch.locate.teacher import Teacher
from birdwatch.locate.teacher import load_teacher
from birdwatch.precision import Precision
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Part
from birdwatch.types import Source


class Localiser(Protocol):
    """What the locate stage calls: one Detections per frame. With `needs_motion`, the motion regions of
    every frame come too."""

    needs_motion: bool
    frames_detected: int

    def __call__(self, frames: Sequence[Frame], motion: Sequence[Detections] | None = None) -> list[Detections]: ...

    def runs(self) -> list[Part]:
        """The networks it runs, and on what: what `birdwatch models export` made ready for it."""
        ...


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


class MotionLocaliser:
    """`localiser: motion`: the motion regions themselves (padded squares around what moved, per camera)."""

    needs_motion = True

    def __init__(self) -> None:
        self.frames_detected = 0

    def __call__(self, frames: Sequence[Frame], motion: Sequence[Detections] | None = None) -> list[Detections]:
        if motion is None:
            raise ValueError("MotionLocaliser needs the motion regions of every frame")
        self.frames_detected += sum(1 for moved in motion if len(moved))
        return list(motion)

    def runs(self) -> list[Part]:
        return []  # no network: the classifier alone


class DetectorLocaliser:
    """The head on whole frames, all cameras in one batch."""

    needs_motion = False

    def __init__(self, detector: BirdDetector) -> None:
        self.detector = detector
        self.frames_detected = 0

    def __call__(self, frames: Sequence[Frame], motion: Sequence[Detections] | None = None) -> list[Detections]:
        self.frames_detected += len(frames)
        return self.detector.detect([frame.image for frame in frames])

    def runs(self) -> list[Part]:
        return [detector_part(self.detector)]


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

    def runs(self) -> list[Part]:
        return [detector_part(self.detector)]

    def regions(self, motion: Detections, width: int, height: int) -> list[Box]:
        return motion_regions(motion, width, height, self.region_size, self.padding, self.max_regions)

    def __call__(self, frames: Sequence[Frame], motion: Sequence[Detections] | None = None) -> list[Detections]:
        if motion is None:
            raise ValueError("MotionGatedLocaliser needs the motion regions of every frame")
        crops: list[np.ndarray] = []
        owners: list[tuple[int, int, int]] = []  # frame index, x offset, y offset
        for i, (frame, moved) in enumerate(zip(frames, motion, strict=True)):
            if not len(moved):
                continue
            width, height = frame.size
            for x1, y1, x2, y2 in self.regions(moved, width, height):
                crops.append(frame.image[y1:y2, x1:x2])
                owners.append((i, x1, y1))
        out = [Detections.empty(Source.DETECTOR) for _ in frames]
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
            out[i] = Detections(boxes, scores, Source.DETECTOR, birds=scores)
        return out


class TeacherLocaliser:
    """The teacher on whole frames, all due cameras in one batch. Gated: only frames in which something
    moved. Rate-limited: at most `max_fps` passes a second per camera (by the frames' read times); the
    frames between get no boxes, and their visits carry on (a track ends only after tracking.timeout_s)."""

    def __init__(self, teacher: Teacher, *, gate: bool, max_fps: float, track_timeout_s: float = 0.0) -> None:
        self.teacher = teacher
        self.needs_motion = gate
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self.track_timeout_s = track_timeout_s  # passes further apart than this end every track between them
        self._last: dict[str, float] = {}  # camera -> read time of its last frame the teacher saw
        self._warned = False
        self.frames_detected = 0

    def runs(self) -> list[Part]:
        return [Part("teacher", Backend.TORCH.value, str(self.teacher.precision.dtype))]  # never exported

    def due(self, frame: Frame, moved: Detections | None) -> bool:
        if self.needs_motion and (moved is None or not len(moved)):
            return False
        last = self._last.get(frame.camera)
        return last is None or frame.mono - last >= self.interval

    def __call__(self, frames: Sequence[Frame], motion: Sequence[Detections] | None = None) -> list[Detections]:
        if self.needs_motion and motion is None:
            raise ValueError("a motion-gated TeacherLocaliser needs the motion regions of every frame")
        out = [Detections.empty(Source.TEACHER) for _ in frames]
        picked = []
        for i, frame in enumerate(frames):
            if self.due(frame, motion[i] if motion else None):  # in turn: two frames of a camera are one pass
                self._last[frame.camera] = frame.mono
                picked.append(i)
        if picked:
            self.frames_detected += len(picked)
            started = time.monotonic()
            for i, found in zip(picked, self.teacher.detect([frames[i].image for i in picked]), strict=True):
                out[i] = found
            self._warn_if_slow(time.monotonic() - started)
        return out

    def _warn_if_slow(self, seconds: float) -> None:
        if self._warned or not self.track_timeout_s or seconds < self.track_timeout_s:
            return
        self._warned = True
        log.warning(
            "a teacher pass took %.1f s, more than tracking.timeout_s (%g s): visits end between two passes. "
            "Use fewer cameras per machine, a GPU, or raise tracking.timeout_s",
            seconds,
            self.track_timeout_s,
        )


def detector_part(detector: BirdDetector) -> Part:
    return Part("detector", Backend(detector.backend).value, str(detector.runs_in))


def motion_regions(
    motion: Detections, width: int, height: int, region_size: int, padding: float, max_regions: int
) -> list[Box]:
    """What `detector+motion` cuts from a frame: padded squares (at least `region_size`) around the motion
    boxes, merged where they overlap, inside the frame; one around them all beyond `max_regions`."""
    squares = [
        _rounded(square_around(box, padding, width, height, min_side=region_size)) for box in motion.boxes.tolist()
    ]
    merged = merge_overlapping(squares)
    if len(merged) > max_regions:  # many moving things: one region around them all
        merged = [enclosing(merged)]
    return merged


def _rounded(box: tuple[float, float, float, float]) -> Box:
    x1, y1, x2, y2 = box
    return round(x1), round(y1), round(x2), round(y2)


def build_teacher_localiser(config: Config, classifier: Classifier) -> TeacherLocaliser:
    """`localiser: teacher` on the classifier's device: gated and at most TEACHER_CPU_FPS on a CPU (auto)."""
    cfg = config.teacher
    teacher = load_teacher(cfg, config.model, classifier.device)
    on_cpu = classifier.device.type == "cpu"
    gate = cfg.motion_gate == "on" or (cfg.motion_gate == "auto" and on_cpu)
    max_fps = cfg.max_fps or (TEACHER_CPU_FPS if on_cpu else 0.0)
    log.info(
        "localiser teacher: %s, %s",
        "only where motion is" if gate else "every frame",
        f"at most {max_fps:g} passes/s per camera" if max_fps else "no rate limit",
    )
    return TeacherLocaliser(teacher, gate=gate, max_fps=max_fps, track_timeout_s=config.tracking.timeout_s)


def build_localiser(config: Config, classifier: Classifier, options: RunOptions | None = None) -> Localiser:
    """What the locate stage runs for `localiser: motion | detector | detector+motion | teacher`. The head runs
    on `engine.backend`, as the classifier does; the teacher on torch."""
    if config.localiser == "motion":
        return MotionLocaliser()
    if config.localiser == "teacher":
        return build_teacher_localiser(config, classifier)
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
