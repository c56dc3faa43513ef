"""Your own footage: frames where something moved, kept so that a week of feeder video becomes a few
thousand varied frames for the teacher to label (`birdwatch record`, then `birdwatch detector label`).

A frame is kept when motion found something in it, at most one per `every_s` per camera, and only
when what moved does not look like what moved in a frame that camera kept recently: the same place
(the box around the motion overlaps one of the last `recent` kept by IoU 0.5 or more) and the same
look there (imagehash's dHash of that part of the frame within `max_distance` of 256 bits) is the
same scene again, so a bird sitting still for an hour is a few frames, not a thousand. (A hash of the
whole frame cannot tell: a small bird arriving changes it less than sensor noise and clouds do.) The folder stays within
`budget_mb`: beyond it the oldest frame of the hour of the day that holds the most goes, so the
recording keeps dawn, noon, dusk and night alike rather than only the latest days.

Layout: `OUT/frames/<camera>/<YYYYMMDD>/<HHMMSS>-<seq>.jpg`, and `OUT/index.jsonl`, one line per kept
frame (file, camera, time, the motion boxes) and one per frame removed again; a later run, or the
labeller, reads it back. When the lines of frames removed outnumber the frames still there (by more
than `COMPACT_SLACK`), the index is rewritten with only those, so that a recording thinning to its
budget for months keeps an index the size of what it holds. One recorder writes a folder at a time: it holds
a lock on `OUT/.record.lock` while it runs (a second one's rewrite of the index, a rename over it, would drop
the lines the first appends meanwhile), and a second recorder on the same folder is refused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections import defaultdict
from collections import deque
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import TextIO

import cv2
import imagehash
import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from birdwatch.config import RecordConfig
from birdwatch.errors import BirdwatchError
from birdwatch.geometry import enclosing
from birdwatch.types import Box
from birdwatch.types import Detections
from birdwatch.types import Frame

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
LOCK = ".record.lock"  # held by the recorder writing the folder, for as long as it runs
FRAMES = "frames"
# The index is rewritten once its lines pass twice the frames kept plus this: a rewrite per that many lines.
COMPACT_SLACK = 64
HASH_SIDE = 16  # dHash of 16x16: 256 bits, fine enough that a bird arriving changes it


class RecordingInUse(BirdwatchError):
    """Another recorder (another `birdwatch record`, or `run` with record.enabled) writes the folder."""


@dataclass(frozen=True)
class Recorded:
    """One kept frame, as the index holds it."""

    file: str  # relative to the recording folder
    camera: str
    ts: float
    motion: list[list[float]]  # the motion boxes, full-frame pixels
    size: int  # bytes on disk
    region: list[int]  # the box around all the motion
    hash: str  # hex perceptual hash of the frame in `region`

    @property
    def hour(self) -> int:
        return time.localtime(self.ts).tm_hour

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "camera": self.camera,
            "ts": round(self.ts, 3),
            "motion": self.motion,
            "size": self.size,
            "region": self.region,
            "hash": self.hash,
        }


def append_lines(path: Path) -> TextIO:
    """`path` opened for appending lines, a last line cut short (a power cut) ended first, so that the
    next line is a line of its own and the cut one alone is lost."""
    lines = path.open("a+")
    if lines.tell() > 0:
        lines.seek(lines.tell() - 1)
        if lines.read(1) != "\n":
            lines.write("\n")
    return lines


def replace_lines(path: Path, lines: Iterable[str]) -> None:
    """`path` rewritten to hold `lines`, atomically: a file beside it, on disk, then renamed over it, so that a
    power cut leaves the old file or the new one, never a part of either."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as out:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself
    finally:
        os.close(folder)


