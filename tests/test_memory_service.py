"""The feeder memory in a real `birdwatch run`: a correction made on the page (its HTTP API, as the page's script
calls it) names the next visit of a bird that looks alike, and still does after a restart."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from pathlib import Path

import pytest
import yaml

from birdwatch.tools.synthetic import generate_frames
from birdwatch.tools.synthetic import write_video
from tests.fixtures_models import SMALL
from tests.fixtures_models import species_names
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.process import wait_until

PASSWORD = "a feeder's own password"
NEW = re.compile(r"new on feeder: (.+?) \(\d\.\d\d\) visit ([0-9a-f]{8})")


def feeder_config(weights: Path, tmp_path: Path) -> dict[str, object]:
    """One bird in each 4 s loop of the clip, gone for 2.4 s of it: every loop a new visit (the track times out)."""
    clip = tmp_path / "clip.avi"
    write_video(clip, generate_frames(320, 240, 40, n_birds=1, seed=5, present_fraction=0.4), fps=10)
    cameras = [{"name": "feeder", "url": str(clip), "loop": True, "motion": {"warmup_frames": 3}}]
    config = service_config(weights, cameras)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "password").chmod(0o600)
    config["web"]["password_file"] = str(tmp_path / "password")  # type: ignore[index]
    return config


def told(log: str) -> list[tuple[str, str]]:
    """(species, visit id prefix) of every `new` in the log, in order."""
    return NEW.findall(log)


def correct(port: int, visit_id: str, species: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/correct",
        data=json.dumps({"visits": [visit_id], "species": species}).encode(),
        headers={"Authorization": f"Bearer {PASSWORD}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        result: dict[str, object] = json.loads(answer.read())
        return result


@pytest.mark.timeout(240)
def test_a_correction_names_the_next_visit_alike_and_is_remembered_across_a_restart(
    small_weights: Path, tmp_path: Path
) -> None:
    config = feeder_config(small_weights, tmp_path)
    port = config["web"]["port"]  # type: ignore[index]
    bw = BirdwatchProcess(config, tmp_path).start()
    try:
        bw.wait_log("new on feeder", timeout=90)
        (model_says, prefix), *_ = told(bw.log)
        with sqlite3.connect(tmp_path / "birdwatch.db") as db:
            visit_id, top_k = db.execute(
                "SELECT visit_id, payload FROM events WHERE visit_id LIKE ? AND kind = 'new'", (prefix + "%",)
            ).fetchone()
        offered = {s["species"] for s in json.loads(top_k)["top_k"]}
        person_says = next(n for n in species_names(SMALL["classes"]) if n not in offered)  # not even in its top-k
        correct(port, visit_id, person_says)
        before = len(told(bw.log))
        wait_until(lambda: len(told(bw.log)) > before, timeout=60, what="the next visit")
        assert told(bw.log)[before][0] == person_says, f"the memory names it, where the model said {model_says}"
        with sqlite3.connect(tmp_path / "birdwatch.db") as db:
            novel = dict(
                db.execute("SELECT substr(visit_id, 1, 8), payload ->> 'novel' FROM events WHERE kind = 'new'")
            )
        assert novel[prefix] is None, "nothing remembered to compare the first visit with"
        assert novel[told(bw.log)[before][1]] == 0, "unsure, but like a bird named here: not novel"
    finally:
        assert bw.terminate() == 0, bw.log[-3000:]
    offset = len(bw.log)
    again = BirdwatchProcess(yaml.safe_load(bw.config_path.read_text()), tmp_path).start()
    try:
        wait_until(lambda: told(again.log[offset:]), timeout=90, what="a visit after the restart")
        assert told(again.log[offset:])[0][0] == person_says, "remembered across the restart"
    finally:
        assert again.terminate() == 0, again.log[-3000:]
    assert "Traceback" not in again.log
