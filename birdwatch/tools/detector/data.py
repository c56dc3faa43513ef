"""Bird box datasets in COCO format: reading them (pycocotools), feeding them, and converting to them.

A dataset is a COCO annotations file and a folder of images. The converters and `make-synthetic`
write one folder per split, `SPLIT/annotations.json` next to `SPLIT/images/`, and `--data` takes
such a folder or any COCO `.json` (with `--images` when the images are elsewhere, as in COCO
itself: `annotations/instances_val2017.json` and `val2017/`).

There is one class, bird. Categories named in `bird_classes` (default: the one called "bird", or
the only one there is) are mapped to it; every other category is dropped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from birdwatch.errors import BirdwatchError
from birdwatch.imaging import bgr_to_tensor

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"
IMAGES = "images"
BIRD = {"id": 1, "name": "bird", "supercategory": "animal"}


class DatasetError(BirdwatchError):
    """A dataset folder or annotations file that cannot be used as it is."""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: Path
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy, pixels
    crowd: np.ndarray  # (M, 4) float32 xyxy: regions to ignore (COCO iscrowd, VOC difficult)


def resolve(data: str | Path, images: str | Path | None = None) -> tuple[Path, Path]:
    """(annotations file, images folder) for a dataset folder or a COCO .json file."""
    data = Path(data).expanduser()
    if data.is_dir():
        annotations = data / ANNOTATIONS
        if not annotations.is_file():
            raise DatasetError(
                f"{data}: no {ANNOTATIONS} in this folder; give a COCO .json file or a folder made by a converter"
            )
        image_dir = Path(images).expanduser() if images else data / IMAGES
    elif data.is_file():
        annotations = data
        image_dir = Path(images).expanduser() if images else data.parent / IMAGES
    else:
        raise DatasetError(f"dataset {str(data)!r} does not exist")
    if not image_dir.is_dir():
        raise DatasetError(f"images folder {str(image_dir)!r} does not exist; give it with --images")
    return annotations, image_dir


class BirdBoxes:
    """The images of a COCO dataset and their bird boxes, with the other categories dropped.

    `empty_ratio` keeps at most that many images without a bird per image with one (chosen
    deterministically); None keeps them all. COCO has 118k training images and 3k with birds.
    """

    def __init__(
        self,
        annotations: str | Path,
        images: str | Path,
        *,
        bird_classes: Sequence[str] | None = None,
        empty_ratio: float | None = None,
        seed: int = 0,
    ) -> None:
        self.annotations, self.images = Path(annotations), Path(images)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            try:
                coco = COCO(str(self.annotations))
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise DatasetError(f"{self.annotations}: not a COCO annotations file ({exc})") from None
        self.category_ids = _bird_categories(coco, bird_classes, self.annotations)
        records = []
        for img in coco.loadImgs(sorted(coco.getImgIds())):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]], catIds=self.category_ids, iscrowd=None))
            boxes: list[tuple[float, float, float, float]] = []
            crowd: list[tuple[float, float, float, float]] = []
            for ann in anns:
                x, y, w, h = (float(v) for v in ann["bbox"])
                x1, y1 = max(0.0, x), max(0.0, y)
                x2, y2 = min(float(img["width"]), x + w), min(float(img["height"]), y + h)
                if x2 - x1 < 1 or y2 - y1 < 1:
                    continue
                (crowd if ann.get("iscrowd", 0) else boxes).append((x1, y1, x2, y2))
            records.append(
                ImageRecord(
                    id=int(img["id"]),
                    path=self.images / img["file_name"],
                    file_name=img["file_name"],
                    width=int(img["width"]),
                    height=int(img["height"]),
                    boxes=np.array(boxes, np.float32).reshape(-1, 4),
                    crowd=np.array(crowd, np.float32).reshape(-1, 4),
                )
            )
        with_birds = [r for r in records if len(r.boxes)]
        empty = [r for r in records if not len(r.boxes)]
        if empty_ratio is not None and len(empty) > empty_ratio * len(with_birds):
            keep = np.random.default_rng(seed).permutation(len(empty))[: int(empty_ratio * len(with_birds))]
            empty = [empty[i] for i in sorted(keep)]
        self.records = sorted(with_birds + empty, key=lambda r: r.id)
        if not with_birds:
            raise DatasetError(f"{self.annotations}: no bird boxes in it (categories used: {self.category_ids})")
        missing = [r.path for r in self.records if not r.path.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(self.records)} images listed in {self.annotations.name} are not in "
                f"{self.images} (first: {missing[0].name}); is --images the right folder?"
            )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.records)

    def ground_truth(self) -> COCO:
        """A COCO object with one category, bird (id 1), for pycocotools' COCOeval."""
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for r in self.records:
            images.append({"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height})
            for crowd, boxes in ((0, r.boxes), (1, r.crowd)):
                for x1, y1, x2, y2 in boxes.tolist():
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": r.id,
                            "category_id": BIRD["id"],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": crowd,
                        }
                    )
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": [BIRD]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco


