"""`birdwatch detector train | eval | convert-cub | convert-voc | make-synthetic`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from birdwatch.errors import BirdwatchError

log = logging.getLogger("birdwatch")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the classifier whose backbone carries the head (one of)")
    group.add_argument("--config", "-c", help="a birdwatch config: its model section")
    group.add_argument("--model-file", help="a birder classifier .pt file")
    group.add_argument("--model", help="a birder pretrained classifier name (in --models-dir)")
    parser.add_argument("--network", help="birder network of --model-file when its name does not start with it")
    parser.add_argument("--models-dir", default=None, help="where pretrained weights are (default: models)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the config's, or auto)")


def _classifier(args: argparse.Namespace) -> Any:
    from birdwatch.classify.models import load_classifier
    from birdwatch.config import ModelConfig
    from birdwatch.config import load_config

    given = [n for n in ("config", "model_file", "model") if getattr(args, n)]
    if len(given) != 1:
        raise BirdwatchError("give the classifier with exactly one of --config, --model-file or --model")
    if args.config:
        cfg = load_config(args.config).model
    elif args.model_file:
        cfg = ModelConfig(file=args.model_file, network=args.network)
    else:
        cfg = ModelConfig(name=args.model)
    if args.models_dir:
        cfg.models_dir = args.models_dir
    if args.device:
        cfg.device = args.device
    return load_classifier(cfg)


def cmd_train(args: argparse.Namespace) -> int:
    from birdwatch.tools.detector.train import TrainOptions
    from birdwatch.tools.detector.train import train

    logging.getLogger("birdwatch").setLevel(logging.INFO)
    classifier = _classifier(args)
    opts = TrainOptions(
        data=Path(args.data),
        images=Path(args.images) if args.images else None,
        val=Path(args.val) if args.val else None,
        val_images=Path(args.val_images) if args.val_images else None,
        out=Path(args.out),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        size=args.size,
        fpn_width=args.fpn_width,
        workers=args.workers,
        amp=args.amp,
        resume=args.resume,
        seed=args.seed,
        empty_ratio=None if args.empty_ratio < 0 else args.empty_ratio,
        bird_classes=args.bird_classes,
        time_limit_s=args.time_limit * 60 if args.time_limit else None,
        progress=sys.stderr.isatty() and not args.no_progress,
    )
    result = train(classifier, opts)
    best = result.best
    score = (
        f" (val mAP {best['mAP']:.3f}, mAP@.5 {best['mAP50']:.3f}, epoch {best['epoch']})"
        if best.get("mAP") is not None
        else ""
    )
    print(f"head: {result.head}{score}")
    print(f"resume state: {result.last}")
    print(f"training curve: {result.curve}")
    print(f"use it: set `localiser: detector+motion` and `detector: {{file: {result.head}}}` in the config")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from birdwatch.locate.checkpoint import load_head
    from birdwatch.locate.head import BirdDetector
    from birdwatch.precision import Precision
    from birdwatch.tools.detector.data import BirdBoxes
    from birdwatch.tools.detector.data import resolve
    from birdwatch.tools.detector.evaluate import evaluate
    from birdwatch.tools.detector.evaluate import plot_pr

    classifier = _classifier(args)
    precision = Precision.resolve(classifier.device, args.precision)
    head, info = load_head(args.head, classifier, precision=precision.dtype)
    detector = BirdDetector(
        head, rgb_stats=classifier.rgb_stats, device=classifier.device, max_size=args.size or info.input_size
    )
    annotations, images = resolve(args.data, args.images)
    dataset = BirdBoxes(annotations, images, bird_classes=args.bird_classes)
    result = evaluate(detector, dataset, batch_size=args.batch_size, progress=sys.stderr.isatty())
    out = Path(args.out) if args.out else Path(args.head).parent
    pr = plot_pr(
        result, out / "pr.png", title=f"{Path(args.head).name} on {annotations.parent.name}/{annotations.name}"
    )
    metrics = {**result.to_dict(), "head": str(args.head), "data": str(annotations), "size": detector.max_size}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(result.summary)
    print(
        f"mAP@[.5:.95] {result.map:.4f}  mAP@.5 {result.map50:.4f}  ({result.n_images} images, {result.n_boxes} birds, "
        f"{1000 * result.seconds / max(1, result.n_images):.0f} ms/image)"
    )
    print(f"precision-recall plot: {pr}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from birdwatch.classify.models import resolve_device
    from birdwatch.config import load_config
    from birdwatch.locate.teacher import load_teacher
    from birdwatch.tools.detector.label import LabelOptions
    from birdwatch.tools.detector.label import label

    logging.getLogger("birdwatch").setLevel(logging.INFO)
    # The options first: a wrong one is one line at once, not after the teacher has loaded.
    options = LabelOptions(
        uncertain_floor=args.uncertain_floor,
        batch_size=args.batch_size,
        whole_frames=args.whole_frames,
        progress=sys.stderr.isatty() and not args.no_progress,
    )
    config = load_config(args.config)
    recording = Path(args.recording or config.record.dir)
    teacher = load_teacher(config.teacher, config.model, resolve_device(args.device or config.model.device))
    result = label(teacher, recording, Path(args.out), config.detector, options)
    print(
        f"{result.frames} frames labelled by {teacher.name} ({result.labelled_now} now); "
        + ", ".join(
            f"{split}: {result.images[split]} images, {result.birds[split]} birds, {result.negatives[split]} without"
            for split in ("train", "val", "uncertain")
        )
        + f"; {result.not_birds} other animals"
    )
    print(f"contact sheet: {result.sheet}")
    print(f"next: `birdwatch detector train --config {args.config} --data {args.out}/train --val {args.out}/val ...`")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from birdwatch.config import load_config
    from birdwatch.tools.learn import LearnOptions
    from birdwatch.tools.learn import learn

    logging.getLogger("birdwatch").setLevel(logging.INFO)
    config = load_config(args.config)
    options = LearnOptions(
        work=Path(args.work or Path(config.model.models_dir) / "learn"),
        recording=Path(args.recording) if args.recording else None,
        record_minutes=args.record_minutes,
        train_minutes=args.train_minutes,
        epochs=args.epochs,
        uncertain_floor=args.uncertain_floor,
        adopt=not args.no_adopt,
        head=Path(args.head) if args.head else None,
        adopted_marker=Path(args.adopted_marker) if args.adopted_marker else None,
        progress=sys.stderr.isatty() and not args.no_progress,
    )
    result = learn(config, options)
    print(
        f"new head: held-out mAP@.5 {result.new.map50:.3f} (mAP {result.new.map:.3f}) on "
        f"{result.new.n_images} cuts with {result.new.n_boxes} birds; teacher 1.000 on its own labels"
    )
    if result.cost_ms:
        print(
            f"cost per frame: head {result.cost_ms['head']:.0f} ms, teacher {result.cost_ms['teacher']:.0f} ms "
            f"({result.cost_ms['ratio']:.2f} of the teacher's)"
        )
    print(f"{'adopted' if result.adopted else 'kept the head in use'}: {result.reason}")
    if result.adopted and (config.localiser != "detector+motion" or config.detector.file != str(result.head)):
        print(f"use it: set `localiser: detector+motion` and `detector: {{file: {result.head}}}` in {args.config}")
    elif result.adopted:
        print("a running service takes it at its next reload: `systemctl reload birdwatch`")
    return 0


def cmd_convert_cub(args: argparse.Namespace) -> int:
    from birdwatch.tools.detector.data import convert_cub

    for split, path in convert_cub(args.root, args.out).items():
        print(f"{split}: {path}")
    return 0


def cmd_convert_voc(args: argparse.Namespace) -> int:
    from birdwatch.tools.detector.data import convert_voc

    for split, path in convert_voc(args.root, args.out, classes=args.classes, keep_empty=args.keep_empty).items():
        print(f"{split}: {path}")
    return 0


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from birdwatch.tools.synthetic import EASY_STILLS
    from birdwatch.tools.synthetic import write_coco_dataset

    kwargs = dict(EASY_STILLS) if args.easy else {}
    for split, n, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        if n > 0:
            path = write_coco_dataset(Path(args.out) / split, n, args.width, args.height, seed=seed, **kwargs)
            print(f"{split}: {path} ({n} images)")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `birdwatch detector ...` on the top-level parser's subcommands."""
    detector = subparsers.add_parser("detector", help="train, evaluate and feed the bird detection head")
    sub = detector.add_subparsers(dest="detector_command", required=True)

    tr = sub.add_parser("train", help="train a head on COCO-format bird boxes, backbone frozen")
    tr.add_argument(
        "--data", required=True, help="training set: a folder with annotations.json + images/, or a COCO .json"
    )
    tr.add_argument("--images", help="images folder when --data is a .json elsewhere")
    tr.add_argument("--val", help="validation set (as --data): mAP each epoch, best head kept")
    tr.add_argument("--val-images")
    tr.add_argument("--out", required=True, help="folder for head.pt, last.pt, training.png, history.json")
    _add_model_args(tr)
    tr.add_argument("--epochs", type=int, default=24)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    tr.add_argument("--size", type=int, default=640, help="longer side of training images, pixels (default 640)")
    tr.add_argument("--fpn-width", type=int, default=64, help="channels of the FPN and head (multiple of 32)")
    tr.add_argument(
        "--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)), help="data loader processes"
    )
    tr.add_argument(
        "--amp",
        choices=["auto", "off", "bf16", "fp16"],
        default="auto",
        help="autocast of the backbone (auto: on CUDA)",
    )
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument(
        "--empty-ratio", type=float, default=0.25, help="images without birds kept per image with one (-1: all)"
    )
    tr.add_argument("--bird-classes", nargs="+", help="categories that are birds (default: 'bird', or the only one)")
    tr.add_argument("--time-limit", type=float, help="stop after this many minutes (the head so far is saved)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="COCO mAP of a head (pycocotools) and a precision-recall plot")
    ev.add_argument("--head", required=True, help="head.pt from `detector train`")
    ev.add_argument("--data", required=True, help="a folder with annotations.json + images/, or a COCO .json")
    ev.add_argument("--images")
    _add_model_args(ev)
    ev.add_argument("--size", type=int, help="longer side the images are resized to (default: the head's)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    ev.add_argument("--bird-classes", nargs="+")
    ev.add_argument("--out", help="folder for pr.png and metrics.json (default: the head's folder)")
    ev.set_defaults(func=cmd_eval)

    lab = sub.add_parser(
        "label", help="the teacher labels a recording: COCO train/val, uncertain set aside, a contact sheet"
    )
    lab.add_argument(
        "--config", "-c", required=True, help="a birdwatch config: its teacher, model and detector sections"
    )
    lab.add_argument("--recording", help="what `birdwatch record` kept (default: the config's record.dir)")
    lab.add_argument(
        "--out", required=True, help="folder for train/, val/, uncertain/, teacher.jsonl, contact-sheet.png"
    )
    lab.add_argument("--batch-size", type=int, default=4, help="frames the teacher labels at once (default 4)")
    _add_uncertain_floor(lab)
    lab.add_argument(
        "--whole-frames", action="store_true", help="label whole frames (for localiser: detector), not motion regions"
    )
    lab.add_argument("--device", help="auto, cpu, cuda (default: model.device)")
    lab.add_argument("--no-progress", action="store_true")
    lab.set_defaults(func=cmd_label)

    cub = sub.add_parser("convert-cub", help="CUB-200-2011 boxes to COCO: OUT/train, OUT/val")
    cub.add_argument("root", help="the CUB_200_2011 folder (images.txt, bounding_boxes.txt, images/)")
    cub.add_argument("out")
    cub.set_defaults(func=cmd_convert_cub)

    voc = sub.add_parser("convert-voc", help="Pascal VOC boxes to COCO (birds only): OUT/train, OUT/val")
    voc.add_argument("root", help="a VOC20xx folder (Annotations/, JPEGImages/, ImageSets/Main/)")
    voc.add_argument("out")
    voc.add_argument("--classes", nargs="+", default=["bird"], help="VOC classes that become bird (default: bird)")
    voc.add_argument("--keep-empty", action="store_true", help="keep images without a bird, as negatives")
    voc.set_defaults(func=cmd_convert_voc)

    syn = sub.add_parser("make-synthetic", help="synthetic feeder scenes with bird boxes, COCO format")
    syn.add_argument("out")
    syn.add_argument("--train", type=int, default=500, help="training images (default 500)")
    syn.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    syn.add_argument("--width", type=int, default=640)
    syn.add_argument("--height", type=int, default=480)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--easy", action="store_true", help="larger birds, little clutter (the tests' setting)")
    syn.set_defaults(func=cmd_make_synthetic)


def _add_uncertain_floor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--uncertain-floor",
        type=float,
        help="bird boxes the teacher scores between this and teacher.label_score are set aside "
        "(default: teacher.score_threshold, or label_score if lower: what the teacher would not tell is background)",
    )


def add_learn_parser(subparsers: Any) -> None:
    """`birdwatch learn`: record -> label -> train -> evaluate -> adopt."""
    learn = subparsers.add_parser("learn", help="the head learns your feeder from the teacher; adopted only if better")
    learn.add_argument("--config", "-c", default="/etc/birdwatch/config.yaml", help="YAML config")
    learn.add_argument("--recording", help="the recording to learn from (default: the config's record.dir)")
    learn.add_argument("--work", help="labels, runs and learn.json (default: <models_dir>/learn)")
    learn.add_argument("--record-minutes", type=float, help="record this long first (without birdwatch running)")
    learn.add_argument("--train-minutes", type=float, default=30.0, help="training time limit (default 30)")
    learn.add_argument("--epochs", type=int, default=24)
    learn.add_argument(
        "--head", help="where the adopted head goes (default: detector.file, or <models_dir>/feeder-head.pt)"
    )
    _add_uncertain_floor(learn)
    learn.add_argument("--no-adopt", action="store_true", help="train and judge, but leave the head in use")
    learn.add_argument(
        "--adopted-marker",
        help="a file written only when a head was adopted (removed at the start), for a unit to reload the "
        "service on (default: <work>/adopted)",
    )
    learn.add_argument("--no-progress", action="store_true")
    learn.set_defaults(func=cmd_learn)
