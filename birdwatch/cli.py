"""`birdwatch ...` commands. User-caused problems end as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

import yaml

from birdwatch import __version__
from birdwatch.errors import BirdwatchError

log = logging.getLogger("birdwatch")

DEFAULT_CONFIG = "/etc/birdwatch/config.yaml"
EXIT_USAGE = 2


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    logging.getLogger("birder").setLevel(logging.WARNING)  # its per-file INFO lines are noise here


def cmd_run(args: argparse.Namespace) -> int:
    from birdwatch.config import load_config
    from birdwatch.pipeline import Pipeline

    config = load_config(args.config)
    setup_logging(args.log_level or config.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pipeline = Pipeline(config)
    try:
        pipeline.start()
        return pipeline.run(stop)
    finally:
        pipeline.stop()


def cmd_check_config(args: argparse.Namespace) -> int:
    from birdwatch.config import load_config
    from birdwatch.config import to_redacted_dict

    config = load_config(args.file)
    config.mqtt.password_value()  # a missing password file or variable is a config error too
    if not args.quiet:
        print(yaml.safe_dump(to_redacted_dict(config), sort_keys=False), end="")
    print(f"{args.file}: OK ({len(config.cameras)} camera(s), model {config.model.file or config.model.name})")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from birdwatch.models import pretrained_classifiers
    from birdwatch.models import pretrained_path

    models_dir = _models_dir(args)
    names = pretrained_classifiers()
    if args.filter:
        names = [n for n in names if args.filter in n]
    for name in names:
        here = pretrained_path(name, models_dir).is_file()
        print(f"{'*' if here else ' '} {name}")
    print(f"({len(names)} birder classifiers; * = downloaded in {models_dir})")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from birdwatch.models import pull

    name = args.name
    if name is None:
        if args.config is None:
            raise BirdwatchError("models pull: give a model NAME or --config FILE")
        from birdwatch.config import load_config

        name = load_config(args.config).model.name
    path = pull(name, _models_dir(args), force=args.force, progress=sys.stderr.isatty())
    print(f"{name}: {path}")
    return 0


def _models_dir(args: argparse.Namespace) -> str:
    if args.models_dir:
        return args.models_dir
    if getattr(args, "config", None):
        from birdwatch.config import load_config

        return load_config(args.config).model.models_dir
    return "models"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birdwatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"birdwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch the cameras and publish events")
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 if good, 2 if not")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true", help="print only the verdict")
    check.set_defaults(func=cmd_check_config)

    models = sub.add_parser("models", help="list or fetch birder classifiers")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    mlist = models_sub.add_parser("list", help="birder's pretrained classifiers")
    mlist.add_argument("filter", nargs="?", help="only names containing this")
    mlist.add_argument("--models-dir")
    mlist.add_argument("--config")
    mlist.set_defaults(func=cmd_models_list)
    pull = models_sub.add_parser("pull", help="download pretrained weights (checks SHA-256)")
    pull.add_argument("name", nargs="?", help="e.g. hgnet_v2_b2_danube-delta")
    pull.add_argument("--models-dir", help="where to put it (default: the config's model.models_dir, or ./models)")
    pull.add_argument("--config", help="pull the model this config names, into its models_dir")
    pull.add_argument("--force", action="store_true", help="replace an existing file")
    pull.set_defaults(func=cmd_models_pull)

    from birdwatch.detector.cli import add_parser as add_detector_parser

    add_detector_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        setup_logging("WARNING")
    try:
        return int(args.func(args))
    except BirdwatchError as exc:
        print(f"birdwatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
