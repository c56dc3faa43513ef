"""Loading birder classifiers by pretrained name or local file, and fetching pretrained weights.

Pretrained weights live in `model.models_dir` as `<name>.pt` (birder's own file name and format).
`birdwatch models pull NAME`, and `birdwatch run` on its first start (`model.download: auto`), fetch
them there with birder's downloader: a temporary file, checked against the published SHA-256, moved
into place only when it matches. `model.mirror` serves the same files from elsewhere (a NAS for a
box without internet); `model.url` + `model.sha256` fetch a `model.file` of your own the same way.
Species names come from the weights file (`class_to_idx`); no separate list is needed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit

import torch
from birder.common import cli as birder_cli
from birder.common import fs_ops
from birder.common.lib import get_pretrained_model_url
from birder.data.transforms.classification import RGBType
from birder.model_registry import Task
from birder.model_registry import registry

from birdwatch.config import ModelConfig
from birdwatch.config.rules import device_problem
from birdwatch.errors import ModelError
from birdwatch.redact import redact_url

log = logging.getLogger(__name__)

# birder's downloader opens its URL without a timeout; a server that stops sending would hang the start.
DOWNLOAD_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 10.0

# Called every PROGRESS_EVERY_S while a download runs, with the bytes fetched so far.
WhileFetching = Callable[[int], None]


@dataclass
class Classifier:
    """A loaded birder classifier and what it needs to be fed."""

    net: torch.nn.Module
    network: str  # birder network, e.g. "hgnet_v2_b2"
    name: str  # what events call the model: the pretrained name or the file's stem
    class_names: list[str]  # index -> species
    size: tuple[int, int]  # (H, W) the network was trained at
    rgb_stats: RGBType
    path: Path
    device: torch.device


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(spec)  # also a rule when the config loads; bench passes --device here directly
    if problem:
        raise ModelError(problem)
    return torch.device(spec)


def pretrained_classifiers() -> list[str]:
    return list(registry.list_pretrained_models(task=Task.IMAGE_CLASSIFICATION))


def pretrained_detectors() -> list[str]:
    return list(registry.list_pretrained_models(task=Task.OBJECT_DETECTION))


def pretrained_metadata(
    name: str, task: str | None = Task.IMAGE_CLASSIFICATION, *, key: str = "model.name"
) -> dict[str, Any]:
    """birder's metadata of a pretrained name (its networks, file size, SHA-256); of `task`, unless None."""
    file_key = key.replace(".name", ".file")
    if not registry.pretrained_exists(name):
        raise ModelError(
            f"{key}: {name!r} is not a birder pretrained model; `birdwatch models list` shows them, "
            f"or set {file_key} to a local birder .pt file"
        )
    meta = registry.get_pretrained_metadata(name)
    if task is not None and meta["task"] != task:
        wanted = "a classifier" if task == Task.IMAGE_CLASSIFICATION else "a detector"
        raise ModelError(f"{key}: {name!r} is a {meta['task']} model, not {wanted}")
    return meta


def sha256_matches(path: Path, expected: str) -> bool:
    return birder_cli.calc_sha256(path) == expected.lower()


def pretrained_path(name: str, models_dir: str | Path) -> Path:
    return Path(models_dir) / f"{name}.pt"


def network_of_file(path: Path, explicit: str | None) -> str:
    """birder files do not record their network; the file name starts with it (`<network>_<tag>.pt`)."""
    if explicit:
        if not registry.exists(explicit):
            raise ModelError(f"model.network: {explicit!r} is not a birder network")
        return explicit
    stem = path.stem
    if registry.pretrained_exists(stem):
        return registry.get_pretrained_metadata(stem)["net"]["network"]
    candidates = [n for n in registry.list_models() if stem == n or stem.startswith(n + "_")]
    if not candidates:
        raise ModelError(
            f"model.file: cannot tell the birder network from the file name {path.name!r}; "
            "set model.network (e.g. hgnet_v2_b2)"
        )
    return max(candidates, key=len)


def pretrained_url(name: str, mirror: str | None = None) -> str:
    """Where birder publishes `<name>.pt`, or the same file name under `mirror`."""
    if mirror:
        return f"{mirror.rstrip('/')}/{name}.pt"
    return get_pretrained_model_url(name, "pt")[1]


