"""Training the head on COCO-format bird boxes, with the classifier's backbone frozen.

Only the head's weights learn (AdamW, linear warm-up then cosine decay, gradient clipping); the
backbone runs under `no_grad` in eval mode, so the classifier is exactly the file it was loaded
from and its species scores do not change. Each epoch ends with COCO mAP on the validation set
(when there is one), `last.pt` (the full state, for `--resume`), `head.pt` (the best head so far,
the file the config points at), `history.json` and `training.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from birdwatch.classify.models import Classifier
from birdwatch.errors import BirdwatchError
from birdwatch.locate.checkpoint import HeadInfo
from birdwatch.locate.checkpoint import check_compatible
from birdwatch.locate.checkpoint import read_head
from birdwatch.locate.checkpoint import save_head
from birdwatch.locate.head import DEFAULT_FPN_WIDTH
from birdwatch.locate.head import BirdDetector
from birdwatch.locate.head import build_head
from birdwatch.precision import Dtype
from birdwatch.precision import Precision
from birdwatch.tools.detector.data import BirdBoxes
from birdwatch.tools.detector.data import DetectionDataset
from birdwatch.tools.detector.data import collate
from birdwatch.tools.detector.data import resolve
from birdwatch.tools.detector.evaluate import EvalResult
from birdwatch.tools.detector.evaluate import evaluate

log = logging.getLogger(__name__)

HEAD_FILE = "head.pt"
LAST_FILE = "last.pt"
CURVE_FILE = "training.png"
HISTORY_FILE = "history.json"


@dataclass
class TrainOptions:
    data: Path
    out: Path
    images: Path | None = None
    val: Path | None = None
    val_images: Path | None = None
    epochs: int = 24
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    size: int = 640  # longer side of the training images, pixels
    fpn_width: int = DEFAULT_FPN_WIDTH
    workers: int = 2
    amp: str = "auto"  # auto | off | bf16 | fp16: autocast of the frozen backbone
    resume: bool = False
    seed: int = 0
    empty_ratio: float | None = 0.25
    bird_classes: list[str] | None = None
    time_limit_s: float | None = None  # stop (and save) when training has run this long
    progress: bool = True


@dataclass
class TrainResult:
    head: Path
    last: Path
    curve: Path
    history: list[dict[str, Any]]
    best: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False


def amp_precision(amp: str, device: torch.device) -> Dtype:
    """`--amp`: `off` is fp32; `auto` is birdwatch.precision's rule, except that on a CPU it stays fp32
    (bf16 there only when asked for, as `--amp bf16`)."""
    return Precision.resolve(device, Dtype.FP32 if amp == "off" else amp, cpu_auto=False).dtype


class WarmupCosine:
    """Linear warm-up, then cosine decay to zero at the last step, or at the time limit if that comes first.

    With `--time-limit` the decay follows the clock, so a run cut short by time still ends annealed
    instead of at a high learning rate.
    """

    def __init__(self, total_steps: int, warmup: int, time_limit_s: float | None = None) -> None:
        self.total_steps, self.warmup, self.time_limit_s = total_steps, warmup, time_limit_s
        self.started: float | None = None  # set when this run starts training (the limit is per run)

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.time_limit_s:
            progress = max(progress, self.elapsed() / self.time_limit_s)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(classifier: Classifier, opts: TrainOptions) -> TrainResult:
    device = classifier.device
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    annotations, images = resolve(opts.data, opts.images)
    train_set = BirdBoxes(
        annotations, images, bird_classes=opts.bird_classes, empty_ratio=opts.empty_ratio, seed=opts.seed
    )
    val_set = None
    if opts.val is not None:
        val_annotations, val_images = resolve(opts.val, opts.val_images)
        val_set = BirdBoxes(val_annotations, val_images, bird_classes=opts.bird_classes)
    log.info(
        "training on %d images (%d birds)%s",
        len(train_set),
        train_set.n_boxes,
        f", validating on {len(val_set)} ({val_set.n_boxes} birds)" if val_set else "",
    )
    fill = [255 * m for m in classifier.rgb_stats["mean"]]
    dataset = DetectionDataset(train_set, opts.size, train=True, fill=fill)
    batch_size = min(opts.batch_size, len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=opts.workers,
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(opts.seed),
        persistent_workers=opts.workers > 0,
    )
    precision = amp_precision(opts.amp, device)
    head = build_head(classifier.net, fpn_width=opts.fpn_width, precision=precision).to(device)
    detector = BirdDetector(head, rgb_stats=classifier.rgb_stats, device=device, max_size=opts.size)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = max(1, opts.epochs * len(loader))
    schedule = WarmupCosine(total_steps, warmup=min(100, max(1, total_steps // 10)), time_limit_s=opts.time_limit_s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    info = HeadInfo.for_classifier(classifier, input_size=opts.size, fpn_width=opts.fpn_width)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    start_epoch = 0
    last_path, head_path = out / LAST_FILE, out / HEAD_FILE
    if opts.resume:
        start_epoch, history, best = _resume(last_path, classifier, opts, head, optimizer, scheduler)
        # LambdaLR restores the schedule object's fields: this run's epochs and time limit rule instead.
        schedule.total_steps, schedule.time_limit_s = total_steps, opts.time_limit_s
        log.info("resuming %s after epoch %d", last_path, start_epoch)
    log.info(
        "head: FCOS, FPN width %d, %d trainable parameters; backbone %s frozen, %s; %s",
        opts.fpn_width,
        sum(p.numel() for p in params),
        classifier.network,
        precision,
        device,
    )
    started = time.monotonic()
    schedule.started = started
    stopped_early = False
    for epoch in range(start_epoch, opts.epochs):
        head.train()
        sums: dict[str, float] = {}
        steps = 0
        epoch_started = time.monotonic()
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch", disable=not opts.progress, leave=False
        )
        for batch_images, targets in bar:
            batch, sizes = detector.batch(batch_images)
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            _, losses = head(batch, targets, image_sizes=sizes)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise BirdwatchError(
                    f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr (now {opts.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            steps += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}")
            if opts.time_limit_s is not None and time.monotonic() - started >= opts.time_limit_s:
                stopped_early = True
                break
        bar.close()
        head.eval()
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": steps, "lr": optimizer.param_groups[0]["lr"]}
        row.update({k: v / max(1, steps) for k, v in sums.items()})
        row["train_s"] = round(time.monotonic() - epoch_started, 1)
        result: EvalResult | None = None
        if val_set is not None:
            result = evaluate(detector, val_set, batch_size=opts.batch_size, progress=opts.progress)
            row.update({"mAP": result.map, "mAP50": result.map50})
        history.append(row)
        improved = result is None or not best or (result.map, result.map50) >= (best["mAP"], best["mAP50"])
        info.trained = {
            "epochs": epoch + 1,
            "images": len(train_set),
            "boxes": train_set.n_boxes,
            "data": str(annotations),
            "precision": precision.value,  # a plain str: head files are read with torch.load(weights_only=True)
            **({"val": str(opts.val), "mAP": round(result.map, 4), "mAP50": round(result.map50, 4)} if result else {}),
        }
        if improved:
            best = {
                "epoch": epoch + 1,
                "mAP": result.map if result else None,
                "mAP50": result.map50 if result else None,
            }
            save_head(head_path, head, info)
        save_head(
            last_path,
            head,
            info,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            epoch=epoch + 1,
            history=history,
            best=best,
            options=_options_dict(opts),
        )
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))
        plot_curve(history, out / CURVE_FILE)
        log.info(
            "epoch %d/%d: loss %.3f%s (%.0f s)",
            epoch + 1,
            opts.epochs,
            row.get("loss", float("nan")),
            f", val mAP {result.map:.3f}, mAP@.5 {result.map50:.3f}" if result else "",
            row["train_s"],
        )
        if stopped_early:
            log.info("time limit of %.0f s reached after epoch %d; stopping", opts.time_limit_s, epoch + 1)
            break
    if not history:  # resumed with nothing left to do
        plot_curve(history, out / CURVE_FILE)
    return TrainResult(head_path, last_path, out / CURVE_FILE, history, best, stopped_early)


def _options_dict(opts: TrainOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}


def _resume(
    path: Path,
    classifier: Classifier,
    opts: TrainOptions,
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    if not path.is_file():
        raise BirdwatchError(f"--resume: {path} does not exist; start without --resume")
    payload, info = read_head(path)
    check_compatible(info, classifier, path)
    if (info.input_size, info.fpn_width) != (opts.size, opts.fpn_width):
        raise BirdwatchError(
            f"--resume: {path} was trained with --size {info.input_size} --fpn-width {info.fpn_width}; "
            "use the same or start afresh in another --out folder"
        )
    head.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return int(payload["epoch"]), list(payload.get("history", [])), dict(payload.get("best", {}))


def plot_curve(history: list[dict[str, Any]], path: Path) -> Path:
    """Training losses and validation mAP per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for key, label in (
        ("loss", "total"),
        ("classification", "classification (focal)"),
        ("bbox_regression", "box (GIoU)"),
        ("bbox_ctrness", "centre-ness"),
    ):
        values = [row.get(key, np.nan) for row in history]
        ax_loss.plot(epochs, values, marker="o", ms=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for key, label in (("mAP50", "mAP@.5"), ("mAP", "mAP@[.5:.95]")):
        values = [row.get(key, np.nan) for row in history]
        ax_map.plot(epochs, values, marker="o", ms=3, label=label)
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("validation")
    ax_map.set_ylim(0, 1)
    ax_map.grid(alpha=0.3)
    ax_map.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
