"""`birdwatch memory`: see the feeder memory, forget part of it, or export it for a linear probe.

The memory is the visits people corrected or confirmed on the page, with their best crop's embedding
(decide/memory.py says how it re-ranks; deliver/embeddings.py how it is kept). Clearing forgets the visits, not
the names people gave them; the running service reads the memory again within a second.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from birdwatch.deliver import embeddings
from birdwatch.deliver.history import EventStore
from birdwatch.errors import BirdwatchError


def add_parser(subparsers: Any, history_args: Any) -> None:
    """Register `birdwatch memory show|clear|export`; `history_args` adds --config/--db/--camera/--json."""
    memory = subparsers.add_parser("memory", help="the feeder memory the page's corrections build: show, clear, export")
    sub = memory.add_subparsers(dest="memory_command", required=True)
    show = sub.add_parser("show", help="what it remembers, per camera and species")
    history_args(show)
    show.add_argument("--species", help="only this species (exact name)")
    show.set_defaults(func=cmd_show)
    clear = sub.add_parser("clear", help="forget visits (their corrected names stay); --camera, --species or --all")
    history_args(clear)
    clear.add_argument("--species", help="only this species (exact name)")
    clear.add_argument("--all", action="store_true", help="every camera and species")
    clear.set_defaults(func=cmd_clear)
    export = sub.add_parser("export", help="labels.csv and embeddings.npy, to fit a linear probe offline")
    history_args(export)
    export.add_argument("--species", help="only this species (exact name)")
    export.add_argument("--out", type=Path, required=True, help="folder to write into (created)")
    export.set_defaults(func=cmd_export)


def cmd_show(args: argparse.Namespace) -> int:
    with _history(args) as db:
        rows = embeddings.remembered(db, args.camera, args.species)
    per = Counter((r.camera, r.species, r.model) for r in rows)
    if args.json:
        listed = [{"camera": c, "species": s, "model": m, "visits": n} for (c, s, m), n in sorted(per.items())]
        print(json.dumps(listed))
        return 0
    if not rows:
        print("the memory is empty: correct or confirm visits on the page (Review), and they are remembered")
        return 0
    width = max(len(s) for _, s, _ in per)
    for (camera, species, model), n in sorted(per.items()):
        print(f"{camera:<12} {species:<{width}}  {n:>5} visit(s)  {model}")
    print(f"{len(rows)} visit(s) of {len({s for _, s, _ in per})} species on {len({c for c, _, _ in per})} camera(s)")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    if not (args.all or args.camera or args.species):
        raise BirdwatchError("say what to forget: --camera NAME, --species NAME, both, or --all")
    with _history(args, write=True) as db:
        n = embeddings.forget(db, args.camera, args.species)
    print(f"forgot {n} visit(s); their corrected names stay")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _history(args) as db:
        rows = embeddings.remembered(db, args.camera, args.species)
    try:
        n, dim = write(rows, args.out)
    except OSError as exc:
        raise BirdwatchError(f"cannot write into {args.out} ({exc.strerror or exc})") from None
    print(f"{args.out}: {n} embedding(s) of length {dim} (embeddings.npy), their labels in labels.csv")
    return 0


def write(rows: list[embeddings.Remembered], out: Path) -> tuple[int, int]:
    """labels.csv (row i: camera, species, visit, correction, model) and embeddings.npy (row i, float32). Rows of
    the most common weights only: another model's embeddings do not share their space. Returns (rows, length)."""
    out.mkdir(parents=True, exist_ok=True)
    model = Counter(r.model for r in rows).most_common(1)[0][0] if rows else ""
    dims = Counter(len(r.vector) // 2 for r in rows if r.model == model)
    dim = dims.most_common(1)[0][0] if dims else 0
    kept = [(r, v) for r in rows if r.model == model and (v := r.vector_of(dim)) is not None]
    matrix = np.stack([v for _, v in kept]) if kept else np.zeros((0, dim), np.float32)
    np.save(out / "embeddings.npy", matrix)
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(["camera", "species", "visit_id", "correction_id", "model"])
        table.writerows([r.camera, r.species, r.visit_id, r.correction_id, r.model] for r, _ in kept)
    return len(kept), dim


@contextlib.contextmanager
def _history(args: argparse.Namespace, write: bool = False) -> Iterator[sqlite3.Connection]:
    """The history named by --db or the config's store.path; one clear line when it is missing, damaged or old."""
    if args.db:
        path = Path(args.db)
    else:
        from birdwatch.config import load_config

        path = Path(load_config(args.config).store.path)
    EventStore(path, readonly=True).close()
    mode = "rw" if write else "ro"
    db = sqlite3.connect(path.resolve().as_uri() + f"?mode={mode}", uri=True, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")  # the service may be writing
        yield db
    except sqlite3.Error as exc:
        raise BirdwatchError(f"{path}: {exc}") from None
    finally:
        db.close()
