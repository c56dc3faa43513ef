"""`birdwatch export visits`: the history's visits as a CSV of one row per visit, or as eBird's Record Format.

The visits CSV has a header and every field of each visit's latest event (lists as JSON), the visit's best
crop, and its event count; it reads back with any CSV reader.

eBird's Record Format (the "eBird Record Format (Extended)" of its import tool) has 19 columns in a fixed
order and no header row. birdwatch writes one checklist per camera per day: the protocol is Stationary,
the start time is the day's first visit, the duration runs from it to the end of the day's last visit,
and each species' count is the most visits of it at once (a camera sees birds, not individuals: two tits
at once are two, the same tit twice is one). "All observations reported" is N: a camera sees what comes
to its feeder, not every bird about.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from birdwatch.config import LocationConfig
from birdwatch.deliver import visitbook
from birdwatch.deliver.corrections import NOT_A_BIRD
from birdwatch.deliver.visitbook import Visit
from birdwatch.errors import BirdwatchError

EBIRD_COLUMNS = (
    "Common Name",
    "Genus",
    "Species",
    "Number",
    "Species Comments",
    "Location Name",
    "Latitude",
    "Longitude",
    "Date",
    "Start Time",
    "State/Province",
    "Country Code",
    "Protocol",
    "Number of Observers",
    "Duration",
    "All observations reported?",
    "Effort Distance Miles",
    "Effort area acres",
    "Submission Comments",
)
EVENT_FIELDS = ("id", "kind", "time", "ts", "score", "bird_score", "top_k", "duration_s", "box", "end_reason", "model")


def visits_since(db: sqlite3.Connection, days: int | None) -> list[Visit]:
    """The visits of the last `days` days (all without), oldest first."""
    if days is None:
        rows = db.execute(f"SELECT {visitbook.COLUMNS} FROM visits ORDER BY first_seen").fetchall()
    else:
        first = visitbook.day_minus(time.strftime("%Y-%m-%d"), days - 1)
        rows = db.execute(
            f"SELECT {visitbook.COLUMNS} FROM visits WHERE day >= ? ORDER BY first_seen", (first,)
        ).fetchall()
    return [visitbook.visit_of(row) for row in rows]


def write_visits_csv(db: sqlite3.Connection, visits: Iterable[Visit], out: TextIO) -> int:
    """One row per visit: the book's columns, then its latest event's other fields."""
    names = [*visitbook.COLUMNS.split(", "), *(f"event_{name}" for name in EVENT_FIELDS)]
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    latest = "SELECT payload FROM events WHERE visit_id = ? ORDER BY seq DESC LIMIT 1"
    n = 0
    for visit in visits:
        row: dict[str, object] = {**asdict(visit), "ended": int(visit.ended)}
        found = db.execute(latest, (visit.visit_id,)).fetchone()
        event = json.loads(found[0]) if found else {}
        for name in EVENT_FIELDS:
            value = event.get(name)
            row[f"event_{name}"] = json.dumps(value) if isinstance(value, list | dict) else value
        writer.writerow(row)
        n += 1
    return n


def write_ebird_csv(visits: Iterable[Visit], location: LocationConfig, out: TextIO) -> int:
    """eBird Record Format rows, no header: one checklist per camera per day; returns how many rows."""
    if location.latitude is None or location.longitude is None:
        raise BirdwatchError(
            "eBird needs the feeder's place: set location.latitude and location.longitude in the config "
            "(and location.name, location.state, location.country)"
        )
    checklists: dict[tuple[str, str], list[Visit]] = defaultdict(list)
    for visit in visits:
        if visit.name != NOT_A_BIRD:
            checklists[(visit.camera, visit.day)].append(visit)
    writer = csv.writer(out, lineterminator="\n")
    n = 0
    for (camera, day), seen in sorted(checklists.items(), key=lambda item: (item[0][1], item[0][0])):
        start = min(v.first_seen for v in seen)
        minutes = max(1, math.ceil((max(v.last_seen for v in seen) - start) / 60))
        by_species: dict[str, list[Visit]] = defaultdict(list)
        for visit in seen:
            by_species[visit.name].append(visit)
        for species, visits_of in sorted(by_species.items()):
            writer.writerow(
                [
                    species,
                    "",  # genus and species: eBird matches the common name
                    "",
                    most_at_once(visits_of),
                    f"{len(visits_of)} visit(s) seen by birdwatch",
                    location.name or camera,
                    f"{location.latitude:.6f}",
                    f"{location.longitude:.6f}",
                    time.strftime("%m/%d/%Y", time.strptime(day, "%Y-%m-%d")),
                    time.strftime("%H:%M", time.localtime(start)),
                    location.state,
                    location.country,
                    "Stationary",
                    1,
                    minutes,
                    "N",
                    "",
                    "",
                    f"birdwatch camera {camera}",
                ]
            )
            n += 1
    return n


def most_at_once(visits: Iterable[Visit]) -> int:
    """The most of these visits going on at one moment (a sweep over their starts and ends)."""
    # Sorted by time, and at one instant an end (-1) before a start: a bird that left as another came is one.
    edges = sorted(edge for v in visits for edge in ((v.first_seen, 1), (v.last_seen, -1)))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def write_corrections(db: sqlite3.Connection, out: Path) -> tuple[int, int]:
    """Every crop of every visit a person named (corrected or confirmed), copied into `out/<species>/`, the
    folder-per-class layout birder trains from; "not a bird" visits are left out. Returns (crops, species)."""
    rows = db.execute(
        "SELECT v.visit_id, v.corrected, e.snapshot FROM visits v JOIN events e ON e.visit_id = v.visit_id"
        " WHERE v.corrected IS NOT NULL AND v.corrected != ? AND e.snapshot IS NOT NULL ORDER BY v.first_seen, e.seq",
        (NOT_A_BIRD,),
    ).fetchall()
    crops = 0
    species: set[str] = set()
    for visit_id, name, snapshot in rows:
        source = Path(snapshot)
        if not source.is_file():
            continue  # retention removed the picture; the correction alone has nothing to train on
        folder = out / safe_folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / f"{visit_id[:12]}_{source.name}")
        crops += 1
        species.add(name)
    return crops, len(species)


def safe_folder_name(species: str) -> str:
    """A species as a folder name: birder reads the class from it, so only what a file system refuses changes."""
    return species.replace("/", "_").replace("\0", "").strip(". ") or "_"
