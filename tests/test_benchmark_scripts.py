"""The benchmark scripts run end to end on tiny settings (they are not timed here: numbers live in benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], check=False, capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)  # this tree's jepa_edge, not an installed one


def test_runtime_bench_script_writes_a_report(tmp_path):
    out = tmp_path / "rb.json"
    p = _script("runtime_bench.py", "--frames", "8", "--warmup", "1", "--batch-size", "1", "--backends", "ort-cpu",
                "--threads", "1", "--decode-threads", "1", "--video-size", "32", "--model-size", "32", "--out", str(out))
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert len(ok) == 2 * 2  # 2 fixture models x head mode model/numpy at batch 1
    assert {r["head_mode"] for r in ok} == {"model", "numpy"} and all(r["threads"] == 1 for r in ok)
    assert all(r["frames"] == 8 and "read" in r["stages_ms_per_batch"] and r["capture_age_ms"]["n"] == 8 for r in ok)
    machine = report["machine"]
    assert machine["cores"] >= 1 and "gpu" in machine and "onnxruntime" in machine and len(machine["load_avg"]) == 3
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


def _no_gpu_env(tmp_path: Path) -> dict[str, str]:
    """This machine as one without a GPU, whatever it has: no nvidia-smi on PATH, no CUDA device for torch."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return {**os.environ, "PATH": str(empty), "CUDA_VISIBLE_DEVICES": ""}


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    import torch
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no nvidia-smi
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # and no CUDA device for torch, whatever is here
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here (nvidia-smi: not found")
    assert not out.exists()  # nothing measured, nothing written


def test_gpu_check_dry_run_plans_every_step(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"],
                       env=_no_gpu_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr
    plan = p.stdout
    for step in ("tests (gpu or trt)", "-m 'gpu or trt'", "tests (whole suite)", "--steps 300 --device cuda",
                 "write vit_tiny", "export agent32", "export vit_tiny", "tensorrt engine vit_tiny",
                 "bench agent32 head_inputs ort-cpu", "bench agent32 head_inputs ort-cuda", "probe agent32",
                 "export agent32 fused", "bench agent32 graph ort-cuda", "bench vit_tiny graph ort-cuda",
                 "--cuda-graph on", "--cuda-graph off", "bench vit_tiny trt tensorrt", "--batch-size 1 8", "--video-size 224",
                 "train_throughput.py --device cuda"):
        assert step in plan, step


def _bench_row(backend: str, mode: str, batch: int, infer_p50: float) -> dict:
    return {"agent": "agent32", "backend": backend, "head_mode": mode, "batch": batch, "status": "ok",
            "stages_ms_per_batch": {"infer": {"p50_ms": infer_p50}}}


def test_gpu_check_targets_from_measured_results(monkeypatch):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    rows = [_bench_row("ort-cpu", "model", 1, 0.6), _bench_row("ort-cuda", "model", 1, 0.2),
            _bench_row("ort-cuda", "numpy", 1, 0.196), _bench_row("ort-cuda", "model", 8, 0.32)]
    t = gpu_check.targets(rows)
    assert t["ort_cuda_b1_infer_p50_ms<=0.25"] == {"measured": 0.2, "met": True}
    assert t["ort_cuda_b1_below_ort_cpu"]["met"] is True
    assert t["ort_cuda_b8_infer_fps>=20000"]["measured"] == pytest.approx(25_000.0)
    assert t["fused_head_overhead<=3%"]["measured"] == pytest.approx(0.2 / 0.196 - 1)
    assert t["fused_head_overhead<=3%"]["met"] is True
    rows[1] = _bench_row("ort-cuda", "model", 1, 0.7)  # slower than the CPU and 3.6x the bare encoder
    t = gpu_check.targets(rows)
    assert [t[k]["met"] for k in ("ort_cuda_b1_infer_p50_ms<=0.25", "ort_cuda_b1_below_ort_cpu",
                                  "fused_head_overhead<=3%")] == [False, False, False]
    none = gpu_check.targets([_bench_row("ort-cpu", "model", 1, 0.6)])  # no GPU results: not measured, not failed
    assert all(none[k] == {"measured": None, "met": None} for k in none if k != "note")


def test_gpu_check_graph_targets_use_captured_graph_rows_only(monkeypatch):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)

    def graph_row(mode, batch, p50, status="on: one CUDA graph per static batch size"):
        return {**_bench_row("ort-cuda", mode, batch, p50), "variant": "graph", "cuda_graph": status}

    rows = [_bench_row("ort-cpu", "model", 1, 0.6), _bench_row("ort-cuda", "model", 1, 1.3),
            graph_row("model", 1, 0.1), graph_row("numpy", 1, 0.099), graph_row("model", 8, 0.2)]
    t = gpu_check.targets(rows, "graph")
    assert t["ort_cuda_b1_infer_p50_ms<=0.25"] == {"measured": 0.1, "met": True}
    assert t["ort_cuda_b1_below_ort_cpu"]["measured"] == pytest.approx(0.5)  # against the CPU's head_inputs row
    assert t["ort_cuda_b8_infer_fps>=20000"]["measured"] == pytest.approx(40_000.0)
    assert gpu_check.targets(rows)["ort_cuda_b1_infer_p50_ms<=0.25"] == {"measured": 1.3, "met": False}
    fell_back = [r if r.get("variant") != "graph" else {**r, "cuda_graph": "fallback to IOBinding: capture failed"}
                 for r in rows]  # a graph that was never captured is not a graph number
    assert gpu_check.targets(fell_back, "graph")["ort_cuda_b1_infer_p50_ms<=0.25"]["measured"] is None


def test_gpu_check_stopped_midway_still_writes_what_it_measured(tmp_path, monkeypatch):
    """SIGTERM (`timeout`) during a step: the step's process group is killed, the report keeps the rows so far."""
    import signal
    import threading

    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    row = {**_bench_row("ort-cuda", "model", 1, 0.2), "variant": "head_inputs", "e2e_ms": {"p50_ms": 0.3}, "fps": 3e3}
    before = signal.getsignal(signal.SIGTERM)

    def measured_then_hung_step(r, trt):
        r.results.append(row)  # a bench row already in
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        r.run("a step that hangs", [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=120)
        return {}

    monkeypatch.setattr(gpu_check, "train_and_export", measured_then_hung_step)
    out = tmp_path / "report.json"
    args = gpu_check.parse_args(["--cpu", "--out", str(out)])
    assert gpu_check.run_all(args, tmp_path, "--cpu") == 1
    report = json.loads(out.read_text())
    assert report["stopped"] == "stopped during 'a step that hangs'; later steps did not run"
    assert report["bench"] == [row] and report["steps"][-1]["reason"] == "stopped with the check"
    assert report["targets"]["ort_cuda_iobinding"]["ort_cuda_b1_infer_p50_ms<=0.25"]["measured"] == 0.2
    assert signal.getsignal(signal.SIGTERM) is before  # the check's handler is gone again


def test_gpu_check_refuses_a_keep_folder_in_use(tmp_path, monkeypatch, capsys):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    (tmp_path / "runs").mkdir()
    assert gpu_check.main(["--cpu", "--keep", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().out
