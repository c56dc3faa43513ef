"""The SD card fails, the house still hears. A real `birdwatch run` on a clip with two visits and a real
mosquitto with a QoS 1 subscriber, with its history damaged (one page of garbage, truncated, empty, not
SQLite), read-only from the start, made read-only mid-run by the kernel (ext4 `errors=remount-ro`), or on
a disk that fills and empties. Each time: every visit reaches the subscriber, nothing is told twice, the
history passes integrity_check afterwards with every event in it, a damaged file is kept, no traceback.

And a power cut at thirty moments of a run that writes: the history passes integrity_check each time,
holds every event the broker had, and the restart sends the rest.

The mounts need root (CI runs as root); a machine where they cannot be made fails these tests, it does
not skip them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from birdwatch.config import load_config
from birdwatch.deliver.history import EventStore
from birdwatch.tools.doctor import Verdict
from birdwatch.tools.doctor import check_history
from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.support.history_writer import an_event
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.process import wait_until
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

FPS = 10
TWO_VISITS = [(10, 40), (90, 120)]  # one bird each, 5 s apart
OLD_EVENTS = 300  # the history before the run: delivered events of the days before, and a few unsent
OLD_UNSENT = 5
RUN_S = 120


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "feeder.avi"
    frames = generate_frames(320, 240, TWO_VISITS[-1][1] + 40, n_birds=1, seed=3, presence=TWO_VISITS)
    write_video(path, frames, fps=FPS)
    return path


def run_config(weights: Path, clip: Path, broker: MosquittoBroker, prefix: str, state: Path) -> dict[str, Any]:
    cameras = [{"name": "feeder", "url": str(clip), "motion": {"warmup_frames": 5}}]
    config = service_config(weights, cameras, broker, prefix=prefix, tracking={"timeout_s": 2.0})
    config["store"] = {"path": str(state / "birdwatch.db"), "retry_s": 1}
    config["snapshots"] = {"dir": str(state / "snapshots")}
    return config


def old_history(db: Path) -> set[str]:
    """A history as a few days of running leave it; returns the ids of its unsent events."""
    store = EventStore(db)
    unsent = set()
    for n in range(OLD_EVENTS):
        event = an_event(n)
        store.add(event, sent_ts=None if n >= OLD_EVENTS - OLD_UNSENT else event.ts)
        if n >= OLD_EVENTS - OLD_UNSENT:
            unsent.add(event.id)
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as con:  # into the main file, as a clean stop leaves it
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return unsent


def damage(db: Path, how: str) -> None:
    data = bytearray(db.read_bytes())
    if how == "page":
        data[4096 * 4 : 4096 * 5] = random.Random(4).randbytes(4096)  # one page of garbage, as after a power cut
    elif how == "truncated":
        data = data[: len(data) // 2 + 100]
    elif how == "empty":
        data = bytearray()
    elif how == "not_sqlite":
        data = bytearray(b"#!/bin/sh\necho this is not a database\n" * 100)
    db.write_bytes(bytes(data))


def events(collector: MqttCollector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages if m.topic.endswith("/event")]


def history_rows(db: Path) -> dict[str, float | None]:
    """id -> sent_ts, read after integrity_check passed (the service has exited)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return dict(con.execute("SELECT id, sent_ts FROM events").fetchall())


def assert_every_visit_told_once_and_stored(collector: MqttCollector, db: Path, log: str) -> list[dict[str, Any]]:
    told = [e for e in events(collector) if e["model"] != "m"]  # the run's, not the old history's unsent
    ids = Counter(e["id"] for e in told)
    assert all(n == 1 for n in ids.values()), f"told twice: {[i for i, n in ids.items() if n > 1]}"
    visits: dict[str, list[str]] = {}
    for e in told:
        visits.setdefault(e["visit_id"], []).append(e["kind"])
    assert len(visits) == len(TWO_VISITS), visits
    assert all(kinds[0] == "new" and kinds[-1] == "end" for kinds in visits.values()), visits
    rows = history_rows(db)
    missing = [e["id"] for e in told if rows.get(e["id"]) is None]
    assert not missing, f"told but not stored as delivered: {missing}"
    assert "Traceback" not in log, log[-4000:]
    return told


@pytest.fixture
def prefix() -> str:
    return f"hf{uuid.uuid4().hex[:6]}"


# -- a damaged history ------------------------------------------------------------------------------


