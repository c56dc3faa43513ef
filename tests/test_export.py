"""`birdwatch export visits`: a visits CSV that reads back as it was written, and eBird's Record Format,
checked column by column against eBird's documented 19 columns, one checklist per camera per day."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import yaml

from birdwatch.cli import main
from birdwatch.deliver.export import EBIRD_COLUMNS
from birdwatch.deliver.history import EventStore
from birdwatch.types import EndReason
from birdwatch.types import VisitEvent
from tests.test_store import event

MORNING = time.mktime(time.strptime("2026-11-24 08:00", "%Y-%m-%d %H:%M"))


def visit(camera: str, species: str, start: float, seconds: float, name: str) -> list[VisitEvent]:
    new = dataclasses.replace(event("new", species, camera, name, start), first_seen=start, last_seen=start)
    end = dataclasses.replace(
        event("end", species, camera, name, start + seconds),
        first_seen=start,
        last_seen=start + seconds,
        end_reason=EndReason.TIMEOUT,
        snapshot=f"snapshots/{name}.jpg",
    )
    return [new, end]


@pytest.fixture
def history(tmp_path: Path) -> Path:
    db = tmp_path / "birdwatch.db"
    store = EventStore(db)
    store.add_many(
        [
            *visit("feeder", "Great Tit", MORNING, 60, "a"),
            *visit("feeder", "Great Tit", MORNING + 30, 60, "b"),  # two at once
            *visit("feeder", "Great Tit", MORNING + 600, 20, "c"),  # later: still two at most
            *visit("feeder", "Eurasian Blue Tit", MORNING + 3000, 40, "d"),
            *visit("window", "Robin", MORNING + 100, 10, "e"),
        ],
        sent_ts=MORNING,
    )
    store.close()
    return db


def config(tmp_path: Path, db: Path, **location: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {"cameras": [{"name": "feeder", "url": "/dev/null"}], "store": {"path": str(db)}, "location": location}
        )
    )
    return path


def test_ebird_record_format_is_one_checklist_per_camera_per_day_column_by_column(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    place = {
        "name": "Back garden feeder",
        "latitude": 48.137154,
        "longitude": 11.576124,
        "state": "BY",
        "country": "DE",
    }
    out = tmp_path / "ebird.csv"
    assert main(["export", "visits", "--config", str(config(tmp_path, history, **place)), "--ebird", str(out)]) == 0
    rows = list(csv.reader(out.open(newline="")))
    assert all(len(row) == len(EBIRD_COLUMNS) == 19 for row in rows), "19 columns, no header"
    by_name = [dict(zip(EBIRD_COLUMNS, row, strict=True)) for row in rows]
    assert [(r["Location Name"], r["Common Name"], r["Number"]) for r in by_name] == [
        ("Back garden feeder", "Eurasian Blue Tit", "1"),
        ("Back garden feeder", "Great Tit", "2"),  # the most at once, not the visits (3)
        ("Back garden feeder", "Robin", "1"),
    ]
    feeder = by_name[1]
    assert feeder["Date"] == "11/24/2026" and feeder["Start Time"] == "08:00", "MM/DD/YYYY, the first visit"
    assert feeder["Duration"] == str(math.ceil((3000 + 40) / 60)), "minutes from the first visit to the last end"
    assert (feeder["Latitude"], feeder["Longitude"]) == ("48.137154", "11.576124")
    assert (feeder["State/Province"], feeder["Country Code"], feeder["Protocol"]) == ("BY", "DE", "Stationary")
    assert (feeder["Number of Observers"], feeder["All observations reported?"]) == ("1", "N")
    assert feeder["Species Comments"] == "3 visit(s) seen by birdwatch" and feeder["Genus"] == feeder["Species"] == ""
    window = by_name[2]
    assert window["Submission Comments"] == "birdwatch camera window" and window["Duration"] == "1"
    assert "ebird.csv: 3 row(s)" in capsys.readouterr().out


def test_the_visits_csv_reads_back_as_it_was_written(history: Path, tmp_path: Path) -> None:
    out = tmp_path / "visits.csv"
    assert main(["export", "visits", "--db", str(history), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["visit_id"] for r in rows] == ["a", "b", "e", "c", "d"], "oldest first"
    a = rows[0]
    assert (a["species"], a["camera"], a["snapshot"], a["ended"], a["events"]) == (
        "Great Tit",
        "feeder",
        "snapshots/a.jpg",
        "1",
        "2",
    )
    assert float(a["first_seen"]) == MORNING and float(a["last_seen"]) == MORNING + 60
    assert a["event_kind"] == "end" and a["event_end_reason"] == "timeout"
    assert json.loads(a["event_top_k"]) == [{"species": "Great Tit", "score": 0.8}]
    assert json.loads(a["event_box"]) == [1, 2, 30, 40]


def test_ebird_without_the_feeders_place_is_one_line(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ebird.csv"
    assert main(["export", "visits", "--config", str(config(tmp_path, history)), "--ebird", str(out)]) == 2
    assert "set location.latitude and location.longitude" in capsys.readouterr().err
