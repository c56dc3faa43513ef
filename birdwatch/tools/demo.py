"""`birdwatch demo`: the whole pipeline on a made-up feeder clip, with nothing but the weights.

It draws a short clip with the scene generator (three visits by painted birds that perch a while),
runs the real pipeline on it as a file camera with the user's model (weights fetched on first use,
as `run` does), sends events to the log and the history instead of a broker, and prints the visits
it told with their snapshots. Painted birds are no species the model knows: the names it gives them
show that it runs, not that it is right.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from birdwatch.config import Config
from birdwatch.config import load_config
from birdwatch.config import parse_config
from birdwatch.deliver.history import EventStore
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.types import EventKind

log = logging.getLogger(__name__)

FPS = 10
# (start, stop) frames of each bird's visit: three visits with empty feeder between them.
VISITS = ((10, 45), (62, 97), (114, 146))
N_FRAMES = 156
SIZE = (640, 360)


@dataclass(frozen=True)
class ToldVisit:
    species: str
    score: float
    duration_s: float
    frames: int
    snapshot: str | None


def make_clip(path: Path, seed: int = 11) -> Path:
    """The demo feeder: one bird per visit, perching half of its time, as at a real feeder."""
    frames = generate_frames(*SIZE, N_FRAMES, n_birds=1, seed=seed, presence=VISITS, perch_fraction=0.5)
    write_video(path, frames, fps=FPS)
    return path


def demo_config(workdir: Path, clip: Path, model: dict[str, Any], engine: dict[str, Any]) -> Config:
    """A config as a user would write it, checked the same way: one file camera, no broker."""
    data = {
        "cameras": [{"name": "demo-feeder", "url": str(clip), "motion": {"warmup_frames": 5}}],
        "model": model,
        "engine": engine,
        "tracking": {"timeout_s": 1.5},
        # Painted birds: whatever the model calls them is told, however unsure it is.
        "events": {"min_score": 0.0, "cooldown_s": 0},
        "store": {"path": str(workdir / "demo.db")},
        "snapshots": {"dir": str(workdir / "snapshots")},
        "stats_interval_s": 30,
    }
    return parse_config(yaml.safe_dump(data, sort_keys=False), source="demo config")


def model_sections(config_path: str | None, model_file: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's model and engine sections (from their config, or the defaults), as plain data."""
    if config_path:
        user = load_config(config_path)
        model, engine = dataclasses.asdict(user.model), dataclasses.asdict(user.engine)
    else:
        model, engine = {}, {}
    if model_file:
        model |= {"file": model_file, "url": None, "sha256": None}
    return model, engine


def run_demo(workdir: Path, config_path: str | None = None, model_file: str | None = None) -> list[ToldVisit]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "demo.db").unlink(missing_ok=True)  # each demo tells its own visits
    clip = make_clip(workdir / "feeder.avi")
    config = demo_config(workdir, clip, *model_sections(config_path, model_file))
    log.info("demo clip %s: %d frames at %d fps, %d bird visits", clip, N_FRAMES, FPS, len(VISITS))
    pipeline = Pipeline(config)
    pipeline.start()
    try:
        pipeline.run(threading.Event())  # returns when the clip has ended
    finally:
        pipeline.stop()
    return told_visits(config.store.path)


def told_visits(db: str) -> list[ToldVisit]:
    """Each visit's last event (its `end`), oldest first."""
    store = EventStore(db, readonly=True)
    try:
        rows = store.recent(limit=1000)
    finally:
        store.close()
    last: dict[str, dict[str, Any]] = {}
    for row in reversed(rows):  # oldest first, so a later event of a visit replaces an earlier one
        event = json.loads(row.payload)
        if event["kind"] == EventKind.END or event["visit_id"] not in last:
            last[event["visit_id"]] = event
    return [ToldVisit(e["species"], e["score"], e["duration_s"], e["frames"], e.get("snapshot")) for e in last.values()]


def report(visits: list[ToldVisit], workdir: Path) -> str:
    lines = [f"birdwatch demo: {len(visits)} visit(s) told for {len(VISITS)} painted birds"]
    for i, v in enumerate(visits, 1):
        snapshot = f", snapshot {v.snapshot}" if v.snapshot else ""
        lines.append(f"  {i}. {v.species} ({v.score:.2f}), {v.duration_s:.1f} s, {v.frames} frames{snapshot}")
    lines.append(f"history: birdwatch events --db {workdir / 'demo.db'}")
    return "\n".join(lines)