@pytest.mark.timeout(RUN_S + 60)
@pytest.mark.parametrize("how", ["page", "truncated", "empty", "not_sqlite"])
def test_a_damaged_history_is_set_aside_its_events_saved_and_every_visit_told(
    how: str,
    clip: Path,
    small_weights: Path,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    prefix: str,
    tmp_path: Path,
) -> None:
    db = tmp_path / "birdwatch.db"
    unsent = old_history(db)
    damage(db, how)
    config = run_config(small_weights, clip, mosquitto, prefix, tmp_path)
    collector = mqtt_collector(f"{prefix}/#")
    bw = BirdwatchProcess(config, tmp_path / "run").start()
    assert bw.wait(RUN_S) == 0, bw.log[-4000:]
    log = bw.log

    assert_every_visit_told_once_and_stored(collector, db, log)
    [kept] = [p for p in tmp_path.glob("birdwatch.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert (kept.stat().st_size == 0) == (how == "empty"), "kept as it was"
    said = [line for line in log.splitlines() if "was damaged" in line]
    assert len(said) == 1 and str(kept.name) in said[0] and "ERROR" in said[0], said
    saved = int(said[0].split(" event(s) saved")[0].rsplit(" ", 1)[1])
    if how in ("page", "truncated"):
        assert saved > OLD_EVENTS // 3, "the readable events are copied into the fresh history"
        stored_unsent = unsent & set(history_rows(db))
        assert stored_unsent <= {e["id"] for e in events(collector)}, "those saved unsent are sent after the repair"
        assert how != "page" or stored_unsent, "one page of garbage leaves the newest events readable"
    else:
        assert saved == 0


# -- read-only and full ------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of its own (root: CI runs as root)."""
    where = tmp_path / "card"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where))
    try:
        yield where
    finally:
        umount(where)


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr.strip()} (these tests need root)"


def umount(where: Path) -> None:
    """Unmounted once nothing holds a file there (the service reopens its history every retry_s)."""
    wait_until(
        lambda: subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode == 0,
        timeout=30,
        what=f"umount {where}",
    )


def history_problem(collector: MqttCollector, prefix: str) -> list[str]:
    return [json.loads(m.payload)["problem"] for m in collector.messages if m.topic == f"{prefix}/history"]


@pytest.mark.timeout(RUN_S + 60)
def test_a_history_read_only_at_start_does_not_stop_the_service_and_catches_up_when_writable(
    clip: Path,
    small_weights: Path,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    prefix: str,
    tmpfs: Path,
) -> None:
    db = tmpfs / "birdwatch.db"
    old_history(db)
    mount("-o", "remount,ro", str(tmpfs))
    config = run_config(small_weights, clip, mosquitto, prefix, tmpfs)
    collector = mqtt_collector(f"{prefix}/#")
    bw = BirdwatchProcess(config, tmpfs.parent / "run").start()
    collector.wait_for(lambda m: m.topic.endswith("/event") and json.loads(m.payload)["kind"] == "end", timeout=60)
    assert history_problem(collector, prefix)[-1] == "ON", "Home Assistant's problem sensor says so"
    mount("-o", "remount,rw", str(tmpfs))
    assert bw.wait(RUN_S) == 0, bw.log[-4000:]

    assert_every_visit_told_once_and_stored(collector, db, bw.log)
    assert history_problem(collector, prefix)[-1] == "OFF"
    assert bw.log.count("refuses writes") == 1, "said once"
    assert "takes writes again" in bw.log


@pytest.mark.timeout(RUN_S + 60)
def test_a_disk_that_fills_and_empties_loses_no_visit(
    clip: Path,
    small_weights: Path,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    prefix: str,
    tmpfs: Path,
) -> None:
    config = run_config(small_weights, clip, mosquitto, prefix, tmpfs)
    collector = mqtt_collector(f"{prefix}/#")
    bw = BirdwatchProcess(config, tmpfs.parent / "run").start()
    collector.wait_for(lambda m: m.topic.endswith("/event"), timeout=60)  # the first visit has begun
    filler = tmpfs / "filler"
    with filler.open("wb", buffering=0) as f, pytest.raises(OSError):  # fill the card to the last byte
        while True:
            f.write(b"\0" * 65536)
    news = lambda: [e for e in events(collector) if e["kind"] == "new"]  # noqa: E731
    wait_until(lambda: len(news()) == 2, timeout=60, what="the second visit told while the disk is full")
    filler.unlink()
    assert bw.wait(RUN_S) == 0, bw.log[-4000:]

    assert_every_visit_told_once_and_stored(collector, db := tmpfs / "birdwatch.db", bw.log)
    assert db.exists() and "the disk is full" in bw.log and bw.log.count("refuses writes") == 1
    assert "snapshot for visit" not in bw.log, "a snapshot the disk refuses is counted, not a warning per visit"


