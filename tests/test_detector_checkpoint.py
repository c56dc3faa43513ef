"""The head file carries its weights and what they were trained on; a mismatch is one clear line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import ModelConfig
from birdwatch.config import parse_config
from birdwatch.errors import ConfigError
from birdwatch.errors import ModelError
from birdwatch.locate.checkpoint import HeadInfo
from birdwatch.locate.checkpoint import classifier_sha256
from birdwatch.locate.checkpoint import load_head
from birdwatch.locate.checkpoint import read_head
from birdwatch.locate.checkpoint import save_head
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.tools.synthetic import render_still
from birdwatch.tools.untrained import save_untrained
from tests.fixtures_models import species_names


@pytest.fixture(scope="module")
def danube(danube_weights: Path) -> Classifier:
    return load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))


@pytest.fixture(scope="module")
def head_file(danube: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    head = build_head(danube.net, fpn_width=64)
    info = HeadInfo.for_classifier(danube, input_size=320, fpn_width=64, trained={"epochs": 0})
    return save_head(tmp_path_factory.mktemp("heads") / "head.pt", head, info)


def test_round_trip_keeps_weights_and_metadata(danube: Classifier, head_file: Path) -> None:
    payload, info = read_head(head_file)
    assert info.network == "hgnet_v2_b2" and info.classifier == danube.name
    assert info.classifier_sha256 == classifier_sha256(danube) and len(info.classifier_sha256) == 64
    assert info.input_size == 320 and info.classes == ["bird"] and info.head == "fcos"
    assert info.return_channels == [96, 384, 768, 1536]
    head, loaded = load_head(head_file, danube)
    assert loaded == info
    for key, value in head.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key]), key
    # The loaded head gives the same boxes as the one that was saved.
    image = render_still(320, 240, 4)[0]
    runs = []
    for _ in range(2):
        h, _ = load_head(head_file, danube)
        det = BirdDetector(h, rgb_stats=danube.rgb_stats, device=danube.device, max_size=320, score_threshold=0.0)
        runs.append(det.detect([image])[0])
    np.testing.assert_array_equal(runs[0].boxes, runs[1].boxes)


def test_loading_onto_another_network_fails_clearly(head_file: Path, eu_common_weights: Path) -> None:
    regnet = load_classifier(ModelConfig(file=str(eu_common_weights), device="cpu"))
    with pytest.raises(ModelError, match=r"trained on hgnet_v2_b2 features .* but the classifier is .*regnet_y_8g"):
        load_head(head_file, regnet)


def test_same_network_other_weights_loads_with_a_warning(
    head_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = save_untrained("hgnet_v2_b2", tmp_path / "hgnet_v2_b2_other.pt", species_names(10), (256, 256))
    classifier = load_classifier(ModelConfig(file=str(other), device="cpu"))
    with caplog.at_level(logging.WARNING, logger="birdwatch.locate.checkpoint"):
        head, _info = load_head(head_file, classifier)
    assert head.backbone.net is classifier.net
    assert any(
        "not on hgnet_v2_b2_other" in r.getMessage() and "same network" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"does not exist; train one with `birdwatch detector train`"),
        (b"not a torch file", r"cannot read detector head"),
        ({"format": "something-else"}, r"is not a birdwatch detector head"),
    ],
)
def test_foreign_files_are_refused(danube: Classifier, tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "head.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ModelError, match=expected):
        load_head(path, danube)


def test_the_classifiers_own_file_is_not_a_head(danube: Classifier, danube_weights: Path) -> None:
    with pytest.raises(ModelError, match=r"not a birdwatch detector head"):
        load_head(danube_weights, danube)


def config_text(tmp_path: Path, **top: object) -> str:
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"")
    return yaml.safe_dump({"cameras": [{"name": "feeder", "url": str(clip)}], **top})


def test_detector_localiser_needs_a_head_file(tmp_path: Path, head_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"localiser: 'detector\+motion' needs detector.file"):
        parse_config(config_text(tmp_path, localiser="detector+motion"))
    with pytest.raises(ConfigError, match=r"detector.file: .*nothing.pt' does not exist"):
        parse_config(config_text(tmp_path, localiser="detector", detector={"file": str(tmp_path / "nothing.pt")}))
    with pytest.raises(ConfigError, match=r"localiser: expected one of 'motion', 'detector', 'detector\+motion'"):
        parse_config(config_text(tmp_path, localiser="yolo"))
    with pytest.raises(ConfigError, match=r"detector.score_threshold: 1.5 is too large"):
        parse_config(config_text(tmp_path, detector={"file": str(head_file), "score_threshold": 1.5}))
    config = parse_config(config_text(tmp_path, localiser="detector+motion", detector={"file": str(head_file)}))
    assert config.detector.file == str(head_file) and config.detector.max_size is None
