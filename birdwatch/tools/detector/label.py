"""Labels without hands: the teacher over a recording, into COCO datasets the head trains and is judged on.

1. The teacher runs over every recorded frame, in batches, at a low score floor (`uncertain_floor`).
   Its boxes go to `OUT/teacher.jsonl`, a line per frame, flushed as it goes: a run that stops (power
   cut, Ctrl-C) starts again where it was. Its first line holds what the boxes depend on (`verdict_key`:
   the weights' SHA-256, the class sets, the input size, the precision, the floor); when any of it
   changed, everything is labelled again. Frames the recorder has removed since (a recording that runs
   while this does, thinning to its budget) are skipped, and their lines dropped at the next run.
2. What the head will see is cut from each frame as `detector+motion` cuts it at run time: the squares
   around the frame's motion (`motion_regions`, from the recording's motion boxes) — or the whole frame
   with `whole_frames`, for a head that runs as `localiser: detector`. Each cut is one image.
3. A bird box the teacher scores at least `teacher.label_score` is a bird. One it scores between the
   floor and that is uncertain: the cut holding it is set aside (`OUT/uncertain/`, for a person to
   look at), neither a bird nor background to learn from; so is a cut that holds only a part of a
   bird (its edge through the bird). The label score is above the teacher's detection threshold: a
   leaf it half-believes is a bird would be learnt as one. Non-bird boxes (a cat, at the teacher's
   `score_threshold`) stay in as `not_bird`: the head's training takes them, like every cut without
   a bird (a swaying branch, a cloud's shadow), as hard negatives.
4. Cuts go to `OUT/train/` and `OUT/val/` by minute of recording (a hash of the camera and the minute
   holds one in `VAL_EVERY` out), so that near-identical neighbours do not land on both sides, and a
   frame stays on its side from one night to the next. Annotations carry the teacher's score. The
   split folders are written afresh each run (beside them, then swapped in). So that this never deletes
   a dataset of someone's own, label marks an OUT it writes (`OUT/.birdwatch-label`) and refuses one that
   holds anything it did not write. A split folder an older label left cut short (cuts written straight into
   it, its COCO file not yet) holds only cuts named as label names them: label's own, written again.
5. `OUT/contact-sheet.png`: the frames with the most to show, their boxes drawn, for a glance over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from birdwatch.capture.recorder import FRAMES
from birdwatch.capture.recorder import Recorded
from birdwatch.capture.recorder import append_lines
from birdwatch.capture.recorder import read_index
from birdwatch.capture.recorder import replace_lines
from birdwatch.config import DetectorConfig
from birdwatch.errors import BirdwatchError
from birdwatch.locate.localiser import motion_regions
from birdwatch.locate.teacher import Teacher
from birdwatch.tools.detector.data import ANNOTATIONS
from birdwatch.tools.detector.data import IMAGES
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Source
from birdwatch.weights import file_sha256

log = logging.getLogger(__name__)

TEACHER_LINES = "teacher.jsonl"
CONTACT_SHEET = "contact-sheet.png"
REPORT = "labels.json"
SPLITS = ("train", "val", "uncertain")
MARKER = ".birdwatch-label"  # in an OUT that label writes: its split folders are label's to delete
NEW, OLD = ".splits-new", ".splits-old"  # the split folders being written, and those they replace
OWN = frozenset({TEACHER_LINES, CONTACT_SHEET, REPORT, MARKER, NEW, OLD, *SPLITS})
# How `cut_name` names a cut: the recorder's frames/<camera>/<YYYYMMDD>/<HHMMSS>-<seq>.jpg, flattened, and its number.
CUT_NAME = re.compile(rf"{FRAMES}_.+_\d{{8}}_\d{{6}}-\d+-\d+\.jpg")
CATEGORIES = [
    {"id": 1, "name": "bird", "supercategory": "animal"},
    {"id": 2, "name": "not_bird", "supercategory": "thing"},
]
RUN_S = 60.0  # recorded frames of one camera within a minute go to the same side of the split
VAL_EVERY = 5  # one minute in five is held out
INSIDE = 0.5  # a box belongs to a cut when this much of it is inside
PART = 0.1  # a bird box with between this and INSIDE of it inside cuts the bird: the cut is set aside
DUPLICATE_IOU = 0.5  # a weaker box overlapping a sure one this much is the same thing, boxed twice


@dataclass
class LabelOptions:
    # Teacher boxes scoring less are nothing; None: teacher.score_threshold, so that what it would not tell as a
    # localiser is background. In bench/teacher.py the learnt head told 6 false visits in 37 with that floor
    # (0.4), 9 in 41 with 0.25, which set aside more cuts with a leaf than it kept birds.
    uncertain_floor: float | None = None
    batch_size: int = 4
    whole_frames: bool = False  # cuts are whole frames (for `localiser: detector`), not motion regions
    quality: int = 92
    sheet_frames: int = 24
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BirdwatchError(
                f"batch size {self.batch_size}: the frames the teacher labels at once must be 1 or more; "
                "give --batch-size 1 or more"
            )


@dataclass
class LabelResult:
    out: Path
    frames: int  # recorded frames labelled in all
    labelled_now: int  # of those, by this run (the rest came from an earlier one)
    images: dict[str, int] = field(default_factory=dict)  # cuts per split
    birds: dict[str, int] = field(default_factory=dict)  # bird boxes per split
    negatives: dict[str, int] = field(default_factory=dict)  # cuts without a bird, per split
    not_birds: int = 0  # boxes the teacher called another animal
    sheet: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "frames": self.frames,
            "labelled_now": self.labelled_now,
            "images": self.images,
            "birds": self.birds,
            "negatives": self.negatives,
            "not_birds": self.not_birds,
            "contact_sheet": str(self.sheet) if self.sheet else None,
        }


@dataclass(frozen=True)
class TeacherBox:
    box: tuple[float, float, float, float]
    score: float
    bird: bool


@dataclass(frozen=True)
class Sure:
    """How sure the teacher must be: of a bird, to label it (`teacher.label_score`); of another animal, to
    call it one (`teacher.score_threshold`)."""

    bird: float
    other: float

    def __call__(self, b: TeacherBox) -> bool:
        return b.score >= (self.bird if b.bird else self.other)


def label(
    teacher: Teacher, recording: Path, out: Path, detector: DetectorConfig, options: LabelOptions | None = None
) -> LabelResult:
    """Run the teacher over the recording (resuming), then write the datasets and the contact sheet."""
    options = options or LabelOptions()
    # A label score set below the threshold lowers the default floor with it.
    floor = options.uncertain_floor
    if floor is None:
        floor = min(teacher.score_threshold, teacher.label_score)
    options = replace(options, uncertain_floor=floor)
    if not 0 < floor <= min(teacher.label_score, teacher.score_threshold):
        raise BirdwatchError(
            f"uncertain floor {floor:g}: must be above 0 and at most teacher.label_score "
            f"({teacher.label_score:g}) and teacher.score_threshold ({teacher.score_threshold:g}); bird boxes scored "
            "between the floor and the label score are set aside, other animals count from the threshold"
        )
    frames = read_index(recording)
    if not frames:
        raise BirdwatchError(f"{recording}: no recorded frames; record some with `birdwatch record` first")
    claim(out)
    header = verdict_key(teacher, floor)
    labels = _read_lines(out / TEACHER_LINES, header, {f.file for f in frames})
    todo = [f for f in frames if f.file not in labels]
    _run_teacher(teacher, recording, todo, out / TEACHER_LINES, labels, options)
    frames = [f for f in frames if f.file in labels]  # those removed meanwhile are gone
    if not frames:
        raise BirdwatchError(f"{recording}: every recorded frame was removed while it was labelled")
    result = LabelResult(out, len(frames), len(todo))
    sure = Sure(teacher.label_score, teacher.score_threshold)
    _write_datasets(recording, frames, labels, out, sure, detector, options, result)
    result.sheet = contact_sheet(recording, frames, labels, out / CONTACT_SHEET, sure, options)
    (out / REPORT).write_text(json.dumps(result.to_dict(), indent=1))
    return result


def claim(out: Path) -> None:
    """Make `out` label's own, or refuse it before anything in it is touched: label deletes its split folders
    each run, so a folder holding anything else (a dataset of one's own, `convert-cub`'s data/cub) is refused.
    A new or empty folder is marked as label's; a marked one, or one an older label wrote before the mark
    existed, is label's as long as its split folders hold only the cuts label listed there."""
    if out.exists() and not out.is_dir():
        raise BirdwatchError(f"--out {out} is a file; give --out an empty or new folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = entries if entries and MARKER not in entries and not _written_before_the_mark(out, entries) else []
    foreign = foreign or [name for split in SPLITS for name in _foreign_in_split(out, split)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 3 else "")
        raise BirdwatchError(f"{out} holds files birdwatch did not write ({shown}); give --out an empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if MARKER not in entries:
            (out / MARKER).write_text("written by `birdwatch detector label`: its splits are rewritten each run\n")
    except OSError as exc:
        raise BirdwatchError(f"--out {out}: cannot write there ({exc.strerror}); check its owner and mode") from None


def _written_before_the_mark(out: Path, entries: list[str]) -> bool:
    """Label's names only, and a teacher.jsonl that starts as label's: an older label's output (learn's work)."""
    if not set(entries) <= OWN or TEACHER_LINES not in entries:
        return False
    try:
        with (out / TEACHER_LINES).open() as lines:
            first = _json(lines.readline())
    except (OSError, UnicodeDecodeError):
        return False
    return isinstance(first, dict) and "teacher" in first and "floor" in first


def _foreign_in_split(out: Path, split: str) -> list[str]:
    """What is in a split folder that label did not write there: its COCO file lists the cuts it wrote (a
    person may have deleted some, say from uncertain/ after a look, but not added any)."""
    folder = out / split
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [split]
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in (ANNOTATIONS, IMAGES))
    data = _json_file(folder / ANNOTATIONS)
    ours = isinstance(data, dict) and data.get("categories") == CATEGORIES and isinstance(data.get("images"), list)
    if (folder / ANNOTATIONS).exists() and not ours:
        foreign.append(ANNOTATIONS)
    images = folder / IMAGES
    if images.is_dir():
        listed = data["images"] if ours else []
        written = {i.get("file_name") for i in listed if isinstance(i, dict) and "source" in i}
        # No COCO file yet: an older label, which wrote its cuts straight into the split, was cut short there.
        cut_short = not (folder / ANNOTATIONS).exists()
        foreign += [
            f"{IMAGES}/{p.name}"
            for p in sorted(images.iterdir())
            if p.name not in written and not (cut_short and p.is_file() and CUT_NAME.fullmatch(p.name))
        ]
    elif images.exists():
        foreign.append(IMAGES)
    return [f"{split}/{name}" for name in foreign]


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def verdict_key(teacher: Teacher, floor: float) -> dict[str, Any]:
    """What the boxes recorded at the floor depend on, so that resumed lines are this teacher's verdicts: the
    weights by their file's own SHA-256 (new weights under an old name), how they are built, which classes
    count as birds and which as other animals, the input size, the precision. The label score and the
    threshold are applied to the recorded boxes afterwards, and the device changes scores by rounding only."""
    return {
        "teacher": teacher.name,
        "floor": floor,
        "sha256": file_sha256(teacher.weights.path),
        "network": [teacher.weights.network, teacher.weights.backbone],
        "reparameterized": [teacher.weights.reparameterized, teacher.weights.backbone_reparameterized],
        "birds": sorted(teacher.label_name(c) for c in teacher.bird_labels),
        "others": sorted(teacher.label_name(c) for c in teacher.other_labels),
        "size": list(teacher.size),
        "precision": str(teacher.precision.dtype),
    }


def _read_lines(path: Path, header: dict[str, Any], present: set[str]) -> dict[str, list[TeacherBox]]:
    """What an earlier run labelled with the same verdict key; another key labels everything again. Lines of
    frames no longer in the recording are dropped (the file rewritten), so it stays the recording's size."""
    labels: dict[str, list[TeacherBox]] = {}
    lines = path.read_text().splitlines() if path.is_file() else []
    earlier = _json(lines[0]) if lines else None
    if earlier != header:
        if lines:
            changed = [k for k in header if not isinstance(earlier, dict) or earlier.get(k) != header[k]]
            log.info("%s was labelled with another %s: labelling every frame again", path, ", ".join(changed))
        replace_lines(path, [json.dumps(header)])
        return labels
    count = 0
    for line in lines[1:]:
        row = _json(line)
        if not isinstance(row, dict):  # the line being written when the run stopped: that frame goes again
            continue
        count += 1
        labels[row["file"]] = [TeacherBox(tuple(b[:4]), b[4], bool(b[5])) for b in row["boxes"]]
    gone = labels.keys() - present
    if gone or count != len(labels) or count != len(lines) - 1:
        labels = {file: boxes for file, boxes in labels.items() if file in present}
        replace_lines(path, [json.dumps(header), *(_line(file, boxes) for file, boxes in labels.items())])
    return labels


def _line(file: str, boxes: list[TeacherBox]) -> str:
    return json.dumps({"file": file, "boxes": [[*b.box, b.score, int(b.bird)] for b in boxes]}, separators=(",", ":"))


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _run_teacher(
    teacher: Teacher,
    recording: Path,
    todo: list[Recorded],
    path: Path,
    labels: dict[str, list[TeacherBox]],
    options: LabelOptions,
) -> None:
    bar = tqdm(total=len(todo), desc="labelling", unit="frame", disable=not options.progress)
    with append_lines(path) as lines, bar:
        for start in range(0, len(todo), options.batch_size):
            read = [(f, _read(recording / f.file)) for f in todo[start : start + options.batch_size]]
            chunk = [(f, image) for f, image in read if image is not None]
            if chunk:
                found = teacher.detect([image for _, image in chunk], threshold=options.uncertain_floor)
                for (frame, _), boxes in zip(chunk, found, strict=True):
                    labels[frame.file] = _teacher_boxes(boxes)
                    lines.write(_line(frame.file, labels[frame.file]) + "\n")
                lines.flush()
                os.fsync(lines.fileno())
            bar.update(len(read))


def _teacher_boxes(found: Detections) -> list[TeacherBox]:
    birds = found.birds if found.birds is not None else np.zeros(len(found), np.float32)
    return [
        TeacherBox(tuple(round(v, 1) for v in box), round(score, 4), bird > 0)
        for box, score, bird in zip(found.boxes.tolist(), found.scores.tolist(), birds.tolist(), strict=True)
    ]


def _read(path: Path) -> np.ndarray | None:
    """A recorded frame; None when the recorder has removed it since (logged). A file that is there but
    does not decode is an error: the recording is damaged."""
    if not path.is_file():
        log.info("%s was removed from the recording meanwhile; skipped", path.name)
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise BirdwatchError(f"{path}: OpenCV cannot read this recorded frame; is the recording damaged?")
    return image


def held_out(frame: Recorded) -> bool:
    """The same answer for a frame every night: by a hash of its camera and its minute."""
    return zlib.crc32(f"{frame.camera}:{int(frame.ts // RUN_S)}".encode()) % VAL_EVERY == 0


def cuts(frame: Recorded, width: int, height: int, detector: DetectorConfig, whole: bool) -> list[Box]:
    """The parts of a recorded frame the head will see: its motion regions as `detector+motion` cuts them."""
    if whole:
        return [(0, 0, width, height)]
    motion = Detections(
        np.array(frame.motion, np.float32).reshape(-1, 4), np.ones(len(frame.motion), np.float32), Source.MOTION
    )
    return motion_regions(motion, width, height, detector.region_size, detector.region_padding, detector.max_regions)


def _write_datasets(
    recording: Path,
    frames: list[Recorded],
    labels: dict[str, list[TeacherBox]],
    out: Path,
    sure: Sure,
    detector: DetectorConfig,
    options: LabelOptions,
    result: LabelResult,
) -> None:
    coco: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"images": [], "annotations": []} for s in SPLITS}
    # Written beside the splits in use, then swapped in: a run stopped half way leaves whole splits, old or new.
    for folder in (NEW, OLD):
        shutil.rmtree(out / folder, ignore_errors=True)
    for split in SPLITS:
        (out / NEW / split / IMAGES).mkdir(parents=True)
    for frame in frames:
        image = _read(recording / frame.file)
        if image is None:
            continue
        height, width = image.shape[:2]
        boxes = labels.get(frame.file, [])
        result.not_birds += sum(1 for b in boxes if not b.bird and sure(b))
        side = "val" if held_out(frame) else "train"
        for k, cut in enumerate(cuts(frame, width, height, detector, options.whole_frames)):
            x1, y1, x2, y2 = cut
            inside = list(_inside(boxes, cut))
            uncertain = _unsure(inside, sure) or _cuts_a_bird(boxes, cut)
            split = "uncertain" if uncertain else side
            name = cut_name(frame, k)
            crop = image[y1:y2, x1:x2]
            to = out / NEW / split / IMAGES / name
            if not cv2.imwrite(str(to), crop, [cv2.IMWRITE_JPEG_QUALITY, options.quality]):
                raise BirdwatchError(f"cannot write {to}; is the disk full?")
            images, annotations = coco[split]["images"], coco[split]["annotations"]
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": x2 - x1,
                    "height": y2 - y1,
                    "source": frame.file,
                    "cut": [x1, y1, x2, y2],
                }
            )
            for b, clipped in inside:
                if not sure(b) and not (b.bird and uncertain):
                    continue
                bx1, by1, bx2, by2 = clipped
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1 if b.bird else 2,
                        "bbox": [bx1, by1, bx2 - bx1, by2 - by1],
                        "area": (bx2 - bx1) * (by2 - by1),
                        "iscrowd": 0,
                        "score": b.score,
                    }
                )
    (out / OLD).mkdir()
    for split in SPLITS:
        data = coco[split]
        with (out / NEW / split / ANNOTATIONS).open("w") as coco_file:
            coco_file.write(json.dumps({**data, "categories": CATEGORIES}))
            coco_file.flush()
            os.fsync(coco_file.fileno())  # on disk before the split is swapped in: the next run reads it whole
        if (out / split).exists():
            (out / split).rename(out / OLD / split)  # cuts of frames since removed, or of another night
        (out / NEW / split).rename(out / split)
        with_bird = {a["image_id"] for a in data["annotations"] if a["category_id"] == 1}
        result.images[split] = len(data["images"])
        result.birds[split] = sum(1 for a in data["annotations"] if a["category_id"] == 1)
        result.negatives[split] = len(data["images"]) - len(with_bird)
    for folder in (NEW, OLD):
        shutil.rmtree(out / folder)


