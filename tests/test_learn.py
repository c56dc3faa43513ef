"""From your own footage to a head that knows your feeder.

`birdwatch record` keeps frames where something moved: rate-limited, near-identical ones once, within
a disk budget that keeps every hour of the day. `birdwatch detector label` has the teacher label them,
resumably, into COCO (scores kept, uncertain boxes set aside, other animals and empty motion as hard
negatives) with a contact sheet. `birdwatch learn` trains the head on those labels, judges it on the
held-out ones with pycocotools, and adopts it only when it beats the head in use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from birdwatch.capture.recorder import INDEX
from birdwatch.capture.recorder import Recorder
from birdwatch.capture.recorder import read_index
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Detections
from birdwatch.types import Frame

T0 = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))  # local noon


def frame(seq: int, image: np.ndarray, ts: float = T0, camera: str = "feeder", mono: float | None = None) -> Frame:
    return Frame(camera, seq, ts, image, seq * 1.0 if mono is None else mono)


def moved(*boxes: tuple[float, float, float, float]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.ones(len(boxes), np.float32))


def scene_frames(n: int, seed: int = 1) -> list[np.ndarray]:
    scene = Scene(320, 240, n, n_birds=1, seed=seed, presence=[(0, n)], perch_fraction=0.9, varied=True)
    return [scene.render(t)[0] for t in range(n)]


# ---- record ------------------------------------------------------------------------------------------


def test_only_frames_where_something_moved_are_kept_at_most_one_per_interval(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, every_s=2.0)
    images = [np.random.default_rng(i).integers(0, 255, (240, 320, 3), np.uint8) for i in range(6)]
    kept = [
        recorder.offer(frame(i, images[i], mono=i * 0.75), moved((10, 10, 90, 90)) if i else moved()) for i in range(6)
    ]
    assert [p is not None for p in kept] == [False, True, False, False, True, False]  # none without motion; 2 s apart
    assert [r.file for r in read_index(tmp_path)] == [str(p.relative_to(tmp_path)) for p in kept if p]


def test_a_bird_that_sits_still_is_kept_once_and_a_new_scene_is_kept(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, every_s=0.0)
    still = scene_frames(40)
    region = (60.0, 60.0, 260.0, 200.0)
    for i in (20, 22, 24, 26):  # the perched bird, sensor noise apart
        recorder.offer(frame(i, still[i]), moved(region))
    assert recorder.kept == 1 and recorder.similar == 3
    other = scene_frames(5, seed=9)[2]  # another scene in the same place
    assert recorder.offer(frame(50, other), moved(region)) is not None
    assert recorder.offer(frame(51, still[24]), moved((0, 0, 80, 60))) is not None  # the same look elsewhere: new


def test_over_the_budget_the_most_crowded_hour_thins_so_night_and_day_both_stay(tmp_path: Path) -> None:
    images = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8) for i in range(30)]
    size = len(cv2.imencode(".jpg", images[0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    recorder = Recorder(tmp_path, every_s=0.0, budget_mb=12 * size / 1e6)
    for i in range(4):  # four frames at 3 in the morning, then noon's, many
        recorder.offer(frame(i, images[i], ts=T0 - 9 * 3600 + i), moved((0, 0, 50, 50)))
    for i in range(4, 30):
        recorder.offer(frame(i, images[i], ts=T0 + i), moved((0, 0, 50, 50)))
    hours = [r.hour for r in read_index(tmp_path)]
    assert recorder.bytes <= recorder.budget and recorder.evicted > 0
    assert hours.count(3) == 4, hours  # the night kept whole; noon thinned, its newest kept
    assert [r.file for r in read_index(tmp_path)][-1].endswith("-29.jpg")
    assert sum(1 for _ in (tmp_path / "frames").rglob("*.jpg")) == len(hours)


def test_a_recording_carries_on_across_runs_and_a_cut_short_index_line_is_skipped(tmp_path: Path) -> None:
    first = Recorder(tmp_path, every_s=0.0)
    images = scene_frames(3, seed=4)
    first.offer(frame(1, images[0]), moved((0, 0, 100, 100)))
    first.close()
    with (tmp_path / INDEX).open("a") as index:
        index.write('{"file": "frames/feeder/2026')  # the power went while it wrote
    again = Recorder(tmp_path, every_s=0.0)
    assert len(again.frames) == 1 and again.bytes == again.frames[0].size
    assert again.offer(frame(2, images[0]), moved((0, 0, 100, 100))) is None  # the same frame as last run's
    assert again.offer(frame(3, scene_frames(3, seed=8)[1]), moved((0, 0, 100, 100))) is not None
    again.close()
    assert len(read_index(tmp_path)) == 2, "the line after the cut one is a line of its own"


# ---- record -> label -> learn, as processes ------------------------------------------------------------


def birdwatch(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.timeout(1800)
def test_record_label_learn_gives_a_head_adopted_only_when_it_is_better(
    teacher_weights: Path, bird_backbone_weights: Path, tmp_path: Path
) -> None:
    fps = 8
    windows = [(4, 34), (50, 80), (96, 126), (142, 172)]  # four visits
    scene = Scene(
        320,
        240,
        190,
        n_birds=1,
        seed=12,
        presence=windows,
        perch_fraction=0.6,
        size_range=(0.22, 0.3),
        varied=True,
        others=[("cat", 80, 110), ("leaf", 30, 60)],
        sway=0.02,
        light=0.2,
    )
    video = tmp_path / "feeder.avi"
    write_video(video, (scene.render(t)[0] for t in range(len(scene))), fps=fps)
    head = tmp_path / "heads" / "feeder-head.pt"
    config = tmp_path / "birdwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": str(video), "realtime": True, "motion": {"warmup_frames": 4}}],
                "model": {"file": str(bird_backbone_weights), "device": "cpu"},
                "teacher": {"file": str(teacher_weights)},
                "detector": {"region_size": 128},  # the scale the test backbone knows birds at
                "record": {"dir": str(tmp_path / "recording"), "every_s": 0.2},
            }
        )
    )
    recorded = birdwatch("record", "--config", str(config), timeout=300)
    frames = read_index(tmp_path / "recording")
    assert len(frames) >= 40, recorded.stdout

    labels = tmp_path / "labels"
    birdwatch("detector", "label", "--config", str(config), "--out", str(labels), timeout=600)
    header, *lines = (labels / "teacher.jsonl").read_text().splitlines()
    assert json.loads(header)["teacher"] == teacher_weights.stem and len(lines) == len(frames)
    (labels / "teacher.jsonl").write_text("\n".join([header, *lines[:10]]) + "\n" + lines[10][:20])  # stopped mid-line
    again = birdwatch("detector", "label", "--config", str(config), "--out", str(labels), timeout=600)
    assert f"{len(frames)} frames labelled" in again.stdout and f"({len(frames) - 10} now)" in again.stdout
    train = json.loads((labels / "train" / "annotations.json").read_text())
    birds = [a for a in train["annotations"] if a["category_id"] == 1]
    assert birds and all(a["score"] >= 0.4 for a in birds)
    with_bird = {a["image_id"] for a in birds}
    assert len(train["images"]) > len(with_bird), "motion without a bird is kept as hard negatives"
    assert all(img["width"] >= 128 for img in train["images"])  # the regions detector+motion cuts
    sheet = cv2.imread(str(labels / "contact-sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 6 * 320

    work = tmp_path / "learn"
    common = ("--config", str(config), "--work", str(work), "--head", str(head), "--no-progress")
    first = birdwatch("learn", *common, "--train-minutes", "0.6", timeout=900)
    report = json.loads((work / "learn.json").read_text())
    assert report["adopted"] and head.is_file(), first.stdout
    assert report["new"]["mAP50"] >= 0.5, report["new"]
    assert report["cost_ms_per_frame"]["head"] > 0 and report["cost_ms_per_frame"]["teacher"] > 0

    adopted = head.read_bytes()
    second = birdwatch("learn", *common, "--train-minutes", "0.02", "--epochs", "1", timeout=900)
    report = json.loads((work / "learn.json").read_text())
    assert not report["adopted"], second.stdout
    assert "does not beat the head in use" in report["reason"]
    assert head.read_bytes() == adopted, "the head in use stays"
    assert len((work / "history.jsonl").read_text().splitlines()) == 2
