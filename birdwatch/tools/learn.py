"""`birdwatch learn`: the light head learns your feeder from the teacher, and is used only if it got better.

record (optional: `--record-minutes`; or what `record.enabled` kept while birdwatch ran) -> label (the
teacher over the recording, resuming; tools/detector/label.py) -> train (today's trainer: the head on
the classifier's frozen backbone, on the teacher's labels, cuts the size `detector+motion` runs at) ->
evaluate (pycocotools mAP on the held-out cuts, for the new head and for the one in use, and each
one's cost per frame against the teacher's) -> adopt (the new head replaces the one in use, the old one
kept beside it as `.previous.pt`, only when its held-out mAP@.5 is higher).

Each night's training run is a folder of `<work>/runs/`; the last `KEEP_RUNS` stay, and the one whose head
was adopted last, so that the disk does not fill a run a night.

The teacher's own mAP on these labels is 1 by construction (they are its boxes), so the head's mAP@.5
is also its share of the teacher's. Run it at night (the README's systemd timer) and `systemctl reload
birdwatch` afterwards: the service loads the adopted head at a reload.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birdwatch.capture.recorder import read_index
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import Config
from birdwatch.errors import BirdwatchError
from birdwatch.errors import ModelError
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.locate.teacher import Teacher
from birdwatch.locate.teacher import load_teacher
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import EvalResult
from birdwatch.tools.detector.evaluate import evaluate
from birdwatch.tools.detector.label import LabelOptions
from birdwatch.tools.detector.label import LabelResult
from birdwatch.tools.detector.label import label
from birdwatch.tools.detector.train import TrainOptions
from birdwatch.tools.detector.train import train
from birdwatch.tools.record import record
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Source

log = logging.getLogger(__name__)

HEAD_NAME = "feeder-head.pt"  # where an adopted head goes when the config names none
ADOPTED = "adopted"  # the marker's default place, in the work folder (`--adopted-marker`)
COST_FRAMES = 8  # recorded frames each localiser is timed on
KEEP_RUNS = 3  # training runs kept besides the adopted head's (each is a head, its last state and a curve)
RUN_NAME = re.compile(r"\d{8}-\d{6}")  # a run folder's name, the time it started: sorts as it ran


@dataclass
class LearnOptions:
    work: Path  # labels, training runs and the report
    recording: Path | None = None  # default: the config's record.dir
    record_minutes: float | None = None  # record this long first
    train_minutes: float = 30.0
    epochs: int = 24
    batch_size: int = 8
    uncertain_floor: float | None = None  # as `detector label --uncertain-floor`; None: teacher.score_threshold
    adopt: bool = True
    head: Path | None = None  # where the adopted head goes; default: detector.file, or <models_dir>/feeder-head.pt
    # Written (the adopted head's path) only when a head was adopted, removed at the start: what the nightly
    # unit reloads the service for (systemd/birdwatch-learn.service). Default: <work>/adopted.
    adopted_marker: Path | None = None
    progress: bool = True


@dataclass
class LearnResult:
    labels: LabelResult
    new: EvalResult
    current: EvalResult | None  # the head in use, on the same held-out cuts; None when there is none
    head: Path  # where the adopted head is (or would have gone)
    candidate: Path  # the head this run trained
    adopted: bool
    reason: str
    cost_ms: dict[str, float] = field(default_factory=dict)  # per frame: the head (detector+motion), the teacher

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "labels": self.labels.to_dict(),
            "new": self.new.to_dict(),
            "current": self.current.to_dict() if self.current else None,
            "teacher_mAP50": 1.0,  # its own labels
            "head": str(self.head),
            "candidate": str(self.candidate),
            "adopted": self.adopted,
            "reason": self.reason,
            "cost_ms_per_frame": self.cost_ms,
        }


def learn(config: Config, options: LearnOptions) -> LearnResult:
    marker = (options.adopted_marker or options.work / ADOPTED).expanduser()
    try:
        marker.unlink(missing_ok=True)  # first: a run that stops half-way has adopted nothing
    except OSError as exc:
        raise BirdwatchError(f"adopted marker: cannot remove {marker} ({exc.strerror})") from None
    recording = options.recording or Path(config.record.dir)
    if options.record_minutes:
        config.record.dir = str(recording)
        record(config, minutes=options.record_minutes, progress=options.progress)
    classifier = load_classifier(config.model)
    teacher = load_teacher(config.teacher, config.model, classifier.device)
    labelled = label(
        teacher,
        recording,
        options.work / "labels",
        config.detector,
        LabelOptions(uncertain_floor=options.uncertain_floor, progress=options.progress),
    )
    log.info("labels: %s", json.dumps(labelled.to_dict()))
    val = options.work / "labels" / "val"
    if labelled.birds.get("train", 0) == 0 or labelled.birds.get("val", 0) == 0:
        raise BirdwatchError(
            f"{recording}: the teacher was sure (teacher.label_score {teacher.label_score:g}) of birds in "
            f"{labelled.birds.get('train', 0)} training and {labelled.birds.get('val', 0)} held-out cuts, and set "
            f"{labelled.images.get('uncertain', 0)} cuts aside as uncertain; record more footage with birds first"
        )
    run = options.work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    trained = train(
        classifier,
        TrainOptions(
            data=options.work / "labels" / "train",
            out=run,
            epochs=options.epochs,
            batch_size=options.batch_size,
            size=config.detector.region_size,
            workers=0,
            amp="bf16" if classifier.device.type == "cpu" and cpu_has_bf16() else "auto",
            empty_ratio=None,  # every cut without a bird is a hard negative worth keeping
            bird_classes=["bird"],
            time_limit_s=options.train_minutes * 60,
            progress=options.progress,
        ),
    )
    held_out = BirdBoxes(*resolve(val), bird_classes=["bird"])
    new = _evaluate(trained.head, classifier, held_out, config.detector.region_size)
    target = (options.head or Path(config.detector.file or Path(config.model.models_dir) / HEAD_NAME)).expanduser()
    current = _current(target, classifier, held_out, config.detector.region_size)
    adopted, reason = _verdict(new, current)
    if adopted and not options.adopt:
        reason += " (not adopted: --no-adopt)"
        adopted = False
    result = LearnResult(labelled, new, current, target, trained.head, adopted, reason)
    try:
        result.cost_ms = costs(config, classifier, trained.head, teacher, recording)
    except (OSError, BirdwatchError) as exc:  # a frame removed meanwhile, say: the figures are a report only
        log.warning("could not time the head against the teacher: %s", exc)
    report = result.to_dict()
    (options.work / "learn.json").write_text(json.dumps(report, indent=1))
    with (options.work / "history.jsonl").open("a") as history:
        history.write(json.dumps(report) + "\n")
    if adopted:
        _adopt(trained.head, target)
        _mark(marker, target)
    prune_runs(options.work)
    return result


def _detector(head_file: Path, classifier: Classifier, size: int) -> BirdDetector:
    head, _ = load_head(head_file, classifier)
    return BirdDetector(head, rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=size)


def _evaluate(head_file: Path, classifier: Classifier, data: BirdBoxes, size: int) -> EvalResult:
    return evaluate(_detector(head_file, classifier, size), data, progress=False)


def _current(target: Path, classifier: Classifier, data: BirdBoxes, size: int) -> EvalResult | None:
    if not target.is_file():
        return None
    try:
        return _evaluate(target, classifier, data, size)
    except ModelError as exc:  # a head for another classifier: any head that works beats it
        log.warning("the head in use cannot be judged on this classifier (%s); it counts as none", exc)
        return None


def _verdict(new: EvalResult, current: EvalResult | None) -> tuple[bool, str]:
    if current is None:
        return True, f"no head in use; the new one scores held-out mAP@.5 {new.map50:.3f}"
    if new.map50 > current.map50:
        return True, f"held-out mAP@.5 {new.map50:.3f} beats the head in use ({current.map50:.3f})"
    return False, f"held-out mAP@.5 {new.map50:.3f} does not beat the head in use ({current.map50:.3f}); kept it"


def _adopt(candidate: Path, target: Path) -> None:
    """The candidate in place of the head in use, in one rename; the one it replaces kept beside it."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            shutil.copy2(target, target.with_suffix(".previous.pt"))
        staged = target.with_suffix(".incoming")
        shutil.copy2(candidate, staged)
        staged.replace(target)
    except OSError as exc:
        raise BirdwatchError(
            f"cannot put the new head at {target} ({exc.strerror}); it is at {candidate}, copy it by hand"
        ) from None
    log.info("adopted %s as %s", candidate, target)


