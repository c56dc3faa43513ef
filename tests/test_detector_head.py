"""The head sits on the classifier's own network: nothing is copied, and classification does not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import ModelConfig
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.tools.synthetic import render_still
from birdwatch.types import Detections


def frames(n: int, width: int, height: int) -> list[np.ndarray]:
    return [render_still(width, height, seed)[0] for seed in range(n)]


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    ("fixture", "frame_size"),
    [("danube_weights", (320, 240)), ("eu_common_weights", (160, 128))],  # regnet_y_8g at a reduced input: quick
)
def test_head_shares_the_backbone_and_leaves_classification_bit_identical(
    fixture: str, frame_size: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    weights: Path = request.getfixturevalue(fixture)
    classifier = load_classifier(ModelConfig(file=str(weights), device="cpu"))
    engine = ClassifierEngine(classifier, top_k=3)
    probe = torch.rand(2, 3, *classifier.size, generator=torch.Generator().manual_seed(0))
    before_logits = engine.probabilities(probe)
    before_state = snapshot(classifier.net)

    head = build_head(classifier.net)
    # One network in memory: the head holds the classifier's module itself, outside its own weights.
    assert head.backbone.net is classifier.net
    assert not any(k.startswith(("backbone.", "backbone_with_fpn.backbone.")) for k in head.state_dict())
    assert {id(p) for p in head.parameters()}.isdisjoint(id(p) for p in classifier.net.parameters())
    assert all(not p.requires_grad for p in classifier.net.parameters())

    detector = BirdDetector(head, rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=frame_size[0])
    detector.configure(score_threshold=0.0, nms_iou=0.5, max_detections=10)
    found = detector.detect(frames(2, *frame_size))
    # Train mode and a gradient step on the head must not reach the backbone either (BatchNorm stats).
    head.train()
    batch, sizes = detector.batch([torch.randint(0, 255, (3, frame_size[1], frame_size[0]), dtype=torch.uint8)])
    target = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.ones(1, dtype=torch.int64)}]
    _, losses = head(batch, target, image_sizes=sizes)
    sum(losses.values()).backward()
    head.eval()

    assert not classifier.net.training
    after_state = snapshot(classifier.net)
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state), "backbone weights or BN stats moved"
    assert torch.equal(engine.probabilities(probe), before_logits), "classifier output changed"
    for det, (w, h) in zip(found, [frame_size] * 2, strict=True):
        assert isinstance(det, Detections) and det.source == "detector" and len(det) > 0
        assert (det.boxes[:, 0] >= 0).all() and (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()


def test_frames_of_different_sizes_share_one_batch_and_map_back(danube_weights: Path) -> None:
    classifier: Classifier = load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))
    detector = BirdDetector(
        build_head(classifier.net), rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=256
    )
    detector.configure(score_threshold=0.0, nms_iou=0.5, max_detections=50)
    wide, tall = render_still(640, 360, 1)[0], render_still(200, 300, 2)[0]
    together = detector.detect([wide, tall])
    for image, det in zip([wide, tall], together, strict=True):
        h, w = image.shape[:2]
        assert len(det) > 0
        assert det.boxes[:, 0].min() >= 0 and det.boxes[:, 1].min() >= 0
        assert det.boxes[:, 2].max() <= w and det.boxes[:, 3].max() <= h
        # Boxes are in the frame's own pixels, not the 256 px canvas: they reach across the frame.
        assert det.boxes[:, 2].max() > 0.6 * w and det.boxes[:, 3].max() > 0.6 * h