def pull(
    name: str,
    models_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    mirror: str | None = None,
    while_fetching: WhileFetching | None = None,
) -> Path:
    """Fetch pretrained weights (a classifier or a detector) into `models_dir`, checked against birder's
    published SHA-256."""
    meta = pretrained_metadata(name, task=None)
    dst = pretrained_path(name, models_dir)
    if force and dst.exists():
        dst.unlink()
    pt = meta["formats"]["pt"]
    log.info("fetching %s (%.0f MB) into %s", name, pt["file_size"], dst)
    fetch(pretrained_url(name, mirror), dst, pt["sha256"], progress=progress, while_fetching=while_fetching)
    return dst


def fetch(
    url: str, dst: Path, sha256: str, *, progress: bool = True, while_fetching: WhileFetching | None = None
) -> None:
    """Download `url` to `dst` with birder's downloader, which writes a temporary file, checks its
    SHA-256 and moves it into place only when it matches: a failed fetch leaves nothing behind."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {dst.parent} ({exc.strerror}); check its owner and mode") from None
    try:
        _download_in_background(url, dst, sha256, progress, while_fetching)
    except FileExistsError:
        raise ModelError(f"{dst} exists but does not match its SHA-256; run with --force to replace it") from None
    except RuntimeError as exc:
        if "invalid hash" not in str(exc):  # birder's words for a SHA-256 mismatch
            raise
        raise ModelError(
            f"the file from {redact_url(url)} does not match the expected SHA-256 ({exc}); nothing was kept. "
            f"Is {urlsplit(url).hostname} serving the right file?"
        ) from None
    except HTTPError as exc:
        raise ModelError(
            f"cannot download {dst.name} from {redact_url(url)}: HTTP {exc.code} {exc.reason}; "
            f"check the address, or put {dst.name} into {dst.parent} by hand"
        ) from None
    except OSError as exc:  # URLError, timeouts, a full disk
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ModelError(
            f"cannot download {dst.name} from {redact_url(url)}: {reason}; check the internet connection, "
            f"or fetch that file on another machine and put it into {dst.parent}"
        ) from None


def _download_in_background(
    url: str, dst: Path, sha256: str, progress: bool, while_fetching: WhileFetching | None
) -> None:
    """birder's download_file, in a thread, so that the caller can report progress (to the log, to
    systemd, whose start timeout a large download could outlast) while it runs."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            birder_cli.download_file(url, dst, sha256, progress_bar=progress)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # only sockets opened without their own timeout: urlopen's
    try:
        worker = threading.Thread(target=work, name="fetch-weights", daemon=True)
        worker.start()
        worker.join(PROGRESS_EVERY_S)
        while worker.is_alive():
            done = _partial_bytes(dst)
            if not progress:  # no bar (a service, a pipe): the log tells how far it got
                log.info("fetching %s: %.1f MB so far", dst.name, done / 1e6)
            if while_fetching:
                while_fetching(done)
            worker.join(PROGRESS_EVERY_S)
    finally:
        socket.setdefaulttimeout(previous)
    if failure:
        raise failure[0]


def _partial_bytes(dst: Path) -> int:
    """Bytes fetched so far: birder downloads into `<dst>.<uuid>.partial` next to `dst`."""
    done = 0
    for part in dst.parent.glob(f"{dst.name}.*.partial"):
        with contextlib.suppress(FileNotFoundError):  # moved into place (or removed) since the glob
            done += part.stat().st_size
    return done


def pending_download(cfg: ModelConfig) -> str | None:
    """The URL the first start will fetch the weights from, or None when they are here (or will not be
    fetched: `model.download: never`, or a model.file without model.url)."""
    if cfg.download == "never":
        return None
    if cfg.file:
        missing = cfg.url and cfg.sha256 and not Path(cfg.file).expanduser().is_file()
        return cfg.url if missing else None
    pretrained_metadata(cfg.name)  # an unknown name is an error, not a download
    if pretrained_path(cfg.name, cfg.models_dir).is_file():
        return None
    return pretrained_url(cfg.name, cfg.mirror)


