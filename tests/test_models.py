"""Models: birder classifiers load by pretrained name or file through birder's loader; offline
problems are one clear line that names the file and the command that fixes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from birdwatch.classify.models import load_classifier
from birdwatch.classify.models import network_of_file
from birdwatch.config import ModelConfig
from birdwatch.errors import ModelError
from birdwatch.weights import CLASSIFIER
from birdwatch.weights import pretrained_names
from tests.fixtures_models import DANUBE
from tests.fixtures_models import EU_COMMON
from tests.fixtures_models import species_names


def test_load_from_file_reads_species_and_size_from_the_weights(danube_weights: Path) -> None:
    clf = load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))
    assert clf.network == "hgnet_v2_b2"
    assert clf.class_names == species_names(DANUBE["classes"])
    assert clf.size == DANUBE["size"]
    assert not clf.net.training
    assert all(not p.requires_grad for p in clf.net.parameters())


@pytest.mark.timeout(120)
def test_eu_common_architecture_loads(eu_common_weights: Path) -> None:
    clf = load_classifier(ModelConfig(file=str(eu_common_weights), device="cpu"))
    assert (clf.network, clf.size, len(clf.class_names)) == ("regnet_y_8g", (384, 384), 707)


def test_load_by_pretrained_name_from_models_dir(danube_weights: Path, tmp_path: Path) -> None:
    # Same file name and place `birdwatch models pull` uses; untrained weights cannot match the
    # published SHA-256, so the check is switched off here and tested on its own below.
    shutil.copy(danube_weights, tmp_path / f"{DANUBE['name']}.pt")
    cfg = ModelConfig(name=DANUBE["name"], models_dir=str(tmp_path), verify_sha256=False, device="cpu")
    clf = load_classifier(cfg)
    assert (clf.name, clf.network, len(clf.class_names)) == (DANUBE["name"], "hgnet_v2_b2", 368)


def test_a_file_that_is_not_the_published_one_is_refused(danube_weights: Path, tmp_path: Path) -> None:
    shutil.copy(danube_weights, tmp_path / f"{DANUBE['name']}.pt")
    with pytest.raises(ModelError, match="does not match hgnet_v2_b2_danube-delta's published SHA-256") as info:
        load_classifier(ModelConfig(name=DANUBE["name"], models_dir=str(tmp_path), device="cpu"))
    assert "--force" in str(info.value)


def test_missing_weights_name_the_file_and_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_classifier(ModelConfig(name=EU_COMMON["name"], models_dir=str(tmp_path), download="never"))
    message = str(info.value)
    assert str(tmp_path / f"{EU_COMMON['name']}.pt") in message
    assert f"birdwatch models pull {EU_COMMON['name']} --models-dir {tmp_path}" in message


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="'no_such_net_x' is not a birder pretrained model"):
        load_classifier(ModelConfig(name="no_such_net_x"))


def test_detection_weights_are_not_a_classifier() -> None:
    with pytest.raises(ModelError, match="not a classifier"):
        load_classifier(ModelConfig(name="deformable_detr_boxref_coco_convnext_v2_tiny_imagenet21k"))


@pytest.mark.parametrize("content", [b"", b"not a model at all" * 100])
def test_corrupt_weights_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "hgnet_v2_b2_broken.pt"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=r"cannot load .*hgnet_v2_b2_broken.pt as a birder hgnet_v2_b2 classifier"):
        load_classifier(ModelConfig(file=str(bad)))


def test_weights_for_another_network_are_a_clear_error(danube_weights: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "regnet_y_8g_mislabelled.pt"
    shutil.copy(danube_weights, wrong)
    with pytest.raises(ModelError, match="is it a complete birder .pt file for that network"):
        load_classifier(ModelConfig(file=str(wrong)))


def test_network_is_read_from_the_file_name_or_given() -> None:
    assert network_of_file(Path("hgnet_v2_b2_danube-delta.pt"), None) == "hgnet_v2_b2"
    assert network_of_file(Path("regnet_y_8g_my-garden_12.pt"), None) == "regnet_y_8g"
    assert network_of_file(Path("mine.pt"), "hgnet_v2_b2") == "hgnet_v2_b2"
    with pytest.raises(ModelError, match="set model.network"):
        network_of_file(Path("mine.pt"), None)


def test_the_two_shipped_models_are_birder_pretrained_classifiers() -> None:
    names = pretrained_names(CLASSIFIER)
    assert DANUBE["name"] in names and EU_COMMON["name"] in names


@pytest.mark.timeout(120)
def test_models_pull_offline_fails_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "models", "pull", DANUBE["name"], "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"birdwatch: error: cannot download {DANUBE['name']}.pt from https://")
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / f"{DANUBE['name']}.pt").exists(), "no partial file is left behind"
    assert not Path("models").exists() or Path("models").is_dir()


@pytest.mark.timeout(120)
def test_models_list_marks_downloaded_files(danube_weights: Path, tmp_path: Path) -> None:
    shutil.copy(danube_weights, tmp_path / f"{DANUBE['name']}.pt")
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "models", "list", "danube", "--models-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"* {DANUBE['name']}" in result.stdout
