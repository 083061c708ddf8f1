"""benchmarks/fleet_bench.py runs end to end on a short window (not timed: numbers live in benchmarks/results/)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("zenoh")


@pytest.mark.slow
def test_fleet_bench_writes_a_report(tmp_path, monkeypatch):
    from scripts import run_script  # main() in this process (agent B still runs as its own process)

    out = tmp_path / "fleet.json"
    run_script("fleet_bench", ["--seconds", "1", "--modes", "block", "--out", str(out)], monkeypatch)
    (run,) = json.loads(out.read_text())["runs"]
    assert run["outputs_on_congestion"] == "block" and run["publish_to_applied_ms"]["sent"] >= 3
    assert run["publish_to_applied_ms"]["n"] == run["publish_to_applied_ms"]["sent"]  # every probe got applied
    assert run["outputs"]["received_in_window"] > 0 and run["outputs"]["lost_in_window"] == 0
