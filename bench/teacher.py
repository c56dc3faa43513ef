"""Bird or not: false visits of each localiser on a clip with distractors, and what the learned head costs.

1. Stand-ins (no model hub here), out of one training (tests/support/standins.py): the bird-aware
   hgnet_v2_b2 classifier and the teacher, birder's FCOS on that backbone, which knows birds from cats and
   leaves. The tests train them for 600 steps; a benchmark can afford longer (`--teacher-steps`).
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

    PYTHONPATH=. python bench/teacher.py [--workdir DIR] [--teacher-steps 3000] [--train-minutes 4] [--json FILE]
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
from torchvision.ops import box_iou

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
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import coco_map
from birdwatch.tools.detector.evaluate import evaluate
from birdwatch.tools.detector.label import label
from birdwatch.tools.detector.train import TrainOptions
from birdwatch.tools.detector.train import train
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import feeder_with_distractors
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from tests.fixtures_models import DANUBE
from tests.fixtures_models import species_names
from tests.support.standins import CLASSIFIER_FILE
from tests.support.standins import TEACHER_FILE
from tests.support.standins import StandIns
from tests.support.standins import train_stand_ins

log = logging.getLogger("bench.teacher")

# Square frames: the stand-in teacher learnt on square ones (a real one, on COCO, takes any aspect).
SIDE, FPS = 384, 8
REGION = 128  # the scale the stand-in backbone knows birds at
RECORDED_EVERY_S = 15.0  # the first week's frames, as a recording keeps them: spread over the hours


def frames_of(scene: Scene, camera: str = "feeder", every_s: float = 1 / FPS) -> list[Frame]:
    """The clip's frames `every_s` apart in wall and monotonic time."""
    t0 = time.time()
    return [Frame(camera, t + 1, t0 + t * every_s, scene.render(t)[0], t * every_s) for t in range(len(scene))]


def stand_ins(workdir: Path, steps: int) -> StandIns:
    """Trained once per workdir (for `steps`): a kept workdir measures the same stand-ins again."""
    folder = workdir / f"stand-ins-{steps}"
    made = StandIns(folder / CLASSIFIER_FILE, folder / TEACHER_FILE)
    if made.classifier.is_file() and made.teacher.is_file():
        return made
    return train_stand_ins(
        folder, species_names(DANUBE["classes"]), DANUBE["size"], steps=steps, time_limit_s=float("inf")
    )


def learn_head(workdir: Path, made: StandIns, train_minutes: float) -> dict[str, Any]:
    """The first week, as `birdwatch learn` runs it: record, label, train, judge on held-out cuts. The
    recording is the workdir's; the labels and the head are the stand-ins' own (beside them)."""
    recording = workdir / "recording"
    if not recording.is_dir():
        recorder = Recorder(recording, every_s=0.5)
        motion = MotionDetector(MotionConfig(warmup_frames=5))
        # A week's footage spans many minutes, some of them held out (the labeller splits by minute).
        for frame in frames_of(feeder_with_distractors(SIDE, seed=100, visits=24), every_s=RECORDED_EVERY_S):
            recorder.offer(frame, motion(frame.image))
        recorder.close()
    classifier = load_classifier(ModelConfig(file=str(made.classifier), device="cpu"))
    teacher = load_teacher(TeacherConfig(file=str(made.teacher)), ModelConfig(device="cpu"))
    detector_cfg = DetectorConfig(region_size=REGION)
    ours = made.teacher.parent
    labels = label(teacher, recording, ours / "labels", detector_cfg)
    head_file = ours / "head" / "head.pt"
    if not head_file.is_file():
        train(
            classifier,
            TrainOptions(
                data=ours / "labels" / "train",
                out=ours / "head",
                size=REGION,
                workers=0,
                amp="bf16" if cpu_has_bf16() else "off",
                empty_ratio=None,
                bird_classes=["bird"],
                time_limit_s=train_minutes * 60,
                progress=False,
            ),
        )
    head, _ = load_head(head_file, classifier)
    detector = BirdDetector(head, rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=REGION)
    held_out = evaluate(detector, BirdBoxes(*resolve(ours / "labels" / "val"), bird_classes=["bird"]), progress=False)
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
        images.append({"id": t + 1, "width": SIDE, "height": SIDE, "file_name": f"{t}.jpg"})
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
    parser.add_argument("--teacher-steps", type=int, default=3000, help="the stand-ins' training (the tests: 600)")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="the head's training on the labels")
    parser.add_argument("--test-visits", type=int, default=10)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        learned = learn_head(workdir, stand_ins(workdir, args.teacher_steps), args.train_minutes)
        detector, teacher = learned["detector"], learned["teacher"]
        scene = feeder_with_distractors(SIDE, seed=7, visits=args.test_visits)
        frames = frames_of(scene)
        cfg = DetectorConfig(region_size=REGION)
        results: dict[str, Any] = {
            "clip": f"{SIDE}x{SIDE}, {len(frames)} frames at {FPS} fps, {args.test_visits} visits"
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
