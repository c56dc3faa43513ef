"""Repairing the history after a power cut: tell damage from a disk that only refuses writes, move a damaged
file aside (never delete it), and copy the events that can still be read into a fresh history.

Recovery uses SQLite's own (`sqlite3 <file> .recover`, the CLI's recovery extension, 3.29+) where the
`sqlite3` program is installed, reading what it rebuilt; else it reads the damaged file row by row,
stepping over rows that cannot be read. Either way only rows that are whole birdwatch events are kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from birdwatch.deliver import corrections
from birdwatch.deliver import embeddings

log = logging.getLogger(__name__)

HEADER = b"SQLite format 3\x00"
QUICK_CHECK_ERRORS = 10  # quick_check stops after this many: enough to know
QUICK_CHECK_S = 20.0  # and after this long: a big history on a slow card must not hold up every start
RECOVER_TIMEOUT_S = 30.0  # the decide thread (or the start) waits on it; the watchdog allows 60 s
MAX_MISSES = 200_000  # rows stepped over in a row before a scan without a known end gives up
_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
COLUMNS = "seq, id, kind, visit_id, camera, species, score, ts, day, payload, snapshot, sent_ts"
_TYPES: tuple[type | tuple[type, ...], ...] = (
    int, str, str, str, str, str, float, float, str, str, (str, type(None)), (float, int, type(None)),
)  # fmt: skip


def is_damage(exc: BaseException) -> bool:
    """SQLite says the file itself is damaged (not a full, locked or read-only disk)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name in _DAMAGE or name.startswith("SQLITE_CORRUPT")


def reason(exc: BaseException) -> str:
    """A full, read-only or failing disk in words a user acts on."""
    name = getattr(exc, "sqlite_errorname", "")
    code = getattr(exc, "errno", None)
    if name == "SQLITE_FULL" or code == errno.ENOSPC:
        return f"the disk is full ({exc})"
    if name.startswith("SQLITE_READONLY") or code == errno.EROFS:
        return f"the disk is read-only ({exc})"
    return str(exc) or type(exc).__name__


def damage(path: Path) -> str | None:
    """What is wrong with the history file, or None when it is sound, absent, or only unreadable now (a
    disk that refuses is no damage: nothing is moved aside for it)."""
    try:
        with path.open("rb") as f:
            header = f.read(len(HEADER))
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable now: opening it says why
    if not header:
        return "the file is empty"
    if header != HEADER:
        return "the file is not an SQLite database"
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    deadline = time.monotonic() + QUICK_CHECK_S
    db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # nonzero: interrupt it
    try:
        rows = db.execute(f"PRAGMA quick_check({QUICK_CHECK_ERRORS})").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
            log.info(
                "event history %s: quick_check stopped after %.0f s; a damage found later is repaired then",
                path,
                QUICK_CHECK_S,
            )
        return str(exc) if is_damage(exc) else None
    finally:
        db.close()
    found = [line for row in rows for line in str(row[0]).splitlines() if not line.startswith("***")]
    return None if found == ["ok"] else "; ".join(found[:3]) or "quick_check failed"


def set_aside(path: Path) -> Path:
    """Move the file (and its WAL beside it) to `<name>.damaged-<local time>`; returns where it went."""
    moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while moved.exists():
        n += 1
        moved = moved.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    for side in ("-wal", "-journal"):  # the WAL holds committed events too; -shm is rebuilt from it
        extra = path.with_name(path.name + side)
        if extra.exists():
            extra.rename(moved.with_name(moved.name + side))
    path.rename(moved)
    with contextlib.suppress(OSError):
        path.with_name(path.name + "-shm").unlink()
    return moved


def repairing_path(path: Path) -> Path:
    return path.with_name(path.name + ".repairing")


def remove_with_sidecars(path: Path, keep_main: bool = False) -> None:
    for side in ("-wal", "-shm", "-journal", *(() if keep_main else ("",))):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + side).unlink()


def finish_interrupted(path: Path) -> None:
    """A repair killed between its two renames left the damaged file aside and the fresh one complete (it is
    renamed only once committed): put the fresh one in place."""
    fresh = repairing_path(path)
    if not path.exists() and fresh.exists():
        remove_with_sidecars(fresh, keep_main=True)
        fresh.rename(path)
        log.warning("event history %s: a repair cut short is finished", path)


