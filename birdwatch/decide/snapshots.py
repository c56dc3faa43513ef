"""Snapshots: the best crop of a visit, and the whole frame with its box drawn, as JPEG files.

Files live under `<dir>/<camera>/<YYYY-MM-DD>/` (local date of the visit's start), one pair per
visit, rewritten when a later event of the visit has a better picture. Retention keeps the
directory within an age, a total size and a file count, oldest files first; it runs after writes
at most every ten minutes, so a busy feeder does not rescan the disk for every picture. Each file is
fsynced before its event is committed, and half-written files left by a power cut are pruned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from birdwatch.config import SnapshotsConfig
from birdwatch.geometry import clip_box
from birdwatch.types import Box
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 600.0
TMP_SUFFIX = ".tmp"  # a snapshot being written; renamed to .jpg once it is on disk
ORPHAN_AGE_S = 600.0  # a .tmp file older than this was left by a crash or a power cut
_BOX_COLOUR = (0, 200, 255)  # BGR amber: visible on sky and on foliage


@dataclass(frozen=True)
class Snapshot:
    crop_path: Path
    frame_path: Path | None
    crop_jpeg: bytes


class SnapshotWriter:
    def __init__(self, cfg: SnapshotsConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.dir)
        self._last_prune = float("-inf")
        self.written = 0
        self.removed = 0
        self.failed = 0
        self._failing = False  # said so in the log already

    def save(self, event: VisitEvent, image: np.ndarray) -> Snapshot | None:
        """Write the crop (and the annotated frame) of `event`; None (logged) if the disk refuses."""
        folder = self.root / event.camera / local_day(event.first_seen)
        stem = time.strftime("%H%M%S", time.localtime(event.first_seen)) + f"_{event.visit_id[:12]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            crop = encode_jpeg(crop_image(image, event.box), self.cfg.quality)
            crop_path = folder / f"{stem}_crop.jpg"
            _write_atomic(crop_path, crop)
            frame_path = None
            if self.cfg.full_frame:
                frame_path = folder / f"{stem}_frame.jpg"
                label = f"{event.species} {event.score:.2f}"
                _write_atomic(frame_path, encode_jpeg(annotate(image, event.box, label), self.cfg.quality))
        except OSError as exc:
            self.failed += 1  # counted (snapshots_failed), said once per spell: a full card fails every visit
            if not self._failing:
                self._failing = True
                log.warning(
                    "snapshots cannot be written to %s (%s); visits are told without them until it works again",
                    self.root,
                    exc.strerror or exc,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("snapshots are written to %s again", self.root)
        self.written += 1
        self.prune_if_due()
        return Snapshot(crop_path, frame_path, crop)

    def prune_if_due(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        if now - self._last_prune < _PRUNE_EVERY_S:
            return 0
        self._last_prune = now
        return self.prune()

    def prune(self, now: float | None = None) -> int:
        """Delete the oldest snapshots beyond max_age_days, max_total_mb and max_files, and half-written
        files a crash left behind; returns how many."""
        now = time.time() if now is None else now
        orphans = _prune_orphans(self.root, now)
        files = []
        for path in self.root.rglob("*.jpg"):
            with contextlib.suppress(OSError):  # gone meanwhile
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        files.sort()  # oldest first
        total = sum(size for _, size, _ in files)
        max_bytes = self.cfg.max_total_mb * 1024 * 1024
        max_age = self.cfg.max_age_days * 86400
        keep_from = 0
        for i, (mtime, size, _) in enumerate(files):
            over_age = max_age > 0 and now - mtime > max_age
            over_size = max_bytes > 0 and total > max_bytes
            over_count = self.cfg.max_files > 0 and len(files) - i > self.cfg.max_files
            if not (over_age or over_size or over_count):
                break
            total -= size
            keep_from = i + 1
        removed = 0
        for _, _, path in files[:keep_from]:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
                _remove_empty_parents(path.parent, self.root)
        self.removed += removed + orphans
        if removed:
            log.info("snapshots: removed %d old file(s) from %s", removed, self.root)
        return removed + orphans


def crop_image(image: np.ndarray, box: Box) -> np.ndarray:
    x1, y1, x2, y2 = clip_box(box, (image.shape[1], image.shape[0]))
    return image[y1:y2, x1:x2]


def annotate(image: np.ndarray, box: Box, label: str) -> np.ndarray:
    out = image.copy()
    x1, y1, x2, y2 = (int(v) for v in box)
    thickness = max(1, round(min(image.shape[:2]) / 240))
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), _BOX_COLOUR, thickness, cv2.LINE_AA)
    scale = max(0.4, min(image.shape[:2]) / 720)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(image.shape[0] - base, y2 + th + 4)
    cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base), (0, 0, 0), -1)
    cv2.putText(out, label, (x1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, _BOX_COLOUR, thickness, cv2.LINE_AA)
    return out


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return buf.tobytes()


def _write_atomic(path: Path, data: bytes) -> None:
    """A reader (Home Assistant, a web server) never sees half a file, and once this returns the file
    survives a power cut: the event committed next names it (data, then the rename, on disk)."""
    tmp = path.with_suffix(TMP_SUFFIX)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) cannot sync a directory; the data itself is synced
        pass
    finally:
        os.close(fd)


def _prune_orphans(root: Path, now: float) -> int:
    """Half-written files left by a crash or a power cut (never renamed); a write in progress is younger."""
    removed = 0
    for path in list(root.rglob(f"*{TMP_SUFFIX}")):  # listed first: emptied folders go meanwhile
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > ORPHAN_AGE_S:
                path.unlink()
                removed += 1
                _remove_empty_parents(path.parent, root)
    if removed:
        log.info("snapshots: removed %d half-written file(s) left by a crash from %s", removed, root)
    return removed


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
