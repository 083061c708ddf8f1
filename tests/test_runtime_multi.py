"""Many cameras, one batch: real MJPG videos of different content, one static batch per step, outputs per stream.

Routing is checked against the single-source loop on the same files (stream i's line for frame k carries the
outputs the one-camera run gives for frame k); per-stream stats are checked for consistency, never for time.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from onnx_fixtures import make_encoder, make_model, reference_head
from typer.testing import CliRunner

from jepa_edge.cli import app
from jepa_edge.runtime import CaptureConfig, PipelineConfig, load_model, run
from jepa_edge.runtime.bench import BenchConfig, bench_streams, benchmark
from jepa_edge.runtime.multi import ONE_SOURCE_ONLY, run_multi
from jepa_edge.video import open_video_writer
from jepa_edge.world import WorldConfig, render, simulate

PARITY = 1e-5  # same model, same frames, batch of 3 vs batch of 1: fp32 reduction order only


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=2)
    return make_model(tmp_path_factory.mktemp("multi") / "fused.onnx", enc, "fused", reference_head(enc, seed=5))


def write_video(path, n: int, seed: int, view: str = "top", fps: float = 30.0):
    """A real MJPG .avi of ``n`` rendered frames (32 px), seeded so every video shows a different scene."""
    frames = render(simulate(WorldConfig(), 1, n, seed), view, 32, 0)[0]  # (n, 32, 32, 3)
    writer = open_video_writer(path, fps, (32, 32))
    for f in frames:
        writer.write(f)
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("cams")
    return [write_video(d / "cam0.avi", 6, seed=0), write_video(d / "cam1.avi", 9, seed=1, view="oblique"),
            write_video(d / "cam2.avi", 4, seed=7)]


def lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def single_outputs(model_path, video: str) -> dict[int, dict]:
    out = io.StringIO()
    run(load_model(model_path, "ort-cpu"), video, out=out)
    return {rec["frame"]: rec["outputs"] for rec in lines(out.getvalue())}


def assert_same_outputs(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=PARITY)


class BatchSpy:
    """The model, recording the batch shape of every call."""

    def __init__(self, model, sleep_s: float = 0.0) -> None:
        self.model, self.sleep_s, self.shapes = model, sleep_s, []
        self.meta = model.meta

    def __getattr__(self, name):
        return getattr(self.model, name)

    def infer(self, frames):
        self.shapes.append(frames.shape)
        if self.sleep_s:
            time.sleep(self.sleep_s)  # slower than the camera: its latest-frame slot overwrites (drops)
        return self.model.infer(frames)


def test_streams_are_routed_like_single_runs_in_one_static_batch(model_path, videos):
    spy = BatchSpy(load_model(model_path, "ort-cpu"))
    out = io.StringIO()
    summary = run_multi(spy, videos, out=out)
    recs = lines(out.getvalue())
    assert summary.reason == "end_of_stream" and summary.frames == len(recs) == 6 + 9 + 4
    assert summary.steps == 9 and set(spy.shapes) == {(3, 16, 16, 3)}  # static batch: one row per camera, always
    for i, video in enumerate(videos):
        mine = [r for r in recs if r["stream"] == i]
        assert {r["source_name"] for r in mine} == {video}
        want = single_outputs(model_path, video)
        assert [r["frame"] for r in mine] == sorted(want)  # every frame once, in order (files read inline)
        for r in mine:
            assert_same_outputs(r["outputs"], want[r["frame"]])
            assert r["latency_ms"]["e2e"] >= r["latency_ms"]["infer"] >= 0
    for i, s in enumerate(summary.streams):
        assert s["stream"] == i and s["source"] == videos[i]
        assert s["frames"] == [6, 9, 4][i] == s["e2e_ms"]["n"]
        assert s["dropped"] == 0 and s["padded"] == 0  # inline reads: every step full until the stream ends
        assert 0 <= s["e2e_ms"]["p50_ms"] <= s["e2e_ms"]["p99_ms"] <= s["e2e_ms"]["max_ms"]
    assert summary.capture["read"] == summary.capture["delivered"] == 19
    json.dumps(summary.to_dict())


def test_a_slow_model_drops_frames_of_a_fast_camera_and_pads_a_slow_one(model_path, tmp_path):
    """Played in real time: the 100 FPS camera outruns a 20 ms inference (drops), the 5 FPS one has no new frame
    at most steps (padded: its row reruns its last frame, and no line is written for it)."""
    fast = write_video(tmp_path / "fast.avi", 60, seed=3, fps=100.0)
    slow = write_video(tmp_path / "slow.avi", 3, seed=4, fps=5.0)
    spy = BatchSpy(load_model(model_path, "ort-cpu"), sleep_s=0.02)
    out = io.StringIO()
    cfg = PipelineConfig(capture=CaptureConfig(realtime=True))
    summary = run_multi(spy, [fast, slow], cfg, out=out)
    recs = lines(out.getvalue())
    assert summary.reason == "end_of_stream" and set(spy.shapes) == {(2, 16, 16, 3)}
    f, s = summary.streams
    assert f["dropped"] > 0 and s["dropped"] == 0 and s["padded"] > 0
    for st in summary.streams:
        mine = [r for r in recs if r["stream"] == st["stream"]]
        frames = [r["frame"] for r in mine]
        assert len(frames) == len(set(frames)) == st["frames"]  # a padded row never writes a line
        assert frames == sorted(frames)
        assert mine[-1]["dropped"] == st["dropped"]  # the line's counter is its own camera's
    assert [r["frame"] for r in recs if r["stream"] == 1] == [0, 1, 2]
    assert summary.capture["delivered"] + summary.capture["dropped"] <= summary.capture["read"]
    want = single_outputs(model_path, fast)  # routing under drops: frame k's outputs are frame k's
    for r in recs:
        if r["stream"] == 0:
            assert_same_outputs(r["outputs"], want[r["frame"]])


def test_bench_with_several_sources_reports_per_stream_stats(model_path, videos):
    cfg = BenchConfig(warmup=1, n_frames=12, backends=("ort-cpu",), head_modes=("model",))
    report = benchmark(model_path, videos[:2], cfg)
    (r,) = report["results"]
    assert r["status"] == "ok" and r["batch"] == 2 and report["source"] == videos[:2]
    assert r["frames"] == sum(s["frames"] for s in r["streams"]) >= 12
    assert [s["source"] for s in r["streams"]] == videos[:2]
    for s in r["streams"]:
        assert s["frames"] > 0 and s["dropped"] == 0 and s["e2e_ms"]["p50_ms"] <= s["e2e_ms"]["p99_ms"]
    assert r["fps"] > 0 and r["e2e_ms"]["n"] == r["frames"]
    assert len(bench_streams(report)) == 1
    assert bench_streams(benchmark(model_path, videos[0], BenchConfig(warmup=0, n_frames=2, batch_sizes=(1,),
                                                                      backends=("ort-cpu",)))) == []


def test_cli_run_and_bench_take_several_sources(model_path, videos, tmp_path):
    out = tmp_path / "multi.jsonl"
    res = CliRunner().invoke(app, ["run", str(model_path), "--source", videos[0], "--source", videos[2],
                                   "--backend", "ort-cpu", "--jsonl", str(out)])
    assert res.exit_code == 0, res.output
    recs = lines(out.read_text())
    assert sorted({(r["stream"], r["source_name"]) for r in recs}) == [(0, videos[0]), (1, videos[2])]
    summary = json.loads(res.stderr[res.stderr.index("{"):])
    assert [s["frames"] for s in summary["streams"]] == [6, 4] and summary["frames"] == 10
    bad = CliRunner().invoke(app, ["run", str(model_path), "--source", videos[0], "--source", videos[1],
                                   "--backend", "ort-cpu", "--video-out", str(tmp_path / "v.avi")])
    assert bad.exit_code == 2 and ONE_SOURCE_ONLY.split(";")[0] in " ".join(bad.stderr.split())
    assert not (tmp_path / "v.avi").exists()
    bench = CliRunner().invoke(app, ["bench", str(model_path), "--source", videos[0], "--source", videos[1],
                                     "--backend", "ort-cpu", "--head-mode", "model", "--frames", "6",
                                     "--warmup", "0", "--json"])
    assert bench.exit_code == 0, bench.output
    report = json.loads(bench.stdout)
    assert [len(r["streams"]) for r in report["results"]] == [2]


def test_multicam_bench_script_reports_every_stream(model_path, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "mc.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "multicam_bench.py"), "--model", str(model_path),
                        "--head-mode", "model", "--streams", "3", "--fps", "30", "--seconds", "0.3", "--warmup", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=root, env=env, check=False)
    assert p.returncode == 0, p.stderr + p.stdout
    (r,) = json.loads(out.read_text())["results"]
    assert r["batch"] == 3 and len(r["streams"]) == 3 and r["frames"] >= 27  # 3 x 30 FPS x 0.3 s
    assert "3 streams" in p.stdout and "drops" in p.stdout


def test_frames_limit_counts_outputs_per_camera(model_path, videos):
    out = io.StringIO()
    summary = run_multi(load_model(model_path, "ort-cpu"), videos, PipelineConfig(max_frames=3), out=out)
    assert summary.reason == "max_frames" and summary.steps == 3 and summary.frames == 9
    assert [s["frames"] for s in summary.streams] == [3, 3, 3]
    with pytest.raises(ValueError, match="--video-out"):
        run_multi(load_model(model_path, "ort-cpu"), videos, PipelineConfig(video_out="x.avi"), out=None)
