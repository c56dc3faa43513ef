"""Weights on first use: `birdwatch run` fetches missing weights through the same code as `models
pull` (birder's downloader: a temporary file, SHA-256 checked, moved into place only when it
matches), from a real HTTP server on a loopback port standing in for the model hub."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from typing import Any

import pytest
import yaml
from birder.model_registry import registry

from birdwatch import weights
from birdwatch.classify.models import load_classifier
from birdwatch.config import ModelConfig
from birdwatch.config import load_config
from birdwatch.errors import ModelError
from birdwatch.runtime.service import _extend_start
from birdwatch.runtime.service import check_before_start
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.weights import FetchStopped
from birdwatch.weights import WeightsSource
from birdwatch.weights import prune_partials
from birdwatch.weights import pull
from tests.fixtures_models import DANUBE
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.process import wait_until
from tests.support.servers import WeightsServer
from tests.test_systemd import NotifyListener
from tests.test_systemd import listener  # noqa: F401 (a fixture)


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


# ---- what `models pull --config` fetches, and what an interrupted fetch leaves ------------------------


def partials_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.partial")) if folder.is_dir() else []


def locks_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def held(lock: Path) -> IO[bytes]:
    """`lock` held as a running fetch holds its own, until the returned file is closed."""
    f = lock.open("ab")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def settled(parts: list[Path]) -> bool:
    """Nothing written to `parts` for half a second."""
    before = [p.stat().st_size for p in parts]
    time.sleep(0.5)
    return [p.stat().st_size for p in parts] == before


def fetch_until_stopped(url: str, dst: Path, sha256: str, stop: threading.Event) -> None:
    with contextlib.suppress(FetchStopped):
        weights.fetch(url, dst, sha256, progress=False, stop=stop)


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.timeout(120)
def test_models_pull_with_a_config_fetches_exactly_what_a_start_of_it_would(
    weights_server: WeightsServer, small_weights: Path, teacher_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    """model.file + model.url, and the teacher `localiser: teacher` runs, each from its own url: not model.name."""
    model_sha = weights_server.publish(small_weights, "mine.pt")
    teacher_sha = weights_server.publish(teacher_weights, "teacher.pt")
    models = tmp_path / "models"
    config = service_config(models / small_weights.name, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": f"{weights_server.url}/mine.pt", "sha256": model_sha}
    config["localiser"] = "teacher"
    config["tracking"]["timeout_s"] = 5.0
    config["teacher"] = {"file": str(models / teacher_weights.name), "url": f"{weights_server.url}/teacher.pt"}
    config["teacher"]["sha256"] = teacher_sha

    out = subprocess.run(
        [sys.executable, "-m", "birdwatch", "models", "pull", "--config", str(write_config(config, tmp_path / "c.yaml"))],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    assert sorted(weights_server.requested) == ["/mine.pt", "/teacher.pt"]
    assert hashlib.sha256((models / small_weights.name).read_bytes()).hexdigest() == model_sha
    assert hashlib.sha256((models / teacher_weights.name).read_bytes()).hexdigest() == teacher_sha
    assert sorted(p.name for p in models.iterdir()) == sorted([small_weights.name, teacher_weights.name])


@pytest.mark.timeout(120)
def test_ctrl_c_during_a_pull_leaves_no_partial_file(
    weights_server: WeightsServer, small_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    sha256 = weights_server.publish(small_weights, small_weights.name)
    weights_server.bytes_per_s = small_weights.stat().st_size / 60  # a minute for the whole file
    target = tmp_path / "models" / small_weights.name
    config = service_config(target, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": f"{weights_server.url}/{small_weights.name}", "sha256": sha256}
    path = write_config(config, tmp_path / "c.yaml")

    proc = subprocess.Popen(
        [sys.executable, "-m", "birdwatch", "models", "pull", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_until(lambda: partials_in(target.parent), timeout=60, what="a partial file of the fetch")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.communicate(timeout=10)

    assert partials_in(target.parent) == [] and not target.exists()


@pytest.mark.timeout(120)
def test_a_stop_during_the_first_starts_fetch_ends_it_and_leaves_no_partial_file(
    weights_server: WeightsServer, small_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    sha256 = weights_server.publish(small_weights, small_weights.name)
    weights_server.bytes_per_s = small_weights.stat().st_size / 60
    target = tmp_path / "models" / small_weights.name
    config = service_config(target, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": f"{weights_server.url}/{small_weights.name}", "sha256": sha256}
    bw = BirdwatchProcess(config, tmp_path / "run").start()
    try:
        wait_until(lambda: partials_in(target.parent), timeout=60, what="a partial file of the fetch")
        code = bw.terminate(timeout=30)
    finally:
        bw.kill()

    assert code == 0, bw.log
    assert "stopped before it finished; nothing was kept" in bw.log
    assert partials_in(target.parent) == [] and not target.exists()


@pytest.mark.timeout(60)
def test_a_partial_file_a_killed_fetch_left_is_removed_at_start_and_never_counted(
    weights_server: WeightsServer, small_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha256 = weights_server.publish(small_weights, small_weights.name)
    size = small_weights.stat().st_size
    weights_server.bytes_per_s = size / 3
    target = tmp_path / "models" / small_weights.name
    target.parent.mkdir()
    killed = target.parent / f"{target.name}.0123abcd.partial"  # SIGKILL mid-fetch, a moment ago: its lock free
    killed.write_bytes(b"\0" * 4096)
    (target.parent / f"{target.name}.0123abcd.lock").touch()
    beside = target.parent / f"{target.name}.4567cdef.partial"  # a live fetch beside (`models pull` in a shell)
    with beside.open("wb") as f:
        f.truncate(50 * size)
    os.utime(beside, (time.time() - 3600, time.time() - 3600))  # a slow line: untouched for an hour
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.3)
    reported: list[int] = []
    source = WeightsSource.of_model(
        ModelConfig(file=str(target), url=f"{weights_server.url}/{small_weights.name}", sha256=sha256)
    )

    with held(target.parent / f"{target.name}.4567cdef.lock"):
        source.ensure(while_fetching=lambda _, done: reported.append(done), progress=False)

        assert not killed.exists(), "what a killed fetch left is gone"
        assert beside.exists(), "a partial file whose lock is held is another fetch's, however old"
    assert reported and max(reported) <= size, f"progress counts this fetch alone: {reported}"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256
    assert locks_in(target.parent) == [target.parent / f"{target.name}.4567cdef.lock"], "its own lock is gone"


@pytest.mark.timeout(120)
def test_a_killed_fetchs_partial_goes_however_recent_and_a_running_fetchs_stays_however_old(
    weights_server: WeightsServer, small_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    """A fetch holds a lock beside its partial file for as long as it downloads: a partial whose lock nobody
    holds is a killed fetch's (SIGKILL, a power cut), even seconds after; one whose lock is held is a fetch
    still running, in this process or another, however long its line has been quiet."""
    sha256 = weights_server.publish(small_weights, small_weights.name)
    weights_server.bytes_per_s = small_weights.stat().st_size / 60
    target = tmp_path / "models" / small_weights.name
    url = f"{weights_server.url}/{small_weights.name}"
    config = service_config(target, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": url, "sha256": sha256}
    killed = subprocess.Popen(
        [sys.executable, "-m", "birdwatch", "models", "pull", "--config", str(write_config(config, tmp_path / "c.yaml"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    stop = threading.Event()
    running = threading.Thread(target=fetch_until_stopped, args=(url, target, sha256, stop), daemon=True)
    try:
        wait_until(lambda: partials_in(target.parent), timeout=60, what="a partial file of the pull")
        killed_left = partials_in(target.parent)
        running.start()  # its own start prunes first: the pull's lock is held, its partial stays
        wait_until(lambda: len(partials_in(target.parent)) > len(killed_left), timeout=30, what="the running fetch's")
        assert set(killed_left) <= set(partials_in(target.parent))
        killed.kill()
        assert killed.wait(timeout=30) == -signal.SIGKILL
        weights_server.bytes_per_s = 1.0  # the line goes quiet: nothing more comes for a long while
        mine = [p for p in partials_in(target.parent) if p not in killed_left]
        wait_until(lambda: settled(mine), timeout=30, what="the running fetch to stop writing")
        for part in mine:
            os.utime(part, (time.time() - 3600, time.time() - 3600))

        removed = prune_partials(target)  # what the next start, or a pull, does first

        assert sorted(removed) == killed_left, "the killed pull's, seconds old"
        assert all(p.exists() for p in mine), "the running fetch's, an hour untouched"
        assert len(locks_in(target.parent)) == 1, "the killed pull's lock file went with its partial"
    finally:
        killed.kill()
        killed.wait(timeout=10)
        stop.set()
        running.join(timeout=30)
    assert partials_in(target.parent) == [] and locks_in(target.parent) == [] and not target.exists()


# ---- --force, and what systemd is told while the first start fetches ------------------------------------


@pytest.mark.timeout(180)
def test_a_forced_pull_replaces_the_weights_only_with_a_checked_download(
    weights_server: WeightsServer, small_weights: Path, teacher_weights: Path, short_clip: Path, tmp_path: Path
) -> None:
    """`models pull --config --force` downloads beside the weights in use and moves the checked file over them:
    a download refused or stopped leaves them as they were, for the next start."""
    sha256 = hashlib.sha256(small_weights.read_bytes()).hexdigest()
    target = tmp_path / "models" / small_weights.name
    target.parent.mkdir()
    target.write_bytes(b"the weights in use")
    config = service_config(target, [{"name": "feeder", "url": str(short_clip)}])
    config["model"] |= {"url": f"{weights_server.url}/mine.pt", "sha256": sha256}
    command = [sys.executable, "-m", "birdwatch", "models", "pull", "--config", str(write_config(config, tmp_path / "c.yaml")), "--force"]  # fmt: skip

    weights_server.publish(teacher_weights, "mine.pt")  # the hub serves another file
    refused = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert refused.returncode == 2 and "does not match the expected SHA-256" in refused.stderr, refused.stderr
    assert target.read_bytes() == b"the weights in use" and list(target.parent.iterdir()) == [target]

    weights_server.publish(small_weights, "mine.pt")
    weights_server.bytes_per_s = small_weights.stat().st_size / 60
    stopped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        wait_until(lambda: partials_in(target.parent), timeout=60, what="a partial file of the pull")
        stopped.send_signal(signal.SIGINT)
        assert stopped.wait(timeout=30) == 130
    finally:
        stopped.kill()
        stopped.communicate(timeout=10)
    assert target.read_bytes() == b"the weights in use" and list(target.parent.iterdir()) == [target]

    weights_server.bytes_per_s = None
    replaced = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha256 and list(target.parent.iterdir()) == [target]


@pytest.mark.timeout(60)
def test_a_forced_pull_of_a_pretrained_name_that_fails_keeps_the_file_it_had(
    registered: tuple[str, str],
    weights_server: WeightsServer,
    danube_weights: Path,
    small_weights: Path,
    tmp_path: Path,
) -> None:
    name, sha256 = registered
    models = tmp_path / "models"
    models.mkdir()
    kept = models / f"{name}.pt"
    shutil.copy(danube_weights, kept)
    weights_server.publish(small_weights, f"{name}.pt")  # not the file birder published

    with pytest.raises(ModelError, match="does not match the expected SHA-256"):
        pull(name, models, force=True, mirror=weights_server.url, progress=False)

    assert hashlib.sha256(kept.read_bytes()).hexdigest() == sha256 and list(models.iterdir()) == [kept]
    weights_server.publish(danube_weights, f"{name}.pt")
    assert pull(name, models, force=True, mirror=weights_server.url, progress=False) == kept
    assert len(weights_server.requested) == 2, "forced: fetched again, although the file was there"


@pytest.mark.timeout(120)
def test_while_the_first_start_fetches_the_teacher_systemd_is_told_the_teachers_file(
    weights_server: WeightsServer,
    small_weights: Path,
    teacher_weights: Path,
    short_clip: Path,
    tmp_path: Path,
    listener: NotifyListener,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher_sha = weights_server.publish(teacher_weights, "teacher.pt")
    weights_server.bytes_per_s = teacher_weights.stat().st_size / 3  # about 3 s
    teacher = tmp_path / "models" / teacher_weights.name
    config = service_config(small_weights, [{"name": "feeder", "url": str(short_clip)}])  # the classifier is here
    config["localiser"] = "teacher"
    config["tracking"]["timeout_s"] = 5.0
    config["teacher"] = {"file": str(teacher), "url": f"{weights_server.url}/teacher.pt", "sha256": teacher_sha}
    monkeypatch.setattr(weights, "PROGRESS_EVERY_S", 0.3)

    # What `birdwatch run` does before anything is built, as its first start reports it.
    check_before_start(load_config(write_config(config, tmp_path / "c.yaml")), while_fetching=_extend_start)

    listener.sock.settimeout(0.5)
    statuses = []
    with contextlib.suppress(TimeoutError):
        while True:
            fields, _ = listener.receive()
            statuses += [fields["STATUS"]] if "STATUS" in fields else []
    assert statuses and all(s.startswith(f"fetching {teacher}: ") for s in statuses), statuses
