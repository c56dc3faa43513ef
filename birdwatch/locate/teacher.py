"""The teacher: one of birder's pretrained generic detectors, which knows birds from cats, dogs and people.

It comes by name through the same pull path as the classifiers (`birdwatch models pull NAME`,
SHA-256 checked against birder's published hash, into `model.models_dir`), or from a local birder
detection file (`teacher.file`, with `teacher.network` and `teacher.backbone` when its name does not
say). Which of its classes are birds is read off the weights' own class list, by name (`bird` in
COCO; `Wild Bird`, `Duck`, `Pigeon`, ... in Objects365); the animals among the others (cat, dog,
squirrel, person, ...) come back as boxes that are *not a bird*. Every other class (a chair, a car,
a potted plant) is dropped: a still thing tracked for ever would crowd out the birds' tracks.

Frames are resized to the network's square input (DETR-style detectors are trained so), normalised
with the weights' own RGB statistics, detected in one batch, and the boxes mapped back to each
frame's own pixels. The teacher is too slow for every frame on a CPU (D-FINE L, 1.7 s at 640 px on two
cores): `localiser: teacher` gates it by motion and caps its rate there (localiser.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from birder.common import fs_ops
from birder.data.transforms.classification import RGBType
from birder.model_registry import Task
from birder.model_registry import registry
from torchvision.ops import nms
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from birdwatch.classify.models import resolve_device
from birdwatch.config import ModelConfig
from birdwatch.config import TeacherConfig
from birdwatch.errors import ModelError
from birdwatch.imaging import bgr_to_tensor
from birdwatch.precision import Precision
from birdwatch.precision import autocast
from birdwatch.types import Detections
from birdwatch.types import Source
from birdwatch.weights import WeightsSource
from birdwatch.weights import WhileFetching

log = logging.getLogger(__name__)

# Class names that are birds, as COCO and Objects365 spell them (matched without case).
BIRD_NAMES = frozenset(
    {"bird", "wild bird", "duck", "goose", "swan", "parrot", "chicken", "pigeon", "penguin", "owl", "eagle", "seagull"}
)
# Animals (and people) that move at a feeder and are not birds: tracked, never a visit.
OTHER_ANIMALS = frozenset(
    {
        "person", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "squirrel",
        "rabbit", "deer", "fox", "monkey", "pig", "mouse", "rat", "hedgehog", "raccoon", "lion", "tiger",
        "camel", "donkey", "yak", "antelope", "butterfly", "bee", "insect", "frog", "lizard", "snake",
    }
)  # fmt: skip


ONE_THING_IOU = 0.7  # boxes of two classes overlapping this much are one thing: the surer class names it


@dataclass(frozen=True)
class TeacherWeights:
    path: Path
    network: str  # birder detection network, e.g. d_fine_l
    backbone: str  # its backbone network, e.g. hgnet_v2_b4
    name: str  # what logs and label files call it
    reparameterized: bool = False
    backbone_reparameterized: bool = False


def networks_of_file(path: Path, network: str | None, backbone: str | None) -> tuple[str, str]:
    """birder detection files record neither network; a file name `<network>_<tag>_<backbone>_<tag>.pt`
    (birder's own naming) says both, or teacher.network and teacher.backbone do."""
    stem = path.stem
    if network is None:
        known = [n for n in registry.list_models(task=Task.OBJECT_DETECTION) if stem.startswith(n + "_")]
        network = max(known, key=len, default=None)
    if network is not None and backbone is None:
        rest = stem[len(network) :]
        found = [n for n in registry.list_models(task=Task.IMAGE_CLASSIFICATION) if f"_{n}_" in f"{rest}_"]
        backbone = max(found, key=len, default=None)
    if network is None or backbone is None:
        raise ModelError(
            f"teacher.file: cannot tell the birder networks from the file name {path.name!r}; "
            "set teacher.network (e.g. d_fine_l) and teacher.backbone (e.g. hgnet_v2_b4)"
        )
    if not registry.exists(network) or not registry.exists(backbone):
        raise ModelError(f"teacher.network {network!r} or teacher.backbone {backbone!r} is not a birder network")
    return network, backbone


def teacher_weights(cfg: TeacherConfig, model: ModelConfig) -> TeacherWeights:
    """Where the configured teacher's weights are, the file there and checked (birdwatch/weights.py)."""
    source = WeightsSource.of_teacher(cfg, model)
    path = source.checked()
    if cfg.file:
        network, backbone = networks_of_file(path, cfg.network, cfg.backbone)
        return TeacherWeights(path, network, backbone, source.label)
    meta = source.metadata()
    net, backbone = meta["net"], meta["backbone"]
    return TeacherWeights(
        path,
        net["network"],
        backbone["network"],
        source.label,
        bool(net.get("reparameterized", False)),
        bool(backbone.get("reparameterized", False)),
    )


def class_sets(names: Sequence[str], cfg: TeacherConfig) -> tuple[frozenset[int], frozenset[int]]:
    """(bird labels, other-animal labels) among `names` (label i + 1 is names[i]), by teacher.bird_classes
    and teacher.other_classes, or by name."""
    lower = {name.lower(): i + 1 for i, name in enumerate(names)}
    for key in ("bird_classes", "other_classes"):
        unknown = [n for n in getattr(cfg, key) if n.lower() not in lower]
        if unknown:
            raise ModelError(f"teacher.{key}: {', '.join(unknown)} not among the teacher's {len(names)} classes")
    wanted_birds = {n.lower() for n in cfg.bird_classes} or BIRD_NAMES
    birds = frozenset(label for name, label in lower.items() if name in wanted_birds)
    if not birds:
        raise ModelError(
            f"the teacher's classes have no bird ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}); "
            "name its bird classes in teacher.bird_classes"
        )
    wanted_others = {n.lower() for n in cfg.other_classes} or OTHER_ANIMALS
    others = frozenset(label for name, label in lower.items() if name in wanted_others) - birds
    return birds, others


class Teacher:
    """Boxes of birds and of other animals in a batch of frames; `birds` says which is which."""

    def __init__(
        self,
        net: Any,  # a birder detection net (or its TorchScript)
        weights: TeacherWeights,
        class_names: list[str],
        cfg: TeacherConfig,
        *,
        rgb_stats: RGBType,
        size: tuple[int, int],
        device: torch.device,
        precision: Precision,
    ) -> None:
        self.net = net
        self.weights = weights
        self.name = weights.name
        self.class_names = class_names
        self.bird_labels, self.other_labels = class_sets(class_names, cfg)
        self.score_threshold = cfg.score_threshold
        self.label_score = cfg.label_score
        self.size = size
        self.device = device
        self.precision = precision
        self._mean = torch.tensor(rgb_stats["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(rgb_stats["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.frames_detected = 0

    def label_name(self, label: int) -> str:
        return self.class_names[label - 1]

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], *, threshold: float | None = None) -> list[Detections]:
        """Birds (bird score = the box's score) and other animals (bird score 0) in each BGR frame."""
        if not images:
            return []
        h, w = self.size
        batch = torch.stack(
            [
                TF.resize(
                    bgr_to_tensor(im, self.device), [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True
                )
                for im in images
            ]
        )
        batch = (batch.float() / 255.0 - self._mean) / self._std
        with autocast(self.device, self.precision.dtype):
            results, _ = self.net(batch)
        self.frames_detected += len(images)
        floor = self.score_threshold if threshold is None else threshold
        return [self._kept(result, image.shape[:2], floor) for result, image in zip(results, images, strict=True)]

    def _kept(self, result: dict[str, torch.Tensor], shape: tuple[int, int], floor: float) -> Detections:
        labels = result["labels"].cpu().numpy()
        scores = result["scores"].float().cpu().numpy()
        is_bird = np.isin(labels, list(self.bird_labels))
        keep = (is_bird | np.isin(labels, list(self.other_labels))) & (scores >= floor)
        # One thing, one verdict: a detector may box a cat as a cat and, less sure, as a bird too.
        kept = np.flatnonzero(keep)
        if len(kept) > 1:
            candidates = result["boxes"].float()[torch.from_numpy(kept)]
            survivors = nms(candidates.cpu(), torch.from_numpy(scores[kept]), ONE_THING_IOU).numpy()
            keep = np.zeros_like(keep)
            keep[kept[survivors]] = True
        height, width = shape
        scale = np.array([width / self.size[1], height / self.size[0]] * 2, np.float32)
        boxes = result["boxes"].float().cpu().numpy()[keep] * scale
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        birds = np.where(is_bird[keep], scores[keep], 0.0)
        return Detections(boxes, scores[keep], Source.TEACHER, birds=birds)


def class_names_by_label(class_to_idx: dict[str, int], path: Path) -> list[str]:
    """names[label - 1]: birder's detection labels run from 1 (0 is the background)."""
    labels = sorted(class_to_idx.values())
    if labels != list(range(1, len(labels) + 1)):
        raise ModelError(
            f"{path}: its class list is not numbered 1..{len(labels)} as birder's detectors number theirs; "
            "is it a birder detection file?"
        )
    names = [""] * len(labels)
    for name, label in class_to_idx.items():
        names[label - 1] = name
    return names


def load_teacher(
    cfg: TeacherConfig,
    model: ModelConfig,
    device: torch.device | None = None,
    *,
    while_fetching: WhileFetching | None = None,
) -> Teacher:
    """The configured teacher on the model's device (fetched first when `model.download: auto`)."""
    WeightsSource.of_teacher(cfg, model).ensure(while_fetching=while_fetching, progress=False)
    weights = teacher_weights(cfg, model)
    device = device or resolve_device(model.device)
    size = (cfg.size, cfg.size) if cfg.size else None
    try:
        net, info = fs_ops.load_detection_model(
            device,
            weights.network,
            path=weights.path,
            backbone=weights.backbone,
            reparameterized=weights.reparameterized,
            backbone_reparameterized=weights.backbone_reparameterized,
            new_size=size,
            inference=True,
        )
    except Exception as exc:  # torch.load and load_state_dict raise many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load {weights.path} as a birder {weights.network} detector on {weights.backbone} "
            f"({first[:160]}); is it a complete birder detection .pt file for those networks?"
        ) from None
    names = class_names_by_label(info.class_to_idx, weights.path)
    net_size = tuple(info.signature["inputs"][0]["data_shape"][2:4])
    size = size or (int(net_size[0]), int(net_size[1]))
    precision = Precision.resolve(device, cfg.precision)
    teacher = Teacher(net, weights, names, cfg, rgb_stats=info.rgb_stats, size=size, device=device, precision=precision)
    log.info(
        "teacher %s (%s on %s, %d classes: birds %s; not birds %d), %dx%d on %s, %s",
        weights.name,
        weights.network,
        weights.backbone,
        len(names),
        ", ".join(teacher.label_name(label) for label in sorted(teacher.bird_labels)),
        len(teacher.other_labels),
        size[1],
        size[0],
        device,
        precision.dtype,
    )
    return teacher
