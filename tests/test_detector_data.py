"""COCO bird datasets: converters from CUB-200-2011 and Pascal VOC, category mapping, and mAP by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import DatasetError
from birdwatch.tools.detector.data import DetectionDataset
from birdwatch.tools.detector.data import convert_cub
from birdwatch.tools.detector.data import convert_voc
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import coco_map
from birdwatch.tools.detector.evaluate import plot_pr
from birdwatch.tools.synthetic import render_still
from birdwatch.tools.synthetic import write_coco_dataset


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), render_still(width, height, seed)[0])


def make_cub(root: Path) -> Path:
    """Three images in CUB's layout: two training, one test."""
    files = [
        "001.Black_footed_Albatross/a_0001.jpg",
        "001.Black_footed_Albatross/a_0002.jpg",
        "017.Cardinal/c_0001.jpg",
    ]
    sizes = [(120, 90), (100, 80), (90, 120)]
    for i, (rel, (w, h)) in enumerate(zip(files, sizes, strict=True)):
        write_image(root / "images" / rel, w, h, i)
    (root / "images.txt").write_text("".join(f"{i + 1} {rel}\n" for i, rel in enumerate(files)))
    (root / "bounding_boxes.txt").write_text("1 10.0 20.0 50.0 40.0\n2 0.0 0.0 100.0 80.0\n3 5.5 6.5 30.0 60.0\n")
    (root / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n")
    return root


def voc_xml(name: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    objs = "".join(
        f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for cls, b, difficult in objects
    )
    return f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>"


def make_voc(root: Path) -> Path:
    annotations = {
        "2008_000001": [("bird", (11, 21, 60, 70), 0), ("dog", (1, 1, 30, 30), 0)],
        "2008_000002": [("dog", (5, 5, 40, 40), 0)],  # no bird: left out
        "2008_000003": [("bird", (1, 1, 100, 80), 0), ("bird", (50, 10, 70, 30), 1)],  # one difficult
    }
    for stem, objects in annotations.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", 100, 80)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(stem, 100, 80, objects))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n2008_000002\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n")
    return root


def test_cub_converts_to_coco_train_and_val(tmp_path: Path) -> None:
    written = convert_cub(make_cub(tmp_path / "CUB_200_2011"), tmp_path / "cub-coco")
    assert set(written) == {"train", "val"}
    train = BirdBoxes(*resolve(tmp_path / "cub-coco" / "train"))
    val = BirdBoxes(*resolve(tmp_path / "cub-coco" / "val"))
    assert [r.file_name for r in train.records] == [
        "001.Black_footed_Albatross/a_0001.jpg",
        "001.Black_footed_Albatross/a_0002.jpg",
    ]
    np.testing.assert_allclose(train.records[0].boxes, [[10, 20, 60, 60]])  # x, y, w, h -> corners
    np.testing.assert_allclose(train.records[1].boxes, [[0, 0, 100, 80]])
    assert (train.records[0].width, train.records[0].height) == (120, 90)
    np.testing.assert_allclose(val.records[0].boxes, [[5.5, 6.5, 35.5, 66.5]])
    assert val.records[0].path.is_file()  # images/ links to CUB's own images, nothing is copied
    data = json.loads((tmp_path / "cub-coco" / "train" / "annotations.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "bird", "supercategory": "animal"}]


def test_cub_folder_errors_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no images.txt; give the CUB_200_2011 folder"):
        convert_cub(tmp_path, tmp_path / "out")


def test_voc_keeps_birds_drops_other_classes_and_marks_difficult_as_crowd(tmp_path: Path) -> None:
    written = convert_voc(make_voc(tmp_path / "VOC2012"), tmp_path / "voc-coco")
    assert set(written) == {"train", "val"}
    train = BirdBoxes(*resolve(tmp_path / "voc-coco" / "train"))
    assert [r.file_name for r in train.records] == ["2008_000001.jpg"]  # the dog-only image is left out
    np.testing.assert_allclose(train.records[0].boxes, [[10, 20, 60, 70]])  # 1-based inclusive -> 0-based
    val = BirdBoxes(*resolve(tmp_path / "voc-coco" / "val"))
    np.testing.assert_allclose(val.records[0].boxes, [[0, 0, 100, 80]])
    np.testing.assert_allclose(val.records[0].crowd, [[49, 9, 70, 30]])
    with_empty = convert_voc(tmp_path / "VOC2012", tmp_path / "voc-all", keep_empty=True)
    assert len(BirdBoxes(*resolve(with_empty["train"].parent)).records) == 2
    with pytest.raises(DatasetError, match=r"not a VOC folder.*try .*VOC2012"):
        convert_voc(tmp_path, tmp_path / "x")


def test_other_categories_are_dropped_or_mapped_to_bird(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg", 64, 48)
    write_image(tmp_path / "images" / "b.jpg", 64, 48)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 16, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 18, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 99, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 16, "name": "bird"}, {"id": 18, "name": "dog"}, {"id": 99, "name": "Parrot"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    birds = BirdBoxes(path, tmp_path / "images")
    assert [len(r.boxes) for r in birds.records] == [1, 0]  # the dog and the parrot category are dropped
    mapped = BirdBoxes(path, tmp_path / "images", bird_classes=["bird", "parrot"])
    assert [len(r.boxes) for r in mapped.records] == [1, 1]
    assert len(BirdBoxes(path, tmp_path / "images", empty_ratio=0.0).records) == 1
    with pytest.raises(DatasetError, match=r"no category heron; it has: Parrot, bird, dog"):
        BirdBoxes(path, tmp_path / "images", bird_classes=["heron"])
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images .* are not in .*first: b.jpg"):
        BirdBoxes(path, tmp_path / "images")


def test_training_samples_are_resized_with_their_boxes(tmp_path: Path) -> None:
    write_coco_dataset(tmp_path / "s", 4, 320, 240, seed=3, n_birds=(2, 2))
    boxes = BirdBoxes(*resolve(tmp_path / "s"))
    plain = DetectionDataset(boxes, 160, train=False)
    image, target = plain[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 120, 160)
    np.testing.assert_allclose(target["boxes"].numpy(), boxes.records[0].boxes / 2, atol=0.51)
    assert target["labels"].tolist() == [1] * len(boxes.records[0].boxes)
    augmented = DetectionDataset(boxes, 160, train=True)
    for i in range(4):
        image, target = augmented[i]
        assert max(image.shape[1:]) == 160
        b = target["boxes"]
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all() and b.min() >= 0 and b[:, 2].max() <= image.shape[2]


def test_coco_map_of_known_predictions(tmp_path: Path) -> None:
    write_coco_dataset(tmp_path / "s", 20, 160, 120, seed=5, n_birds=(1, 3))
    dataset = BirdBoxes(*resolve(tmp_path / "s"))
    truth = dataset.ground_truth()

    def predictions(shift: float = 0.0, drop_every: int = 0) -> list[dict]:
        out = []
        for r in dataset.records:
            for k, (x1, y1, x2, y2) in enumerate(r.boxes.tolist()):
                if drop_every and k % drop_every == 0:
                    continue
                w, h = x2 - x1, y2 - y1
                out.append({"image_id": r.id, "category_id": 1, "bbox": [x1 + shift * w, y1, w, h], "score": 0.9})
        return out

    perfect = coco_map(truth, predictions())
    assert perfect.map == pytest.approx(1.0) and perfect.map50 == pytest.approx(1.0)
    shifted = coco_map(truth, predictions(shift=0.2))  # IoU 0.67: counts at .5, not at .75 and above
    assert shifted.map50 == pytest.approx(1.0) and shifted.map < 0.5
    half = coco_map(truth, predictions(drop_every=2))
    assert 0.2 < half.map50 < 0.9
    assert coco_map(truth, []).map50 == 0.0
    png = plot_pr(shifted, tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
