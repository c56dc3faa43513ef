"""Training the head (backbone frozen) reaches the bar on held-out synthetic birds; the commands write their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.cli import main
from birdwatch.config import ModelConfig
from birdwatch.errors import BirdwatchError
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.checkpoint import read_head
from birdwatch.locate.head import BirdDetector
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import evaluate
from birdwatch.tools.detector.train import TrainOptions
from birdwatch.tools.detector.train import train
from birdwatch.tools.synthetic import EASY_STILLS
from birdwatch.tools.synthetic import write_coco_dataset
from tests.fixtures_detector import TRAIN_EPOCHS
from tests.fixtures_detector import TRAIN_SIZE
from tests.fixtures_detector import TrainedHead


@pytest.mark.timeout(1500)
def test_a_few_epochs_of_cpu_training_find_held_out_synthetic_birds(
    trained_head: TrainedHead, bird_classifier: Classifier
) -> None:
    result = trained_head.result
    trained_s = sum(row["train_s"] for row in result.history)  # reported, not judged: the epochs are what counts
    assert len(result.history) == TRAIN_EPOCHS and not result.stopped_early
    assert all(not p.requires_grad for p in bird_classifier.net.parameters())
    head, info = load_head(result.head, bird_classifier)
    assert info.trained["images"] == 600 and info.input_size == TRAIN_SIZE
    detector = BirdDetector(
        head, rgb_stats=bird_classifier.rgb_stats, device=bird_classifier.device, max_size=TRAIN_SIZE
    )
    metrics = evaluate(detector, BirdBoxes(*resolve(trained_head.data["val"])), progress=False)
    summary = (
        f"held-out synthetic: mAP@.5 {metrics.map50:.3f}, mAP@[.5:.95] {metrics.map:.3f} after "
        f"{len(result.history)} epochs, {trained_s:.0f} s of training"
    )
    print(summary)
    assert metrics.map50 >= 0.5, summary


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    assert (
        main(
            [
                "detector",
                "make-synthetic",
                str(root),
                "--train",
                "12",
                "--val",
                "6",
                "--width",
                "160",
                "--height",
                "128",
                "--easy",
            ]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def danube(danube_weights: Path) -> Classifier:
    return load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))


def test_resume_continues_from_the_last_epoch(danube: Classifier, tiny_synthetic: Path, tmp_path: Path) -> None:
    opts = TrainOptions(
        data=tiny_synthetic / "train", out=tmp_path, epochs=1, batch_size=4, size=128, workers=0, progress=False
    )
    first = train(danube, opts)
    assert [row["epoch"] for row in first.history] == [1]
    weights_after_one = read_head(first.last)[0]["state_dict"]
    opts.epochs, opts.resume = 2, True
    second = train(danube, opts)
    assert [row["epoch"] for row in second.history] == [1, 2]
    payload, info = read_head(second.last)
    assert payload["epoch"] == 2 and info.trained["epochs"] == 2
    assert any(not torch.equal(weights_after_one[k], v) for k, v in payload["state_dict"].items())
    opts.size = 160
    with pytest.raises(BirdwatchError, match=r"--resume: .* was trained with --size 128"):
        train(danube, opts)


def test_train_and_eval_commands_write_checkpoint_curve_and_pr_plot(
    tiny_synthetic: Path, danube_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "detector", "train", "--data", str(tiny_synthetic / "train"), "--val", str(tiny_synthetic / "val"),
            "--out", str(out), "--model-file", str(danube_weights), "--epochs", "1", "--size", "160",
            "--batch-size", "4", "--workers", "0", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"head: {out / 'head.pt'}" in printed and "localiser: detector+motion" in printed
    for name in ("head.pt", "last.pt", "training.png", "history.json"):
        assert (out / name).is_file(), name
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and {"loss", "mAP", "mAP50"} <= set(history[0])

    code = main(
        [
            "detector", "eval", "--head", str(out / "head.pt"), "--data", str(tiny_synthetic / "val"),
            "--model-file", str(danube_weights), "--out", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "mAP@[.5:.95]" in printed and "mAP@.5" in printed
    assert (tmp_path / "eval" / "pr.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP50"] <= 1.0 and metrics["images"] == 6


def test_eval_on_another_backbone_is_one_clear_line(
    tiny_synthetic: Path,
    danube_weights: Path,
    eu_common_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_coco_dataset(tmp_path / "d", 2, 96, 96, seed=9, **EASY_STILLS)
    out = tmp_path / "run"
    args = [
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--size",
        "96",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(["detector", "train", *args, "--model-file", str(danube_weights), "--batch-size", "2"]) == 0
    capsys.readouterr()
    code = main(
        [
            "detector",
            "eval",
            "--head",
            str(out / "head.pt"),
            "--data",
            str(tmp_path / "d"),
            "--model-file",
            str(eu_common_weights),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trained on hgnet_v2_b2 features" in err and "regnet_y_8g" in err
