"""Stand-ins for the pretrained models no hub can bring here, both out of one training: a bird classifier and a
teacher that knows birds from cats and leaves.

- The **classifier** stands in for birder's danube-delta weights: hgnet_v2_b2 with Danube's classes and size,
  whose backbone has learnt what a bird looks like. The light head (`birdwatch detector train`) trains on
  its frozen backbone, as it would on the real weights; the features of an untrained backbone are too weak
  for that in minutes (held-out mAP@.5 0.37 after 4,800 image-steps on easy stills).
- The **teacher** stands in for birder's generic detectors (D-FINE, LW-DETR on COCO or Objects365): birder's
  FCOS on that same hgnet_v2_b2, with the classes bird, cat and leaf, in birder's own detection format with
  its class names, so that it loads through the code that loads the real ones.

Both come out of one end-to-end training of that FCOS on synthetic stills and on frames of synthetic feeder
scenes (wind in a branch, cloud shadows, a cat walking through, a leaf falling), at the teacher's input size.
Measured on two cores: a teacher trained on its own with the backbone frozen (150 s) found 70 of 115 birds
and called 18 of 47 cats birds, too weak for its labels to teach anything; training both at once costs
nothing more than the classifier alone, and the scorecard in `bench/teacher.py` says how well it sees.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry

from birdwatch.imaging import bgr_to_tensor
from birdwatch.tools.synthetic import EASY_STILLS
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import render_labelled_still
from birdwatch.tools.untrained import save_network
from tests.support.teacher import CLASSES
from tests.support.teacher import FPN_WIDTH
from tests.support.teacher import NETWORK
from tests.support.teacher import save_detector

log = logging.getLogger(__name__)

BACKBONE = "hgnet_v2_b2"  # danube-delta's architecture
CLASSIFIER_FILE = "hgnet_v2_b2_synthetic-birds.pt"
# birder's own naming, <network>_<tag>_<backbone>_<tag>.pt, from which the teacher's loader reads both networks.
TEACHER_FILE = "fcos_synthetic_hgnet_v2_b2_synthetic-birds.pt"
SCENE_SIDE = 384  # scenes are drawn this size and shrunk to the teacher's input, as the teacher sees frames
SCENE_FRAMES = 10  # frames taken from each training scene

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class StandIns:
    classifier: Path  # hgnet_v2_b2, Danube's classes: the backbone knows birds
    teacher: Path  # FCOS on that backbone: bird, cat, leaf


def _sample(image: np.ndarray, labelled: list[tuple[tuple[int, int, int, int], str]]) -> Sample:
    boxes = torch.tensor([box for box, _ in labelled], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([CLASSES.index(name) + 1 for _, name in labelled], dtype=torch.int64)
    return bgr_to_tensor(image, torch.device("cpu")).contiguous(), {"boxes": boxes, "labels": labels}


def still_samples(n: int, size: int, seed: int) -> list[Sample]:
    """Stills with one to three birds, and in most of them a cat or a leaf or two."""
    return [
        _sample(*render_labelled_still(size, size, seed * 1_000_003 + i, **EASY_STILLS, others=(0, 2)))
        for i in range(n)
    ]


def training_scene(seed: int, n_frames: int = 60) -> Scene:
    """A feeder scene with wind and clouds, one or two birds and a cat or a leaf passing while they are there."""
    rng = np.random.default_rng([seed, 7])
    other = ("cat", "leaf")[int(rng.integers(2))]
    start = int(rng.integers(0, n_frames // 3))
    return Scene(
        SCENE_SIDE,
        SCENE_SIDE,
        n_frames,
        n_birds=int(rng.integers(1, 3)),
        seed=seed,
        presence=[(0, n_frames)],
        perch_fraction=0.6,
        size_range=(0.15, 0.32),
        varied=True,
        others=[(other, start, start + n_frames // 2)],
        sway=0.03,
        light=0.25,
    )


def scene_samples(n_scenes: int, size: int, seed: int) -> list[Sample]:
    """Frames of feeder scenes, shrunk to `size` as the teacher shrinks whole frames."""
    out = []
    scale = size / SCENE_SIDE
    for k in range(n_scenes):
        scene = training_scene(seed * 1_000_003 + k)
        for t in np.linspace(0, len(scene) - 1, SCENE_FRAMES).round().astype(int):
            image, labelled = scene.render_labelled(int(t))
            small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            kept = [
                (tuple(round(v * scale) for v in box), name)
                for box, name in labelled
                if min(box[2] - box[0], box[3] - box[1]) * scale >= 4
            ]
            out.append(_sample(small, kept))  # type: ignore[arg-type]
    return out


def _mirrored(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], size: int) -> None:
    images.copy_(images.flip(-1))
    for t in targets:
        x1, y1, x2, y2 = t["boxes"].unbind(1)
        t["boxes"] = torch.stack([size - x2, y1, size - x1, y2], 1)


def train_stand_ins(
    workdir: Path,
    class_names: list[str],
    classifier_size: tuple[int, int],
    *,
    size: int = 128,
    steps: int = 600,
    time_limit_s: float = 600.0,
    stills: int = 900,
    scenes: int = 40,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    bf16: bool = False,
) -> StandIns:
    """Train FCOS on hgnet_v2_b2 end to end for `steps` (or `time_limit_s`); write both files into `workdir`."""
    torch.manual_seed(seed)
    data = still_samples(stills, size, 10_000 + seed) + scene_samples(scenes, size, 30_000 + seed)
    backbone = registry.net_factory(BACKBONE, len(class_names), 3, size=classifier_size)
    net = registry.detection_net_factory(
        NETWORK, len(CLASSES), backbone, config={"fpn_width": FPN_WIDTH}, size=(size, size)
    )
    rgb_stats = get_rgb_stats("birder")  # what save_network records, so the classifier is fed alike
    mean = torch.tensor(rgb_stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rgb_stats["std"]).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    # float32 by default: the tests then get the same stand-ins on a CPU with bf16 and on one without.
    dtype = torch.bfloat16 if bf16 else None
    net.train()
    started = time.monotonic()
    step = 0
    loss = torch.zeros(())
    while step < steps and time.monotonic() - started < time_limit_s:
        # Warm-up, then cosine to zero at the last step or at the time limit, whichever comes first.
        done = min(1.0, max(step / steps, (time.monotonic() - started) / time_limit_s))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / (steps // 10)) * 0.5 * (1 + math.cos(math.pi * done))
        picks = rng.choice(len(data), batch_size, replace=False)
        images = torch.stack([data[i][0] for i in picks]).float() / 255.0
        targets = [dict(data[i][1]) for i in picks]
        if rng.random() < 0.5:  # a mirrored feeder is still a feeder
            _mirrored(images, targets, size)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            _, losses = net((images - mean) / std, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        step += 1
        if step % 100 == 0:
            log.info(
                "stand-ins: step %d of %d, %.0f s, loss %.3f",
                step,
                steps,
                time.monotonic() - started,
                loss.detach().item(),
            )
    net.eval()
    log.info(
        "stand-ins: %s on %s for %d steps in %.0f s (loss %.3f)",
        NETWORK,
        BACKBONE,
        step,
        time.monotonic() - started,
        loss.detach().item(),
    )
    teacher = save_detector(
        net, workdir / TEACHER_FILE, list(CLASSES), (size, size), rgb_stats, {"fpn_width": FPN_WIDTH}
    )
    return StandIns(_save_classifier(net, workdir / CLASSIFIER_FILE, class_names, classifier_size), teacher)


def _save_classifier(detector: torch.nn.Module, path: Path, class_names: list[str], size: tuple[int, int]) -> Path:
    """The trained backbone as a classifier file: birder stripped the embedding and classification layers off
    the detector's backbone, so a fresh network of the same architecture takes every other weight (those
    layers stay as initialised: the species are not what the stand-in is for)."""
    net = registry.net_factory(BACKBONE, len(class_names), 3, size=size)
    missing, unexpected = net.load_state_dict(detector.backbone.state_dict(), strict=False)
    assert not unexpected and all(key.startswith(("features.", "classifier.")) for key in missing), missing
    return save_network(net.eval(), path, class_names, size)
