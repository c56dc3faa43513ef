"""The head file: the head's weights and what they were trained on, checked before they are used.

A head is only meaningful on the exact features it was trained on, so the file records the birder
network, the classifier weights (name and SHA-256), the channels of the stages it reads, the input
size and the classes. Loading it onto another network fails with one clear line; the same network
with other weights (a fine-tune, say) loads with a warning, since its features have moved.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
from birder.net.detection.base import DetectionBaseNet

from birdwatch import __version__
from birdwatch.classify.models import Classifier
from birdwatch.errors import ModelError
from birdwatch.locate.head import DEFAULT_FPN_WIDTH
from birdwatch.locate.head import HEAD_NETWORK
from birdwatch.locate.head import build_head
from birdwatch.precision import Dtype
from birdwatch.weights import file_sha256

log = logging.getLogger(__name__)

FORMAT = "birdwatch-detector-head"
VERSION = 1


@dataclass
class HeadInfo:
    network: str  # birder network of the backbone, e.g. hgnet_v2_b2
    classifier: str  # the classifier whose backbone the head was trained on
    classifier_sha256: str
    return_channels: list[int]  # channels of the backbone stages, a check beyond the name
    input_size: int  # longer side of the training images, in pixels
    classes: list[str] = field(default_factory=lambda: ["bird"])
    head: str = HEAD_NETWORK
    fpn_width: int = DEFAULT_FPN_WIDTH
    trained: dict[str, Any] = field(default_factory=dict)  # epochs, images, data, metrics
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    birdwatch: str = __version__

    @classmethod
    def for_classifier(cls, classifier: Classifier, input_size: int, fpn_width: int, **kwargs: Any) -> HeadInfo:
        return cls(
            network=classifier.network,
            classifier=classifier.name,
            classifier_sha256=classifier_sha256(classifier),
            return_channels=[int(c) for c in classifier.net.return_channels],
            input_size=input_size,
            fpn_width=fpn_width,
            **kwargs,
        )


def classifier_sha256(classifier: Classifier) -> str:
    """SHA-256 of the classifier's weights file (remembered per path, size and mtime)."""
    return file_sha256(classifier.path)


def save_head(path: str | Path, head: DetectionBaseNet, info: HeadInfo, **extra: Any) -> Path:
    """Write the head's weights and metadata; atomic, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "info": dataclasses.asdict(info),
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_head(path: str | Path) -> tuple[dict[str, Any], HeadInfo]:
    """The raw payload and its metadata; a missing, foreign or corrupt file is a ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"detector head {str(path)!r} does not exist; train one with `birdwatch detector train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read detector head {path} ({first[:160]}); is it a file from `birdwatch detector train`?"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            f"{path} is not a birdwatch detector head (no {FORMAT!r} marker); "
            "use the head.pt that `birdwatch detector train` writes"
        )
    if payload.get("version", 0) > VERSION:
        raise ModelError(
            f"{path} was written by a newer birdwatch (head format {payload['version']}); upgrade birdwatch"
        )
    try:
        info = HeadInfo(**payload["info"])
    except TypeError as exc:
        raise ModelError(f"{path}: detector head metadata is incomplete ({exc})") from None
    return payload, info


def check_compatible(info: HeadInfo, classifier: Classifier, path: str | Path) -> None:
    """The head must sit on the backbone it was trained on: same network and stage channels."""
    channels = [int(c) for c in getattr(classifier.net, "return_channels", [])]
    if info.network != classifier.network or info.return_channels != channels:
        raise ModelError(
            f"detector head {path} was trained on {info.network} features (classifier {info.classifier}), "
            f"but the classifier is {classifier.name} ({classifier.network}); train a head for it with "
            f"`birdwatch detector train` or configure the classifier the head was made for"
        )
    sha = classifier_sha256(classifier)
    if sha != info.classifier_sha256:
        log.warning(
            "detector head %s was trained on %s (sha256 %s...), not on %s (sha256 %s...): same network, other "
            "weights, so boxes may be worse; retrain the head on this classifier if they are",
            path,
            info.classifier,
            info.classifier_sha256[:12],
            classifier.name,
            sha[:12],
        )


def load_head(
    path: str | Path, classifier: Classifier, *, precision: Dtype | str = Dtype.FP32
) -> tuple[DetectionBaseNet, HeadInfo]:
    """Build the head on the classifier's own network and load its weights."""
    payload, info = read_head(path)
    check_compatible(info, classifier, path)
    if info.head != HEAD_NETWORK:
        raise ModelError(f"{path}: head type {info.head!r} is not supported (only {HEAD_NETWORK!r})")
    head = build_head(classifier.net, fpn_width=info.fpn_width, num_classes=len(info.classes), precision=precision)
    try:
        head.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: the head's weights do not fit its own description ({first[:160]})") from None
    return head.to(classifier.device).eval(), info