def cut_name(frame: Recorded, k: int) -> str:
    """The file name of a frame's `k`th cut (CUT_NAME tells label's own apart)."""
    return f"{Path(frame.file).with_suffix('').as_posix().replace('/', '_')}-{k}.jpg"


def _share_inside(box: tuple[float, float, float, float], cut: Box) -> float:
    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = cut
    iw, ih = min(x2, cx2) - max(x1, cx1), min(y2, cy2) - max(y1, cy1)
    return max(0.0, iw) * max(0.0, ih) / max(1e-6, (x2 - x1) * (y2 - y1))


def _inside(boxes: list[TeacherBox], cut: Box) -> Iterator[tuple[TeacherBox, tuple[float, float, float, float]]]:
    """The boxes that are mostly inside the cut, clipped to it, in the cut's pixels."""
    cx1, cy1, cx2, cy2 = cut
    for b in boxes:
        if _share_inside(b.box, cut) < INSIDE:
            continue
        x1, y1, x2, y2 = b.box
        ix1, iy1, ix2, iy2 = max(x1, cx1), max(y1, cy1), min(x2, cx2), min(y2, cy2)
        yield b, (round(ix1 - cx1, 1), round(iy1 - cy1, 1), round(ix2 - cx1, 1), round(iy2 - cy1, 1))


