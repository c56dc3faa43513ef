"""Loading birder classifiers by pretrained name or local file.

The weights file is found, fetched on first use and checked by birdwatch/weights.py, as the teacher's
is. Species names come from the weights file (`class_to_idx`); no separate list is needed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from birder.common import fs_ops
from birder.data.transforms.classification import RGBType
from birder.model_registry import registry

from birdwatch.config import ModelConfig
from birdwatch.config.rules import device_problem
from birdwatch.errors import ModelError
from birdwatch.weights import WeightsSource
from birdwatch.weights import WhileFetching

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A loaded birder classifier and what it needs to be fed."""

    net: Any  # a birder nn.Module: classify, embed and detection_features are its own
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


def classifier_weights(cfg: ModelConfig) -> tuple[Path, str, str]:
    """(path, network, display name) of the configured classifier, the file there and checked."""
    source = WeightsSource.of_model(cfg)
    path = source.checked()
    network = network_of_file(path, cfg.network) if cfg.file else source.metadata()["net"]["network"]
    return path, network, source.label


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
    cfg: ModelConfig,
    device: torch.device | None = None,
    *,
    while_fetching: WhileFetching | None = None,
    stop: threading.Event | None = None,
) -> Classifier:
    source = WeightsSource.of_model(cfg)
    source.ensure(while_fetching=while_fetching, stop=stop)
    path, network, name = classifier_weights(cfg)
    device = device or resolve_device(cfg.device)
    reparameterized = False
    if not cfg.file:
        reparameterized = bool(source.metadata()["net"].get("reparameterized", False))
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
