"""What the page will read, on years of history: a real SQLite history of `--visits` visits over `--days`
days (three events each: new, update, end; written through EventStore.add_many, the service's own insert
and visit-book code, in one transaction), then each query timed `--runs` times on its own read-only
connection, as the page will open it.

    .venv/bin/python bench/history_queries.py --visits 100000 --days 730 --db /tmp/history.db

Reports p50 and p95 in milliseconds per query: Today (one day's visits), Species (the gallery with each
species' best picture), Charts (visits per species per day over 30 days, and by hour of day), and
`birdwatch stats` (species per day, 7 days).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from birdwatch.deliver import visitbook  # noqa: E402
from birdwatch.deliver.history import EventStore  # noqa: E402
from birdwatch.types import EndReason  # noqa: E402
from birdwatch.types import EventKind  # noqa: E402
from birdwatch.types import SpeciesScore  # noqa: E402
from birdwatch.types import VisitEvent  # noqa: E402
from birdwatch.types import local_day  # noqa: E402
from tests.fixtures_models import species_names  # noqa: E402

SPECIES = 368  # hgnet_v2_b2_danube-delta's list
SEEN = 60  # a feeder sees a few dozen of them, a few often (Zipf)


def visits(n: int, days: int, seed: int = 1) -> Iterator[VisitEvent]:
    """`n` visits spread over the last `days` days, by day, at feeder hours, each new -> update -> end."""
    rng = random.Random(seed)
    names = species_names(SPECIES)
    weights = [1 / (rank + 1) for rank in range(SEEN)]
    start = time.time() - days * 86400
    starts = sorted(start + rng.random() * days * 86400 for _ in range(n))
    for i, first in enumerate(starts):
        hour = time.localtime(first).tm_hour
        if hour < 6 or hour > 20:  # birds by day
            first += (12 - hour) * 3600
        species = rng.choices(names[:SEEN], weights)[0]
        score = rng.uniform(0.3, 0.99)
        top = (SpeciesScore(species, score),)
        visit = f"{i:032x}"
        duration = rng.uniform(3, 90)
        snapshot = f"snapshots/feeder/{local_day(first)}/{visit[:12]}_crop.jpg"
        for kind, at, frames in (
            (EventKind.NEW, first + 0.3, 3),
            (EventKind.UPDATE, first + duration / 2, 20),
            (EventKind.END, first + duration, 40),
        ):
            yield VisitEvent(
                kind, visit, "feeder", at, species, score, top, first, at, frames, (10, 10, 90, 90), "m",
                end_reason=EndReason.TIMEOUT if kind == EventKind.END else None,
                snapshot=snapshot if kind == EventKind.NEW else None, bird_score=0.9,
            )  # fmt: skip


def timed(work: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(0.95 * len(times)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--db", type=Path, default=Path("/tmp/birdwatch-history-bench.db"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for old in args.db.parent.glob(args.db.name + "*"):
        old.unlink()
    began = time.perf_counter()
    store = EventStore(args.db)
    store.add_many(visits(args.visits, args.days), sent_ts=time.time())
    store.close()
    built_s = time.perf_counter() - began
    today = local_day(time.time())
    busiest = {}
    with contextlib.closing(sqlite3.connect(args.db.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        day = db.execute("SELECT day FROM visits GROUP BY day ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
        queries: dict[str, Callable[[], object]] = {
            "today (busiest day)": lambda: visitbook.on_day(db, day),
            "species gallery": lambda: visitbook.species_seen(db),
            "chart: species per day, 30 days": lambda: visitbook.per_day(db, 30, today=today),
            "chart: by hour, 30 days": lambda: visitbook.by_hour(db, 30, today=today),
            "stats: species per day, 7 days": lambda: visitbook.per_day(db, 7, today=today),
        }
        for name, work in queries.items():
            busiest[name] = timed(work, args.runs)
        day_visits = len(visitbook.on_day(db, day))
    size_mb = args.db.stat().st_size / 1e6
    if args.json:
        print(json.dumps({"built_s": built_s, "size_mb": size_mb, "p50_p95_ms": busiest}))
        return 0
    print(f"history: {args.visits} visits over {args.days} days, {size_mb:.0f} MB, built in {built_s:.0f} s")
    print(f"busiest day {day}: {day_visits} visits")
    print(f"{'query':34} {'p50 ms':>8} {'p95 ms':>8}")
    for name, (p50, p95) in busiest.items():
        print(f"{name:34} {p50:8.1f} {p95:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
