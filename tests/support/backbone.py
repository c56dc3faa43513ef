"""A stand-in for a pretrained bird classifier: an untrained birder network fine-tuned on synthetic birds.

No weights can be downloaded here, and the features of a randomly initialised backbone are too
weak for a frozen-backbone head to learn birds from in minutes (measured on frozen random
hgnet_v2_b2: held-out mAP@.5 0.37 after 4,800 image-steps on these easy stills, 0.03 on cluttered
ones; recalibrating BatchNorm on synthetic images made a linear probe of the features worse,
AUC 0.68 against 0.73). A real birder classifier was trained on birds; to stand in for one, this
fine-tunes the untrained network's backbone jointly with a throw-away FCOS head on small
synthetic stills for a fixed number of steps, then saves it in birder's own format. The head
that `birdwatch detector train` then trains on it sees a frozen backbone, as with real weights.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry

from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.locate.head import shared_backbone
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import DetectionDataset
from birdwatch.tools.detector.data import collate
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.synthetic import EASY_STILLS
from birdwatch.tools.synthetic import write_coco_dataset
from birdwatch.tools.untrained import save_network

log = logging.getLogger(__name__)


def fine_tune_backbone(
    network: str,
    path: Path,
    class_names: list[str],
    size: tuple[int, int],
    workdir: Path,
    *,
    steps: int = 600,
    image_size: int = 128,
    n_images: int = 1200,
    seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
    data = workdir / f"finetune{image_size}"
    if not (data / "annotations.json").is_file():
        write_coco_dataset(data, n_images, image_size, image_size, seed=10_000 + seed, **EASY_STILLS)
    net = registry.net_factory(network, len(class_names), 3, size=size)
    head = build_head(net, precision="bf16" if cpu_has_bf16() else "fp32")
    backbone = shared_backbone(head)
    backbone.trainable = True
    for param in net.parameters():
        param.requires_grad_(True)
    rgb_stats = get_rgb_stats("birder")  # what save_network records, so the classifier is fed alike
    detector = BirdDetector(head, rgb_stats=rgb_stats, device=torch.device("cpu"), max_size=image_size)
    dataset = DetectionDataset(BirdBoxes(*resolve(data)), image_size, train=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    params = list(head.parameters()) + list(net.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    started = time.monotonic()
    step = 0
    net.train()
    head.train()
    while step < steps:
        for images, targets in loader:
            batch, sizes = detector.batch(images)
            _, losses = head(batch, targets, image_sizes=sizes)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step == steps:
                break
    net.eval()
    log.info(
        "fine-tuned %s for %d steps in %.0f s (loss %.3f)",
        network,
        steps,
        time.monotonic() - started,
        float(loss.detach()),
    )
    return save_network(net, path, class_names, size)
