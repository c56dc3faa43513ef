"""The teacher: birder's generic detectors by name, through the classifiers' pull path (SHA-256 checked,
a clear line offline), or from a local birder detection file; which of its classes are birds is read
off its own class list; other animals come back as boxes that are not birds, and never become visits.

No pretrained teacher can be downloaded here: a file of a real birder detection architecture (FCOS with
its own mobilenet_v3_small, classes bird, cat and leaf; tests/support/teacher.py) is saved in birder's
detection format and loaded through the same code as the real one. It is untrained: what is tested here
is the loading, the classes, the gating and the wiring; what a bird, a cat or a leaf become is tested
on boxes made for it (test_visits.py, and the verdicts below).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from birdwatch.config import ModelConfig
from birdwatch.config import TeacherConfig
from birdwatch.config import parse_config
from birdwatch.errors import ModelError
from birdwatch.locate.localiser import TeacherLocaliser
from birdwatch.locate.teacher import Teacher
from birdwatch.locate.teacher import load_teacher
from birdwatch.locate.teacher import networks_of_file
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import render_scene
from birdwatch.tools.synthetic import write_video
from birdwatch.types import Detections
from birdwatch.types import Frame
from tests.support.servers import WeightsServer
from tests.test_pipeline import ListSink

NAMED = "d_fine_l_objects365-coco_hgnet_v2_b4_pp-imagenet22k"


@pytest.fixture(scope="module")
def teacher(teacher_weights: Path) -> Teacher:
    return load_teacher(TeacherConfig(file=str(teacher_weights)), ModelConfig(device="cpu"))


def test_the_stand_in_loads_through_the_teachers_code_and_its_classes_say_which_are_birds(teacher: Teacher) -> None:
    assert (teacher.weights.network, teacher.weights.backbone) == ("fcos", "mobilenet_v3_small_1_0")  # its name
    assert teacher.class_names == ["bird", "cat", "leaf"]  # birder's own class_to_idx, in label order
    assert teacher.bird_labels == {1}
    assert teacher.other_labels == {2}  # a cat is an animal that is not a bird; a leaf is nothing at all


def test_each_box_is_a_bird_with_its_score_or_another_animal_with_none_and_one_thing_one_verdict(
    teacher: Teacher,
) -> None:
    result = {  # what birder's detectors return: boxes in the network's input pixels, labels from 1
        "boxes": torch.tensor(
            [[10, 10, 40, 40], [11, 10, 41, 40], [50, 50, 90, 90], [0, 0, 20, 20]], dtype=torch.float32
        ),
        "labels": torch.tensor([1, 2, 2, 3]),  # a bird, the same thing taken for a cat, a cat, a leaf
        "scores": torch.tensor([0.9, 0.5, 0.8, 0.95]),
    }
    found = teacher._kept(result, (192, 192), floor=0.4)  # frame twice the input size (96 px)
    assert found.source == "teacher"
    np.testing.assert_allclose(found.boxes, [[20, 20, 80, 80], [100, 100, 180, 180]])  # in the frame's pixels
    np.testing.assert_allclose(found.birds, [0.9, 0.0])  # the bird with its score; the cat is no bird
    assert found.not_birds().tolist() == [False, True]  # and the leaf is nothing at all


def test_bird_classes_are_found_by_name_or_named_and_a_wrong_name_is_one_line(teacher_weights: Path) -> None:
    model = ModelConfig(device="cpu")
    chosen = load_teacher(
        TeacherConfig(file=str(teacher_weights), bird_classes=["bird"], other_classes=["cat", "leaf"]), model
    )
    assert (chosen.bird_labels, chosen.other_labels) == ({1}, {2, 3})
    with pytest.raises(ModelError, match="teacher.bird_classes: Blackbird not among the teacher's 3 classes"):
        load_teacher(TeacherConfig(file=str(teacher_weights), bird_classes=["Blackbird"]), model)


def test_the_networks_of_a_teacher_file_come_from_its_name_or_the_config() -> None:
    assert networks_of_file(Path(f"{NAMED}.pt"), None, None) == ("d_fine_l", "hgnet_v2_b4")
    assert networks_of_file(Path("mine.pt"), "rt_detr_v2", "resnet_v1_50") == ("rt_detr_v2", "resnet_v1_50")
    with pytest.raises(ModelError, match="set teacher.network"):
        networks_of_file(Path("mine.pt"), None, None)


@pytest.mark.timeout(120)
def test_a_named_teacher_comes_through_the_pull_path_and_a_wrong_file_is_refused(
    teacher_weights: Path, tmp_path: Path
) -> None:
    served = tmp_path / "hub"
    served.mkdir()
    shutil.copy(teacher_weights, served / f"{NAMED}.pt")  # the right name, not the published bytes
    models = tmp_path / "models"
    hub = WeightsServer(served).start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "birdwatch",
                "models",
                "pull",
                NAMED,
                "--models-dir",
                str(models),
                "--mirror",
                hub.url,
            ],
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
    finally:
        hub.stop()
    assert hub.requested == [f"/{NAMED}.pt"]
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"birdwatch: error: the file from {hub.url}/{NAMED}.pt does not match the expected SHA-256")
    assert "Traceback" not in result.stderr
    assert not (models / f"{NAMED}.pt").exists(), "nothing of a refused download is kept"


def test_a_named_teacher_is_checked_against_its_published_hash_and_its_networks(
    teacher_weights: Path, tmp_path: Path
) -> None:
    shutil.copy(teacher_weights, tmp_path / f"{NAMED}.pt")  # the name's file, not its published bytes
    model = ModelConfig(device="cpu", models_dir=str(tmp_path), download="never")
    with pytest.raises(ModelError, match=f"does not match {NAMED}'s published SHA-256"):
        load_teacher(TeacherConfig(name=NAMED), model)
    model.verify_sha256 = False  # then the file is built as the name's networks say: D-FINE L on hgnet_v2_b4
    with pytest.raises(ModelError, match="as a birder d_fine_l detector on hgnet_v2_b4"):
        load_teacher(TeacherConfig(name=NAMED), model)
    with pytest.raises(ModelError, match="teacher.name: 'hgnet_v2_b2_danube-delta' is a image_classification model"):
        load_teacher(TeacherConfig(name="hgnet_v2_b2_danube-delta"), model)


@pytest.mark.timeout(120)
def test_a_teacher_to_fetch_offline_is_one_line_naming_the_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "birdwatch",
            "models",
            "pull",
            NAMED,
            "--models-dir",
            str(tmp_path),
            "--mirror",
            "http://127.0.0.1:9/hub",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"birdwatch: error: cannot download {NAMED}.pt from http://127.0.0.1:9/hub/{NAMED}.pt")
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


# ---- localiser: teacher ------------------------------------------------------------------------------


def frames(camera: str, times: list[float]) -> list[Frame]:
    image = np.zeros((96, 128, 3), np.uint8)
    return [Frame(camera, i, 1_700_000_000.0 + t, image, t) for i, t in enumerate(times)]


def test_on_a_cpu_the_teacher_sees_only_frames_that_moved_and_at_most_max_fps_per_camera(teacher: Teacher) -> None:
    localiser = TeacherLocaliser(teacher, gate=True, max_fps=2.0)
    moved = Detections(np.array([[0, 0, 50, 50]], np.float32), np.ones(1, np.float32))
    still = Detections.empty()
    feeder, window = frames("feeder", [0.0, 0.2, 0.4, 0.6]), frames("window", [0.0, 0.2, 0.4, 0.6])
    seen = []
    for a, b in zip(feeder, window, strict=True):
        before = teacher.frames_detected
        found = localiser([a, b], [moved, still])
        seen.append(teacher.frames_detected - before)
        assert [f.source for f in found] == ["teacher", "teacher"]
    assert seen == [1, 0, 0, 1]  # the window never moved; the feeder at most twice a second (0.0 and 0.6)
    two = frames("feeder", [2.0, 2.01])
    before = teacher.frames_detected
    localiser(two, [moved, moved])  # two frames of one camera in one batch are one pass
    assert teacher.frames_detected - before == 1


@pytest.mark.timeout(300)
def test_localiser_teacher_runs_in_the_pipeline_gated_by_motion(
    teacher_weights: Path, small_weights: Path, tmp_path: Path
) -> None:
    clip = render_scene(128, 96, 40, n_birds=1, seed=5, presence=[(15, 35)], varied=True, others=[("cat", 5, 15)])
    video = tmp_path / "feeder.avi"
    write_video(video, clip.frames, fps=20)
    config = parse_config(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": str(video), "realtime": True, "motion": {"warmup_frames": 3}}],
                "model": {"file": str(small_weights), "device": "cpu"},
                "localiser": "teacher",
                "teacher": {"file": str(teacher_weights), "max_fps": 100},
                "store": {"path": str(tmp_path / "birdwatch.db")},
                "snapshots": {"enabled": False},
            }
        )
    )
    pipeline = Pipeline(config, sink=ListSink())  # type: ignore[arg-type]
    pipeline.start()
    try:
        assert pipeline.run(threading.Event()) == 0
    finally:
        pipeline.stop()
    localiser = pipeline.localiser
    assert isinstance(localiser, TeacherLocaliser) and localiser.needs_motion  # auto on a CPU: gated
    processed = pipeline.counters()["cameras"]["feeder"]["frames_processed"]
    assert 0 < localiser.frames_detected < processed  # the still frames of the warm-up never reach it