def _unsure(inside: list[tuple[TeacherBox, tuple[float, float, float, float]]], sure: Sure) -> bool:
    """A bird box below the label score that is not a second, weaker box of a bird already boxed."""
    boxed = [b.box for b, _ in inside if sure(b)]
    for b, _ in inside:
        if b.bird and not sure(b) and not any(_iou(b.box, other) >= DUPLICATE_IOU for other in boxed):
            return True
    return False


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(1e-6, union)


def _cuts_a_bird(boxes: list[TeacherBox], cut: Box) -> bool:
    """The cut's edge runs through a bird: the part inside would be learnt as background."""
    return any(b.bird and PART <= _share_inside(b.box, cut) < INSIDE for b in boxes)


def contact_sheet(
    recording: Path,
    frames: list[Recorded],
    labels: dict[str, list[TeacherBox]],
    path: Path,
    sure: Sure,
    options: LabelOptions,
    *,
    thumb: int = 320,
    columns: int = 6,
) -> Path:
    """A grid of the frames with the most to show (uncertain first, then birds, then other animals), their
    teacher boxes drawn: green a bird, yellow uncertain, red not a bird, with the scores."""

    def interest(f: Recorded) -> tuple[int, int, int]:
        boxes = labels.get(f.file, [])
        return (
            sum(b.bird and not sure(b) for b in boxes),
            sum(b.bird and sure(b) for b in boxes),
            sum(not b.bird for b in boxes),
        )

    picked = sorted(frames, key=interest, reverse=True)[: options.sheet_frames]
    picked.sort(key=lambda f: f.ts)
    tiles = []
    for f in picked:
        image = _read(recording / f.file)
        if image is None:
            continue
        for b in labels.get(f.file, []):
            colour = (0, 200, 0) if b.bird and sure(b) else (0, 220, 255) if b.bird else (0, 0, 230)
            x1, y1, x2, y2 = (round(v) for v in b.box)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, max(2, image.shape[1] // 400))
            tag = f"{'bird' if b.bird else 'not bird'} {b.score:.2f}"
            cv2.putText(image, tag, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, image.shape[1] / 1400, colour, 2)
        scale = thumb / image.shape[1]
        tile = cv2.resize(image, (thumb, max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"{f.camera} {Path(f.file).stem}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        tiles.append(tile)
    if not tiles:
        raise BirdwatchError("nothing to draw on the contact sheet")
    height = max(t.shape[0] for t in tiles)
    rows = []
    for start in range(0, len(tiles), columns):
        row = [
            cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 0, cv2.BORDER_CONSTANT)
            for t in tiles[start : start + columns]
        ]
        row += [np.zeros_like(row[0])] * (columns - len(row))
        rows.append(np.hstack(row))
    if not cv2.imwrite(str(path), np.vstack(rows)):
        raise BirdwatchError(f"cannot write {path}")
    return path
