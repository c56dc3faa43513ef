"""`birdwatch bench`: what this machine does with the real architectures, offline.

Weights are untrained networks of the real architectures (no model hub is needed, and the cost of
a forward pass does not depend on the weights' values). Every ratio is measured within one run, on
the same crops, so a busy machine shifts both sides alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from birder import classification_transform
from birder.inference.classification import infer_image
from PIL import Image

from birdwatch.backends import Backend
from birdwatch.backends import BackendError
from birdwatch.backends import Runner
from birdwatch.backends import RunOptions
from birdwatch.backends import build_runner
from birdwatch.backends import candidates
from birdwatch.backends.export import cache_dir_for
from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.engine import classifier_graph
from birdwatch.classify.engine import cpu_cores
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.classify.models import resolve_device
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.config import DetectorConfig
from birdwatch.config import EngineConfig
from birdwatch.config import EventsConfig
from birdwatch.config import ModelConfig
from birdwatch.config import MotionConfig
from birdwatch.config import SnapshotsConfig
from birdwatch.config import StoreConfig
from birdwatch.config import TrackingConfig
from birdwatch.locate.checkpoint import HeadInfo
from birdwatch.locate.checkpoint import save_head
from birdwatch.locate.head import DEFAULT_FPN_WIDTH
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.locate.localiser import load_detector
from birdwatch.precision import Dtype
from birdwatch.precision import Precision
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.tools.specs import MODELS
from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import render_still
from birdwatch.tools.synthetic import write_video
from birdwatch.tools.untrained import save_untrained
from birdwatch.types import Box
from birdwatch.types import Frame

log = logging.getLogger(__name__)

REGION = 320  # detector+motion's default region size
NOTE = "untrained weights of the real architectures: the same cost per forward pass as the trained ones"


@dataclass
class BenchOptions:
    models: list[str]
    cameras: int = 4
    seconds: float = 30.0
    fps: float = 25.0  # a usual camera rate; 4 such cameras keep the classifier saturated on a small CPU
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    batch_size: int = 8
    crops: int = 64
    tune: bool = False
    workdir: Path | None = None
    min_s: float = 2.0  # each throughput figure averages at least this long
    min_runs: int = 3  # ... and at least this many timed calls (--quick: one, a smoke test of the measuring)


def timed(fn: Callable[[], object], min_s: float, *, min_runs: int = 3) -> float:
    """Seconds per call, after one warm-up call, over at least min_s seconds and min_runs calls."""
    fn()
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < min_s:
        fn()
        runs += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / runs


def rate(fn: Callable[[], object], min_s: float, workers: int = 1, *, min_runs: int = 3) -> float:
    """Calls per second of `fn`, run by `workers` threads side by side (as the classify workers run)."""
    if workers == 1:
        return 1 / timed(fn, min_s, min_runs=min_runs)
    rates = [0.0] * workers

    def one(i: int) -> None:
        rates[i] = 1 / timed(fn, min_s, min_runs=min_runs)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates)


def synthetic_crops(n: int, seed: int = 0) -> tuple[list[Frame], list[list[Box]]]:
    """Feeder frames and the true bird boxes in them: the crops every classifier measurement uses."""
    scene = Scene(640, 360, 200, n_birds=3, seed=seed, present_fraction=1.0)
    frames: list[Frame] = []
    boxes: list[list[Box]] = []
    t = 20
    while sum(len(b) for b in boxes) < n:
        image, truth = scene.render(t)
        truth = [b for b in truth if (b[2] - b[0]) * (b[3] - b[1]) >= 256][: n - sum(len(b) for b in boxes)]
        if truth:
            frames.append(Frame("bench", t, 0.0, image))
            boxes.append(truth)
        t += 3
    return frames, boxes


def model_only(
    clf: Classifier,
    precision: Precision,
    batch: int,
    min_s: float,
    workers: int = 1,
    runner: Runner | None = None,
    *,
    min_runs: int = 3,
) -> float:
    """Images per second of the network's forward pass alone, on ready tensors, by `workers` threads
    (softmax included); `runner` runs it on another backend, else torch at `precision`."""
    engine = ClassifierEngine(clf, batch_size=batch, precision=precision, runner=runner)
    x = torch.randn(batch, 3, *clf.size, device=clf.device)
    return batch * rate(lambda: engine.probabilities(x), min_s, workers, min_runs=min_runs)


def detector_only(
    clf: Classifier, precision: Precision, batch: int, min_s: float, size: int = 640, *, min_runs: int = 3
) -> float:
    """Frames per second of a detector head on this backbone (an untrained head costs what a trained
    one does): 640x640 frames in one batch, letterbox, forward, NMS and mapping back included."""
    if precision.channels_last:
        clf.net.to(memory_format=torch.channels_last)
    head = build_head(clf.net, precision=precision.dtype)
    detector = BirdDetector(
        head, rgb_stats=clf.rgb_stats, device=clf.device, max_size=size, channels_last=precision.channels_last
    )
    frames = [render_still(size, size, seed)[0] for seed in range(batch)]
    return batch / timed(lambda: detector.detect(frames), min_s, min_runs=min_runs)


def region_detector(
    clf: Classifier, head_file: Path, backend: Backend, options: RunOptions, min_s: float, *, min_runs: int = 3
) -> float:
    """Regions per second of `detector+motion`: 320 px regions around motion, 4 in one batch, on `backend`."""
    cfg = DetectorConfig(file=str(head_file), region_size=REGION, precision=options.precision.dtype.value)
    cache_dir = cache_dir_for(head_file.parent / "models")
    detector = load_detector(cfg, clf, canvas=REGION, backend=backend, cache_dir=cache_dir, options=options)
    regions = [render_still(REGION, REGION, seed)[0] for seed in range(4)]
    return len(regions) / timed(lambda: detector.detect(regions, max_size=REGION), min_s, min_runs=min_runs)


def untrained_head(clf: Classifier, path: Path) -> Path:
    """An untrained head file on this backbone: it costs what a trained one does."""
    if not path.exists():
        save_head(path, build_head(clf.net), HeadInfo.for_classifier(clf, REGION, DEFAULT_FPN_WIDTH))
    return path


def naive_loop(clf: Classifier, frames: list[Frame], boxes: list[list[Box]], min_s: float) -> float:
    """Crops per second the way birder's model cards classify: infer_image on one PIL crop at a time."""
    transform = classification_transform(clf.size, clf.rgb_stats)
    pils = [
        Image.fromarray(np.ascontiguousarray(f.image[y1:y2, x1:x2, ::-1]))
        for f, bs in zip(frames, boxes, strict=True)
        for x1, y1, x2, y2 in bs
    ]

    def run() -> None:
        with torch.inference_mode():
            for pil in pils:
                infer_image(clf.net, pil, transform, device=clf.device)

    # As a user runs it: one loop, torch's default of one thread per core.
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_cores())
    try:
        return len(pils) / timed(run, min_s, min_runs=1)
    finally:
        torch.set_num_threads(threads)


