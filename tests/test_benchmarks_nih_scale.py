"""``benchmarks/nih_scale.py`` (issue 21's GPU measurement) runs every phase at a CPU size and writes its numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "nih_scale.py"


@pytest.mark.slow
def test_every_phase_runs_tiny_and_writes_its_numbers(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny", "--budget", "900"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "nih_scale.json").read_text())
    phases = report["phases"]
    assert {k: v["status"] for k, v in phases.items()} == dict.fromkeys(("cache", "epoch", "explain", "throughput"),
                                                                        "ok")
    assert phases["cache"]["images"] == 300 and phases["cache"]["bytes"] >= 300 * 64 * 64
    assert phases["cache"]["peak_rss_bytes"] > 0
    assert phases["epoch"]["epochs"]["1"]["train_seconds"] > 0
    assert [j["status"] for j in phases["epoch"]["jobs"]["per_job"]] == ["ok", "ok"]
    projection = phases["epoch"]["projection"]
    assert projection["runs"] == 24 and projection["hours_one_job"] > 0 and "hours_2_jobs" in projection
    assert {"trigger/last/infected/mass_in_box", "trigger/middle/infected/mass_in_box"} <= set(
        phases["explain"]["layers"])
    assert set(phases["explain"]["defenses"]) == {"saliency", "sentinet", "februus"}
    assert phases["throughput"]["runs"][0]["rc"] == 0


def test_an_unknown_phase_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--phases", "cache,warp"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "warp" in done.stderr
