"""Session fixtures for the detector tests: the stand-ins (a bird-aware classifier and a teacher, from one
training), synthetic bird datasets, one trained head.

Training is the slow part, so each is trained once per session and shared: the stand-ins by the head, the
backends' parity and the learning flow; the head (TRAIN_EPOCHS, under two minutes of CPU) by the training test,
the CLI evaluation and the pipeline test. Both train for a fixed number of steps, seeds fixed, never for a time:
a busy machine takes longer and learns the same.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import ModelConfig
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.detector.train import TrainOptions
from birdwatch.tools.detector.train import TrainResult
from birdwatch.tools.detector.train import train
from birdwatch.tools.synthetic import EASY_STILLS
from birdwatch.tools.synthetic import write_coco_dataset
from tests.fixtures_models import DANUBE
from tests.fixtures_models import species_names
from tests.support.standins import StandIns
from tests.support.standins import train_stand_ins
from tests.support.teacher import untrained_teacher

# Longer side of the training images (and of the synthetic stills): the scale the test backbone was
# fine-tuned at, and small enough for a few epochs a minute on two cores.
TRAIN_SIZE = 128
TRAIN_EPOCHS = 10  # held-out mAP@.5 0.58 here (8: 0.55-0.56, 12: 0.61; bar 0.5), about 105 s on two idle cores
STAND_IN_STEPS = 600  # three minutes on two cores (500 teach the head too little); the bench trains longer
SYNTHETIC = {"train": (600, 1), "val": (150, 2)}  # images, seed; seeds differ from the backbone's own data


@dataclass
class TrainedHead:
    result: TrainResult
    classifier_file: Path
    data: dict[str, Path]
    seconds: float


@pytest.fixture(scope="session")
def stand_ins(models_dir: Path) -> StandIns:
    """The bird-aware classifier and the teacher that knows birds from cats and leaves (tests/support/standins.py)."""
    return train_stand_ins(
        models_dir, species_names(DANUBE["classes"]), DANUBE["size"], steps=STAND_IN_STEPS, time_limit_s=math.inf
    )


@pytest.fixture(scope="session")
def bird_backbone_weights(stand_ins: StandIns) -> Path:
    """hgnet_v2_b2 (Danube's architecture and classes) whose backbone has learnt synthetic birds."""
    return stand_ins.classifier


@pytest.fixture(scope="session")
def trained_teacher(stand_ins: StandIns) -> Path:
    """birder's FCOS on that backbone, classes bird, cat and leaf: a teacher that has begun to see."""
    return stand_ins.teacher


@pytest.fixture(scope="session")
def synthetic_birds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """COCO folders of synthetic feeder stills: train and a held-out val, as `make-synthetic --easy` writes."""
    root = tmp_path_factory.mktemp("synthetic_birds")
    for split, (n, seed) in SYNTHETIC.items():
        write_coco_dataset(root / split, n, TRAIN_SIZE, TRAIN_SIZE, seed=seed, **EASY_STILLS)
    return {split: root / split for split in SYNTHETIC}


@pytest.fixture(scope="session")
def bird_classifier(bird_backbone_weights: Path) -> Classifier:
    return load_classifier(ModelConfig(file=str(bird_backbone_weights), device="cpu"))


@pytest.fixture(scope="session")
def trained_head(
    bird_classifier: Classifier,
    bird_backbone_weights: Path,
    synthetic_birds: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedHead:
    """The shipped training (frozen backbone) for TRAIN_EPOCHS; no per-epoch validation."""
    out = tmp_path_factory.mktemp("head")
    started = time.monotonic()
    result = train(
        bird_classifier,
        TrainOptions(
            data=synthetic_birds["train"],
            out=out,
            epochs=TRAIN_EPOCHS,  # the learning rate anneals to the last step
            batch_size=8,
            size=TRAIN_SIZE,
            workers=0,
            amp="bf16" if cpu_has_bf16() else "off",
            progress=False,
        ),
    )
    return TrainedHead(result, bird_backbone_weights, synthetic_birds, time.monotonic() - started)


# birder's own naming, <network>_<tag>_<backbone>_<tag>.pt, from which the teacher's loader reads both networks.
UNTRAINED_TEACHER_FILE = "fcos_untrained_mobilenet_v3_small_1_0_synthetic.pt"


@pytest.fixture(scope="session")
def teacher_weights(models_dir: Path) -> Path:
    """A stand-in teacher file (tests/support/teacher.py): birder's FCOS with its own backbone and the classes
    bird, cat and leaf, in birder's detection format; untrained, so it finds nothing with confidence."""
    return untrained_teacher(models_dir / UNTRAINED_TEACHER_FILE)
