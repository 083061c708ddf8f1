"""benchmarks/fleet_bench.py runs end to end on a short window (not timed: numbers live in benchmarks/results/)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("zenoh")
pytest.importorskip("cryptography")


@pytest.mark.slow
def test_fleet_bench_writes_a_report(tmp_path, monkeypatch):
    from scripts import run_script  # main() in this process (agent B still runs as its own process)

    out = tmp_path / "fleet.json"
    run_script("fleet_bench", ["--seconds", "1", "--modes", "block", "--signing", "off", "on",
                               "--sign-iterations", "200", "--out", str(out)], monkeypatch)
    report = json.loads(out.read_text())
    runs = {run["signing"]: run for run in report["runs"]}
    assert sorted(runs) == ["off", "on"] and len(report["runs"]) == 2
    for run in runs.values():
        assert run["outputs_on_congestion"] == "block" and run["publish_to_applied_ms"]["sent"] >= 3
        assert run["publish_to_applied_ms"]["n"] == run["publish_to_applied_ms"]["sent"]  # every probe got applied
        assert run["outputs"]["received_in_window"] > 0 and run["outputs"]["lost_in_window"] == 0
        assert run["outputs"]["refused_in_window"] == 0
    machine = report["machine"]
    assert machine["cryptography"] and len(machine["load_avg"]) == 3 and len(machine["load_avg_end"]) == 3

    cost = report["sign_cost"]
    for what in ("outputs", "card_envelope", "probe_envelope_16k"):
        for op in ("sign", "verify"):
            assert 0 < cost[what][op]["median_us"] <= cost[what][op]["p99_us"]
    for name in ("unsigned", "signed"):
        assert cost["inbox_accept_outputs"][name]["median_us"] > 0
    assert cost["outputs_verify_per_s_one_core"] > 0
