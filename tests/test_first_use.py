"""Weights on first use: `birdwatch run` fetches missing weights through the same code as `models
pull` (birder's downloader: a temporary file, SHA-256 checked, moved into place only when it
matches), from a real HTTP server on a loopback port standing in for the model hub."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from birder.model_registry import registry

from birdwatch.classify.models import load_classifier
from birdwatch.classify.models import pull
from birdwatch.config import ModelConfig
from birdwatch.errors import ModelError
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.fixtures_models import DANUBE
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.servers import WeightsServer


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("first-use") / "feeder.mp4"
    write_video(path, generate_frames(160, 120, 20, n_birds=1, seed=5), fps=20)
    return path


def run_once(config: dict[str, Any], workdir: Path) -> tuple[int, str]:
    bw = BirdwatchProcess(config, workdir).start()
    try:
        return bw.wait(90), bw.log
    finally:
        bw.kill()


def nothing_fetched_in(models: Path) -> bool:
    return not models.exists() or not any(models.iterdir())


@pytest.mark.timeout(120)
def test_the_first_start_fetches_missing_weights_then_runs(
    weights_server: WeightsServer, small_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    sha256 = weights_server.publish(small_weights, small_weights.name)
    target = tmp_path / "models" / small_weights.name
    config = service_config(target, [{"name": "feeder", "url": str(short_clip), "realtime": False}])
    config["model"] |= {"url": f"{weights_server.url}/{small_weights.name}", "sha256": sha256}

    code, log = run_once(config, tmp_path / "run")

    assert code == 0, log
    assert f"fetching {target} from {weights_server.url}/" in log
    assert "birdwatch running" in log, "the fetched file is the one that runs"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256
    assert [p for p in target.parent.iterdir()] == [target], "no temporary file is left beside it"

    code, log = run_once(config, tmp_path / "again")
    assert code == 0, log
    assert weights_server.requested == [f"/{small_weights.name}"], "a second start uses the file it has"


@pytest.mark.timeout(120)
def test_a_download_that_does_not_match_its_sha256_is_refused_and_nothing_is_kept(
    weights_server: WeightsServer, small_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    weights_server.publish(small_weights, small_weights.name)
    target = tmp_path / "models" / small_weights.name
    config = service_config(target, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": f"{weights_server.url}/{small_weights.name}", "sha256": "0" * 64}

    code, log = run_once(config, tmp_path / "run")

    assert code == 2
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"birdwatch: error: the file from {weights_server.url}/{small_weights.name} ")
    assert "does not match the expected SHA-256" in last and "nothing was kept" in last
    assert "Traceback" not in log
    assert nothing_fetched_in(target.parent)


@pytest.mark.timeout(120)
def test_a_pretrained_name_from_a_mirror_is_held_to_birders_published_hash(
    weights_server: WeightsServer, danube_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    """Untrained weights under the real name: the mirror serves them, the published SHA-256 refuses them."""
    weights_server.publish(danube_weights, f"{DANUBE['name']}.pt")
    config = service_config(danube_weights, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] = {"name": DANUBE["name"], "models_dir": "models", "mirror": weights_server.url, "device": "cpu"}

    code, log = run_once(config, tmp_path)

    assert weights_server.requested == [f"/{DANUBE['name']}.pt"]
    assert code == 2
    assert "does not match the expected SHA-256" in log.strip().splitlines()[-1]
    assert nothing_fetched_in(tmp_path / "models")


@pytest.fixture
def registered(danube_weights: Path) -> Iterator[tuple[str, str]]:
    """A pretrained name whose published SHA-256 is that of our untrained file (a hub we control)."""
    name = "hgnet_v2_b2_birdwatch-first-use"
    sha256 = hashlib.sha256(danube_weights.read_bytes()).hexdigest()
    size_mb = danube_weights.stat().st_size / 1e6
    registry.register_weights(
        name,
        {
            "description": "stand-in for a published model",
            "resolution": DANUBE["size"],
            "formats": {"pt": {"file_size": size_mb, "sha256": sha256}},
            "net": {"network": DANUBE["network"], "tag": "birdwatch-first-use"},
        },
    )
    yield name, sha256
    registry._pretrained_nets.pop(name, None)  # birder has no unregister


@pytest.mark.timeout(60)
def test_pull_of_a_pretrained_name_writes_the_checked_file(
    registered: tuple[str, str], weights_server: WeightsServer, danube_weights: Path, tmp_path: Path
) -> None:
    name, sha256 = registered
    weights_server.publish(danube_weights, f"{name}.pt")

    path = pull(name, tmp_path / "models", mirror=weights_server.url, progress=False)

    assert path == tmp_path / "models" / f"{name}.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    clf = load_classifier(ModelConfig(name=name, models_dir=str(tmp_path / "models"), device="cpu"))
    assert len(clf.class_names) == DANUBE["classes"], "and it loads, checked again, as the pretrained model"


@pytest.mark.timeout(60)
def test_download_never_keeps_the_error_that_says_what_to_fetch(registered: tuple[str, str], tmp_path: Path) -> None:
    name, _ = registered
    cfg = ModelConfig(name=name, models_dir=str(tmp_path / "models"), download="never", device="cpu")
    with pytest.raises(ModelError) as info:
        load_classifier(cfg)
    assert f"birdwatch models pull {name} --models-dir {tmp_path / 'models'}" in str(info.value)
    assert nothing_fetched_in(tmp_path / "models")


@pytest.mark.timeout(60)
def test_an_unreachable_hub_names_the_file_and_where_to_put_it(registered: tuple[str, str], tmp_path: Path) -> None:
    name, _ = registered
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback
    cfg = ModelConfig(name=name, models_dir=str(tmp_path / "models"), mirror=closed, device="cpu")
    with pytest.raises(ModelError) as info:
        load_classifier(cfg)
    message = str(info.value)
    assert message.startswith(f"cannot download {name}.pt from {closed}/{name}.pt: ")
    assert f"put it into {tmp_path / 'models'}" in message