def batched(
    clf: Classifier,
    precision: Precision,
    batch: int,
    frames: list[Frame],
    boxes: list[list[Box]],
    min_s: float,
    workers: int = 1,
) -> float:
    """Crops per second through birdwatch's engine and its classify workers: same crops, preprocessing included."""
    engine = ClassifierEngine(clf, batch_size=batch, precision=precision)
    n = sum(len(b) for b in boxes)
    return n * rate(lambda: engine.classify(frames, boxes), min_s, workers, min_runs=1)


def tune(clf_loader: Callable[[], Classifier], batch: int, min_s: float, cache_dir: Path) -> list[dict[str, Any]]:
    """Every backend x precision x memory format x worker plan this device offers, fastest first."""
    rows = []
    device = clf_loader().device
    dtypes = [Dtype.FP32, Dtype.BF16] + ([Dtype.FP16] if device.type == "cuda" else [])
    plans = {WorkerPlan.resolve(device), WorkerPlan.resolve(device, workers=1)}
    for plan in sorted(plans, key=lambda p: p.workers):
        plan.apply()
        threads = plan.threads or torch.get_num_threads()
        for backend in candidates(device):
            # ONNX Runtime computes in fp32 only; memory format is torch's choice alone.
            backend_dtypes = [Dtype.FP32] if backend is Backend.ONNXRUNTIME else dtypes
            layouts = (False, True) if backend is Backend.TORCH else (False,)
            for dtype in backend_dtypes:
                for channels_last in layouts:
                    clf = clf_loader()  # fresh module: channels_last converts it in place
                    precision = Precision(dtype, channels_last)
                    options = RunOptions(precision, threads=threads, callers=plan.workers, batch_size=batch)
                    try:
                        runner = build_runner(classifier_graph(clf), backend, cache_dir, options)
                    except BackendError as e:
                        log.warning("tune: %s", e)
                        continue
                    ips = model_only(clf, precision, batch, min_s, plan.workers, runner)
                    rows.append(
                        {
                            "backend": backend.value,
                            "precision": runner.precision,  # what it computes in, which may not be what was asked
                            "channels_last": channels_last,
                            "workers": plan.workers,
                            "threads": threads,
                            "batch": batch,
                            "img_per_s": round(ips, 1),
                        }
                    )
    WorkerPlan.resolve(device).apply()
    rows.sort(key=lambda r: r["img_per_s"], reverse=True)
    return rows


