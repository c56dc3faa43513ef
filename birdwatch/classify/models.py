"""Loading birder classifiers by pretrained name or local file, and fetching pretrained weights.

Pretrained weights live in `model.models_dir` as `<name>.pt` (birder's own file name and format);
`birdwatch models pull NAME` downloads them there with birder's downloader, which checks SHA-256.
Species names come from the weights file (`class_to_idx`); no separate list is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from birder.common import cli as birder_cli
from birder.common import fs_ops
from birder.conf import settings as birder_settings
from birder.data.transforms.classification import RGBType
from birder.model_registry import Task
from birder.model_registry import registry

from birdwatch.config import ModelConfig
from birdwatch.config.rules import device_problem
from birdwatch.errors import ModelError

log = logging.getLogger(__name__)


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


def pretrained_metadata(name: str) -> dict[str, Any]:
    if not registry.pretrained_exists(name):
        raise ModelError(
            f"model.name: {name!r} is not a birder pretrained model; `birdwatch models list` shows them, "
            "or set model.file to a local birder .pt file"
        )
    meta = registry.get_pretrained_metadata(name)
    if meta["task"] != Task.IMAGE_CLASSIFICATION:
        raise ModelError(f"model.name: {name!r} is a {meta['task']} model, not a classifier")
    return meta


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


def pull(name: str, models_dir: str | Path, *, force: bool = False, progress: bool = True) -> Path:
    """Download pretrained weights with birder's downloader (resumes nothing, checks SHA-256)."""
    meta = pretrained_metadata(name)
    dst = pretrained_path(name, models_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if force and dst.exists():
        dst.unlink()
    size_mb = meta["formats"]["pt"]["file_size"]
    log.info("fetching %s (%.0f MB) into %s", name, size_mb, dst)
    previous = birder_settings.MODELS_DIR
    birder_settings.MODELS_DIR = dst.parent  # birder would otherwise create ./models wherever we run
    try:
        fs_ops.download_model_by_weights(name, dst=dst, file_format="pt", progress_bar=progress)
    except FileExistsError:
        raise ModelError(f"{dst} exists but does not match {name}'s SHA-256; run with --force to replace it") from None
    except OSError as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise ModelError(
            f"cannot download {name}: {reason}; check the internet connection, or copy {dst.name} into {dst.parent}"
        ) from None
    finally:
        birder_settings.MODELS_DIR = previous
    return dst


def weights_file(cfg: ModelConfig) -> tuple[Path, str, str]:
    """(path, network, display name) for the configured model, checking the file is there."""
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise ModelError(f"model.file: weights file {str(path)!r} does not exist")
        return path, network_of_file(path, cfg.network), path.stem
    meta = pretrained_metadata(cfg.name)
    path = pretrained_path(cfg.name, cfg.models_dir)
    if not path.is_file():
        raise ModelError(
            f"model weights {str(path)!r} not found; fetch them with "
            f"`birdwatch models pull {cfg.name} --models-dir {cfg.models_dir}` "
            f"({meta['formats']['pt']['file_size']:.0f} MB, needs internet once)"
        )
    if cfg.verify_sha256:
        expected = meta["formats"]["pt"]["sha256"]
        if birder_cli.calc_sha256(path) != expected:
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


def load_classifier(cfg: ModelConfig, device: torch.device | None = None) -> Classifier:
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
