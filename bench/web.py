"""The page (birdwatch/web), measured as it is served: a real WebServer (uvicorn in a thread) on a free loopback
port, asked over HTTP with urllib.

A. Pages on years of history: a real SQLite history of `--visits` visits over `--days` days (the visits of
   bench/history_queries.py, written through EventStore.add_many; an existing `--db` that already holds
   them is reused), a Site over it (the 368 species of the danube-delta model, an empty snapshot folder),
   and each page asked `--runs` times after 3 warm-up requests: Today, a busy past day, the Species
   gallery, the most common species' page, Charts, Review, /api/now (what Now polls), Health and one
   visit. p50 and p95 in ms per page, beside the same page's queries alone (each on a fresh read-only
   connection, as the page opens them), so a slow page says whether SQLite or the rendering takes the
   time. Goal: Today, Species and Charts p95 <= 150 ms.
B. The pipeline is not slowed by the page: a real Pipeline in this process as `birdwatch bench` runs it
   (4 synthetic file cameras at 25 fps, looping, realtime; tracking min_hits 1, events min_score 0; an
   untrained hgnet_v2_b2 of the danube-delta shape, 368 classes at 256 px, or `--weights`), the page
   served from the same process (site_for over pipeline.live and pipeline.counters), and crops/s in
   alternating windows of `--window-s` seconds: no page open, then two headless chromium polling it (one
   on /now: the live pictures up to 2 a second per camera and /api/now every 2 s; one reloading / every
   2 s), `--rounds` times after a warm-up. Goal: polling within 5% of closed.

    .venv/bin/python bench/web.py --visits 100000 --days 730 --runs 50 --window-s 20 --rounds 2 --json

`--poller http` makes the same requests as the two browsers with urllib instead (no rendering): the server's
share alone, as when the browsers are phones. `--pages` or `--pipeline` runs one part alone. `--json` prints
the figures as JSON on stdout and the tables on stderr. `--wait-load 0.8` waits (up to 10 minutes) before each
part until the 1-minute load average is below 0.8, so another program's work does not count as the page's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.history_queries import SPECIES  # noqa: E402
from bench.history_queries import timed  # noqa: E402
from bench.history_queries import visits  # noqa: E402
from birdwatch.config import CameraConfig  # noqa: E402
from birdwatch.config import Config  # noqa: E402
from birdwatch.config import EventsConfig  # noqa: E402
from birdwatch.config import ModelConfig  # noqa: E402
from birdwatch.config import MotionConfig  # noqa: E402
from birdwatch.config import SnapshotsConfig  # noqa: E402
from birdwatch.config import StoreConfig  # noqa: E402
from birdwatch.config import TrackingConfig  # noqa: E402
from birdwatch.deliver import visitbook  # noqa: E402
from birdwatch.deliver.history import EventStore  # noqa: E402
from birdwatch.types import local_day  # noqa: E402
from birdwatch.web import book  # noqa: E402
from birdwatch.web.app import CHART_DAYS  # noqa: E402
from birdwatch.web.app import Site  # noqa: E402
from birdwatch.web.auth import Guard  # noqa: E402
from birdwatch.web.server import WebServer  # noqa: E402
from tests.fixtures_models import species_names  # noqa: E402

GOAL_MS = 150.0  # p95 of Today, Species and Charts on a 2-core machine
GOAL_RATIO = 0.95  # crops/s with the page polled, against closed
WARMUP_REQUESTS = 3
SETTLE_S = 2.0  # after opening or closing the page, before a window counts: the navigation itself is not polling
RELOAD_S = 2.0  # the second browser reloads Today this often


def wait_for_load(limit: float, patience_s: float = 600.0, every_s: float = 20.0) -> float:
    """Wait until the 1-minute load average is below `limit` (0: don't), at most `patience_s`; returns it."""
    load = os.getloadavg()[0]
    deadline = time.monotonic() + patience_s
    while limit > 0 and load >= limit and time.monotonic() < deadline:
        print(f"load {load:.2f} >= {limit}: waiting {every_s:.0f} s", file=sys.stderr, flush=True)
        time.sleep(every_s)
        load = os.getloadavg()[0]
    return load


def serve(site: Site) -> WebServer:
    """A real WebServer on a free loopback port, once it answers."""
    server = WebServer(site, "127.0.0.1", 0)
    server.start()
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if server.port is not None:
            with contextlib.suppress(OSError):
                get(f"http://127.0.0.1:{server.port}/static/bird.svg")
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("the page did not start within 30 s")


def get(url: str) -> int:
    """GET over loopback (a new connection, as urllib makes one per request); the body's size."""
    with urllib.request.urlopen(url, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        return len(response.read())


# -- A: pages on a big history --


def schema(con: sqlite3.Connection) -> list[tuple[str, str]]:
    return con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()


def history(db: Path, n: int, days: int) -> tuple[float | None, bool]:
    """The history to serve: `db` as it is if it already holds these visits (recent enough that today has
    some) in the schema, indexes included, that EventStore makes now; else built afresh. Returns (seconds it
    took to build, None if reused; reused)."""
    if db.exists():
        with tempfile.TemporaryDirectory() as tmp:
            EventStore(Path(tmp) / "fresh.db").close()
            with contextlib.closing(sqlite3.connect(Path(tmp) / "fresh.db")) as con:
                fresh = schema(con)
        try:
            with contextlib.closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as con:
                count, oldest, newest = con.execute(
                    "SELECT count(*), min(first_seen), max(first_seen) FROM visits"
                ).fetchone()
                same = schema(con) == fresh
            recent = newest is not None and time.time() - newest < max(86400.0, 5 * days * 86400 / max(1, n))
            span_ok = oldest is not None and abs((newest - oldest) / 86400 - days) < 2
            if count == n and recent and span_ok and same:
                return None, True
        except sqlite3.Error:
            pass
    for old in db.parent.glob(db.name + "*"):
        old.unlink()
    began = time.perf_counter()
    store = EventStore(db)
    store.add_many(visits(n, days), sent_ts=time.time())
    store.close()
    return time.perf_counter() - began, False


def pages_part(args: argparse.Namespace) -> dict[str, Any]:
    built_s, reused = history(args.db, args.visits, args.days)
    load = wait_for_load(args.wait_load)
    today = local_day(time.time())
    with contextlib.closing(sqlite3.connect(args.db.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        busy_day, busy_n = db.execute(
            "SELECT day, count(*) FROM visits WHERE day < ? GROUP BY day ORDER BY count(*) DESC, day DESC LIMIT 1",
            (today,),
        ).fetchone()
        common, common_n = db.execute(
            f"SELECT name, count(*) FROM visits WHERE {visitbook.A_BIRD} GROUP BY name ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        visit_id = db.execute(
            "SELECT visit_id FROM visits WHERE day = ? ORDER BY first_seen LIMIT 1", (busy_day,)
        ).fetchone()[0]
        today_n = db.execute("SELECT count(*) FROM visits WHERE day = ?", (today,)).fetchone()[0]
    names = species_names(SPECIES)
    below = 0.7
    # (label, path, goal applies, the page's queries alone)
    pages: list[tuple[str, str, bool, Callable[[sqlite3.Connection], object]]] = [
        ("Today", "/", True, lambda db: visitbook.on_day(db, local_day(time.time()))),
        ("Today, busy day", f"/?day={busy_day}", True, lambda db: visitbook.on_day(db, busy_day)),
        ("Species", "/species", True, visitbook.species_seen),
        ("Species: most common", f"/species/{quote(common)}", True, lambda db: book.species_visits(db, common)),
        (
            "Charts",
            "/charts",
            True,
            lambda db: (
                visitbook.per_day(db, CHART_DAYS, today=local_day(time.time())),
                visitbook.by_hour(db, CHART_DAYS, today=local_day(time.time())),
            ),
        ),
        ("Review", "/review", False, lambda db: book.review_queue(db, below)),
        ("Now: /api/now", "/api/now", False, lambda db: book.going_on(db, "feeder")),
        ("Health", "/health", False, lambda db: None),
        ("Visit", f"/visit/{visit_id}", False, lambda db: book.visit_page(db, visit_id)),
    ]
    with tempfile.TemporaryDirectory(prefix="birdwatch-web-bench-") as snapshots:
        site = Site(
            history=args.db,
            snapshots=Path(snapshots),
            species=names,
            cameras=["feeder"],
            guard=Guard(secrets.token_urlsafe(12)),  # viewing from loopback needs no sign-in
            review_below=below,
        )
        server = serve(site)
        base = f"http://127.0.0.1:{server.port}"
        rows: dict[str, dict[str, Any]] = {}
        try:
            for label, path, goal, query in pages:
                url = base + path
                for _ in range(WARMUP_REQUESTS):
                    size = get(url)
                p50, p95 = timed(lambda url=url: get(url), args.runs)

                def alone(query: Callable[[sqlite3.Connection], object] = query) -> None:
                    with book.connect(args.db) as db:
                        query(db)

                q50, q95 = timed(alone, args.runs)
                rows[label] = {
                    "path": path,
                    "p50_ms": round(p50, 1),
                    "p95_ms": round(p95, 1),
                    "queries_p50_ms": round(q50, 1),
                    "queries_p95_ms": round(q95, 1),
                    "kb": round(size / 1024, 1),
                    "goal_ms": GOAL_MS if goal else None,
                    "ok": (p95 <= GOAL_MS) if goal else None,
                }
        finally:
            server.stop()
    return {
        "visits": args.visits,
        "days": args.days,
        "db": str(args.db),
        "db_mb": round(args.db.stat().st_size / 1e6, 1),
        "built_s": None if built_s is None else round(built_s, 1),
        "reused": reused,
        "today_visits": today_n,
        "busy_day": busy_day,
        "busy_day_visits": busy_n,
        "most_common": common,
        "most_common_visits": common_n,
        "runs": args.runs,
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "pages": rows,
    }


def print_pages(out: dict[str, Any], file: Any) -> None:
    built = "reused" if out["reused"] else f"built in {out['built_s']:.0f} s"
    print(
        f"A. pages: {out['visits']} visits over {out['days']} days, {out['db_mb']:.0f} MB ({built}); "
        f"today {out['today_visits']} visits, busy day {out['busy_day']} {out['busy_day_visits']}, "
        f"{out['most_common']!r} {out['most_common_visits']}; {out['runs']} runs each; "
        f"load {out['load_before']:.2f} before, {out['load_after']:.2f} after",
        file=file,
    )
    print(f"{'page':22} {'p50 ms':>8} {'p95 ms':>8} {'query p50':>10} {'query p95':>10} {'KB':>7}  goal", file=file)
    for label, r in out["pages"].items():
        goal = "" if r["ok"] is None else (f"<= {GOAL_MS:.0f} ok" if r["ok"] else f"<= {GOAL_MS:.0f} MISSED")
        print(
            f"{label:22} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['queries_p50_ms']:10.1f} {r['queries_p95_ms']:10.1f}"
            f" {r['kb']:7.1f}  {goal}",
            file=file,
        )


# -- B: the pipeline with the page polled --


class CountingLive:
    """pipeline.live, counting the live pictures the page serves."""

    def __init__(self, live: Any) -> None:
        self.live = live
        self.pictures = 0
        self._lock = threading.Lock()

    def jpeg(self, camera: str) -> bytes | None:
        with self._lock:
            self.pictures += 1
        return self.live.jpeg(camera)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.live, name)


def weights_file(args: argparse.Namespace) -> Path:
    if args.weights is not None:
        return Path(args.weights)
    from birdwatch.tools.specs import DANUBE_DELTA
    from birdwatch.tools.untrained import save_untrained

    path = args.workdir / "hgnet_v2_b2_untrained-danube.pt"
    if not path.exists():
        save_untrained(
            DANUBE_DELTA.network, path, species_names(DANUBE_DELTA.classes), DANUBE_DELTA.size, decisive=True
        )
    return path


def pipeline_config(weights: Path, workdir: Path, run_dir: Path, cameras: int, fps: float) -> Config:
    """As birdwatch/tools/bench.py's pipeline_run: looping synthetic clips, paced, every track a visit."""
    from birdwatch.tools.synthetic import Scene
    from birdwatch.tools.synthetic import write_video

    cams = []
    for i in range(cameras):
        clip = workdir / f"camera{i}-{fps:g}fps.avi"
        if not clip.exists():
            write_video(clip, Scene(640, 360, 100, n_birds=3, seed=100 + i, present_fraction=1.0), fps=fps)
        cams.append(
            CameraConfig(name=f"cam{i}", url=str(clip), loop=True, realtime=True, motion=MotionConfig(warmup_frames=5))
        )
    return Config(
        cameras=cams,
        model=ModelConfig(file=str(weights), models_dir=str(workdir / "models")),
        tracking=TrackingConfig(min_hits=1),
        events=EventsConfig(min_score=0.0, cooldown_s=0.0),
        snapshots=SnapshotsConfig(dir=str(run_dir / "snapshots")),
        store=StoreConfig(path=str(run_dir / "history.db")),
        stats_interval_s=3600,
    )


class Chromium:
    """Two headless chromium, as two people would look: one on /now (its script fetches each camera's live
    picture again 500 ms after the last arrived, and /api/now every 2 s), one on Today, reloaded every
    RELOAD_S. Started once; between windows both show about:blank."""

    name = "chromium"

    def __init__(self, base: str) -> None:
        from tests.support.browser import start_browser

        self.base = base
        self.browsers = [start_browser(1280, 900), start_browser(1280, 900)]
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        now_page, today_page = self.browsers
        now_page.open(self.base + "/now")
        today_page.open(self.base + "/")
        self._stop.clear()
        self._thread = threading.Thread(target=self._reload, args=(today_page,), name="reload-today", daemon=True)
        self._thread.start()

    def _reload(self, browser: Any) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            browser.driver.refresh()  # waits for the page to load
            self.reloads += 1
            self._stop.wait(max(0.0, RELOAD_S - (time.monotonic() - began)))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
            self._thread = None
        for browser in self.browsers:
            browser.open("about:blank")

    def quit(self) -> None:
        for browser in self.browsers:
            browser.close()


class Plain:
    """The same requests without a browser (urllib threads): the server's share of the cost alone, as when the
    browsers run on phones. Per camera, its live picture again 500 ms after the last; /api/now every 2 s;
    Today every RELOAD_S."""

    name = "http"

    def __init__(self, base: str, cameras: list[str]) -> None:
        self.base, self.cameras = base, cameras
        self.reloads = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self) -> None:
        self._stop.clear()
        loops = [(f"/live/{quote(c)}.jpg", 0.5, False) for c in self.cameras]
        loops += [("/api/now", 2.0, True), ("/", RELOAD_S, True)]
        self._threads = [
            threading.Thread(target=self._loop, args=loop, name=f"poll {loop[0]}", daemon=True) for loop in loops
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, path: str, every_s: float, period: bool) -> None:
        """`period`: one request every `every_s`; else `every_s` after the previous answer (the live picture)."""
        while not self._stop.is_set():
            began = time.monotonic()
            with contextlib.suppress(OSError, RuntimeError):
                get(self.base + path)
            if path == "/":
                self.reloads += 1
            self._stop.wait(max(0.0, every_s - (time.monotonic() - began)) if period else every_s)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30.0)

    def quit(self) -> None:
        self.close()


TICK_HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds so far of (this process: the pipeline and the page; its descendants: chromium and
    chromedriver; the whole machine), read from /proc."""
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = int(fields[11]) + int(fields[12])
    me = os.getpid()
    family, grew = {me}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in family} - family
        family |= more
        grew = bool(more)
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # all but idle and iowait
    children = sum(used.get(pid, 0) for pid in family - {me})
    return used.get(me, 0) / TICK_HZ, children / TICK_HZ, busy / TICK_HZ


def pipeline_part(args: argparse.Namespace) -> dict[str, Any]:
    from birdwatch.runtime.pipeline import Pipeline
    from birdwatch.web.site import site_for

    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = weights_file(args)
    quiet = logging.getLogger("birdwatch.runtime.pipeline")
    quiet.setLevel(logging.WARNING)  # one INFO line per event otherwise
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="birdwatch-web-bench-") as tmp:
        config = pipeline_config(weights, args.workdir, Path(tmp), args.cameras, args.fps)
        load = wait_for_load(args.wait_load)  # before the pipeline, which keeps every core busy
        pipeline = Pipeline(config)
        server = None
        poller: Chromium | Plain | None = None
        try:
            pipeline.start()
            assert pipeline.parts is not None
            live = CountingLive(pipeline.live)
            calls = [0]

            def counters() -> dict[str, object]:
                calls[0] += 1
                return pipeline.counters()

            site = site_for(config, pipeline.parts.classifier.class_names, live, counters)  # type: ignore[arg-type]
            server = serve(site)
            base = f"http://127.0.0.1:{server.port}"
            poller = Chromium(base) if args.poller == "chromium" else Plain(base, site.cameras)
            # Warm-up: the pipeline's first batches, the browsers' first loads, the templates' first renders.
            poller.open()
            time.sleep(args.warmup_s)
            poller.close()
            time.sleep(SETTLE_S)
            engine = pipeline.engine
            assert engine is not None
            for _ in range(args.rounds):
                for polling in (False, True):
                    if polling:
                        poller.open()
                    time.sleep(SETTLE_S)
                    crops0, pictures0, calls0, reloads0 = pipeline.stats.crops, live.pictures, calls[0], poller.reloads
                    cpu0, t0 = cpu_seconds(), time.monotonic()
                    time.sleep(args.window_s)
                    elapsed = time.monotonic() - t0
                    crops = pipeline.stats.crops - crops0
                    pictures, status_calls = live.pictures - pictures0, calls[0] - calls0
                    cpu1 = cpu_seconds()
                    reloads = poller.reloads - reloads0
                    if polling:
                        poller.close()
                    # What one reload of Today costs the server by now (the history grows as the pipeline runs).
                    began = time.perf_counter()
                    today_kb = get(base + "/") / 1024
                    today_ms = (time.perf_counter() - began) * 1000
                    with book.connect(Path(config.store.path)) as db:
                        visits_today = db.execute(
                            "SELECT count(*) FROM visits WHERE day = ?", (local_day(time.time()),)
                        ).fetchone()[0]
                    own, kids, busy = ((b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True))
                    windows.append(
                        {
                            "page": "polling" if polling else "closed",
                            "seconds": round(elapsed, 1),
                            "crops_per_s": round(crops / elapsed, 2),
                            "live_pictures_per_s": round(pictures / elapsed, 2),
                            "status_calls": status_calls,  # /api/now (and /now's first render)
                            "today_reloads": reloads,
                            # in cores: this process, its descendants (the browsers), everything else on the machine
                            "cpu_process": round(own, 2),
                            "cpu_browsers": round(kids, 2),
                            "cpu_other": round(max(0.0, busy - own - kids), 2),
                            "load": round(os.getloadavg()[0], 2),
                            "visits_today": visits_today,
                            "today_ms": round(today_ms, 1),
                            "today_kb": round(today_kb, 1),
                        }
                    )
                    print(f"  window: {windows[-1]}", file=sys.stderr, flush=True)
            snap = pipeline.counters()
            backend, runs_in = engine.runner.backend.value, engine.runner.precision
            workers = pipeline.parts.plan.workers
        finally:
            if poller is not None:
                poller.quit()
            if server is not None:
                server.stop()
            pipeline.stop()
    closed = [w["crops_per_s"] for w in windows if w["page"] == "closed"]
    polled = [w["crops_per_s"] for w in windows if w["page"] == "polling"]
    ratio = statistics.mean(polled) / statistics.mean(closed) if closed and statistics.mean(closed) else None
    return {
        "weights": str(weights),
        "poller": args.poller,
        "cameras": args.cameras,
        "fps": args.fps,
        "backend": backend,
        "runs_in": runs_in,
        "classify_workers": workers,
        "mean_classify_batch": snap["stages"]["classify"]["mean_batch"],  # type: ignore[index]
        "window_s": args.window_s,
        "rounds": args.rounds,
        "warmup_s": args.warmup_s,
        "load_before": round(load, 2),
        "closed_crops_per_s": round(statistics.mean(closed), 2) if closed else None,
        "polling_crops_per_s": round(statistics.mean(polled), 2) if polled else None,
        "ratio": None if ratio is None else round(ratio, 3),
        "ok": None if ratio is None else ratio >= GOAL_RATIO,
        "windows": windows,
    }


def print_pipeline(out: dict[str, Any], file: Any) -> None:
    print(
        f"B. pipeline, page polled by {out['poller']}: {out['cameras']} cameras at {out['fps']:g} fps, "
        f"{out['backend']} {out['runs_in']}, "
        f"{out['classify_workers']} classify worker(s), mean batch {out['mean_classify_batch']}; "
        f"{out['rounds']} rounds of {out['window_s']:g} s windows after {out['warmup_s']:g} s warm-up; "
        f"load {out['load_before']:.2f} before",
        file=file,
    )
    print(
        f"{'window':8} {'page':8} {'crops/s':>8} {'live pics/s':>12} {'/api/now':>9} {'reloads':>8}"
        f" {'cpu: proc':>9} {'browsers':>9} {'other':>6} {'load':>6} {'visits':>7} {'Today ms':>9} {'KB':>6}",
        file=file,
    )
    for i, w in enumerate(out["windows"], 1):
        print(
            f"{i:<8} {w['page']:8} {w['crops_per_s']:8.1f} {w['live_pictures_per_s']:12.1f} {w['status_calls']:9d}"
            f" {w['today_reloads']:8d} {w['cpu_process']:9.2f} {w['cpu_browsers']:9.2f} {w['cpu_other']:6.2f}"
            f" {w['load']:6.2f} {w['visits_today']:7d} {w['today_ms']:9.1f} {w['today_kb']:6.0f}",
            file=file,
        )
    print(
        "(cpu in cores: proc = this process, the pipeline and the page; browsers = chromium and chromedriver; other ="
        " the rest of the machine. visits, Today ms, KB: the pipeline's history today, one Today request after the"
        " window)",
        file=file,
    )
    if out["ratio"] is not None:
        verdict = "ok" if out["ok"] else "MISSED"
        print(
            f"mean crops/s: closed {out['closed_crops_per_s']:.1f}, polling {out['polling_crops_per_s']:.1f}, "
            f"ratio {out['ratio']:.3f} (goal >= {GOAL_RATIO}: {verdict})",
            file=file,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", action="store_true", help="part A only (with --pipeline: both, the default)")
    parser.add_argument("--pipeline", action="store_true", help="part B only")
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--db", type=Path, default=Path("/tmp/birdwatch-web-bench.db"))
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup-s", type=float, default=15.0)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--weights", type=Path, help="a birder classifier file (default: an untrained one, made once)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "birdwatch-web-bench")
    parser.add_argument(
        "--poller", choices=["chromium", "http"], default="chromium", help="http: the same requests, no browser"
    )
    parser.add_argument("--wait-load", type=float, default=0.0, help="before each part, wait for a load below this")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, the tables on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    both = args.pages == args.pipeline
    table = sys.stderr if args.json else sys.stdout
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if both or args.pages:
        out["pages"] = pages_part(args)
        print_pages(out["pages"], table)
    if both or args.pipeline:
        out["pipeline"] = pipeline_part(args)
        print_pipeline(out["pipeline"], table)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