def pipeline_run(weights: Path, opts: BenchOptions, workdir: Path, backend: Backend = Backend.AUTO) -> dict[str, Any]:
    """N synthetic file cameras, paced like real ones, through the whole pipeline on `backend`."""
    cameras = []
    for i in range(opts.cameras):
        clip = workdir / f"camera{i}-{opts.fps:g}fps.avi"  # a kept workdir may hold clips of another rate
        if not clip.exists():
            scene = Scene(640, 360, 100, n_birds=3, seed=100 + i, present_fraction=1.0)
            write_video(clip, scene, fps=opts.fps)
        cameras.append(
            CameraConfig(name=f"cam{i}", url=str(clip), loop=True, realtime=True, motion=MotionConfig(warmup_frames=5))
        )
    config = Config(
        cameras=cameras,
        model=ModelConfig(
            file=str(weights), device=opts.device, batch_size=opts.batch_size, models_dir=str(workdir / "models")
        ),
        engine=EngineConfig(
            backend=backend.value,
            precision=opts.precision,  # type: ignore[arg-type]
            channels_last=opts.channels_last,
        ),
        # Every new track is a visit at once and told: read-to-event latency is measured on `new` events.
        tracking=TrackingConfig(min_hits=1),
        events=EventsConfig(min_score=0.0, cooldown_s=0.0),
        snapshots=SnapshotsConfig(dir=str(workdir / "snapshots")),
        store=StoreConfig(path=str(workdir / "bench.db")),
        stats_interval_s=3600,
    )
    pipeline = Pipeline(config)
    quiet = logging.getLogger("birdwatch.runtime.pipeline")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one INFO line per event otherwise
    try:
        pipeline.start()
        stop = threading.Event()
        warmup = min(5.0, opts.seconds / 4)
        time.sleep(warmup)
        crops0, t0 = pipeline.stats.crops, time.monotonic()
        timer = threading.Timer(opts.seconds, stop.set)
        timer.start()
        pipeline.run(stop)
        crops = pipeline.stats.crops - crops0
        elapsed = time.monotonic() - t0
        snap = pipeline.counters()
    finally:
        pipeline.stop()
        quiet.setLevel(level)
    engine = pipeline.engine
    assert engine is not None
    mean_batch = snap["stages"]["classify"]["mean_batch"]  # type: ignore[index]
    # The same work without the pipeline: the engine it ran, on ready tensors at its mean batch.
    batch = max(1, round(mean_batch))
    x = torch.randn(batch, 3, *engine.classifier.size, device=engine.device)
    workers = pipeline.parts.plan.workers if pipeline.parts else 1
    same_work = batch * rate(lambda: engine.probabilities(x), opts.min_s, workers, min_runs=opts.min_runs)
    return {
        "crops_per_s": round(crops / elapsed, 1),
        "mean_batch": mean_batch,
        "backend": engine.runner.backend.value,
        "runs_in": engine.runner.precision,
        "model_only_same_batch": same_work,
        "snapshot": snap,
    }