def _bird_categories(coco: COCO, names: Sequence[str] | None, source: Path) -> list[int]:
    cats = coco.loadCats(coco.getCatIds())
    by_name = {c["name"].lower(): c["id"] for c in cats}
    available = ", ".join(sorted(c["name"] for c in cats)) or "none"
    if names:
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            raise DatasetError(
                f"{source}: no categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; it has: {available}"
            )
        return [by_name[n.lower()] for n in names]
    if len(cats) == 1:
        return [cats[0]["id"]]
    if "bird" in by_name:
        return [by_name["bird"]]
    raise DatasetError(
        f"{source}: no category called 'bird'; name the bird categories with --bird-classes (it has: {available})"
    )


# ---- feeding the model -----------------------------------------------------------------------


class DetectionDataset(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """(3xHxW uint8 RGB tensor, boxes) resized so the longer side is `size`, augmented when training."""

    def __init__(self, boxes: BirdBoxes, size: int, *, train: bool, fill: Sequence[float] = (124, 116, 104)) -> None:
        self.records = boxes.records
        self.size = size
        steps: list[Any] = []
        if train:
            steps = [
                v2.RandomPhotometricDistort(p=0.5),
                # Zooming out teaches small, distant birds; the border gets the normalisation mean.
                v2.RandomZoomOut(fill={tv_tensors.Image: list(fill), "others": 0}, side_range=(1.0, 2.0), p=0.3),
                v2.RandomHorizontalFlip(),
            ]
        steps += [v2.Resize(size=None, max_size=size, antialias=True), v2.SanitizeBoundingBoxes(min_size=2)]
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        image = read_rgb(record.path)
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(record.boxes), format="XYXY", canvas_size=(image.shape[1], image.shape[2])
        )
        target = {"boxes": boxes, "labels": torch.ones(len(record.boxes), dtype=torch.int64)}
        image, target = self.transform(tv_tensors.Image(image), target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).float(),
            "labels": target["labels"],
        }


def read_rgb(path: Path) -> torch.Tensor:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: OpenCV cannot read this image")
    return bgr_to_tensor(image, torch.device("cpu")).contiguous()  # the dataset's transforms want contiguous


def collate(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# ---- converters ---------------------------------------------------------------------------------


def write_split(out: Path, image_root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    """OUT/annotations.json (one category, bird) and OUT/images linked to where the images are."""
    out.mkdir(parents=True, exist_ok=True)
    for i, ann in enumerate(annotations, start=1):
        ann["id"] = i
    path = out / ANNOTATIONS
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [BIRD]}))
    link = out / IMAGES
    if link.is_symlink() or link.is_file():
        link.unlink()
    if not link.exists():
        os.symlink(image_root.resolve(), link, target_is_directory=True)
    elif link.resolve() != image_root.resolve():
        raise DatasetError(
            f"{link} exists and is not a link to {image_root}; remove it or choose another output folder"
        )
    return path


