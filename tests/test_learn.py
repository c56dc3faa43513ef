"""From your own footage to a head that knows your feeder.

`birdwatch record` keeps frames where something moved: rate-limited, near-identical ones once, within
a disk budget that keeps every hour of the day. `birdwatch detector label` has the teacher label them,
resumably, into COCO (scores kept, uncertain boxes set aside, other animals and empty motion as hard
negatives) with a contact sheet. `birdwatch learn` trains the head on those labels, judges it on the
held-out ones with pycocotools, and adopts it only when it beats the head in use.

Two teachers stand in for birder's pretrained detectors (tests/fixtures_detector.py): an untrained one for
the files, their resumption and the plumbing; and one trained with the bird classifier stand-in, which
sees birds, for the whole flow ending in a head adopted, and a weaker one refused. How well the learnt
head does against the teacher on a clip with distractors is measured by bench/teacher.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from birdwatch.capture.recorder import INDEX
from birdwatch.capture.recorder import Recorded
from birdwatch.capture.recorder import Recorder
from birdwatch.capture.recorder import read_index
from birdwatch.cli import main
from birdwatch.config import DetectorConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import TeacherConfig
from birdwatch.errors import BirdwatchError
from birdwatch.locate.motion import MotionDetector
from birdwatch.locate.teacher import load_teacher
from birdwatch.tools import learn as learn_module
from birdwatch.tools.detector.evaluate import STAT_NAMES
from birdwatch.tools.detector.evaluate import EvalResult
from birdwatch.tools.detector.label import LabelOptions
from birdwatch.tools.detector.label import LabelResult
from birdwatch.tools.detector.label import Sure
from birdwatch.tools.detector.label import TeacherBox
from birdwatch.tools.detector.label import _write_datasets
from birdwatch.tools.detector.label import label
from birdwatch.tools.learn import COST_FRAMES
from birdwatch.tools.learn import KEEP_RUNS
from birdwatch.tools.learn import LearnOptions
from birdwatch.tools.learn import _adopt
from birdwatch.tools.learn import _verdict
from birdwatch.tools.learn import costs
from birdwatch.tools.learn import prune_runs
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import feeder_with_distractors
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Source

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


@pytest.mark.timeout(120)
def test_a_second_recorder_on_a_folder_in_use_is_refused_in_one_line_and_the_first_loses_nothing(
    tmp_path: Path,
) -> None:
    """Two recorders on one folder would lose index lines: one's rewrite of the index (a rename over it) drops
    what the other appended meanwhile. So the folder is one recorder's while it runs."""
    recording = tmp_path / "recording"
    first = Recorder(recording, every_s=0.0)
    images = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8) for i in range(4)]
    first.offer(frame(1, images[0]), moved((0, 0, 100, 100)))
    config = tmp_path / "birdwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "yard", "url": "rtsp://127.0.0.1:9/yard"}],  # never opened: refused before
                "model": {"device": "cpu"},
                "record": {"dir": str(recording)},
            }
        )
    )

    second = subprocess.run(
        [sys.executable, "-m", "birdwatch", "record", "--config", str(config), "--minutes", "0.05"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    with pytest.raises(BirdwatchError) as in_process:  # a pipeline's recorder, the same
        Recorder(recording, every_s=0.0)

    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    said = second.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"birdwatch: error: record.dir: {recording} is in use: "), said
    assert f"birdwatch pid {os.getpid()} records into it" in said[0] and "stop that one first" in said[0]
    assert "\n" not in str(in_process.value) and f"{recording} is in use" in str(in_process.value)
    for i in (2, 3):
        first.offer(frame(i, images[i - 1]), moved((0, 0, 100, 100)))
    first.close()
    assert [r.file.rsplit("-", 1)[1] for r in read_index(recording)] == ["1.jpg", "2.jpg", "3.jpg"], "nothing lost"
    again = Recorder(recording, every_s=0.0)  # once the first has closed, the folder is free again
    assert len(again.frames) == 3
    again.close()


# ---- record -> label -> learn, as processes ------------------------------------------------------------


def birdwatch(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.timeout(600)
def test_record_then_label_makes_resumable_coco_cuts_and_a_contact_sheet(
    teacher_weights: Path, small_weights: Path, tmp_path: Path
) -> None:
    fps = 10
    scene = Scene(
        192, 144, 100, n_birds=1, seed=12, presence=[(5, 45), (55, 95)], perch_fraction=0.6, size_range=(0.25, 0.3),
        varied=True, others=[("cat", 40, 70)], sway=0.02, light=0.2,
    )  # fmt: skip
    video = tmp_path / "feeder.avi"
    write_video(video, (scene.render(t)[0] for t in range(len(scene))), fps=fps)
    config = tmp_path / "birdwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": str(video), "realtime": True, "motion": {"warmup_frames": 4}}],
                "model": {"file": str(small_weights), "device": "cpu"},
                # Untrained: it scores nothing near 0.4, so its boxes this low are what there is to write.
                "teacher": {"file": str(teacher_weights), "score_threshold": 0.02, "label_score": 0.03},
                "detector": {"region_size": 96},
                "record": {"dir": str(tmp_path / "recording"), "every_s": 0.1},
            }
        )
    )
    recorded = birdwatch("record", "--config", str(config), timeout=300)
    frames = read_index(tmp_path / "recording")
    assert len(frames) >= 20, recorded.stdout
    assert all(f.motion for f in frames), "only frames where something moved"

    labels = tmp_path / "labels"
    label = ("detector", "label", "--config", str(config), "--out", str(labels), "--uncertain-floor", "0.01")
    birdwatch(*label, timeout=300)
    header, *lines = (labels / "teacher.jsonl").read_text().splitlines()
    assert json.loads(header)["teacher"] == teacher_weights.stem and len(lines) == len(frames)
    (labels / "teacher.jsonl").write_text("\n".join([header, *lines[:10]]) + "\n" + lines[10][:20])  # stopped mid-line
    again = birdwatch(*label, timeout=300)
    assert f"{len(frames)} frames labelled" in again.stdout and f"({len(frames) - 10} now)" in again.stdout
    splits = {s: json.loads((labels / s / "annotations.json").read_text()) for s in ("train", "val", "uncertain")}
    cuts = [img for data in splits.values() for img in data["images"]]
    assert len(cuts) >= len(frames)  # at least one motion region of each frame
    assert all(min(img["width"], img["height"]) >= 96 for img in cuts)  # the regions detector+motion cuts
    for data in splits.values():
        assert {c["name"] for c in data["categories"]} == {"bird", "not_bird"}
        for a in data["annotations"]:
            assert "score" in a and a["category_id"] in (1, 2)
            if data is not splits["uncertain"] and a["category_id"] == 1:
                assert a["score"] >= 0.03, "a bird is learnt only at teacher.label_score"
            image = next(img for img in data["images"] if img["id"] == a["image_id"])
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= image["width"] + 0.01 and y + h <= image["height"] + 0.01
        assert len(list((labels / "train" / "images").iterdir())) == len(splits["train"]["images"])
    sheet = cv2.imread(str(labels / "contact-sheet.png"))
    assert sheet is not None and sheet.shape[1] == 6 * 320

    # The untrained teacher at its own threshold finds no bird: learn says so in one line, and adopts nothing.
    config.write_text(
        config.read_text()
        .replace("label_score: 0.03", "label_score: 0.6")
        .replace("score_threshold: 0.02", "score_threshold: 0.4")
    )
    head = tmp_path / "heads" / "feeder-head.pt"
    marker = tmp_path / "run" / "adopted"
    marker.parent.mkdir()
    marker.write_text("a head adopted by an earlier run\n")
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "learn", "--config", str(config), "--work", str(tmp_path / "learn"),
         "--head", str(head), "--adopted-marker", str(marker), "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("record more footage with birds first")
    assert not head.exists()
    assert not marker.exists(), "an earlier run's marker goes at the start: this run adopted nothing"


