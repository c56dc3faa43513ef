"""Bird or not: false visits of each localiser on a clip with distractors, and what the learned head costs.

1. Stand-ins (no model hub here): the bird-aware hgnet_v2_b2 classifier (tests/support/backbone.py) and
   the teacher, an FCOS detector trained on synthetic birds, cats and leaves (tests/support/teacher.py).
2. A "first week" clip (many visits, a cat, falling leaves, a swaying branch, cloud shadows) goes
   through the Recorder, `detector label` (the teacher) and the head's trainer, as `birdwatch learn` runs
   them; the head is judged with pycocotools on the held-out cuts against the teacher's labels.
3. A "test day" clip from other seeds, with ground truth: for `motion`, `detector+motion` with the
   learned head and `teacher`, the visits told against the true visits (a told visit is true when its
   box overlaps a bird of a presence window it spans), through the real Locator, tracker and visit
   rules (every crop named one species: what is measured is where the localiser looks, not the
   classifier). Also mAP@.5 against the ground truth on held-out frames, head and teacher.
4. Milliseconds per frame: the head as detector+motion runs it, the stand-in teacher, and D-FINE L (the
   default teacher's architecture, untrained: the same cost) at 640 px.

    PYTHONPATH=. python bench/teacher.py [--workdir DIR] [--train-minutes 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from birder.model_registry import registry
from pycocotools.coco import COCO

from birdwatch.capture.recorder import Recorder
from birdwatch.classify.models import load_classifier
from birdwatch.config import DetectorConfig
from birdwatch.config import EventsConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import TeacherConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.visits import Visits
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.locate.localiser import TeacherLocaliser
from birdwatch.locate.motion import MotionDetector
from birdwatch.locate.teacher import load_teacher
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import coco_map
from birdwatch.tools.detector.evaluate import evaluate
from birdwatch.tools.detector.label import label
from birdwatch.tools.detector.train import TrainOptions
from birdwatch.tools.detector.train import train
from birdwatch.tools.synthetic import Scene
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from tests.fixtures_models import DANUBE
from tests.fixtures_models import species_names
from tests.support.backbone import fine_tune_backbone
from tests.support.teacher import train_teacher

log = logging.getLogger("bench.teacher")

# Square frames: the stand-in teacher learnt on square stills (a real one, on COCO, takes any aspect).
WIDTH, HEIGHT, FPS = 384, 384, 8
REGION = 128  # the scale the stand-in backbone knows birds at
DISTRACTORS = {"sway": 0.03, "light": 0.25}


def clip(seed: int, visits: int, *, gap: int = 40, length: int = 40) -> Scene:
    """`visits` presence windows with a cat and leaves passing between and during them."""
    windows = [(10 + i * (length + gap), 10 + i * (length + gap) + length) for i in range(visits)]
    end = windows[-1][1] + 30
    others = []
    for i, (a, b) in enumerate(windows):
        others.append(("cat", b + 2, b + gap - 2) if i % 2 == 0 else ("leaf", a + 5, b - 5))
    return Scene(
        WIDTH,
        HEIGHT,
        end,
        n_birds=1,
        seed=seed,
        presence=windows,
        perch_fraction=0.6,
        size_range=(0.22, 0.3),
        varied=True,
        others=others,
        **DISTRACTORS,
    )


def frames_of(scene: Scene, camera: str = "feeder") -> list[Frame]:
    t0 = time.time()
    return [Frame(camera, t + 1, t0 + t / FPS, scene.render(t)[0], t / FPS) for t in range(len(scene))]


def stand_ins(workdir: Path) -> tuple[Path, Path]:
    classifier = workdir / "hgnet_v2_b2_synthetic-birds.pt"
    if not classifier.is_file():
        fine_tune_backbone(DANUBE["network"], classifier, species_names(DANUBE["classes"]), DANUBE["size"], workdir)
    teacher = workdir / "fcos_synthetic_hgnet_v2_b2_synthetic-birds.pt"
    if not teacher.is_file():
        train_teacher(classifier, teacher)
    return classifier, teacher


def learn_head(workdir: Path, classifier_file: Path, teacher_file: Path, train_minutes: float) -> dict[str, Any]:
    """The first week, as `birdwatch learn` runs it: record, label, train, judge on held-out cuts."""
    recording = workdir / "recording"
    if not recording.is_dir():
        recorder = Recorder(recording, every_s=0.5)
        motion = MotionDetector(MotionConfig(warmup_frames=5))
        for frame in frames_of(clip(seed=100, visits=24)):
            recorder.offer(frame, motion(frame.image))
        recorder.close()
    classifier = load_classifier(ModelConfig(file=str(classifier_file), device="cpu"))
    teacher = load_teacher(TeacherConfig(file=str(teacher_file)), ModelConfig(device="cpu"))
    detector_cfg = DetectorConfig(region_size=REGION)
    labels = label(teacher, recording, workdir / "labels", detector_cfg)
    head_file = workdir / "head" / "head.pt"
    if not head_file.is_file():
        train(
            classifier,
            TrainOptions(
                data=workdir / "labels" / "train",
                out=workdir / "head",
                size=REGION,
                workers=0,
                amp="bf16",
                empty_ratio=None,
                bird_classes=["bird"],
                time_limit_s=train_minutes * 60,
                progress=False,
            ),
        )
    head, _ = load_head(head_file, classifier)
    detector = BirdDetector(head, rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=REGION)
    held_out = evaluate(
        detector, BirdBoxes(*resolve(workdir / "labels" / "val"), bird_classes=["bird"]), progress=False
    )
    return {
        "labels": labels.to_dict(),
        "head_vs_teacher_labels_mAP50": round(held_out.map50, 3),
        "classifier": classifier,
        "teacher": teacher,
        "detector": detector,
    }


def told_visits(localise: Any, scene: Scene, frames: list[Frame]) -> dict[str, Any]:
    """Visits told by the real tracker and visit rules on what `localise` finds, against the truth."""
    visits = Visits(TrackingConfig(timeout_s=2.0), EventsConfig(min_score=0.0, cooldown_s=0.0), "bench")
    named = (SpeciesScore("bird", 1.0),)
    events = []
    started = time.perf_counter()
    for frame in frames:
        found = localise(frame)
        _, told = visits.observe(frame, found.with_species([named] * len(found)))
        events += [t.event for t in told]
    seconds = time.perf_counter() - started
    events += [t.event for t in visits.close()]
    truth = [(a, b) for a, b in scene.presence]
    t0 = frames[0].ts
    told = [e for e in events if e.kind == "new"]
    matched: set[int] = set()
    false = 0
    for event in told:
        first, last = round((event.first_seen - t0) * FPS), round((event.last_seen - t0) * FPS)
        hit = None
        for w, (a, b) in enumerate(truth):
            if first < b and last >= a and _overlaps_bird(scene, event.box, max(a, first), min(b, last + 1)):
                hit = w
                break
        if hit is None:
            false += 1
        else:
            matched.add(hit)
    return {
        "true_visits": len(truth),
        "told": len(told),
        "false": false,
        "missed": len(truth) - len(matched),
        "false_share": round(false / max(1, len(told)), 3),
        "ms_per_frame": round(1000 * seconds / len(frames), 1),
    }


def _overlaps_bird(scene: Scene, box: tuple[int, int, int, int], a: int, b: int) -> bool:
    bx = torch.tensor([box], dtype=torch.float32)
    from torchvision.ops import box_iou

    for t in range(a, b):
        truth = scene.render(t)[1]
        if truth and float(box_iou(bx, torch.tensor(truth, dtype=torch.float32)).max()) >= 0.1:
            return True
    return False


def map_against_truth(localise: Any, scene: Scene, frames: list[Frame], every: int = 4) -> float:
    """mAP@.5 of `localise` (frame -> Detections, in order, as it runs; birds only counted) against the
    clip's true bird boxes, on every `every`-th frame."""
    images, annotations, results = [], [], []
    for t, frame in enumerate(frames):
        found = localise(frame)
        if t % every:
            continue
        boxes = scene.render(t)[1]
        images.append({"id": t + 1, "width": WIDTH, "height": HEIGHT, "file_name": f"{t}.jpg"})
        for x1, y1, x2, y2 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": t + 1,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        found = found[~found.not_birds()]
        for (x1, y1, x2, y2), score in zip(found.boxes.tolist(), found.scores.tolist(), strict=True):
            results.append({"image_id": t + 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "bird"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return round(coco_map(truth, results).map50, 3)


def dfine_ms(repeats: int = 3) -> float:
    """D-FINE L on hgnet_v2_b4 (the default teacher's architecture, untrained) at 640x640, one frame."""
    backbone = registry.net_factory("hgnet_v2_b4", 80, 3, size=(640, 640))
    net = registry.detection_net_factory("d_fine_l", 80, backbone, size=(640, 640)).eval()
    x = torch.rand(1, 3, 640, 640)
    with torch.inference_mode():
        net(x)
        started = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return round(1000 * (time.perf_counter() - started) / repeats, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="keep stand-ins, recording, labels and head here (default: a temp dir)")
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--test-visits", type=int, default=10)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        classifier_file, teacher_file = stand_ins(workdir)
        learned = learn_head(workdir, classifier_file, teacher_file, args.train_minutes)
        detector, teacher = learned["detector"], learned["teacher"]
        scene = clip(seed=7, visits=args.test_visits)
        frames = frames_of(scene)
        cfg = DetectorConfig(region_size=REGION)
        results: dict[str, Any] = {
            "clip": f"{WIDTH}x{HEIGHT}, {len(frames)} frames at {FPS} fps, {args.test_visits} visits"
        }

        def motion_only() -> Any:
            motion = MotionDetector(MotionConfig(warmup_frames=5))
            return lambda frame: motion(frame.image)

        def head_where_motion() -> Any:
            motion = MotionDetector(MotionConfig(warmup_frames=5))
            gated = MotionGatedLocaliser(
                detector, region_size=cfg.region_size, padding=cfg.region_padding, max_regions=cfg.max_regions
            )
            return lambda frame: gated([frame], [motion(frame.image)])[0]

        def teacher_where_motion() -> Any:
            motion = MotionDetector(MotionConfig(warmup_frames=5))
            gated = TeacherLocaliser(teacher, gate=True, max_fps=0.0)
            return lambda frame: gated([frame], [motion(frame.image)])[0]

        for name, make in (
            ("motion", motion_only),
            ("detector+motion", head_where_motion),
            ("teacher", teacher_where_motion),
        ):
            results[name] = told_visits(make(), scene, frames)
            log.info("%s: %s", name, results[name])
        results["mAP50_vs_truth"] = {
            "head (detector+motion)": map_against_truth(head_where_motion(), scene, frames),
            "teacher (where motion is)": map_against_truth(teacher_where_motion(), scene, frames),
        }
        results["head_vs_teacher_labels_mAP50"] = learned["head_vs_teacher_labels_mAP50"]
        results["labels"] = learned["labels"]
        head_ms = results["detector+motion"]["ms_per_frame"]
        teacher_ms = results["teacher"]["ms_per_frame"]
        results["cost_ms_per_frame"] = {
            "head (detector+motion, motion included)": head_ms,
            "stand-in teacher (where motion is)": teacher_ms,
            "D-FINE L 640 (every frame)": dfine_ms(),
        }
        results["head_over_dfine"] = round(head_ms / results["cost_ms_per_frame"]["D-FINE L 640 (every frame)"], 3)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
