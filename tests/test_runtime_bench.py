"""benchmark(): every configuration measured on a real video file, skipped backends say why."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from onnx_fixtures import make_encoder, make_model, reference_head
from rich.console import Console

from jepa_edge.runtime import BenchConfig, bench_table, benchmark
from jepa_edge.world import WorldConfig, render, simulate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=0)
    head = reference_head(enc)
    video = d / "sim.avi"
    frames = render(simulate(WorldConfig(), 1, 10, 0), "top", 32, 0)[0]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 32))
    for f in frames:
        writer.write(f)
    writer.release()
    return {"enc": enc, "head": head, "video": str(video),
            "fused": make_model(d / "fused.onnx", enc, "fused", head),
            "head_inputs": make_model(d / "hi.onnx", enc, "head_inputs")}


def test_benchmark_compares_models_modes_batches_and_extra_backends(setup):
    enc = setup["enc"]
    calls = []

    def numpy_reference(frames: np.ndarray) -> dict:  # stands in for a PyTorch-eager callable
        calls.append(frames.shape)
        return {"z": enc.z(frames)}

    cfg = BenchConfig(warmup=1, n_frames=12, batch_sizes=(1, 4), backends=("ort-cpu", "ort-cuda"))
    report = benchmark([setup["fused"], setup["head_inputs"]], setup["video"], cfg,
                       extra_backends={"numpy-ref": numpy_reference})
    ok = [r for r in report["results"] if r["status"] == "ok"]
    skipped = [r for r in report["results"] if r["status"] == "skipped"]
    # 2 models x 2 head modes x 2 batch sizes on the CPU, + the extra backend at 2 batch sizes
    assert len(ok) == 2 * 2 * 2 + 2
    assert {(r["head_mode"], r["graph"]) for r in ok} >= {("fused", "fused"), ("fused", "head_inputs"),
                                                          ("unfused", "encoder-only"), ("callable", "callable")}
    if "ort-cuda" not in {r["backend"] for r in ok}:  # a CPU machine says why, per model and mode
        assert len(skipped) == 4 and all("jepa-edge[gpu]" in r["reason"] for r in skipped)
    for r in ok:
        assert r["frames"] == 12 and r["fps"] > 0 and r["dropped"] == 0  # the file loops: 10 frames, 12 timed
        assert set(r["stages_ms_per_batch"]) == {"wait", "read", "preprocess", "infer", "head"}
        e = r["e2e_ms"]
        assert e["n"] == 12 and e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"] <= e["max_ms"]
        assert r["drift"]["ratio"] > 0 and "rss_start_kb" in r
        assert r["rss_trace"][-1][0] == 12 and r["samples_kb"] >= 0  # frames done at the last RSS reading
        assert all(a[0] < b[0] for a, b in zip(r["rss_trace"], r["rss_trace"][1:]))
    assert calls[0] == (1, 16, 16, 3) and (4, 16, 16, 3) in calls  # timed at the first model's input size
    json.dumps(report)
    console = Console(record=True, width=250)
    console.print(bench_table(report))
    text = console.export_text()
    assert "numpy-ref" in text and "fused.onnx" in text and "hi.onnx" in text
    assert ("skipped" in text) == bool(skipped)


def test_benchmark_with_given_head_and_bad_config(setup):
    report = benchmark(setup["head_inputs"], "sim:top?size=16", BenchConfig(warmup=0, n_frames=3, batch_sizes=(2,),
                       backends=("ort-cpu",), head_modes=("fused",)), head=setup["head"])
    (r,) = report["results"]
    assert r["status"] == "ok" and r["head_width"] == setup["head"].width and r["frames"] == 4  # whole batches
    with pytest.raises(ValueError, match="head_modes"):
        benchmark(setup["fused"], "sim:top", BenchConfig(head_modes=("baked",)))
