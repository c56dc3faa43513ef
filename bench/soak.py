"""Soak: run the real pipeline at full speed on looping file cameras and watch for leaks.

Synthetic feeder clips (birds flying in and out, so motion regions and classification never stop),
read with `loop: true, realtime: false` so every camera delivers as fast as it can decode; an untrained
hgnet_v2_b2 (368 classes, 256 px, the danube-delta shape) classifies the crops. Every --interval
seconds it samples RSS, open fds and threads from /proc/self, and the pipeline's own snapshot
(frames read/processed/dropped, crops/s, queue depths, events), prints a row, and at the end judges
whether resources stayed flat after warm-up: the RSS trend over the second half of the run (MB per
minute, a Theil-Sen slope: robust to the allocator's swings) must stay under a limit, and fds and
threads must not grow there.

    PYTHONPATH=. python bench/soak.py --seconds 180 --cameras 2 --json soak.json

Exit status 0 when flat, 1 when something grew.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from birdwatch.config import parse_config
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.specs import DANUBE_DELTA
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from birdwatch.tools.untrained import save_untrained

SPEC = DANUBE_DELTA  # the shape of the model the soak classifies with


def proc_status() -> dict[str, int]:
    """RSS (kB) and native threads of this process, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_inputs(workdir: Path, n_cameras: int, width: int, height: int, frames: int) -> tuple[list[Path], Path]:
    clips = []
    for i in range(n_cameras):
        clip = workdir / f"feeder{i}.avi"
        write_video(clip, generate_frames(width, height, frames, n_birds=2, seed=100 + i, present_fraction=0.8), fps=25)
        clips.append(clip)
    weights = save_untrained(
        SPEC.network, workdir / f"{SPEC.network}_soak.pt", [f"Species {i:03d}" for i in range(SPEC.classes)], SPEC.size
    )
    return clips, weights


def build_config(clips: list[Path], weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cameras": [
            {"name": f"cam{i}", "url": str(clip), "loop": True, "realtime": False, "motion": {"warmup_frames": 5}}
            for i, clip in enumerate(clips)
        ],
        "model": {"file": str(weights), "device": args.device, "batch_size": args.batch_size},
        "engine": {"workers": args.workers},
        "events": {"min_score": 0.0, "cooldown_s": 60},
        # The outbox, the history and the snapshots grow as in service; in the soak's own directory.
        "store": {"path": str(clips[0].parent / "soak.db")},
        "snapshots": {"dir": str(clips[0].parent / "snapshots")},
        "log_level": "WARNING",
        "stats_interval_s": 86400,  # the soak prints its own table
    }
    if args.mqtt:
        host, _, port = args.mqtt.partition(":")
        config["mqtt"] = {"host": host, "port": int(port or 1883), "topic_prefix": "soak"}
    return config


def sample(t0: float, pipeline: Pipeline) -> dict[str, Any]:
    status = proc_status()
    snap = pipeline.counters()
    cameras: dict[str, Any] = snap["cameras"]  # type: ignore[assignment]
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "fds": open_fds(),
        "threads": status["Threads"],
        "py_threads": threading.active_count(),
        "frames_read": sum(c["frames_read"] for c in cameras.values()),
        "frames_processed": sum(c["frames_processed"] for c in cameras.values()),
        "frames_dropped": sum(c["frames_dropped"] for c in cameras.values()),
        "reconnects": sum(c["reconnects"] for c in cameras.values()),
        "crops": snap["crops"],
        "events": snap.get("events_published", snap.get("events", 0)),
        "events_pending": snap.get("events_pending"),
        "queues": dict(snap.get("queues") or {}),  # type: ignore[call-overload]
    }


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Theil-Sen slope of (seconds, value), in value per minute: the median of the slopes between every
    two samples. The allocator's RSS swings by tens of MB from sample to sample; a least-squares line
    through 90 s of that reads a swing as growth, the median of pairwise slopes does not."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1]
    return 60 * statistics.median(slopes) if slopes else 0.0