def _coco_box(x1: float, y1: float, x2: float, y2: float, image_id: int, crowd: int = 0) -> dict[str, Any]:
    w, h = x2 - x1, y2 - y1
    return {"image_id": image_id, "category_id": 1, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": crowd}


def convert_cub(root: str | Path, out: str | Path) -> dict[str, Path]:
    """CUB-200-2011 (images.txt, bounding_boxes.txt, train_test_split.txt) -> OUT/train and OUT/val.

    Every species is a bird, so every box is. Without train_test_split.txt everything goes to train.
    """
    root, out = Path(root).expanduser(), Path(out).expanduser()
    for name in ("images.txt", "bounding_boxes.txt"):
        if not (root / name).is_file():
            raise DatasetError(f"{root}: no {name}; give the CUB_200_2011 folder (the one holding images.txt)")
    if not (root / IMAGES).is_dir():
        raise DatasetError(f"{root}: no images/ folder next to images.txt")
    paths = _id_table(root / "images.txt")
    boxes = {k: [float(v) for v in rest.split()] for k, rest in _id_table(root / "bounding_boxes.txt").items()}
    split_file = root / "train_test_split.txt"
    is_train = {k: v.strip() == "1" for k, v in _id_table(split_file).items()} if split_file.is_file() else {}
    splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {"train": ([], []), "val": ([], [])}
    for key, rel in paths.items():
        image_path = root / IMAGES / rel
        if not image_path.is_file():
            raise DatasetError(f"{image_path}: listed in images.txt but missing")
        with Image.open(image_path) as im:
            width, height = im.size
        image_id = int(key)
        images, anns = splits["train" if is_train.get(key, True) else "val"]
        images.append({"id": image_id, "file_name": rel, "width": width, "height": height})
        if key in boxes:
            x, y, w, h = boxes[key]
            anns.append(_coco_box(x, y, min(width, x + w), min(height, y + h), image_id))
    return {
        split: write_split(out / split, root / IMAGES, images, anns)
        for split, (images, anns) in splits.items()
        if images
    }


def _id_table(path: Path) -> dict[str, str]:
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
    return table


def convert_voc(
    root: str | Path, out: str | Path, *, classes: Sequence[str] = ("bird",), keep_empty: bool = False
) -> dict[str, Path]:
    """Pascal VOC (Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val}.txt) -> OUT/train and OUT/val.

    Objects of `classes` become birds, others are dropped; `difficult` ones become COCO crowd
    regions (ignored by training and by the mAP). Images without a bird are left out unless
    `keep_empty`.
    """
    root, out = Path(root).expanduser(), Path(out).expanduser()
    if not (root / "Annotations").is_dir() or not (root / "JPEGImages").is_dir():
        inner = sorted(p.name for p in root.glob("VOC20*") if p.is_dir()) if root.is_dir() else []
        hint = f" (try {root / inner[0]})" if inner else ""
        raise DatasetError(f"{root}: not a VOC folder: needs Annotations/ and JPEGImages/{hint}")
    wanted = {c.lower() for c in classes}
    sets = root / "ImageSets" / "Main"
    split_ids = {s: (sets / f"{s}.txt").read_text().split() for s in ("train", "val") if (sets / f"{s}.txt").is_file()}
    if not split_ids:
        split_ids = {"train": sorted(p.stem for p in (root / "Annotations").glob("*.xml"))}
    written = {}
    next_id = 1
    for split, ids in split_ids.items():
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for stem in ids:
            xml_path = root / "Annotations" / f"{stem}.xml"
            try:
                tree = ET.parse(xml_path).getroot()
            except (OSError, ET.ParseError) as exc:
                raise DatasetError(f"{xml_path}: cannot read VOC annotation ({exc})") from None
            file_name = tree.findtext("filename") or f"{stem}.jpg"
            if not (root / "JPEGImages" / file_name).is_file():
                file_name = f"{stem}.jpg"
            size = tree.find("size")
            if size is not None and int(float(size.findtext("width") or 0)) > 0:
                width, height = int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0))
            else:
                with Image.open(root / "JPEGImages" / file_name) as im:
                    width, height = im.size
            image_anns = []
            for obj in tree.iter("object"):
                if (obj.findtext("name") or "").strip().lower() not in wanted:
                    continue
                bb = obj.find("bndbox")
                if bb is None:
                    continue
                # VOC corners are 1-based and inclusive.
                x1, y1 = float(bb.findtext("xmin") or 0) - 1, float(bb.findtext("ymin") or 0) - 1
                x2, y2 = float(bb.findtext("xmax") or 0), float(bb.findtext("ymax") or 0)
                difficult = int(float(obj.findtext("difficult") or 0))
                image_anns.append(
                    _coco_box(max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2), next_id, difficult)
                )
            if not image_anns and not keep_empty:
                continue
            images.append({"id": next_id, "file_name": file_name, "width": width, "height": height})
            anns.extend(image_anns)
            next_id += 1
        if images:
            written[split] = write_split(out / split, root / "JPEGImages", images, anns)
    if not written:
        raise DatasetError(f"{root}: no image has an object of class {', '.join(classes)}")
    return written
