"""`birdwatch demo`: from nothing but the weights to told visits with snapshots, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_the_demo_tells_the_painted_birds_visits_with_their_snapshots(danube_weights: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "birdwatch", "demo", "--model-file", str(danube_weights), "--workdir", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=160,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "birdwatch running: 1 camera(s)" in result.stderr, "the real pipeline ran, its log shown"
    lines = result.stdout.strip().splitlines()
    told = re.fullmatch(r"birdwatch demo: (\d) visit\(s\) told for 3 painted birds", lines[0])
    assert told and 1 <= int(told.group(1)) <= 3, result.stdout  # never more visits than birds
    visits = lines[1 : 1 + int(told.group(1))]
    for line in visits:
        snapshot = re.search(r"snapshot (\S+_crop\.jpg)$", line)
        assert snapshot and (tmp_path / snapshot.group(1)).is_file(), line
    assert lines[-1] == "history: birdwatch events --db out/demo.db"

    history = subprocess.run(
        [sys.executable, "-m", "birdwatch", "events", "--db", "out/demo.db", "--kind", "end"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    assert len(history.stdout.strip().splitlines()) == len(visits), "each told visit is in the history, ended"