# ---- the whole flow, with a teacher that sees ---------------------------------------------------------

RECORDED_EVERY_S = 15.0  # a recording keeps a frame now and then over hours: many minutes, some held out


def record_feeder(recording: Path, visits: int, seed: int) -> int:
    """What `birdwatch record` keeps of a feeder clip with a cat, falling leaves, wind and clouds (in process:
    the command itself is tested above)."""
    recorder = Recorder(recording, every_s=1.0)
    motion = MotionDetector(MotionConfig(warmup_frames=5))
    scene = feeder_with_distractors(384, seed, visits)
    for t in range(len(scene)):
        image = scene.render(t)[0]
        at = t * RECORDED_EVERY_S
        recorder.offer(Frame("feeder", t + 1, T0 + at, image, at), motion(image))
    recorder.close()
    return recorder.kept


@pytest.mark.timeout(1200)
def test_learn_adopts_a_head_that_learnt_the_teachers_birds_and_refuses_a_weaker_one(
    trained_teacher: Path, bird_backbone_weights: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "recording"
    assert record_feeder(recording, visits=6, seed=100) >= 180
    config = tmp_path / "birdwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": "rtsp://127.0.0.1:9/feeder"}],
                "model": {"file": str(bird_backbone_weights), "device": "cpu", "models_dir": str(tmp_path / "models")},
                # Briefly trained, it is rarely as sure as a label needs (0.6): it labels at its threshold.
                "teacher": {"file": str(trained_teacher), "label_score": 0.4},
                "detector": {"region_size": 128},
                "record": {"dir": str(recording)},
            }
        )
    )
    work, head = tmp_path / "learn", tmp_path / "heads" / "feeder-head.pt"
    marker = tmp_path / "run" / "birdwatch-learn" / "adopted"  # as the nightly unit tells it: not in --work

    def learn(epochs: int) -> dict:
        # A briefly trained teacher scores much of a textured background a little below its threshold: with the
        # floor at the label score nothing is set aside, and its sure boxes are the labels. Epochs, not minutes,
        # end the training (the time limit is far beyond the process's timeout), so a slow machine learns the
        # same head.
        birdwatch(
            "learn", "--config", str(config), "--work", str(work), "--head", str(head), "--epochs", str(epochs),
            "--train-minutes", "600", "--uncertain-floor", "0.4", "--adopted-marker", str(marker), "--no-progress",
            timeout=800,
        )  # fmt: skip
        return json.loads((work / "learn.json").read_text())

    first = learn(12)
    labels = first["labels"]
    assert labels["birds"]["train"] >= 60 and labels["birds"]["val"] >= 15, labels
    assert first["adopted"] and head.is_file() and marker.read_text().strip() == str(head)
    assert not (work / "adopted").exists(), "the marker is where learn was told, only there"
    assert first["new"]["mAP50"] >= 0.4, f"held-out mAP@.5 {first['new']['mAP50']:.2f} against the teacher's labels"
    assert first["cost_ms_per_frame"]["head"] > 0 and first["cost_ms_per_frame"]["teacher"] > 0  # (same backbone here)
    adopted = head.read_bytes()

    second = learn(1)  # one epoch: a head that has hardly begun
    assert second["labels"]["labelled_now"] == 0, "the teacher's labels are resumed, not made again"
    assert not second["adopted"] and "does not beat the head in use" in second["reason"], second["reason"]
    assert second["current"]["mAP50"] == first["new"]["mAP50"], "the head in use is judged on the same cuts"
    assert head.read_bytes() == adopted and not head.with_suffix(".previous.pt").exists()
    assert not marker.exists(), "nothing for the nightly unit to reload"
    assert len((work / "history.jsonl").read_text().splitlines()) == 2