def bench_model(key: str, opts: BenchOptions, workdir: Path) -> dict[str, Any]:
    spec = MODELS[key]
    network, size = spec.network, spec.size
    weights = workdir / f"{network}_untrained-{key}.pt"
    if not weights.exists():
        save_untrained(network, weights, [f"species {i}" for i in range(spec.classes)], size)
    device = resolve_device(opts.device)

    def fresh() -> Classifier:
        return load_classifier(ModelConfig(file=str(weights), device=str(device)))

    precision = Precision.resolve(device, opts.precision, opts.channels_last)
    plan = WorkerPlan.resolve(device)  # what the pipeline runs with (engine.workers/threads: 0)
    plan.apply()
    workers = plan.workers
    result: dict[str, Any] = {"model": key, "network": network, "input": list(size), "device": str(device)}
    result["precision"] = {"dtype": precision.dtype.value, "channels_last": precision.channels_last}
    result["workers"] = {"workers": workers, "threads": plan.threads or torch.get_num_threads()}
    frames, boxes = synthetic_crops(opts.crops)

    log.info("%s: model-only throughput", key)
    clf = fresh()
    result["model_only"] = {
        str(b): round(model_only(clf, precision, b, opts.min_s, workers, min_runs=opts.min_runs), 1) for b in (1, 8, 32)
    }
    log.info("%s: detector head on the shared backbone, 640x640 frames", key)
    result["detector_only"] = {
        str(b): round(detector_only(fresh(), precision, b, opts.min_s, min_runs=opts.min_runs), 2) for b in (1, 4)
    }

    log.info("%s: batched engine against the naive loop on %d crops", key, opts.crops)
    naive = naive_loop(fresh(), frames, boxes, opts.min_s)
    ours = batched(fresh(), precision, opts.batch_size, frames, boxes, opts.min_s, workers)
    result["naive_vs_batched"] = {
        "crops": opts.crops,
        "naive_crops_per_s": round(naive, 1),
        "batched_crops_per_s": round(ours, 1),
        "ratio": round(ours / naive, 2),
    }
    if opts.tune:
        log.info("%s: tuning precision and memory format", key)
        result["tune"] = tune(fresh, opts.batch_size, opts.min_s, cache_dir_for(workdir / "models"))

    result["backends"] = bench_backends(fresh, weights, precision, plan, opts, workdir)

    log.info("%s: pipeline with %d cameras for %.0f s, engine.backend auto", key, opts.cameras, opts.seconds)
    run = pipeline_run(weights, opts, workdir)
    same_work = run["model_only_same_batch"]
    snap = run["snapshot"]
    result["pipeline"] = {
        "backend": run["backend"],
        "runs_in": run["runs_in"],
        "cameras": opts.cameras,
        "camera_fps": opts.fps,
        "seconds": opts.seconds,
        "crops_per_s": run["crops_per_s"],
        "mean_classify_batch": run["mean_batch"],
        "model_only_same_batch_crops_per_s": round(same_work, 1),
        "ratio": round(run["crops_per_s"] / same_work, 2),
        "frames_read": sum(c["frames_read"] for c in snap["cameras"].values()),
        "frames_dropped": sum(c["frames_dropped"] for c in snap["cameras"].values()),
        "latency_ms": snap["latency_ms"],
        "stages": {
            name: {k: stage[k] for k in ("wait_ms", "batch_ms", "mean_batch", "busy")}
            for name, stage in snap["stages"].items()
        },
    }
    return result


def bench_backends(
    fresh: Callable[[], Classifier],
    weights: Path,
    precision: Precision,
    plan: WorkerPlan,
    opts: BenchOptions,
    workdir: Path,
) -> dict[str, Any]:
    """Every backend installed for the device, measured in this one run: model-only img/s at batch 1, 8
    and 32, detector+motion regions/s, the pipeline's crops/s on it, and each figure's ratio to torch."""
    cache_dir = cache_dir_for(workdir / "models")
    options = RunOptions(
        precision, threads=plan.threads or torch.get_num_threads(), callers=plan.workers, batch_size=opts.batch_size
    )
    rows: dict[str, dict[str, Any]] = {}
    for backend in candidates(fresh().device):
        clf = fresh()
        log.info("%s backend: model only, detector regions, pipeline", backend)
        try:
            runner = build_runner(classifier_graph(clf), backend, cache_dir, options)
        except BackendError as e:
            log.warning("%s: %s; left out of the table", clf.name, e)
            continue
        row: dict[str, Any] = {"runs_in": runner.precision}
        row["model_only"] = {
            str(b): round(model_only(clf, precision, b, opts.min_s, plan.workers, runner, min_runs=opts.min_runs), 1)
            for b in (1, 8, 32)
        }
        head = untrained_head(clf, workdir / f"{clf.name}-untrained-head.pt")
        row["detector_regions_per_s"] = round(
            region_detector(fresh(), head, backend, replace(options, callers=1), opts.min_s, min_runs=opts.min_runs), 2
        )
        run = pipeline_run(weights, opts, workdir, backend)
        row["pipeline_crops_per_s"] = run["crops_per_s"]
        row["pipeline_mean_batch"] = run["mean_batch"]
        row["pipeline_ratio_to_own_model_only"] = round(run["crops_per_s"] / run["model_only_same_batch"], 2)
        rows[backend.value] = row
    torch_row = rows.get(Backend.TORCH.value)
    for row in rows.values():
        if torch_row:
            row["ratio_to_torch"] = {
                **{
                    f"model_only_{b}": _ratio(row["model_only"][b], torch_row["model_only"][b])
                    for b in ("1", "8", "32")
                },
                "detector": _ratio(row["detector_regions_per_s"], torch_row["detector_regions_per_s"]),
                "pipeline": _ratio(row["pipeline_crops_per_s"], torch_row["pipeline_crops_per_s"]),
            }
    return rows