def hold_recording(root: Path) -> TextIO:
    """The recording folder's lock, held until the returned file is closed; RecordingInUse when another recorder,
    in this process or another, holds it. The file keeps the holder's pid, for the message."""
    lock = (root / LOCK).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        by = f"birdwatch pid {holder}" if holder.isdigit() else "another birdwatch"
        raise RecordingInUse(
            f"record.dir: {root} is in use: {by} records into it (`birdwatch record`, or `run` with record.enabled); "
            "stop that one first, or give this one another folder (record.dir, or `record --out`)"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def read_index(root: Path) -> list[Recorded]:
    """The frames a recording holds, oldest first (lines for removed frames cancel their frame)."""
    return _scan_index(root)[0]


def _scan_index(root: Path) -> tuple[list[Recorded], int]:
    """The frames a recording holds, oldest first, and the lines its index has."""
    path = root / INDEX
    if not path.is_file():
        return [], 0
    kept: dict[str, Recorded] = {}
    count = 0
    with path.open() as lines:
        for line in lines:
            count += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a power cut: the frame is not counted
                continue
            if "removed" in row:
                kept.pop(row["removed"], None)
            else:
                kept[row["file"]] = Recorded(**row)
    return sorted((r for r in kept.values() if (root / r.file).is_file()), key=lambda r: r.ts), count


class Recorder:
    """Decides, per frame offered, whether to keep it; writes it and the index line when so. Used by one
    thread (the locate stage, or `birdwatch record`)."""

    @classmethod
    def from_config(cls, cfg: RecordConfig) -> Recorder:
        return cls(
            Path(cfg.dir).expanduser(), every_s=cfg.every_s, budget_mb=cfg.budget_mb, max_distance=cfg.max_distance
        )

    def __init__(
        self,
        root: Path,
        *,
        every_s: float = 2.0,
        budget_mb: float = 2000.0,
        max_distance: int = 24,
        recent: int = 64,
        quality: int = 90,
    ) -> None:
        self.root = root
        self.every_s = every_s
        self.budget = int(budget_mb * 1e6)
        self.max_distance = max_distance
        self.quality = quality
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._lock = hold_recording(root)  # before the index is read: it is this recorder's to rewrite
        except OSError as exc:
            raise BirdwatchError(
                f"record.dir: cannot write to {root} ({exc.strerror}); check its owner and mode"
            ) from None
        try:
            self.frames, self._lines = _scan_index(root)
            self._compact_if_due()
            self._index = append_lines(root / INDEX)
        except OSError as exc:
            self._lock.close()
            raise BirdwatchError(
                f"record.dir: cannot write to {root} ({exc.strerror}); check its owner and mode"
            ) from None
        self.bytes = sum(r.size for r in self.frames)
        self._recent: dict[str, deque[Signature]] = defaultdict(lambda: deque(maxlen=recent))
        for r in self.frames[-recent * 8 :]:
            self._recent[r.camera].append((tuple(r.region), imagehash.hex_to_hash(r.hash)))  # type: ignore[arg-type]
        self._last: dict[str, float] = {}  # camera -> read time (monotonic) of its last kept frame
        self.offered = self.kept = self.similar = self.evicted = 0
        self.stopped = False

    def close(self) -> None:
        self._index.close()
        self._lock.close()  # the folder is free for the next recorder

    def offer_all(self, frames: Sequence[Frame], motion: Sequence[Detections]) -> None:
        """Offer each frame; a disk that refuses a write stops the recording (logged once), never the caller."""
        if self.stopped:
            return
        for frame, moved in zip(frames, motion, strict=True):
            try:
                self.offer(frame, moved)
            except Exception as exc:  # a full disk, say: the recording stops, never the watching
                log.error("recording stopped: cannot keep frames in %s (%s); the watching goes on", self.root, exc)
                self.stopped = True
                return

    def offer(self, frame: Frame, motion: Detections) -> Path | None:
        """Keep `frame` if something moved, its camera's last keep is `every_s` ago, and it is new."""
        self.offered += 1
        if not len(motion):
            return None
        last = self._last.get(frame.camera)
        if last is not None and frame.mono - last < self.every_s:
            return None
        signature = _signature(frame.image, motion)
        if self._seen(signature, self._recent[frame.camera]):
            self.similar += 1
            return None
        path = self._write(frame, motion, signature)
        self._last[frame.camera] = frame.mono
        self._recent[frame.camera].append(signature)
        self._evict()
        if self._compact_if_due():
            self._index.close()
            self._index = append_lines(self.root / INDEX)
        return path

    def _seen(self, signature: Signature, recent: deque[Signature]) -> bool:
        if not recent:
            return False
        region, digest = signature
        overlap = box_iou(
            torch.tensor([region], dtype=torch.float32), torch.tensor([r for r, _ in recent], dtype=torch.float32)
        )[0]
        return any(
            o >= 0.5 and digest - seen <= self.max_distance
            for o, (_, seen) in zip(overlap.tolist(), recent, strict=True)
        )

    def _write(self, frame: Frame, motion: Detections, signature: Signature) -> Path:
        stamp = time.localtime(frame.ts)
        rel = Path(
            FRAMES, frame.camera, time.strftime("%Y%m%d", stamp), f"{time.strftime('%H%M%S', stamp)}-{frame.seq}.jpg"
        )
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OSError(f"cannot encode frame {frame.camera}#{frame.seq} as JPEG")
        path.write_bytes(jpeg.tobytes())
        region, digest = signature
        record = Recorded(
            rel.as_posix(),
            frame.camera,
            frame.ts,
            np.round(motion.boxes, 1).tolist(),
            len(jpeg),
            list(region),
            str(digest),
        )
        self._append(record.to_json())
        self.frames.append(record)
        self.bytes += record.size
        self.kept += 1
        return path

    def _evict(self) -> None:
        """Over the budget: the oldest frame of the most crowded hour of the day goes, until within it."""
        while self.bytes > self.budget and len(self.frames) > 1:
            by_hour: dict[int, list[Recorded]] = defaultdict(list)
            for r in self.frames:
                by_hour[r.hour].append(r)
            crowded = max(by_hour.values(), key=len)
            victim = crowded[0]  # self.frames is oldest first, so each hour's list is too
            self.frames.remove(victim)
            self.bytes -= victim.size
            (self.root / victim.file).unlink(missing_ok=True)
            self._append({"removed": victim.file})
            self.evicted += 1

    def _append(self, row: dict[str, Any]) -> None:
        self._index.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._index.flush()
        os.fsync(self._index.fileno())  # a kept frame is in the index before the next is taken
        self._lines += 1

    def _compact_if_due(self) -> bool:
        """Rewrite the index with only the frames still here once dead lines outnumber them: it is read whole at
        each start, and eviction adds a line per frame removed. True when rewritten (reopen it to append)."""
        if self._lines <= 2 * len(self.frames) + COMPACT_SLACK:
            return False
        replace_lines(self.root / INDEX, (json.dumps(r.to_json(), separators=(",", ":")) for r in self.frames))
        log.info(
            "%s: index rewritten with the %d frames it holds (was %d lines)", self.root, len(self.frames), self._lines
        )
        self._lines = len(self.frames)
        return True


Signature = tuple[Box, imagehash.ImageHash]  # where something moved, and how the frame looks there


def _signature(image: np.ndarray, motion: Detections) -> Signature:
    x1, y1, x2, y2 = (round(v) for v in enclosing([tuple(b) for b in motion.boxes.tolist()]))
    region = image[y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
    # OpenCV's area averaging first: far faster than PIL's resize of a whole camera frame.
    small = cv2.resize(region, (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA)
    digest = imagehash.dhash(Image.fromarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)), hash_size=HASH_SIDE)
    return (x1, y1, x2, y2), digest
