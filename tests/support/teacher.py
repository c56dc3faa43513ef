"""Teacher files in birder's own detection format, with their class names, as the real teachers come.

The real teachers (D-FINE, LW-DETR, Deformable DETR on COCO or Objects365) need a download that is not
reachable here. `untrained_teacher` writes a small one in seconds, for what does not depend on the teacher
seeing (loading, gating, the label files, the flow's plumbing); the one that sees is trained together with
the bird classifier stand-in (tests/support/standins.py). Both are written by `save_detector`, birder's own
checkpoint code, and load through the code that loads the pretrained ones.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from birder.common import fs_ops
from birder.conf import settings as birder_settings
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from birder.net.detection.base import get_detection_signature

from birdwatch.tools.synthetic import OTHER_CLASSES

NETWORK = "fcos"
FPN_WIDTH = 64  # FCOS's own 256 costs three times as much on a CPU (bench/detector.py)
CLASSES = ("bird", *OTHER_CLASSES)  # label i + 1 (birder keeps 0 for the background)


def untrained_teacher(path: Path, backbone: str = "mobilenet_v3_small_1_0", size: int = 96) -> Path:
    """birder's FCOS on its own small backbone, classes bird, cat and leaf, untrained (it is sure of nothing)."""
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
