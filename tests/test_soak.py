"""bench/soak.py keeps working as the pipeline changes: a short run produces samples and a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import slope_per_min
from bench.soak import verdict

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_short_soak_run_reports_samples_and_a_verdict(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = [
        "--seconds",
        "8",
        "--interval",
        "2",
        "--cameras",
        "1",
        "--width",
        "320",
        "--height",
        "240",
        "--frames",
        "40",
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "bench/soak.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    # 8 s is too short to judge flatness (exit 0 or 1); it must not crash (anything else).
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "verdict: " in result.stdout and "Traceback" not in result.stderr
    report = json.loads(out.read_text())
    assert len(report["samples"]) >= 3
    first = report["samples"][0]
    assert first["rss_mb"] > 0 and first["fds"] > 0 and first["threads"] > 0
    assert report["samples"][-1]["frames_read"] > 0
    assert {"rss_slope_mb_per_min", "fds_growth", "threads_growth", "flat"} <= set(report["verdict"])


def test_verdict_flags_growth_only_in_the_second_half() -> None:
    def samples(rss: list[float], fds: list[int]) -> list[dict[str, object]]:
        return [
            {"t_s": 10.0 * i, "rss_mb": r, "fds": f, "threads": 20, "queues": {}}
            for i, (r, f) in enumerate(zip(rss, fds, strict=True))
        ]

    warm_then_flat = verdict(samples([500, 900, 1000, 1000, 1000, 1000], [8, 9, 9, 9, 9, 9]), 2.0, 2)
    assert warm_then_flat["flat"] and warm_then_flat["rss_slope_mb_per_min"] == 0
    leaking = verdict(samples([1000, 1000, 1000, 1010, 1020, 1030], [8] * 6), 2.0, 2)
    assert not leaking["flat"] and leaking["rss_slope_mb_per_min"] == 60.0
    fd_leak = verdict(samples([1000] * 6, [8, 8, 8, 12, 16, 20]), 2.0, 2)
    assert not fd_leak["flat"] and fd_leak["problems"] == ["fds +8"]
    assert slope_per_min([(0, 0), (60, 1)]) == 1.0
    # A swing of the allocator (one sample 100 MB up) is not growth; a steady climb under swings is.
    assert slope_per_min([(t, 1000 + (100 if t == 40 else 0)) for t in range(0, 90, 5)]) == 0.0
    assert slope_per_min([(t, 1000 + t / 6 + (30 if t % 10 else -30)) for t in range(0, 90, 5)]) > 5