def _mark(marker: Path, target: Path) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(target) + "\n")
    except OSError as exc:
        raise BirdwatchError(
            f"adopted {target}, but cannot write the marker {marker} ({exc.strerror}); reload birdwatch by hand"
        ) from None


def _adopted_run(work: Path) -> Path | None:
    """The run folder of the head adopted last, from the history (a line a night, read as it goes)."""
    run = None
    path = work / "history.jsonl"
    if not path.is_file():
        return None
    with path.open() as lines:
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short: that night's report only
                continue
            if row.get("adopted") and row.get("candidate"):
                run = Path(row["candidate"]).parent
    return run


def prune_runs(work: Path, keep: int = KEEP_RUNS) -> list[Path]:
    """Remove all but the last `keep` run folders of `<work>/runs`, and the adopted head's run, which stays
    (its head is the one in use, or, if copying it in place failed, the one to copy by hand). Returns those
    removed. Folders not named as runs are not ours to touch; one that will not go is only logged."""
    runs = work / "runs"
    if not runs.is_dir():
        return []
    found = sorted(p for p in runs.iterdir() if p.is_dir() and RUN_NAME.fullmatch(p.name))
    adopted = _adopted_run(work)
    spare = set(found[-keep:] if keep > 0 else [])
    if adopted is not None:
        spare.add(runs / adopted.name)
    removed = []
    for run in found:
        if run in spare:
            continue
        try:
            shutil.rmtree(run)
        except OSError as exc:
            log.warning("could not remove the old training run %s: %s", run, exc)
            continue
        removed.append(run)
    if removed:
        log.info("removed %d old training runs from %s", len(removed), runs)
    return removed