def _ratio(value: float, base: float) -> float:
    return round(value / base, 2) if base else 0.0


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        workdir = opts.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="birdwatch-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        results = [bench_model(key, opts, workdir) for key in opts.models]
    return {
        "note": NOTE,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"birdwatch bench ({report['note']}); torch {report['torch']}, {report['threads']} threads", ""]
    for r in report["results"]:
        p = r["precision"]
        lines.append(
            f"== {r['model']} ({r['network']}, {r['input'][0]} px) on {r['device']}, "
            f"{p['dtype']}{' channels_last' if p['channels_last'] else ''}, "
            f"{r['workers']['workers']} classify worker(s) x {r['workers']['threads']} thread(s)"
        )
        mo = r["model_only"]
        lines.append(f"model only (img/s):  batch 1 {mo['1']:>7}   batch 8 {mo['8']:>7}   batch 32 {mo['32']:>7}")
        do = r["detector_only"]
        lines.append(f"detector, 640x640 (frames/s): batch 1 {do['1']:>6}   batch 4 {do['4']:>6}")
        nb = r["naive_vs_batched"]
        lines.append(
            f"naive infer_image loop:     {nb['naive_crops_per_s']:>7} crops/s   batched engine "
            f"{nb['batched_crops_per_s']:>7} crops/s   ratio {nb['ratio']}x  ({nb['crops']} crops)"
        )
        lines.extend(format_backends(r.get("backends", {})))
        pl = r["pipeline"]
        lines.append(
            f"pipeline on {pl['backend']} ({pl['runs_in']}), "
            f"{pl['cameras']} cameras @ {pl['camera_fps']:g} fps: {pl['crops_per_s']:>7} crops/s "
            f"(mean batch {pl['mean_classify_batch']}); model only at that batch "
            f"{pl['model_only_same_batch_crops_per_s']} -> ratio {pl['ratio']}"
        )
        lat = pl["latency_ms"]
        lines.append(
            f"latency read->event:        p50 {lat['read_to_event']['p50']} ms   p95 {lat['read_to_event']['p95']} ms"
        )
        for name, st in pl["stages"].items():
            lines.append(
                f"  {name:<9} queue wait p50 {st['wait_ms']['p50']} / p95 {st['wait_ms']['p95']} ms, "
                f"batch p50 {st['batch_ms']['p50']} / p95 {st['batch_ms']['p95']} ms, "
                f"mean batch {st['mean_batch']}, busy {100 * st['busy']:.0f}%"
            )
        lines.append(f"frames read {pl['frames_read']}, dropped {pl['frames_dropped']}")
        for row in r.get("tune", []):
            lines.append(
                f"  tune: {row['backend']:<12} {row['precision']:<5} channels_last={row['channels_last']!s:<5} "
                f"{row['workers']} worker(s) x {row['threads']} thread(s), "
                f"batch {row['batch']}: {row['img_per_s']} img/s"
            )
        if r.get("tune"):
            best = r["tune"][0]
            lines.append(
                f"  best here -> engine: {{backend: {best['backend']}, precision: {best['precision']}, "
                f"channels_last: {str(best['channels_last']).lower()}, workers: {best['workers']}, "
                f"threads: {best['threads']}}}"
            )
        lines.append("")
    lines.append(f"peak RSS {report['peak_rss_mb']} MB")
    return "\n".join(lines)


def format_backends(rows: dict[str, dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        f"backends ({REGION} px regions for the detector; x: ratio to torch, in this run)",
        f"  {'backend':<12} {'runs in':<18} {'b1 img/s':>14} {'b8 img/s':>14} {'b32 img/s':>14} "
        f"{'regions/s':>14} {'pipeline crops/s':>18} {'pipe/own':>8}",
    ]
    for name, row in rows.items():
        mo, x = row["model_only"], row.get("ratio_to_torch", {})

        def cell(value: float, ratio: float | None) -> str:
            return f"{value:g}" + (f" ({ratio:.2f}x)" if ratio is not None else "")

        lines.append(
            f"  {name:<12} {row['runs_in']:<18} {cell(mo['1'], x.get('model_only_1')):>14} "
            f"{cell(mo['8'], x.get('model_only_8')):>14} {cell(mo['32'], x.get('model_only_32')):>14} "
            f"{cell(row['detector_regions_per_s'], x.get('detector')):>14} "
            f"{cell(row['pipeline_crops_per_s'], x.get('pipeline')):>18} {row['pipeline_ratio_to_own_model_only']:>8}"
        )
    return lines


def main(opts: BenchOptions, as_json: bool) -> int:
    report = run_bench(opts)
    print(json.dumps(report, indent=2, default=str) if as_json else format_table(report))
    return 0
