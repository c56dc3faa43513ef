"""Detector cost per frame on this machine, and what motion gating saves.

    PYTHONPATH=. python bench/detector.py [--repeats 5] [--json out.json]

For each default backbone (untrained weights of the real architectures cost the same as trained
ones) with a fresh FCOS head (FPN width 64): milliseconds per frame at 640x640 and 1280x720, the
frame at its own resolution, batch 1, as fp32, bf16 autocast and channels_last (median of
`--repeats` after two warm-up runs). Then a synthetic 1280x720 clip with birds on screen a tenth
of the time goes through `localiser: detector` (every frame) and `detector+motion` (motion gate,
then regions) and the total time of each is compared; whole frames go to the head at 640 px
(a head's default training size) and regions at `detector.region_size` (320).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from birdwatch.classify.models import load_classifier
from birdwatch.config import DetectorConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.locate.head import shared_backbone
from birdwatch.locate.localiser import DetectorLocaliser
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.locate.motion import MotionDetector
from birdwatch.precision import Dtype
from birdwatch.tools.specs import DANUBE_DELTA
from birdwatch.tools.specs import EU_COMMON
from birdwatch.tools.specs import ModelSpec
from birdwatch.tools.synthetic import render_scene
from birdwatch.tools.synthetic import render_still
from birdwatch.tools.untrained import save_untrained
from birdwatch.types import Frame

BACKBONES: dict[str, ModelSpec] = {spec.network: spec for spec in (DANUBE_DELTA, EU_COMMON)}
FRAMES = ((640, 640), (1280, 720))


def timed(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return 1000 * statistics.median(runs)


def per_frame(detector: BirdDetector, classifier_net: torch.nn.Module, repeats: int) -> dict[str, dict[str, float]]:
    backbone = shared_backbone(detector.head)
    out: dict[str, dict[str, float]] = {}
    for width, height in FRAMES:
        frame = render_still(width, height, 1)[0]
        size = max(width, height)
        row = {}
        for mode in ("fp32", "bf16", "channels_last"):
            backbone.precision = Dtype.BF16 if mode == "bf16" else Dtype.FP32
            detector.channels_last = mode == "channels_last"
            classifier_net.to(memory_format=torch.channels_last if mode == "channels_last" else torch.contiguous_format)
            row[mode] = round(timed(lambda f=frame, s=size: detector.detect([f], max_size=s), repeats), 1)
        backbone.precision, detector.channels_last = Dtype.FP32, False
        classifier_net.to(memory_format=torch.contiguous_format)
        out[f"{width}x{height}"] = row
    return out


def gating(detector: BirdDetector, n_frames: int) -> dict[str, float]:
    clip = render_scene(1280, 720, n_frames, n_birds=2, seed=3, present_fraction=0.1, size_range=(0.12, 0.2))
    cfg = DetectorConfig()
    every = DetectorLocaliser(detector)
    started = time.perf_counter()
    frames = [Frame("bench", i, time.time(), image) for i, image in enumerate(clip.frames)]
    for frame in frames:
        every([frame])
    every_s = time.perf_counter() - started
    gated = MotionGatedLocaliser(
        detector, region_size=cfg.region_size, padding=cfg.region_padding, max_regions=cfg.max_regions
    )
    motion = MotionDetector(MotionConfig())
    started = time.perf_counter()
    for frame in frames:
        gated([frame], [motion(frame.image)])
    gated_s = time.perf_counter() - started
    return {
        "frames": n_frames,
        "frames_with_birds": sum(clip.has_birds),
        "detector_ms_per_frame": round(1000 * every_s / n_frames, 1),
        "detector+motion_ms_per_frame": round(1000 * gated_s / n_frames, 1),
        "frames_sent_to_detector": gated.frames_detected,
        "regions": gated.regions_detected,
        "saving": round(1 - gated_s / every_s, 3),
        "speedup": round(every_s / gated_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gating-frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for network, spec in BACKBONES.items():
            names = [f"s{i}" for i in range(spec.classes)]
            path = save_untrained(network, Path(tmp) / f"{network}_bench.pt", names, spec.size)
            classifier = load_classifier(ModelConfig(file=str(path), device="cpu"))
            detector = BirdDetector(
                build_head(classifier.net), rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=640
            )
            detector.configure(score_threshold=0.4, nms_iou=0.5, max_detections=20)
            results[network] = per_frame(detector, classifier.net, args.repeats)
            print(f"{network}: {json.dumps(results[network])}", flush=True)
            if spec is DANUBE_DELTA:
                results["gating"] = gating(detector, args.gating_frames)
                print(f"gating ({network}, 1280x720): {json.dumps(results['gating'])}", flush=True)
    print()
    print("| backbone | frame | fp32 ms | bf16 autocast ms | channels_last ms |")
    print("| --- | --- | --- | --- | --- |")
    for network in BACKBONES:
        for frame, row in results[network].items():  # type: ignore[union-attr]
            print(f"| {network} | {frame} | {row['fp32']} | {row['bf16']} | {row['channels_last']} |")
    g: dict = results["gating"]  # type: ignore[assignment]
    print(
        f"\nmotion gating, hgnet_v2_b2, 1280x720, birds in {g['frames_with_birds']}/{g['frames']} frames: "
        f"{g['detector_ms_per_frame']} ms/frame detector on every frame (at 640 px), "
        f"{g['detector+motion_ms_per_frame']} ms/frame "
        f"gated ({g['frames_sent_to_detector']} frames, {g['regions']} regions sent): {100 * g['saving']:.0f}% saved, "
        f"{g['speedup']}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