@pytest.mark.timeout(RUN_S + 90)
def test_a_card_the_kernel_makes_read_only_mid_run_then_repaired_loses_no_visit(
    clip: Path,
    small_weights: Path,
    mosquitto: MosquittoBroker,
    mqtt_collector: Callable[..., MqttCollector],
    prefix: str,
    tmp_path: Path,
) -> None:
    """What a card with errors meets: ext4 mounted `errors=remount-ro` (the default) turns read-only at its
    first error, under the service (a tmpfs cannot be remounted read-only while a file is open for writing).
    The owner then unmounts, checks and mounts it again."""
    image, card = tmp_path / "card.img", tmp_path / "card"
    card.mkdir()
    with image.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True, timeout=60)
    mount("-o", "loop,errors=remount-ro", str(image), str(card))
    try:
        config = run_config(small_weights, clip, mosquitto, prefix, card)
        collector = mqtt_collector(f"{prefix}/#")
        bw = BirdwatchProcess(config, tmp_path / "run").start()
        collector.wait_for(lambda m: m.topic.endswith("/event"), timeout=60)
        loop = loop_device(image)
        Path(f"/sys/fs/ext4/{loop}/trigger_fs_error").write_text("test: the card failed")
        news = lambda: [e for e in events(collector) if e["kind"] == "new"]  # noqa: E731
        wait_until(lambda: len(news()) == 2, timeout=60, what="the second visit told while the card is read-only")
        wait_until(lambda: "ON" in history_problem(collector, prefix), timeout=10, what="the problem sensor")
        umount(card)
        subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, timeout=60)  # exit 1: it fixed things
        mount("-o", "loop,errors=remount-ro", str(image), str(card))
        assert bw.wait(RUN_S) == 0, bw.log[-4000:]
        assert_every_visit_told_once_and_stored(collector, card / "birdwatch.db", bw.log)
        assert history_problem(collector, prefix)[-1] == "OFF"
    finally:
        subprocess.run(["umount", "-l", str(card)], capture_output=True, timeout=30)


def loop_device(image: Path) -> str:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, timeout=30).stdout
    return Path(out.split(":", 1)[0]).name


# -- doctor ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["page", "truncated", "empty", "not_sqlite"])
def test_doctor_says_a_history_is_damaged_and_what_to_do(how: str, tmp_path: Path) -> None:
    db = tmp_path / "birdwatch.db"
    old_history(db)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"cameras: [{{name: feeder, url: /dev/null}}]\nstore: {{path: {db}}}\n")
    config = load_config(config_file)
    assert check_history(config).verdict is Verdict.OK
    damage(db, how)
    before = db.read_bytes()
    finding = check_history(config)
    assert finding.verdict is Verdict.FAIL and "is damaged" in finding.detail
    assert "restart birdwatch" in finding.fix and "damaged-" in finding.fix
    assert db.read_bytes() == before and not list(tmp_path.glob("*.damaged-*")), "doctor only looks"


# -- power cuts --------------------------------------------------------------------------------------

KILLS = 30


@pytest.mark.timeout(300)
def test_a_power_cut_at_any_moment_keeps_the_history_sound_and_every_acknowledged_event(
    mosquitto: MosquittoBroker, prefix: str, tmp_path: Path
) -> None:
    collector = MqttCollector(
        mosquitto.host, mosquitto.port, f"{prefix}/+/event", qos=1, client_id=f"{prefix}-sub", clean_session=False
    ).start()
    db = tmp_path / "birdwatch.db"
    moments = random.Random(31).sample(range(100, 1500), KILLS)  # ms after the writer is ready
    try:
        for ms in moments:
            writer = start_writer(db, mosquitto, prefix)
            time.sleep(ms / 1000)
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait(10)
            rows = history_rows(db)  # integrity_check first
            acknowledged = {json.loads(m.payload)["id"] for m in collector.messages}
            assert acknowledged <= set(rows), f"acknowledged but not in the history after a kill at {ms} ms"
        drain = start_writer(db, mosquitto, prefix, "--drain")
        assert drain.wait(60) == 0, drain.stderr.read() if drain.stderr else ""
        rows = history_rows(db)
        assert all(sent is not None for sent in rows.values()), "the restart sent what was left"
        wait_until(
            lambda: set(rows) <= {json.loads(m.payload)["id"] for m in collector.messages},
            timeout=30,
            what="every stored event at the subscriber at least once",
        )
        assert len(rows) > KILLS * 10, "the writer was writing"
    finally:
        collector.close()


def start_writer(db: Path, broker: MosquittoBroker, prefix: str, *extra: str) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.support.history_writer", str(db), broker.host, str(broker.port), prefix, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
    )
    assert writer.stdout is not None
    line = writer.stdout.readline()  # blocks until ready or the writer ends; the test's timeout bounds it
    assert line.strip() == "ready", (line, writer.stderr.read() if writer.stderr else "")
    return writer