def recover(damaged: Path, into: sqlite3.Connection) -> int:
    """Copy the readable events of `damaged` into the (fresh) history `into`; returns how many."""
    rebuilt = damaged.with_name(damaged.name + ".recovered")  # beside it: /tmp is RAM on many boards
    remove_with_sidecars(rebuilt)
    try:
        source = _sqlite_recover(damaged, rebuilt) or damaged
        try:
            db = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
            # A file shorter than its header says (truncated) is refused whole without this.
            db.execute("PRAGMA writable_schema=ON")
        except sqlite3.Error:
            return 0
        try:
            saved = _copy(_readable_rows(db), into)
            corrections.copy(db, into)
            embeddings.copy(db, into)
            return saved
        finally:
            db.close()
    finally:
        remove_with_sidecars(rebuilt)


def _sqlite_recover(damaged: Path, out: Path) -> Path | None:
    """SQLite's recovery extension, through the CLI, its SQL streamed from one `sqlite3` into another: a
    rebuilt database, or None where it is not installed (or fails: the row-by-row copy reads the damaged
    file itself)."""
    cli = shutil.which("sqlite3")
    if cli is None:
        return None
    try:
        with subprocess.Popen(
            [cli, str(damaged), ".recover"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as dump:
            load = subprocess.run(
                [cli, str(out)], stdin=dump.stdout, capture_output=True, timeout=RECOVER_TIMEOUT_S, check=False
            )
            dumped = dump.wait(RECOVER_TIMEOUT_S)
        if dumped or load.returncode:
            raise subprocess.CalledProcessError(dumped or load.returncode, ".recover")
    except (OSError, subprocess.SubprocessError) as exc:
        # Some builds lack what .recover needs (Debian 12's 3.40: "SQL logic error" on any file).
        log.info("sqlite3 .recover could not read %s (%s); copying row by row instead", damaged, exc)
        return None
    return out


def _readable_rows(db: sqlite3.Connection) -> Iterator[tuple[object, ...]]:
    """Every row of `events` that can be read, in order. A scan that fails, or that a damaged page leads
    back to rows already read, steps over the row after the last one read and goes on, up to the highest
    sequence number the file still knows (else until MAX_MISSES steps in a row find nothing)."""
    last = _highest_seq(db)
    seq = misses = 0
    while (seq < last) if last is not None else (misses < MAX_MISSES):
        try:
            for row in db.execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (seq,)):
                if not isinstance(row[0], int) or row[0] <= seq or (last is not None and row[0] > last):
                    raise _Stray
                seq, misses = row[0], 0
                yield row
            return
        except (sqlite3.DatabaseError, _Stray) as exc:
            if "no such table" in str(exc):
                return  # nothing of birdwatch's in it
            seq, misses = seq + 1, misses + 1


class _Stray(Exception):
    """A row out of order: the scan went through a damaged page."""


def _highest_seq(db: sqlite3.Connection) -> int | None:
    for sql in ("SELECT max(seq) FROM events", "SELECT seq FROM sqlite_sequence WHERE name = 'events'"):
        with contextlib.suppress(sqlite3.DatabaseError, TypeError):
            value = db.execute(sql).fetchone()
            if value and value[0] is not None:
                return int(value[0])
    return None


def _copy(rows: Iterator[tuple[object, ...]], into: sqlite3.Connection) -> int:
    copied = 0
    into.execute("BEGIN IMMEDIATE")
    try:
        for row in rows:
            if _whole(row):
                cur = into.execute(f"INSERT OR IGNORE INTO events ({COLUMNS}) VALUES ({', '.join('?' * 12)})", row)
                copied += cur.rowcount
        into.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            into.execute("ROLLBACK")
        raise
    return copied


def _whole(row: tuple[object, ...]) -> bool:
    """A row a damaged page left intact: the right types, and a payload that is its own event's JSON."""
    if len(row) != len(_TYPES):
        return False
    if not all(isinstance(v, t) or (t is float and type(v) is int) for v, t in zip(row, _TYPES, strict=True)):
        return False
    try:
        payload = json.loads(str(row[9]))
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("id") == row[1]
