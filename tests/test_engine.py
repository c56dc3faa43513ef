"""Classification engine: crops from many frames in one pass, preprocessed as birder does."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from birder import classification_transform
from birder.inference.classification import infer_image
from PIL import Image

from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import ModelConfig
from birdwatch.geometry import clip_box
from birdwatch.imaging import bgr_to_tensor
from birdwatch.precision import Precision
from birdwatch.tools.synthetic import render_scene
from birdwatch.types import Frame


@pytest.fixture(scope="module")
def classifier(danube_weights: Path) -> Classifier:
    return load_classifier(ModelConfig(file=str(danube_weights), device="cpu"))


@pytest.fixture(scope="module")
def scene_frames() -> list[Frame]:
    clip = render_scene(640, 360, 40, n_birds=3, seed=11, present_fraction=1.0)
    return [Frame("cam", i, 0.0, img) for i, img in enumerate(clip.frames[10:14])]


CROPS = [(10, 20, 200, 220), (300, 100, 420, 340), (0, 0, 640, 360), (600, 300, 640, 360)]


def birder_reference(clf: Classifier, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """What birder's own model-card code gives for one crop: PIL RGB -> classification_transform -> infer_image."""
    x1, y1, x2, y2 = box
    pil = Image.fromarray(cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2RGB))
    probs, _ = infer_image(clf.net, pil, classification_transform(clf.size, clf.rgb_stats))
    return probs[0]


def test_batched_path_matches_birders_infer_image(classifier: Classifier, scene_frames: list[Frame]) -> None:
    engine = ClassifierEngine(classifier, top_k=5, batch_size=32)
    frame = scene_frames[0]
    image = bgr_to_tensor(frame.image, engine.device)
    ours = engine.probabilities(engine.preprocess([(image, box) for box in CROPS])).numpy()
    for row, box in enumerate(CROPS):
        reference = birder_reference(classifier, frame.image, box)
        assert np.abs(ours[row] - reference).max() <= 1e-3
        assert ours[row].argmax() == reference.argmax()


def test_preprocessing_is_birders_to_within_pixel_rounding(classifier: Classifier, scene_frames: list[Frame]) -> None:
    # A BGR/RGB swap or a different resize would show here even where the untrained net hides it.
    engine = ClassifierEngine(classifier)
    frame = scene_frames[1]
    image = bgr_to_tensor(frame.image, engine.device)
    transform = classification_transform(classifier.size, classifier.rgb_stats)
    one_level = 1 / 255 / min(classifier.rgb_stats["std"])
    for x1, y1, x2, y2 in CROPS:
        pil = Image.fromarray(cv2.cvtColor(frame.image[y1:y2, x1:x2], cv2.COLOR_BGR2RGB))
        diff = (transform(pil) - engine.preprocess([(image, (x1, y1, x2, y2))])[0]).abs()
        assert diff.max().item() <= 3 * one_level
        assert diff.mean().item() <= 0.05 * one_level


def test_classify_maps_results_back_to_each_frame_and_box(classifier: Classifier, scene_frames: list[Frame]) -> None:
    engine = ClassifierEngine(classifier, top_k=3, batch_size=2)  # several chunks
    boxes = [[CROPS[0], CROPS[1]], [], [CROPS[2]], [CROPS[3], CROPS[0], CROPS[1]]]
    results = engine.classify(scene_frames, boxes)
    assert [len(r.species) for r in results] == [2, 0, 1, 3]
    assert [r.embeddings.shape for r in results] == [(n, classifier.net.embedding_size) for n in (2, 0, 1, 3)]
    for frame, frame_boxes, frame_results in zip(scene_frames, boxes, results, strict=True):
        for box, top_k in zip(frame_boxes, frame_results.species, strict=True):
            reference = birder_reference(classifier, frame.image, box)
            assert len(top_k) == 3
            assert [s.score for s in top_k] == sorted((s.score for s in top_k), reverse=True)
            assert top_k[0].name == classifier.class_names[int(reference.argmax())]
            assert abs(top_k[0].score - float(reference.max())) <= 1e-3


def test_batched_and_one_at_a_time_agree(classifier: Classifier, scene_frames: list[Frame]) -> None:
    engine = ClassifierEngine(classifier, top_k=3, batch_size=16)
    boxes = [CROPS[:2], CROPS[2:], CROPS[:1], CROPS[3:]]
    batched = engine.classify(scene_frames, boxes)
    for i, frame in enumerate(scene_frames):
        for j, box in enumerate(boxes[i]):
            (one,) = engine.classify([frame], [[box]])
            (single,) = one.species
            assert [s.name for s in single] == [s.name for s in batched[i].species[j]]
            assert np.allclose([s.score for s in single], [s.score for s in batched[i].species[j]], atol=1e-4)
            assert np.allclose(one.embeddings[0], batched[i].embeddings[j], atol=1e-4), "each box its own row"


def test_no_crops_no_forward_pass(classifier: Classifier, scene_frames: list[Frame]) -> None:
    engine = ClassifierEngine(classifier)
    assert [r.species for r in engine.classify(scene_frames[:2], [[], []])] == [(), ()]


def test_boxes_are_clipped_into_the_frame() -> None:
    assert clip_box((-10, -5, 50, 40), (32, 24)) == (0, 0, 32, 24)
    assert clip_box((31, 23, 31, 23), (32, 24)) == (31, 23, 32, 24)


def test_frame_tensor_is_rgb_channels_first() -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    tensor = bgr_to_tensor(bgr, torch.device("cpu"))
    assert tensor.shape == (3, 2, 3)
    assert tensor[2].min() == 255 and tensor[0].max() == 0


def test_bf16_channels_last_agrees_with_fp32(classifier: Classifier, scene_frames: list[Frame]) -> None:
    boxes = [CROPS[:2], CROPS[2:], CROPS[:1], CROPS[3:]]
    exact = ClassifierEngine(classifier, top_k=1).classify(scene_frames, boxes)
    fast = ClassifierEngine(classifier, top_k=1, precision=Precision("bf16", True)).classify(scene_frames, boxes)
    classifier.net.to(memory_format=torch.contiguous_format)  # the module is shared with other tests
    for frame_exact, frame_fast in zip(exact, fast, strict=True):
        for a, b in zip(frame_exact.species, frame_fast.species, strict=True):
            assert a[0].name == b[0].name
            assert abs(a[0].score - b[0].score) < 0.05
