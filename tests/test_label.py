"""`birdwatch detector label` and the recording it reads, over many nights: verdicts resumed only when they are
still this teacher's, an --out folder of someone else's refused before anything is deleted, and the index and
the teacher's lines kept the size of what the recording holds.

The teacher is the untrained stand-in (tests/support/teacher.py), in float32 (bf16 autocast on a CPU is slow):
these tests need its verdicts' keys and files, not a teacher that sees.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry

from birdwatch.capture.recorder import INDEX
from birdwatch.capture.recorder import Recorder
from birdwatch.capture.recorder import read_index
from birdwatch.cli import build_parser
from birdwatch.cli import main
from birdwatch.config import DetectorConfig
from birdwatch.config import ModelConfig
from birdwatch.config import TeacherConfig
from birdwatch.errors import BirdwatchError
from birdwatch.locate.teacher import Teacher
from birdwatch.locate.teacher import load_teacher
from birdwatch.tools import record as record_module
from birdwatch.tools.detector.label import LabelOptions
from birdwatch.tools.detector.label import label
from birdwatch.tools.record import RecordResult
from birdwatch.types import Detections
from birdwatch.types import Frame
from tests.support.teacher import CLASSES
from tests.support.teacher import FPN_WIDTH
from tests.support.teacher import NETWORK
from tests.support.teacher import save_detector

T0 = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))  # local noon
SIDE = (48, 64)  # recorded frames: small, the teacher resizes them to its 96 px anyway
OPTIONS = LabelOptions(whole_frames=True, progress=False)


def noise(seq: int) -> np.ndarray:
    """A frame unlike every other (its perceptual hash far from theirs), so that the recorder keeps it."""
    return np.random.default_rng(seq).integers(0, 255, (*SIDE, 3), np.uint8)


def moved() -> Detections:
    return Detections(np.array([[0, 0, SIDE[1], SIDE[0]]], np.float32), np.ones(1, np.float32))


def frame_size() -> int:
    return len(cv2.imencode(".jpg", noise(0), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])


def record(recording: Path, first: int, n: int, budget_frames: float = 1000) -> Recorder:
    """Frames `first` .. `first + n - 1`, a second apart, kept within a budget of about `budget_frames`."""
    recorder = Recorder(recording, every_s=0.0, budget_mb=budget_frames * frame_size() / 1e6)
    for seq in range(first, first + n):
        recorder.offer(Frame("feeder", seq, T0 + seq, noise(seq), float(seq)), moved())
    recorder.close()
    return recorder


def teacher_of(weights: Path, **settings: object) -> Teacher:
    cfg = TeacherConfig(file=str(weights), precision="fp32", **settings)  # type: ignore[arg-type]
    return load_teacher(cfg, ModelConfig(device="cpu"))


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---- 4: resumed verdicts are this teacher's ------------------------------------------------------------


def other_weights_of_the_same_net(path: Path) -> None:
    """The stand-in's net, drawn from another seed, written over `path`: new weights under the same name."""
    torch.manual_seed(1)
    backbone = registry.net_factory("mobilenet_v3_small_1_0", len(CLASSES), 3, size=(96, 96))
    net = registry.detection_net_factory(
        NETWORK, len(CLASSES), backbone, config={"fpn_width": FPN_WIDTH}, size=(96, 96)
    ).eval()
    save_detector(net, path, list(CLASSES), (96, 96), get_rgb_stats("birder"), {"fpn_width": FPN_WIDTH})


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"bird_classes": ["bird", "leaf"]}, id="bird_classes"),
        pytest.param({"other_classes": ["leaf"]}, id="other_classes"),
        pytest.param({"size": 64}, id="size"),
        pytest.param("weights", id="weights"),
    ],
)
def test_every_frame_is_labelled_again_when_anything_that_changes_a_verdict_changed(
    change: dict | str, teacher_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = tmp_path / "teachers" / teacher_weights.name
    weights.parent.mkdir()
    shutil.copy(teacher_weights, weights)
    recording, out = tmp_path / "recording", tmp_path / "labels"
    record(recording, 0, 4)
    assert label(teacher_of(weights), recording, out, DetectorConfig(), OPTIONS).labelled_now == 4
    assert label(teacher_of(weights), recording, out, DetectorConfig(), OPTIONS).labelled_now == 0, "resumed"

    if change == "weights":
        other_weights_of_the_same_net(weights)
        changed = teacher_of(weights)
    else:
        changed = teacher_of(weights, **change)  # type: ignore[arg-type]
    assert changed.name == weights.stem, "the same name: only the key can tell"
    with caplog.at_level(logging.INFO, logger="birdwatch.tools.detector.label"):
        again = label(changed, recording, out, DetectorConfig(), OPTIONS)
    assert again.labelled_now == 4, "the old verdicts are another teacher's"
    said = [r.getMessage() for r in caplog.records if "labelling every frame again" in r.getMessage()]
    named = {"weights": "sha256", "bird_classes": "birds", "other_classes": "others", "size": "size"}
    assert len(said) == 1 and named[change if isinstance(change, str) else next(iter(change))] in said[0], said
    assert label(changed, recording, out, DetectorConfig(), OPTIONS).labelled_now == 0, "and resumed after"


# ---- 5: an --out that is not label's own is refused ----------------------------------------------------


def test_an_out_folder_holding_a_dataset_of_ones_own_is_refused_before_anything_is_deleted(
    teacher_weights: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "recording"
    record(recording, 0, 2)
    teacher = teacher_of(teacher_weights)
    cub = tmp_path / "data" / "cub"  # what the README's `detector convert-cub` writes
    (cub / "train" / "images").mkdir(parents=True)
    (cub / "train" / "annotations.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (cub / "train" / "images" / "0001.jpg").write_bytes(b"someone's bird")
    before = sorted(p.relative_to(cub).as_posix() for p in cub.rglob("*"))

    with pytest.raises(BirdwatchError) as refused:
        label(teacher, recording, cub, DetectorConfig(), OPTIONS)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{cub} holds files birdwatch did not write (train)")
    assert message.endswith("give --out an empty or new folder")
    assert sorted(p.relative_to(cub).as_posix() for p in cub.rglob("*")) == before, "nothing deleted or added"
    assert (cub / "train" / "images" / "0001.jpg").read_bytes() == b"someone's bird"


def test_a_cut_added_by_hand_to_labels_own_split_is_refused_and_a_cut_deleted_by_hand_is_not(
    teacher_weights: Path, tmp_path: Path
) -> None:
    recording, out = tmp_path / "recording", tmp_path / "labels"
    record(recording, 0, 3)
    teacher = teacher_of(teacher_weights)
    label(teacher, recording, out, DetectorConfig(), OPTIONS)
    cuts = sorted((out / "train" / "images").iterdir()) + sorted((out / "val" / "images").iterdir())
    cuts[0].unlink()  # looked at and thrown away: label's to write again
    label(teacher, recording, out, DetectorConfig(), OPTIONS)

    (out / "uncertain" / "images" / "mine.jpg").write_bytes(b"kept by a person")
    with pytest.raises(BirdwatchError, match=r"holds files birdwatch did not write \(uncertain/images/mine.jpg\)"):
        label(teacher, recording, out, DetectorConfig(), OPTIONS)
    assert (out / "uncertain" / "images" / "mine.jpg").read_bytes() == b"kept by a person"


def test_an_empty_out_a_new_one_and_labels_own_from_before_the_mark_are_labelled_into(
    teacher_weights: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "recording"
    record(recording, 0, 2)
    teacher = teacher_of(teacher_weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "labels"):
        assert label(teacher, recording, out, DetectorConfig(), OPTIONS).labelled_now == 2
        assert label(teacher, recording, out, DetectorConfig(), OPTIONS).labelled_now == 0, "label's own: resumed"
    # Labels an older birdwatch wrote (`learn`'s work folder): its names only, its teacher.jsonl; no mark yet.
    (empty / ".birdwatch-label").unlink()
    assert label(teacher, recording, empty, DetectorConfig(), OPTIONS).labelled_now == 0
    assert (empty / ".birdwatch-label").is_file()


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "before-the-mark"])
def test_labels_whose_cuts_a_run_cut_short_left_without_their_coco_file_are_labels_own_and_written_again(
    marked: bool, teacher_weights: Path, tmp_path: Path
) -> None:
    """An older label wrote its cuts straight into the split folders and their annotations.json last: stopped in
    between, it left cuts no COCO file lists. Named as label names them, they are label's; a person's file is not."""
    recording, out = tmp_path / "recording", tmp_path / "labels"
    record(recording, 0, 3)
    teacher = teacher_of(teacher_weights)
    label(teacher, recording, out, DetectorConfig(), OPTIONS)
    for split in ("train", "val", "uncertain"):
        (out / split / "annotations.json").unlink()
    if not marked:
        (out / ".birdwatch-label").unlink()
    left = sorted(p.name for p in out.glob("*/images/*.jpg"))
    assert left, "cuts without their COCO file"

    again = label(teacher, recording, out, DetectorConfig(), OPTIONS)

    assert again.labelled_now == 0, "the teacher's lines resumed"
    listed = [i["file_name"] for s in ("train", "val", "uncertain") for i in coco_of(out / s)["images"]]
    assert sorted(listed) == left and (out / ".birdwatch-label").is_file()
    for split in ("train", "val", "uncertain"):
        (out / split / "annotations.json").unlink()
    (out / "train" / "images" / "mine.jpg").write_bytes(b"kept by a person")
    with pytest.raises(BirdwatchError, match=r"holds files birdwatch did not write \(train/images/mine.jpg\)"):
        label(teacher, recording, out, DetectorConfig(), OPTIONS)
    assert (out / "train" / "images" / "mine.jpg").read_bytes() == b"kept by a person"


def coco_of(split: Path) -> dict[str, list[dict[str, object]]]:
    return json.loads((split / "annotations.json").read_text())


# ---- 7a, 7c: the index and the teacher's lines stay the size of the recording ------------------------------


def test_the_recording_index_stays_bounded_by_the_frames_still_there_over_many_evictions(tmp_path: Path) -> None:
    recording = tmp_path / "recording"
    budget = 6 * frame_size() / 1e6  # about six frames: each one kept evicts one
    seq = 0
    for run in range(3):  # the index is read back, and may be rewritten, at each start
        recorder = Recorder(recording, every_s=0.0, budget_mb=budget)
        for _ in range(200):
            recorder.offer(Frame("feeder", seq, T0 + seq, noise(seq), float(seq)), moved())
            seq += 1
            lines = len(lines_of(recording / INDEX))
            assert lines <= 2 * len(recorder.frames) + 100, f"run {run}: {lines} index lines"
        recorder.close()
        assert recorder.evicted > 150
        on_disk = sorted(p.relative_to(recording).as_posix() for p in (recording / "frames").rglob("*.jpg"))
        assert sorted(r.file for r in read_index(recording)) == on_disk == sorted(r.file for r in recorder.frames)

    with (recording / INDEX).open("a") as index:
        index.write('{"file": "frames/feeder/2026')  # the power went while it wrote
    again = Recorder(recording, every_s=0.0, budget_mb=budget)
    assert [r.file for r in again.frames] == [r.file for r in recorder.frames]
    assert again.offer(Frame("feeder", seq, T0 + seq, noise(seq), float(seq)), moved()) is not None
    again.close()
    assert read_index(recording)[-1].file.endswith(f"-{seq}.jpg"), "the line after the cut one is a line of its own"


def test_the_teachers_lines_stay_bounded_by_the_frames_in_the_recording_over_many_nights(
    teacher_weights: Path, tmp_path: Path
) -> None:
    recording, out = tmp_path / "recording", tmp_path / "labels"
    teacher = teacher_of(teacher_weights)
    before: set[str] = set()
    for night in range(5):
        record(recording, night * 3, 3, budget_frames=5.5)  # a day's frames push out the oldest
        result = label(teacher, recording, out, DetectorConfig(), OPTIONS)
        present = {r.file for r in read_index(recording)}
        header, *rows = lines_of(out / "teacher.jsonl")
        assert {json.loads(row)["file"] for row in rows} == present and len(rows) == len(present), f"night {night}"
        assert result.frames == len(present) and json.loads(header)["teacher"] == teacher.name
        assert result.labelled_now == len(present - before), "the frames labelled before are resumed"
        before = present


# ---- 10a, 10b: the command line ----------------------------------------------------------------------


def write_config(path: Path, recording: Path, teacher: Path | None = None) -> Path:
    config = {
        "cameras": [{"name": "feeder", "url": "rtsp://127.0.0.1:9/feeder"}],
        "model": {"device": "cpu"},
        "record": {"dir": str(recording)},
    }
    if teacher is not None:
        config["teacher"] = {"file": str(teacher), "precision": "fp32"}
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_batch_size_below_one_is_one_line_not_a_traceback(
    teacher_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recording = tmp_path / "recording"
    record(recording, 0, 2)
    config = write_config(tmp_path / "birdwatch.yaml", recording, teacher_weights)
    out = tmp_path / "labels"
    code = main(["detector", "label", "--config", str(config), "--out", str(out), "--batch-size", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "batch size 0" in err and "--batch-size 1 or more" in err, err
    assert not out.exists(), "refused before anything was written"
    with pytest.raises(BirdwatchError, match=r"^batch size -1: "):
        LabelOptions(batch_size=-1)


def test_the_next_step_that_record_prints_is_a_command_the_parser_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = tmp_path / "recording"
    config = write_config(tmp_path / "birdwatch.yaml", recording)

    def recorded(*_: object, **__: object) -> RecordResult:  # the cameras are not what is tested here
        return RecordResult(recording, 10, 4, 2, 0, 4, 1.0)

    monkeypatch.setattr(record_module, "record", recorded)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # the command's Ctrl-C handler: not pytest's to lose
    assert main(["record", "--config", str(config), "--minutes", "1"]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("next: "))
    command = shlex.split(hint.removeprefix("next: ").strip("`"))
    assert command[0] == "birdwatch"
    args = build_parser().parse_args(command[1:])
    assert args.func.__name__ == "cmd_label" and Path(args.recording) == recording and args.out
    assert Path(args.config) == config
