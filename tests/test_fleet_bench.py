"""benchmarks/fleet_bench.py runs end to end on a short window (not timed: numbers live in benchmarks/results/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("zenoh")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fleet_bench_writes_a_report(tmp_path):
    out = tmp_path / "fleet.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fleet_bench.py"), "--seconds", "1",
                        "--modes", "block", "--out", str(out)], check=False, capture_output=True, text=True,
                       timeout=180, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["outputs_on_congestion"] == "block" and run["publish_to_applied_ms"]["sent"] >= 3
    assert run["publish_to_applied_ms"]["n"] == run["publish_to_applied_ms"]["sent"]  # every probe got applied
    assert run["outputs"]["received_in_window"] > 0 and run["outputs"]["lost_in_window"] == 0