def test_an_uncertain_floor_above_the_teachers_label_score_is_one_line(teacher_weights: Path, tmp_path: Path) -> None:
    teacher = load_teacher(TeacherConfig(file=str(teacher_weights)), ModelConfig(device="cpu"))
    with pytest.raises(BirdwatchError, match=r"^uncertain floor 0.7: must be above 0 and at most teacher.label_score"):
        label(teacher, tmp_path / "recording", tmp_path / "labels", DetectorConfig(), LabelOptions(uncertain_floor=0.7))
    assert not (tmp_path / "labels").exists(), "nothing written"


def test_a_bird_is_learnt_at_the_label_score_and_another_animal_counts_from_the_threshold(tmp_path: Path) -> None:
    said = {  # what the teacher said of each recorded frame
        "sure.jpg": [TeacherBox((10, 10, 60, 50), 0.7, True), TeacherBox((70, 60, 120, 100), 0.45, False)],
        "doubted.jpg": [TeacherBox((10, 10, 60, 50), 0.5, True)],  # above its threshold, below the label score
        "faint.jpg": [TeacherBox((70, 60, 120, 100), 0.3, False)],  # a cat it hardly saw
    }
    recording = tmp_path / "recording"
    (recording / "frames").mkdir(parents=True)
    frames = []
    for name in said:
        cv2.imwrite(str(recording / "frames" / name), np.full((120, 160, 3), 90, np.uint8))
        frames.append(Recorded(f"frames/{name}", "feeder", T0, [], 0, [0, 0, 160, 120], "0"))
    out = tmp_path / "labels"
    result = LabelResult(out, len(frames), len(frames))
    labels = {f"frames/{name}": boxes for name, boxes in said.items()}
    sure = Sure(bird=0.6, other=0.4)
    _write_datasets(recording, frames, labels, out, sure, DetectorConfig(), LabelOptions(whole_frames=True), result)

    where: dict[str, tuple[str, list[tuple[int, float]]]] = {}  # frame -> (split, [(category, score)])
    for split in ("train", "val", "uncertain"):
        data = json.loads((out / split / "annotations.json").read_text())
        for image in data["images"]:
            found = [(a["category_id"], a["score"]) for a in data["annotations"] if a["image_id"] == image["id"]]
            where[Path(image["source"]).name] = (split, found)
    assert where["sure.jpg"][0] != "uncertain" and sorted(where["sure.jpg"][1]) == [(1, 0.7), (2, 0.45)]
    assert where["doubted.jpg"] == ("uncertain", [(1, 0.5)]), "set aside for a person, not learnt"
    assert where["faint.jpg"][0] != "uncertain" and where["faint.jpg"][1] == [], "background: a hard negative"
    assert result.not_birds == 1


