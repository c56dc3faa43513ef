"""`birdwatch learn` on a week's recording, within the nightly unit's memory (MemoryMax=6G).

A synthetic 720p feeder clip is recorded by `birdwatch record` (the real command, on the clip as a file
camera) into `--frames` frames, then `birdwatch learn` runs on it as the nightly unit runs it. Each
command's peak RSS is the kernel's (wait4's ru_maxrss of that child alone). The weights are the test
stand-ins (tests/support/standins.py: a bird-aware hgnet_v2_b2 and an FCOS teacher on it), trained once
into the work folder; no model hub is needed.

    .venv/bin/python bench/learn_memory.py --frames 3000 --workdir /tmp/learn-memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from birdwatch.capture.recorder import read_index  # noqa: E402
from birdwatch.tools.synthetic import generate_frames  # noqa: E402
from birdwatch.tools.synthetic import write_video  # noqa: E402
from tests.fixtures_models import DANUBE  # noqa: E402
from tests.fixtures_models import species_names  # noqa: E402
from tests.support.standins import CLASSIFIER_FILE  # noqa: E402
from tests.support.standins import TEACHER_FILE  # noqa: E402
from tests.support.standins import train_stand_ins  # noqa: E402

MEMORY_MAX_MB = 6 * 1024  # systemd/birdwatch-learn.service
WIDTH, HEIGHT, FPS = 1280, 720, 25
CLIP_FRAMES = 3200
EVERY_S = 0.08  # record.every_s: 12.5 frames a second kept of the clip's 25


def run(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run `birdwatch ...` to its end; (seconds, peak RSS in MB of that process alone)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "birdwatch", *command], cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"birdwatch {command[0]} exited {proc.returncode}")
    return time.monotonic() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3000, help="recorded frames to learn from")
    parser.add_argument("--epochs", type=int, default=2, help="learn --epochs (the memory does not grow with them)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/learn-memory"))
    args = parser.parse_args()
    work = args.workdir
    models = work / "models"
    if not (models / TEACHER_FILE).is_file():
        print("training the stand-in classifier and teacher (once) ...", flush=True)
        train_stand_ins(models, species_names(DANUBE["classes"]), DANUBE["size"], steps=600, time_limit_s=float("inf"))
    # Birds always there, the clip looping at its frame rate; `record` keeps at most one frame per every_s.
    clip = work / f"feeder-{CLIP_FRAMES}.avi"
    if not clip.is_file():
        print(f"writing a {WIDTH}x{HEIGHT} clip of {CLIP_FRAMES} frames ...", flush=True)
        frames = generate_frames(WIDTH, HEIGHT, CLIP_FRAMES, n_birds=3, seed=11, present_fraction=1.0)
        write_video(clip, frames, fps=FPS)
    recording = work / "recording"
    config = work / "birdwatch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"name": "feeder", "url": str(clip), "realtime": True, "loop": True}],
                "model": {"file": str(models / CLASSIFIER_FILE), "device": "cpu", "models_dir": str(models)},
                "teacher": {"file": str(models / TEACHER_FILE), "label_score": 0.4},
                "detector": {"region_size": 128},
                "record": {"dir": str(recording), "every_s": EVERY_S, "budget_mb": 100_000, "max_distance": 0},
            }
        )
    )
    minutes = args.frames * EVERY_S / 60 * 1.1  # a little over: a frame like one kept recently is not kept
    record_s, record_mb = run(["record", "--config", str(config), "--minutes", f"{minutes:.2f}"], work)
    recorded = len(read_index(recording))
    print(f"record: {recorded} frames in {record_s:.0f} s, peak RSS {record_mb:.0f} MB", flush=True)
    marker = work / "adopted"
    learn_s, learn_mb = run(
        ["learn", "--config", str(config), "--work", str(work / "learn"), "--epochs", str(args.epochs),
         "--train-minutes", "600", "--uncertain-floor", "0.4", "--adopted-marker", str(marker), "--no-progress"],
        work,
    )  # fmt: skip
    report = json.loads((work / "learn" / "learn.json").read_text())
    result = {
        "frames_recorded": recorded,
        "frame": f"{WIDTH}x{HEIGHT}",
        "record": {"seconds": round(record_s), "peak_rss_mb": round(record_mb)},
        "learn": {"seconds": round(learn_s), "peak_rss_mb": round(learn_mb), "memory_max_mb": MEMORY_MAX_MB},
        "adopted": report["adopted"],
        "labels": report["labels"],
        "new_mAP50": report["new"]["mAP50"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
