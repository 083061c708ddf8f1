"""The benchmark scripts run end to end on tiny settings (they are not timed here: numbers live in benchmarks/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], check=False, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_runtime_bench_script_writes_a_report(tmp_path):
    out = tmp_path / "rb.json"
    p = _script("runtime_bench.py", "--frames", "8", "--warmup", "1", "--batch", "1", "--backends", "ort-cpu",
                "--threads", "1", "--decode-threads", "1", "--video-size", "32", "--model-size", "32", "--out", str(out))
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert len(ok) == 2 * 2  # 2 fixture models x fused/unfused at batch 1
    assert all(r["frames"] == 8 and "read" in r["stages_ms_per_batch"] for r in ok)
    assert report["config"]["decode_threads"] == 1


def test_soak_script_traces_memory_and_drift(tmp_path):
    out = tmp_path / "soak.json"
    p = _script("soak.py", "--frames", "400", "--warmup", "5", "--video-size", "32", "--out", str(out),
                "--max-growth-mb", "1000", "--max-drift", "1000")
    assert p.returncode == 0, p.stderr + p.stdout
    report = json.loads(out.read_text())
    r = report["result"]
    assert r["frames"] == 400 and r["e2e_ms"]["n"] == 400 and r["capture"]["delivered"] == 405
    assert [t[0] for t in r["rss_trace_kb"]][-1] == 400 and len(r["rss_trace_kb"]) == 21
    assert report["checks"] == {"rss_growth": True, "latency_drift": True}
    p = _script("soak.py", "--frames", "50", "--warmup", "1", "--video-size", "32", "--out", str(out),
                "--max-drift", "0")  # an impossible bound fails the run with exit code 1
    assert p.returncode == 1 and json.loads(out.read_text())["checks"]["latency_drift"] is False