def fake_eval(map50: float) -> EvalResult:
    return EvalResult({name: map50 for name in STAT_NAMES}, np.zeros((10, 101)), 10, 12, 20)


def test_a_new_head_is_adopted_only_when_it_beats_the_one_in_use_which_is_kept_beside(tmp_path: Path) -> None:
    assert _verdict(fake_eval(0.3), None)[0], "no head in use: any head is better"
    adopted, reason = _verdict(fake_eval(0.6), fake_eval(0.7))
    assert not adopted and "does not beat the head in use (0.700)" in reason
    assert not _verdict(fake_eval(0.7), fake_eval(0.7))[0], "a tie keeps the head in use"
    assert _verdict(fake_eval(0.71), fake_eval(0.7))[0]
    target, first, second = tmp_path / "heads" / "feeder-head.pt", tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"first head")
    second.write_bytes(b"second head")
    _adopt(first, target)
    _adopt(second, target)
    assert target.read_bytes() == b"second head"
    assert target.with_suffix(".previous.pt").read_bytes() == b"first head"
    assert sorted(p.name for p in target.parent.iterdir()) == ["feeder-head.previous.pt", "feeder-head.pt"]


# ---- what a night may keep: memory and disk -------------------------------------------------------------


def hd_recording(root: Path, n: int, width: int = 1280, height: int = 720) -> None:
    """A recording of n 720p frames as `birdwatch record` leaves it (index lines and JPEGs), made in a blink:
    one plain scene, small on disk but full size decoded, linked n times. Every tenth frame has no motion."""
    (root / "frames").mkdir(parents=True)
    image = np.full((height, width, 3), 120, np.uint8)
    cv2.rectangle(image, (500, 300), (620, 380), (40, 90, 160), -1)
    first = root / "frames" / "0.jpg"
    assert cv2.imwrite(str(first), image)
    with (root / INDEX).open("w") as index:
        for i in range(n):
            if i:
                os.link(first, root / "frames" / f"{i}.jpg")
            motion = [] if i % 10 == 9 else [[480.0, 280.0, 640.0, 400.0]]
            row = Recorded(f"frames/{i}.jpg", "feeder", T0 + i, motion, first.stat().st_size, [0, 0, 0, 0], "0")
            index.write(json.dumps(row.to_json()) + "\n")


