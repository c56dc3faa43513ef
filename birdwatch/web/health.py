"""*Health*: the figures /metrics gives (the pipeline's `counters()`), and what the disk holds."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDER_EVERY_S = 60.0  # walking 20 000 snapshots is not done per page view

_walked: dict[Path, tuple[float, int, int]] = {}
_walk_lock = threading.Lock()


@dataclass(frozen=True)
class Disk:
    history_mb: float
    snapshots_mb: float
    snapshots: int
    free_mb: float
    free_pct: float


def figures(counters: Callable[[], Mapping[str, Any]] | None, history: Path, snapshots: Path) -> dict[str, Any]:
    snap = dict(counters()) if counters is not None else {}
    elapsed = float(snap.get("elapsed_s", 0.0)) or 1.0
    cameras = {
        name: {**cam, "fps": round(float(cam.get("frames_processed", 0)) / elapsed, 1)}
        for name, cam in snap.get("cameras", {}).items()
    }
    return {
        "running": counters is not None,
        "cameras": cameras,
        "mqtt_connected": snap.get("mqtt_connected"),
        "events_pending": snap.get("events_pending"),
        "history_writable": snap.get("history_writable"),
        "ms_per_batch": snap.get("ms_per_batch"),
        "crops": snap.get("crops"),
        "crops_per_s": round(float(snap.get("crops", 0)) / elapsed, 1),
        "elapsed_s": snap.get("elapsed_s"),
        "disk": disk(history, snapshots),
    }


def disk(history: Path, snapshots: Path) -> Disk:
    size = sum(_size(Path(f"{history}{suffix}")) for suffix in ("", "-wal", "-shm"))
    count, total = _folder(snapshots)
    try:
        usage = shutil.disk_usage(history.parent)
        free, pct = usage.free / 1e6, 100.0 * usage.free / max(1, usage.total)
    except OSError:
        free, pct = 0.0, 0.0
    return Disk(size / 1e6, total / 1e6, count, free, pct)


def _folder(root: Path) -> tuple[int, int]:
    """(files, bytes) under root, walked at most every FOLDER_EVERY_S."""
    with _walk_lock:
        cached = _walked.get(root)
        if cached is not None and time.monotonic() - cached[0] < FOLDER_EVERY_S:
            return cached[1], cached[2]
        count = total = 0
        for folder, _, files in os.walk(root):
            for name in files:
                count += 1
                total += _size(Path(folder) / name)
        _walked[root] = (time.monotonic(), count, total)
        return count, total


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
