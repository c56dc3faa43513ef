"""A stand-in for birder's pretrained generic detectors (the teacher): a real birder detection network
that knows birds from cats and leaves, trained briefly on synthetic stills and saved in birder's own
detection format, with its class names, so that it loads through the code that loads the real ones.

The real teachers (D-FINE, LW-DETR, Deformable DETR on COCO or Objects365) need a download that is
not reachable here, and a DETR does not learn in minutes on a CPU. This one is birder's FCOS, a whole
detection network with its own hgnet_v2_b2 backbone (the bird-aware fine-tune of
tests/support/backbone.py) and three classes, trained with the backbone frozen on stills with birds
and cat-like or leaf-like figures (`render_labelled_still(others=...)`). Measured in the same two and
a half minutes: a RetinaNet trained end to end found 8 % of the birds; FCOS with the backbone
trained too found no cat; this one finds about 60 % of the birds and of the cats.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from birder.common import fs_ops
from birder.conf import settings as birder_settings
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from birder.net.detection.base import get_detection_signature

from birdwatch.imaging import bgr_to_tensor
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.synthetic import EASY_STILLS
from birdwatch.tools.synthetic import OTHER_CLASSES
from birdwatch.tools.synthetic import render_labelled_still

log = logging.getLogger(__name__)

NETWORK = "fcos"
FPN_WIDTH = 64  # FCOS's own 256 costs three times as much on a CPU (bench/detector.py)
BACKBONE = "hgnet_v2_b2"
CLASSES = ("bird", *OTHER_CLASSES)  # label i + 1 (birder keeps 0 for the background)
STILLS = {**EASY_STILLS, "others": (1, 2)}  # every still has a figure that is not a bird


def _stills(n: int, size: int, seed: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    out = []
    for i in range(n):
        image, labelled = render_labelled_still(size, size, seed * 1_000_003 + i, **STILLS)
        boxes = torch.tensor([box for box, _ in labelled], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([CLASSES.index(name) + 1 for _, name in labelled], dtype=torch.int64)
        out.append((bgr_to_tensor(image, torch.device("cpu")).contiguous(), {"boxes": boxes, "labels": labels}))
    return out


def train_teacher(
    backbone_weights: Path,
    path: Path,
    *,
    size: int = 128,
    steps: int = 500,
    n_images: int = 800,
    time_limit_s: float = 150.0,
    lr: float = 3e-3,
    frozen: bool = True,
    seed: int = 0,
) -> Path:
    """Train the stand-in for `steps` (or `time_limit_s`) and write it where `path` says."""
    torch.manual_seed(seed)
    backbone, info = fs_ops.load_model(torch.device("cpu"), BACKBONE, path=backbone_weights, inference=frozen)
    net = registry.detection_net_factory(
        NETWORK, len(CLASSES), backbone, config={"fpn_width": FPN_WIDTH}, size=(size, size)
    )
    mean = torch.tensor(info.rgb_stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info.rgb_stats["std"]).view(1, 3, 1, 1)
    data = _stills(n_images, size, 20_000 + seed)
    rng = np.random.default_rng(seed)
    params = [p for p in net.parameters() if p.requires_grad]  # the FPN and the head: the backbone stays frozen
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    dtype = torch.bfloat16 if cpu_has_bf16() else None
    net.train()
    if frozen:
        net.backbone.eval()  # frozen BatchNorm statistics too
    started = time.monotonic()
    step = 0
    while step < steps and time.monotonic() - started < time_limit_s:
        # Warm-up, then cosine to zero at the last step or at the time limit, whichever comes first.
        done = max(step / steps, (time.monotonic() - started) / time_limit_s)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        picks = rng.choice(len(data), 8, replace=False)
        images = torch.stack([data[i][0] for i in picks]).float() / 255.0
        targets = [dict(data[i][1]) for i in picks]
        if rng.random() < 0.5:  # a mirrored feeder is still a feeder
            images = images.flip(-1)
            for t in targets:
                t["boxes"] = t["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
                    [size, 0, size, 0]
                )
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            _, losses = net((images - mean) / std, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        step += 1
    net.eval()
    log.info(
        "teacher stand-in: %s for %d steps in %.0f s (loss %.3f)",
        NETWORK,
        step,
        time.monotonic() - started,
        float(loss),
    )
    return save_detector(net, path, list(CLASSES), (size, size), info.rgb_stats, {"fpn_width": FPN_WIDTH})


def untrained_teacher(path: Path, backbone: str = "mobilenet_v3_small_1_0", size: int = 96) -> Path:
    """The same kind of file as `train_teacher` writes, untrained (seconds, not minutes): for what does not
    depend on the teacher seeing well (loading, gating, the label files, the flow's plumbing)."""
    torch.manual_seed(0)
    net_backbone = registry.net_factory(backbone, len(CLASSES), 3, size=(size, size))
    net = registry.detection_net_factory(
        NETWORK, len(CLASSES), net_backbone, config={"fpn_width": FPN_WIDTH}, size=(size, size)
    ).eval()
    return save_detector(net, path, list(CLASSES), (size, size), get_rgb_stats("birder"), {"fpn_width": FPN_WIDTH})


def save_detector(
    net: torch.nn.Module,
    path: Path,
    class_names: list[str],
    size: tuple[int, int],
    rgb_stats: dict,
    config: dict | None = None,
) -> Path:
    """Write a birder detection network with birder's own checkpoint code (what `load_detection_model` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = get_detection_signature((1, 3, *size), len(class_names), dynamic=False)
    class_to_idx = {name: i + 1 for i, name in enumerate(class_names)}  # birder's detection labels start at 1
    with tempfile.TemporaryDirectory() as tmp:
        previous = birder_settings.MODELS_DIR
        birder_settings.MODELS_DIR = Path(tmp)
        try:
            fs_ops.checkpoint_model(
                "teacher", 0, net, signature, class_to_idx, rgb_stats, None, None, None, None, external_config=config
            )
        finally:
            birder_settings.MODELS_DIR = previous
        shutil.move(str(Path(tmp) / "teacher_0.pt"), path)
    return path