def verdict(samples: list[dict[str, Any]], max_rss_slope: float, max_growth: int) -> dict[str, Any]:
    half = samples[len(samples) // 2 :]
    rss = [s["rss_mb"] for s in half]
    queue_max = max((max(s["queues"].values(), default=0) for s in half), default=0)
    out = {
        "window_s": [half[0]["t_s"], half[-1]["t_s"]] if half else None,
        "rss_mb_first_half_end": rss[0] if rss else None,
        "rss_mb_end": rss[-1] if rss else None,
        "rss_slope_mb_per_min": round(slope_per_min([(s["t_s"], s["rss_mb"]) for s in half]), 2),
        "fds_growth": half[-1]["fds"] - min(s["fds"] for s in half) if half else 0,
        "threads_growth": half[-1]["threads"] - min(s["threads"] for s in half) if half else 0,
        "queue_depth_max": queue_max,
    }
    problems = []
    if out["rss_slope_mb_per_min"] > max_rss_slope:  # memory handed back is not a leak
        problems.append(f"RSS {out['rss_slope_mb_per_min']:+.2f} MB/min (limit {max_rss_slope})")
    if out["fds_growth"] > max_growth:
        problems.append(f"fds +{out['fds_growth']}")
    if out["threads_growth"] > max_growth:
        problems.append(f"threads +{out['threads_growth']}")
    out["flat"] = not problems
    out["problems"] = problems
    return out


ROW = "{t_s:>7} {rss_mb:>8} {fds:>5} {threads:>7} {read:>8} {proc:>7} {drop:>8} {crops_s:>8} {events:>7} {queues}"


def row(s: dict[str, Any], prev: dict[str, Any] | None) -> str:
    span = s["t_s"] - (prev["t_s"] if prev else 0.0) or 1e-9

    def rate(key: str) -> str:
        return f"{(s[key] - (prev[key] if prev else 0)) / span:.1f}"

    queues = ",".join(f"{k}={v}" for k, v in s["queues"].items()) or "-"
    return ROW.format(
        t_s=s["t_s"],
        rss_mb=s["rss_mb"],
        fds=s["fds"],
        threads=s["threads"],
        read=rate("frames_read"),
        proc=rate("frames_processed"),
        drop=rate("frames_dropped"),
        crops_s=rate("crops"),
        events=s["events"],
        queues=queues,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=480, help="how long to run (default 480)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    parser.add_argument("--cameras", type=int, default=2, help="looping file cameras (default 2)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=150, help="frames per clip before it loops (default 150)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="classify workers (default 0: auto)")
    parser.add_argument("--mqtt", help="HOST[:PORT] of a broker to publish to (default: none, events are logged)")
    parser.add_argument("--max-rss-slope", type=float, default=2.0, help="MB/min allowed in the second half")
    parser.add_argument("--max-growth", type=int, default=2, help="fds/threads allowed to grow in the second half")
    parser.add_argument("--json", type=Path, help="write samples and verdict here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="birdwatch-soak-") as tmp:
        clips, weights = make_inputs(Path(tmp), args.cameras, args.width, args.height, args.frames)
        config = parse_config(yaml.safe_dump(build_config(clips, weights, args)), source="soak")
        pipeline = Pipeline(config)
        pipeline.start()
        stop = threading.Event()
        runner = threading.Thread(target=pipeline.run, args=(stop,), name="pipeline", daemon=True)
        t0 = time.monotonic()
        runner.start()
        samples: list[dict[str, Any]] = []
        header = ROW.format(
            t_s="t_s", rss_mb="rss_mb", fds="fds", threads="threads", read="read/s", proc="proc/s",
            drop="drop/s", crops_s="crops/s", events="events", queues="queues",
        )  # fmt: skip
        print(
            f"soak: {args.cameras} looping {args.width}x{args.height} clips at full speed, {SPEC.network} "
            f"{SPEC.classes} classes {SPEC.size[0]} px on {args.device}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs, {args.seconds:.0f} s"
        )
        print(header)
        try:
            with tqdm(total=int(args.seconds), unit="s", leave=False, disable=not sys.stderr.isatty()) as bar:
                next_at = t0 + args.interval
                while (now := time.monotonic()) < t0 + args.seconds and runner.is_alive():
                    time.sleep(max(0.0, min(next_at, t0 + args.seconds) - now))
                    s = sample(t0, pipeline)
                    tqdm.write(row(s, samples[-1] if samples else None))
                    samples.append(s)
                    bar.n = min(int(s["t_s"]), int(args.seconds))
                    bar.refresh()
                    next_at += args.interval
        finally:
            stop.set()
            runner.join(30)
            pipeline.stop()
    if not samples:
        print("soak: no samples (the pipeline stopped at once)", file=sys.stderr)
        return 1
    result = verdict(samples, args.max_rss_slope, args.max_growth)
    first, last = samples[0], samples[-1]
    dropped = last["frames_dropped"] / max(1, last["frames_read"])
    print(
        f"\nover {last['t_s']:.0f} s: {last['frames_read']} frames read, {last['frames_processed']} processed, "
        f"{last['frames_dropped']} dropped ({100 * dropped:.0f} %: readers outrun the model by design), "
        f"{last['crops']} crops ({last['crops'] / last['t_s']:.1f}/s), {last['events']} events, "
        f"{last['reconnects']} reconnects"
    )
    print(
        f"RSS {first['rss_mb']} MB at {first['t_s']} s -> {result['rss_mb_first_half_end']} MB at "
        f"{result['window_s'][0]} s -> {result['rss_mb_end']} MB at {result['window_s'][1]} s; "
        f"second half: {result['rss_slope_mb_per_min']:+.2f} MB/min, fds {result['fds_growth']:+d}, "
        f"threads {result['threads_growth']:+d}, max queue depth {result['queue_depth_max']}"
    )
    print("verdict: " + ("FLAT after warm-up" if result["flat"] else "GROWING: " + "; ".join(result["problems"])))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "torch": torch.__version__,
                    },
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "samples": samples,
                    "verdict": result,
                },
                indent=1,
            )
        )
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