def ensure_weights(cfg: ModelConfig, *, while_fetching: WhileFetching | None = None) -> None:
    """Fetch the configured weights when they are missing and `model.download` is auto (the first
    start). With `never`, or nothing to fetch from, `weights_file` reports the missing file."""
    if pending_download(cfg) is None:
        return
    progress = sys.stderr.isatty()
    if cfg.file:
        assert cfg.url and cfg.sha256
        log.info("fetching %s from %s", cfg.file, redact_url(cfg.url))
        dst = Path(cfg.file).expanduser()
        fetch(cfg.url, dst, cfg.sha256.lower(), progress=progress, while_fetching=while_fetching)
    else:
        pull(cfg.name, cfg.models_dir, progress=progress, mirror=cfg.mirror, while_fetching=while_fetching)


def weights_file(cfg: ModelConfig) -> tuple[Path, str, str]:
    """(path, network, display name) for the configured model, checking the file is there."""
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise ModelError(f"model.file: weights file {str(path)!r} does not exist")
        if cfg.sha256 and cfg.verify_sha256 and not sha256_matches(path, cfg.sha256):
            raise ModelError(
                f"{path} does not match model.sha256 (partial or replaced file); delete it to fetch it "
                "again from model.url, or correct model.sha256"
            )
        return path, network_of_file(path, cfg.network), path.stem
    meta = pretrained_metadata(cfg.name)
    path = pretrained_path(cfg.name, cfg.models_dir)
    if not path.is_file():
        raise ModelError(
            f"model weights {str(path)!r} not found; fetch them with "
            f"`birdwatch models pull {cfg.name} --models-dir {cfg.models_dir}` "
            f"({meta['formats']['pt']['file_size']:.0f} MB, needs internet once)"
        )
    if cfg.verify_sha256 and not sha256_matches(path, meta["formats"]["pt"]["sha256"]):
        raise ModelError(
            f"{path} does not match {cfg.name}'s published SHA-256 (partial or corrupt download); "
            f"run `birdwatch models pull {cfg.name} --models-dir {cfg.models_dir} --force`"
        )
    return path, meta["net"]["network"], cfg.name


def class_names_of(path: str | Path) -> list[str]:
    """The species of a birder .pt file in class-index order, read without building the network."""
    try:
        try:  # mmap: the weights stay on disk; only the pickled dict around them is read
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # torch's legacy (pre-zip) format cannot be mapped; read it whole, as birder does
            data = torch.load(path, map_location="cpu", weights_only=True)
        names = [str(name) for name, _ in sorted(data["class_to_idx"].items(), key=lambda item: item[1])]
    except Exception as exc:  # torch.load raises many types for a file that is not a birder checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read the species of {path} ({first[:160]}); is it a complete birder .pt file?"
        ) from None
    return names


def load_classifier(
    cfg: ModelConfig, device: torch.device | None = None, *, while_fetching: WhileFetching | None = None
) -> Classifier:
    ensure_weights(cfg, while_fetching=while_fetching)
    path, network, name = weights_file(cfg)
    device = device or resolve_device(cfg.device)
    reparameterized = False
    if not cfg.file:
        reparameterized = bool(pretrained_metadata(cfg.name)["net"].get("reparameterized", False))
    try:
        net, info = fs_ops.load_model(device, network, path=path, inference=True, reparameterized=reparameterized)
    except Exception as exc:  # torch.load and load_state_dict raise many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load {path} as a birder {network} classifier ({first[:160]}); "
            "is it a complete birder .pt file for that network?"
        ) from None
    if not callable(getattr(net, "classify", None)):
        raise ModelError(f"{path}: {network} is not a classification network")
    class_to_idx = info.class_to_idx
    class_names = [""] * len(class_to_idx)
    for species, idx in class_to_idx.items():
        class_names[idx] = species
    size = tuple(info.signature["inputs"][0]["data_shape"][2:4])
    log.info("loaded %s (%s, %d species, %dx%d) on %s", name, network, len(class_names), size[1], size[0], device)
    return Classifier(net, network, name, class_names, (int(size[0]), int(size[1])), info.rgb_stats, path, device)