class CountingTeacher:
    def __init__(self) -> None:
        self.frames = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.frames += len(images)
        return [Detections.empty(Source.TEACHER) for _ in images]


def test_timing_the_head_against_the_teacher_decodes_only_the_frames_it_times_however_long_the_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = tmp_path / "recording"
    hd_recording(recording, 1000)
    # The networks are not what is measured here: a head that finds nothing, and a teacher that counts.
    head = SimpleNamespace(
        head=SimpleNamespace(nms_thresh=0.5),
        detect=lambda crops, max_size: [Detections.empty(Source.DETECTOR) for _ in crops],
    )
    monkeypatch.setattr(learn_module, "_detector", lambda *_: head)
    teacher = CountingTeacher()
    config = SimpleNamespace(detector=DetectorConfig(region_size=128))
    tracemalloc.start()  # numpy's buffers, OpenCV's decoded frames among them, are traced
    try:
        timed = costs(config, None, tmp_path / "head.pt", teacher, recording)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert timed["head"] >= 0 and teacher.frames == COST_FRAMES + 1, "the frames timed, and one to warm up"
    frame_mb = 1280 * 720 * 3 / 1e6
    # All 1000 decoded would be 2.8 GB (a week at 720p: tens of GB, against the unit's MemoryMax=6G).
    assert peak / 1e6 < 2 * COST_FRAMES * frame_mb, f"peak {peak / 1e6:.0f} MB while timing {COST_FRAMES} frames"


def test_old_training_runs_go_night_after_night_but_the_adopted_heads_run_stays(tmp_path: Path) -> None:
    work = tmp_path / "learn"
    (work / "runs" / "notes").mkdir(parents=True)  # not a run: not ours to remove
    adopted_on = {2, 5}
    for night in range(12):
        run = work / "runs" / f"202606{night + 1:02d}-013000"
        run.mkdir()
        (run / "head.pt").write_bytes(b"x" * 1000)
        report = {"candidate": str(run / "head.pt"), "adopted": night in adopted_on}
        with (work / "history.jsonl").open("a") as history:
            history.write(json.dumps(report) + "\n")
        prune_runs(work)
        kept = sorted(p.name for p in (work / "runs").iterdir())
        last_adopted = max((n for n in adopted_on if n <= night), default=None)
        expected = {f"202606{n + 1:02d}-013000" for n in range(max(0, night + 1 - KEEP_RUNS), night + 1)}
        if last_adopted is not None:
            expected.add(f"202606{last_adopted + 1:02d}-013000")
        assert kept == sorted(expected | {"notes"}), f"night {night}"
    assert len(kept) == KEEP_RUNS + 2, "the last few, the adopted head's (night 5, not 2) and the notes"


def test_learn_is_told_where_to_leave_the_adopted_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "birdwatch.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"name": "feeder", "url": "rtsp://127.0.0.1:9/feeder"}]}))
    told: list[LearnOptions] = []

    def learnt(_config: object, options: LearnOptions) -> None:
        told.append(options)
        raise BirdwatchError("stop here")

    monkeypatch.setattr(learn_module, "learn", learnt)
    marker = tmp_path / "run" / "adopted"
    assert main(["learn", "--config", str(config), "--adopted-marker", str(marker), "--no-progress"]) == 2
    assert told[0].adopted_marker == marker
