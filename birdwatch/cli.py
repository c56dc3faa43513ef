"""`birdwatch ...` commands. User-caused problems end as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from birdwatch import __version__
from birdwatch.errors import BirdwatchError
from birdwatch.types import EventKind

if TYPE_CHECKING:
    from birdwatch.deliver.history import EventStore

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
    from birdwatch.redact import install_log_redaction

    # The config first: a mistake in it is one line at once, not after seconds of importing torch and birder.
    config = load_config(args.config)
    setup_logging(args.log_level or config.log_level)
    install_log_redaction([*config.secrets(), config.mqtt.password_value() or ""])
    from birdwatch.runtime.service import Service

    service = Service(args.config, config)
    service.install_signal_handlers()
    return service.run()


def cmd_record(args: argparse.Namespace) -> int:
    import signal
    import threading

    from birdwatch.config import load_config
    from birdwatch.tools.record import record

    config = load_config(args.config)
    record_cfg = config.record
    for flag, value in (("--every", args.every), ("--budget-mb", args.budget_mb), ("--minutes", args.minutes)):
        if value is not None and value <= 0:
            raise BirdwatchError(f"record {flag}: {value} must be above 0")
    record_cfg.dir = args.out or record_cfg.dir
    record_cfg.every_s = args.every if args.every is not None else record_cfg.every_s
    record_cfg.budget_mb = args.budget_mb if args.budget_mb is not None else record_cfg.budget_mb
    logging.getLogger("birdwatch").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    result = record(config, minutes=args.minutes, stop=stop, progress=sys.stderr.isatty())
    print(
        f"{result.root}: kept {result.kept} of {result.offered} frames read ({result.similar} like one kept "
        f"recently, {result.evicted} removed for the budget); {result.frames} frames, {result.megabytes:.0f} MB"
    )
    labels = result.root.parent / "labels"
    command = ["birdwatch", "detector", "label", "--config", args.config, "--recording", str(result.root)]
    print(f"next: `{shlex.join([*command, '--out', str(labels)])}`")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from birdwatch.config import load_config
    from birdwatch.config import to_redacted_dict
    from birdwatch.errors import ConfigError
    from birdwatch.redact import redact_url

    config = load_config(args.file)
    config.mqtt.password_value()  # a missing password file or variable is a config error too
    from birdwatch.classify.models import class_names_of
    from birdwatch.classify.models import classifier_weights
    from birdwatch.decide.species import check_species_lists
    from birdwatch.weights import WeightsSource

    # What only the weights can tell, read as `run` would but without building the network:
    # that they are there (classifier_weights' own error if not), and that events.allow/block name their species.
    fetch_from = WeightsSource.of_model(config.model).pending()
    if fetch_from is None:
        path, _, model_name = classifier_weights(config.model)
        try:
            check_species_lists(config.events, class_names_of(path), model_name)
        except ConfigError as exc:
            raise ConfigError(f"{args.file}: {exc}") from None
    if not args.quiet:
        print(yaml.safe_dump(to_redacted_dict(config), sort_keys=False), end="")
    print(f"{args.file}: OK ({len(config.cameras)} camera(s), model {config.model.file or config.model.name})")
    if fetch_from is not None:
        print(
            f"note: the weights are not here yet; `birdwatch run` fetches them on its first start from "
            f"{redact_url(fetch_from)} (events.allow/block are checked against their species then)"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from birdwatch.tools.doctor import run_doctor

    logging.getLogger("birdwatch").setLevel(logging.ERROR)  # the checks print what the warnings would say
    return run_doctor(args.config, seconds=args.seconds, unit=args.unit, out=lambda line: print(line, flush=True))


def cmd_demo(args: argparse.Namespace) -> int:
    from birdwatch.tools.demo import report
    from birdwatch.tools.demo import run_demo

    logging.getLogger().setLevel(logging.INFO)  # the pipeline's own log is the show
    workdir = Path(args.workdir)
    visits = run_demo(workdir, config_path=args.config, model_file=args.model_file)
    print(report(visits, workdir))
    return 0 if visits else 1


def cmd_models_list(args: argparse.Namespace) -> int:
    from birdwatch.weights import CLASSIFIER
    from birdwatch.weights import DETECTOR
    from birdwatch.weights import pretrained_names
    from birdwatch.weights import pretrained_path

    models_dir = _models_dir(args)
    kinds = (
        ("classifiers", pretrained_names(CLASSIFIER)),
        ("detectors (for teacher.name)", pretrained_names(DETECTOR)),
    )
    for kind, names in kinds:
        if args.filter:
            names = [n for n in names if args.filter in n]
        for name in names:
            here = pretrained_path(name, models_dir).is_file()
            print(f"{'*' if here else ' '} {name}")
        print(f"({len(names)} birder {kind}; * = downloaded in {models_dir})")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from birdwatch.weights import pull

    if args.config is not None and not args.name:
        return _pull_what_a_start_fetches(args)
    if not args.name:
        raise BirdwatchError("models pull: give a model NAME or --config FILE")
    mirror = args.mirror
    if args.config is not None:
        from birdwatch.config import load_config

        mirror = mirror or load_config(args.config).model.mirror
    path = pull(args.name, _models_dir(args), force=args.force, progress=sys.stderr.isatty(), mirror=mirror)
    print(f"{args.name}: {path}")
    return 0


def _pull_what_a_start_fetches(args: argparse.Namespace) -> int:
    """`models pull --config`: exactly the weights `birdwatch run` would fetch, from where it would."""
    import dataclasses

    from birdwatch.config import load_config
    from birdwatch.weights import weights_to_fetch

    config = load_config(args.config)
    if args.models_dir:
        config.model.models_dir = args.models_dir
    if args.mirror:
        config.model.mirror = args.mirror
    config.model = dataclasses.replace(config.model, download="auto")  # asked for by hand: fetch, whatever a start may
    for source in weights_to_fetch(config):
        source.ensure(progress=sys.stderr.isatty(), force=args.force)  # forced: replaced once the new one checks
        print(f"{source.label}: {source.checked()}")
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    """Export (and on a GPU, build) what a start will run, ahead of time; on a Jetson this takes minutes."""
    import dataclasses
    import logging
    import time

    logging.getLogger("birdwatch").setLevel(logging.INFO)  # what is made, and how long it took
    from birdwatch.config import Config
    from birdwatch.config import ModelConfig
    from birdwatch.config import load_config
    from birdwatch.runtime.build import prepare_backends

    if args.config is not None:
        config = load_config(args.config)
        if args.name:
            config.model = dataclasses.replace(config.model, name=args.name, file=None)
    elif args.name:
        config = Config(cameras=[], model=ModelConfig(name=args.name, models_dir=_models_dir(args)))
    else:
        raise BirdwatchError("models export: give a model NAME or --config FILE")
    if args.backend:
        config.engine = dataclasses.replace(config.engine, backend=args.backend)
    if args.models_dir:
        config.model = dataclasses.replace(config.model, models_dir=args.models_dir)
    started = time.monotonic()
    for part in prepare_backends(config):
        print(f"{part.name}: {part.backend} ({part.precision})")
    print(f"ready in {time.monotonic() - started:.1f} s; kept in {Path(config.model.models_dir) / 'compiled'}")
    return 0


def _open_store(args: argparse.Namespace) -> EventStore:
    from birdwatch.deliver.history import EventStore

    if args.db:
        return EventStore(args.db, readonly=True)
    from birdwatch.config import load_config

    return EventStore(load_config(args.config).store.path, readonly=True)


def cmd_events(args: argparse.Namespace) -> int:
    from birdwatch.types import iso_time

    store = _open_store(args)
    try:
        rows = store.recent(camera=args.camera, species=args.species, kind=args.kind, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(row.payload)
        return 0
    if not rows:
        print("no events" + (" matching the filters" if args.camera or args.species or args.kind else " yet"))
        return 0
    width = max(len(r.data["species"]) for r in rows)
    for row in rows:
        e = row.data
        print(
            f"{iso_time(e['ts'])[:19].replace('T', ' ')}  {e['camera']:<10} {e['kind']:<6} "
            f"{e['species']:<{width}}  {e['score']:.2f}  visit {e['visit_id'][:8]}  {e['frames']:>4} frames  "
            f"{e['duration_s']:>6.1f} s{'' if row.sent_ts else '  (not delivered yet)'}"
        )
    return 0


def cmd_export_visits(args: argparse.Namespace) -> int:
    import contextlib
    import sqlite3

    from birdwatch.config import LocationConfig
    from birdwatch.config import load_config
    from birdwatch.deliver import export
    from birdwatch.deliver.history import EventStore

    if not args.csv and not args.ebird:
        raise BirdwatchError("say where to write: --csv FILE, --ebird FILE, or both")
    config = None if args.db else load_config(args.config)
    location = config.location if config else LocationConfig()
    path = Path(config.store.path) if config else Path(args.db)
    EventStore(path, readonly=True).close()  # one clear line for a history that is missing, damaged or too old
    with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        visits = [v for v in export.visits_since(db, args.days) if not args.camera or v.camera == args.camera]
        for out, write in ((args.csv, "csv"), (args.ebird, "ebird")):
            if out is None:
                continue
            try:
                with Path(out).open("w", newline="", encoding="utf-8") as f:
                    n = (
                        export.write_visits_csv(db, visits, f)
                        if write == "csv"
                        else export.write_ebird_csv(visits, location, f)
                    )
            except OSError as exc:
                raise BirdwatchError(f"cannot write {out} ({exc.strerror or exc})") from None
            print(f"{out}: {n} row(s)")
    return 0


def cmd_export_corrections(args: argparse.Namespace) -> int:
    import contextlib
    import sqlite3

    from birdwatch.config import load_config
    from birdwatch.deliver import embeddings
    from birdwatch.deliver import export
    from birdwatch.deliver.history import EventStore
    from birdwatch.tools import memory

    path = Path(args.db) if args.db else Path(load_config(args.config).store.path)
    EventStore(path, readonly=True).close()  # one clear line for a history that is missing, damaged or too old
    with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        try:
            crops, species = export.write_corrections(db, Path(args.out))
            # Files beside the species folders: birder's image folder reads every folder as a class.
            vectors, dim = memory.write(embeddings.remembered(db), Path(args.out))
        except OSError as exc:
            raise BirdwatchError(f"cannot write into {args.out} ({exc.strerror or exc})") from None
    print(f"{args.out}: {crops} crop(s) of {species} species, one folder per species")
    print(f"{args.out}/embeddings.npy: {vectors} embedding(s) of length {dim}, labelled in labels.csv")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from birdwatch.web.alone import serve_history

    setup_logging("INFO")
    return serve_history(args.config, bind=args.bind, port=args.port)


def cmd_stats(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        rows = store.species_per_day(args.days, camera=args.camera)
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"day": d, "species": s, "visits": n} for d, s, n in rows], ensure_ascii=False))
        return 0
    if not rows:
        print(f"no visits in the last {args.days} day(s)")
        return 0
    width = max(len("species"), *(len(s) for _, s, _ in rows))
    print(f"{'day':<10}  {'species':<{width}}  visits")
    last_day = None
    for day, species, n in rows:
        print(f"{day if day != last_day else '':<10}  {species:<{width}}  {n:>6}")
        last_day = day
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from birdwatch.tools.bench import BenchOptions
    from birdwatch.tools.bench import main as bench_main
    from birdwatch.tools.specs import MODELS

    logging.getLogger("birdwatch").setLevel(logging.INFO)  # progress; main() set up WARNING for the rest
    models = list(MODELS) if args.model == "all" else [args.model]
    opts = BenchOptions(
        models=models,
        cameras=args.cameras,
        seconds=args.seconds,
        fps=args.fps,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        crops=args.crops,
        tune=args.tune,
        workdir=Path(args.workdir) if args.workdir else None,
        min_s=0.2 if args.quick else 2.0,
        min_runs=1 if args.quick else 3,
    )
    return bench_main(opts, args.json)


def _models_dir(args: argparse.Namespace) -> str:
    if args.models_dir:
        return str(args.models_dir)
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

    rec = sub.add_parser("record", help="keep frames where something moved, for `detector label` (no model)")
    rec.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    rec.add_argument("--out", help="the recording folder (default: the config's record.dir)")
    rec.add_argument("--minutes", type=float, help="stop after this long (default: until Ctrl-C or SIGTERM)")
    rec.add_argument("--every", type=float, help="seconds between two kept frames of a camera (record.every_s)")
    rec.add_argument("--budget-mb", type=float, help="disk budget of the recording (record.budget_mb)")
    rec.set_defaults(func=cmd_record)

    check = sub.add_parser("check-config", help="validate a config file; exit 0 if good, 2 if not")
    check.add_argument("file")
    check.add_argument("--quiet", "-q", action="store_true", help="print only the verdict")
    check.set_defaults(func=cmd_check_config)

    doctor = sub.add_parser("doctor", help="check a setup end to end: one line per check, what to do if it fails")
    doctor.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    doctor.add_argument("--seconds", type=float, default=3.0, help="how long to read each camera (default 3)")
    doctor.add_argument("--unit", help="the systemd unit to check the user of (default: the installed one)")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="the whole pipeline on a made-up feeder clip, no camera or broker needed")
    demo.add_argument("--config", "-c", help="take the model (and engine) from this config (default: danube-delta)")
    demo.add_argument("--model-file", help="a local birder .pt file instead")
    demo.add_argument("--workdir", default="demo", help="where the clip, history and snapshots go (default ./demo)")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="measure throughput and latency on this machine (offline)")
    bench.add_argument("--model", choices=["danube-delta", "eu-common", "all"], default="danube-delta")
    bench.add_argument("--cameras", type=int, default=4, help="synthetic file cameras in the pipeline run")
    bench.add_argument("--fps", type=float, default=25.0, help="frame rate of each synthetic camera")
    bench.add_argument("--seconds", type=float, default=30.0, help="length of the pipeline run")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--crops", type=int, default=64, help="crops for the batched-against-naive comparison")
    bench.add_argument("--tune", action="store_true", help="also measure every precision and memory format")
    bench.add_argument("--workdir", help="keep generated weights and clips here (default: a temp dir)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--quick", action="store_true", help="short measurements (a smoke test, not figures)")
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="list or fetch birder classifiers and detectors")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    mlist = models_sub.add_parser("list", help="birder's pretrained classifiers and detectors")
    mlist.add_argument("filter", nargs="?", help="only names containing this")
    mlist.add_argument("--models-dir")
    mlist.add_argument("--config")
    mlist.set_defaults(func=cmd_models_list)
    pull = models_sub.add_parser("pull", help="download pretrained weights (checks SHA-256)")
    pull.add_argument("name", nargs="?", help="e.g. hgnet_v2_b2_danube-delta")
    pull.add_argument("--models-dir", help="where to put it (default: the config's model.models_dir, or ./models)")
    pull.add_argument(
        "--config", help="fetch what `birdwatch run` of this config fetches (its model, and a teacher it runs)"
    )
    pull.add_argument("--force", action="store_true", help="replace an existing file")
    pull.add_argument(
        "--mirror", help="fetch <name>.pt from this base URL instead (default: the config's model.mirror)"
    )
    pull.set_defaults(func=cmd_models_pull)
    export = models_sub.add_parser(
        "export", help="export the model (and detector) for engine.backend now, as the first start would"
    )
    export.add_argument("name", nargs="?", help="a pulled pretrained name, e.g. hgnet_v2_b2_danube-delta")
    export.add_argument("--config", help="export what this config runs (its model, detector and engine)")
    export.add_argument("--models-dir", help="where the weights are and the exports go (default: ./models)")
    export.add_argument(
        "--backend", choices=["auto", "torch", "onnxruntime", "openvino", "tensorrt"], help="default: engine.backend"
    )
    export.set_defaults(func=cmd_models_export)

    def history_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="its store.path names the database")
        p.add_argument("--db", help="the SQLite file itself, instead of --config")
        p.add_argument("--camera", help="only this camera")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    events = sub.add_parser("events", help="recent visit events from the history, newest first")
    history_args(events)
    events.add_argument("--species", help="only this species (exact name)")
    events.add_argument("--kind", choices=[kind.value for kind in EventKind])
    events.add_argument("--limit", "-n", type=_positive, default=20, help="at most this many (default 20)")
    events.set_defaults(func=cmd_events)

    stats = sub.add_parser("stats", help="visits per species per day")
    history_args(stats)
    stats.add_argument("--days", type=_positive, default=7, help="this many days up to today (default 7)")
    stats.set_defaults(func=cmd_stats)

    export = sub.add_parser("export", help="the history's visits as CSV, or as eBird's Record Format")
    export_sub = export.add_subparsers(dest="what", required=True)
    visits = export_sub.add_parser("visits", help="one row per visit (--csv), or one eBird checklist per camera a day")
    history_args(visits)
    visits.add_argument("--csv", type=Path, help="write every visit, with its latest event's fields, to this file")
    visits.add_argument("--ebird", type=Path, help="write eBird Record Format (no header) to this file")
    visits.add_argument("--days", type=_positive, help="only the last this many days (default: all)")
    visits.set_defaults(func=cmd_export_visits)
    fixes = export_sub.add_parser(
        "corrections", help="the crops people named, one folder per species (birder's layout)"
    )
    history_args(fixes)
    fixes.add_argument("--out", type=Path, required=True, help="folder to write into (created)")
    fixes.set_defaults(func=cmd_export_corrections)

    web = sub.add_parser("web", help="serve the page over the history alone (no cameras, no model run)")
    web.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    web.add_argument("--bind", help="address to listen on (default: web.bind)")
    web.add_argument("--port", type=int, help="port to listen on (default: web.port)")
    web.set_defaults(func=cmd_web)

    from birdwatch.tools import memory
    from birdwatch.tools.detector.cli import add_learn_parser
    from birdwatch.tools.detector.cli import add_parser as add_detector_parser

    memory.add_parser(sub, history_args)

    add_detector_parser(sub)
    add_learn_parser(sub)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; expected at least 1")
    return value


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
