"""COCO mAP of a head on a dataset, computed by pycocotools' COCOeval, and a precision-recall plot.

The head runs through the same `BirdDetector.detect` the pipeline uses, with COCO's evaluation
settings (score threshold 0.05, up to 100 boxes per image), so the figures describe what a user
gets.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from birdwatch.locate.head import BirdDetector
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import DatasetError
from birdwatch.types import Detections

log = logging.getLogger(__name__)

EVAL_SCORE_THRESHOLD = 0.05
EVAL_MAX_DETECTIONS = 100
STAT_NAMES = (
    "mAP",
    "mAP50",
    "mAP75",
    "mAP_small",
    "mAP_medium",
    "mAP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass
class EvalResult:
    stats: dict[str, float]  # COCOeval.stats by name; -1 where a size range has no boxes
    precision: np.ndarray  # (10 IoU thresholds, 101 recall points), all areas, 100 detections; -1 = undefined
    n_images: int
    n_boxes: int
    n_detections: int
    seconds: float = 0.0
    summary: str = ""  # COCOeval's own printed table
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def map(self) -> float:
        return self.stats["mAP"]

    @property
    def map50(self) -> float:
        return self.stats["mAP50"]

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: round(v, 4) for k, v in self.stats.items()},
            "images": self.n_images,
            "boxes": self.n_boxes,
            "detections": self.n_detections,
            "seconds": round(self.seconds, 2),
            **self.extra,
        }


def coco_map(ground_truth: COCO, detections: list[dict[str, Any]]) -> EvalResult:
    """COCOeval (bbox) of `detections` (COCO results: image_id, category_id, bbox xywh, score)."""
    n_images = len(ground_truth.getImgIds())
    n_boxes = len(ground_truth.getAnnIds(iscrowd=False))
    if not detections:  # loadRes cannot take an empty list; nothing found scores 0 everywhere
        stats = {name: 0.0 for name in STAT_NAMES}
        return EvalResult(stats, np.zeros((10, 101)), n_images, n_boxes, 0, summary="no detections")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = ground_truth.loadRes(detections)
        coco_eval = COCOeval(ground_truth, results, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)}
    # precision: [T, R, K, A, M]; one class, area "all" (0), maxDets 100 (last)
    precision = np.asarray(coco_eval.eval["precision"])[:, :, 0, 0, -1]
    summary = "\n".join(line for line in out.getvalue().splitlines() if line.startswith(" Average"))
    return EvalResult(stats, precision, n_images, n_boxes, len(detections), summary=summary)


Detect = Callable[[list[np.ndarray]], list[Detections]]  # BGR images -> their boxes


def predict(
    detector: BirdDetector, dataset: BirdBoxes, *, batch_size: int = 8, progress: bool = True
) -> list[dict[str, Any]]:
    """COCO-format results of the head on every image of the dataset, at COCO's eval settings."""
    head = detector.head
    saved = (head.score_thresh, head.nms_thresh, head.detections_per_img)
    detector.configure(score_threshold=EVAL_SCORE_THRESHOLD, nms_iou=saved[1], max_detections=EVAL_MAX_DETECTIONS)
    try:
        return predict_with(detector.detect, dataset, batch_size=batch_size, progress=progress)
    finally:
        detector.configure(score_threshold=saved[0], nms_iou=saved[1], max_detections=saved[2])


def predict_with(
    detect: Detect, dataset: BirdBoxes, *, batch_size: int = 8, progress: bool = True
) -> list[dict[str, Any]]:
    """COCO-format results of any detector (the head, the teacher) on every image; only boxes it calls birds."""
    results: list[dict[str, Any]] = []
    records = dataset.records
    with tqdm(total=len(records), desc="evaluating", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            images = []
            for r in chunk:
                image = cv2.imread(str(r.path), cv2.IMREAD_COLOR)
                if image is None:
                    raise DatasetError(f"{r.path}: OpenCV cannot read this image")
                images.append(image)
            for r, found in zip(chunk, detect(images), strict=True):
                found = found[~found.not_birds()]
                for (x1, y1, x2, y2), score in zip(found.boxes.tolist(), found.scores.tolist(), strict=True):
                    results.append(
                        {"image_id": r.id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
                    )
            bar.update(len(chunk))
    return results


def evaluate(detector: BirdDetector, dataset: BirdBoxes, *, batch_size: int = 8, progress: bool = True) -> EvalResult:
    started = time.perf_counter()
    detections = predict(detector, dataset, batch_size=batch_size, progress=progress)
    result = coco_map(dataset.ground_truth(), detections)
    result.seconds = time.perf_counter() - started
    return result


def evaluate_with(detect: Detect, dataset: BirdBoxes, *, batch_size: int = 8, progress: bool = True) -> EvalResult:
    """`evaluate` for any detector callable (the teacher at a low threshold, say)."""
    started = time.perf_counter()
    detections = predict_with(detect, dataset, batch_size=batch_size, progress=progress)
    result = coco_map(dataset.ground_truth(), detections)
    result.seconds = time.perf_counter() - started
    return result


def plot_pr(result: EvalResult, path: str | Path, title: str = "") -> Path:
    """Precision against recall at IoU 0.5, 0.75 and averaged over 0.5:0.95, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a feeder box
    import matplotlib.pyplot as plt

    recall = np.linspace(0.0, 1.0, 101)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    curves = {
        f"IoU 0.50 (AP {result.stats['mAP50']:.3f})": result.precision[0],
        f"IoU 0.75 (AP {result.stats['mAP75']:.3f})": result.precision[5],
        f"IoU 0.50:0.95 (AP {result.stats['mAP']:.3f})": np.where(
            (result.precision >= 0).all(axis=0), result.precision.mean(axis=0), -1
        ),
    }
    for label, precision in curves.items():
        defined = precision >= 0
        ax.plot(recall[defined], precision[defined], label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or f"bird boxes: {result.n_images} images, {result.n_boxes} birds")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
