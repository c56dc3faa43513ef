"""Snapshots on disk: the best crop and the annotated full frame as JPEG, rewritten per visit, and
retention by age, total size and count, oldest first."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from birdwatch.config import SnapshotsConfig
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.tools.synthetic import Scene
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent


def event(visit: str = "0123456789abcdef", box: tuple[int, int, int, int] = (40, 30, 120, 110),
          first_seen: float | None = None) -> VisitEvent:  # fmt: skip
    now = time.time()
    first_seen = now if first_seen is None else first_seen
    return VisitEvent("new", visit, "feeder", now, "Eurasian Blue Tit", 0.87, (SpeciesScore("Eurasian Blue Tit", 0.87),),
                      first_seen, now, 3, box, "m")  # fmt: skip


def frame() -> np.ndarray:
    image, _ = Scene(320, 240, 1, n_birds=0, seed=3).render(0)
    return image


def test_crop_and_annotated_frame_are_written_as_jpeg(tmp_path: Path) -> None:
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path / "snaps")))
    image = frame()
    seen = event()
    snap = writer.save(seen, image)
    assert snap is not None and snap.frame_path is not None
    day = time.strftime("%Y-%m-%d", time.localtime(seen.first_seen))
    assert snap.crop_path.parent == tmp_path / "snaps" / "feeder" / day
    assert snap.crop_path.name.endswith("_0123456789ab_crop.jpg")
    crop = cv2.imread(str(snap.crop_path))
    assert crop.shape == (80, 80, 3), "the box, at full resolution"
    assert snap.crop_jpeg == snap.crop_path.read_bytes()
    full = cv2.imread(str(snap.frame_path))
    assert full.shape == image.shape
    edge_before, edge_after = image[70, 40].astype(int), full[70, 40].astype(int)
    assert np.abs(edge_after - edge_before).sum() > 100, "the box is drawn on the full frame"
    assert np.abs(full[5, 300].astype(int) - image[5, 300].astype(int)).sum() < 40, "the rest is the frame"


def test_a_better_picture_replaces_the_visits_files(tmp_path: Path) -> None:
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path)))
    started = time.time() - 5  # the visit began before its first picture; its files are named for that
    first = writer.save(event(box=(0, 0, 50, 50), first_seen=started), frame())
    second = writer.save(event(box=(10, 10, 110, 110), first_seen=started), frame())
    assert first is not None and second is not None and first.crop_path == second.crop_path
    assert cv2.imread(str(second.crop_path)).shape[:2] == (100, 100)
    assert len(list(tmp_path.rglob("*.jpg"))) == 2


def test_box_at_the_edge_is_clipped(tmp_path: Path) -> None:
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), full_frame=False))
    snap = writer.save(event(box=(300, 200, 360, 260)), frame())
    assert snap is not None and snap.frame_path is None
    assert cv2.imread(str(snap.crop_path)).shape[:2] == (40, 20)


def make_files(root: Path, n: int, size: int = 1000) -> list[Path]:
    paths = []
    for i in range(n):
        path = root / "feeder" / f"2026-01-{i + 1:02d}" / f"{i:03d}_crop.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        t = time.time() - (n - i) * 86400  # file i is n - i days old
        os.utime(path, (t, t))
        paths.append(path)
    return paths


def test_retention_by_count_keeps_the_newest(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 10)
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), max_files=4, max_age_days=0, max_total_mb=0))
    assert writer.prune() == 6
    assert sorted(tmp_path.rglob("*.jpg")) == paths[6:]
    assert not (tmp_path / "feeder" / "2026-01-01").exists(), "empty day folders go too"


def test_retention_by_age(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 10)
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), max_age_days=3.5, max_files=0, max_total_mb=0))
    writer.prune()
    assert sorted(tmp_path.rglob("*.jpg")) == paths[7:]


def test_retention_by_total_size(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 10, size=200_000)
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path), max_total_mb=1.0, max_age_days=0, max_files=0))
    writer.prune()
    assert sorted(tmp_path.rglob("*.jpg")) == paths[5:], "1 MB holds five 200 kB files"


def test_a_file_where_the_directory_should_be_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "snaps").write_text("not a directory")
    writer = SnapshotWriter(SnapshotsConfig(dir=str(tmp_path / "snaps")))
    with caplog.at_level(logging.WARNING):
        assert writer.save(event(), frame()) is None
        assert writer.save(event(), frame()) is None
    assert "snapshots cannot be written to" in caplog.text
    assert len(caplog.records) == 1 and writer.failed == 2, "said once, counted every time"