def costs(
    config: Config, classifier: Classifier, head_file: Path, teacher: Teacher, recording: Path
) -> dict[str, float]:
    """Milliseconds per recorded frame: the head as `detector+motion` runs it (on the motion regions) and
    the teacher as `localiser: teacher` runs it (on the whole frame), on the same frames."""
    import cv2

    # The index first, then only the frames timed: a week's recording decoded whole is tens of GB.
    timed = [r for r in read_index(recording) if r.motion][-COST_FRAMES:]
    kept = [(r, image) for r in timed if (image := cv2.imread(str(recording / r.file), cv2.IMREAD_COLOR)) is not None]
    if not kept:
        return {}
    frames, images = [r for r, _ in kept], [image for _, image in kept]
    cfg = config.detector
    localiser = MotionGatedLocaliser(
        _detector(head_file, classifier, cfg.region_size),
        region_size=cfg.region_size,
        padding=cfg.region_padding,
        max_regions=cfg.max_regions,
    )
    batch = [Frame(r.camera, i, r.ts, image) for i, (r, image) in enumerate(zip(frames, images, strict=True))]
    motion = [
        Detections(np.array(r.motion, np.float32), np.ones(len(r.motion), np.float32), Source.MOTION) for r in frames
    ]
    with torch.inference_mode():
        localiser(batch[:1], motion[:1])  # warm-up
        started = time.perf_counter()
        for frame, moved in zip(batch, motion, strict=True):
            localiser([frame], [moved])
        head_s = (time.perf_counter() - started) / len(batch)
        teacher.detect(images[:1])
        started = time.perf_counter()
        for image in images:
            teacher.detect([image])
        teacher_s = (time.perf_counter() - started) / len(images)
    return {
        "head": round(1000 * head_s, 1),
        "teacher": round(1000 * teacher_s, 1),
        "ratio": round(head_s / teacher_s, 3),
    }
