"""`birdwatch bench` runs offline from nothing and reports every figure issue 4 asks for.
(A smoke test of the measuring, not a speed test: figures on a shared machine prove nothing.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(600)
def test_bench_json_has_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "birdwatch",
            "bench",
            "--json",
            "--quick",
            "--seconds",
            "2",
            "--cameras",
            "2",
            "--crops",
            "8",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "untrained" in report["note"] and report["peak_rss_mb"] > 0
    (r,) = report["results"]
    assert r["network"] == "hgnet_v2_b2" and r["input"] == [256, 256]
    assert set(r["model_only"]) == {"1", "8", "32"} and all(v > 0 for v in r["model_only"].values())
    assert set(r["detector_only"]) == {"1", "4"} and all(v > 0 for v in r["detector_only"].values())
    nb = r["naive_vs_batched"]
    assert nb["naive_crops_per_s"] > 0 and nb["batched_crops_per_s"] > 0 and nb["ratio"] > 0
    pl = r["pipeline"]
    assert pl["cameras"] == 2 and pl["crops_per_s"] > 0 and pl["ratio"] > 0
    assert pl["frames_read"] > 0 and pl["frames_dropped"] >= 0
    assert pl["latency_ms"]["read_to_event"]["p50"] is not None
    assert pl["latency_ms"]["read_to_event"]["p95"] >= pl["latency_ms"]["read_to_event"]["p50"]
    assert set(pl["stages"]) == {"locate", "classify"}
    # The backend table: every backend installed for the CPU, measured in this run, with ratios to torch.
    assert set(r["backends"]) == {"torch", "onnxruntime", "openvino"}
    for row in r["backends"].values():
        assert all(v > 0 for v in row["model_only"].values()) and row["detector_regions_per_s"] > 0
        assert row["pipeline_crops_per_s"] > 0 and row["pipeline_ratio_to_own_model_only"] > 0
        assert set(row["ratio_to_torch"]) == {"model_only_1", "model_only_8", "model_only_32", "detector", "pipeline"}
    assert r["backends"]["torch"]["ratio_to_torch"]["model_only_8"] == 1.0
    assert pl["backend"] in r["backends"]
