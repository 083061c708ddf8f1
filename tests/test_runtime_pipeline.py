"""The deploy loop: JSON lines, annotated video, limits and stopping."""

from __future__ import annotations

import io
import json
import threading

import cv2
import numpy as np
import pytest
from onnx_fixtures import expected_named, grouped, make_encoder, make_model, reference_head

from jepa_edge.runtime import HeadModeError, PipelineConfig, load_model, open_source, run
from jepa_edge.runtime.capture import CaptureConfig
from jepa_edge.runtime.sources import ArraySource
from jepa_edge.world import WorldConfig, render, simulate


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=2)
    head = reference_head(enc, seed=5)
    return {"enc": enc, "head": head, "fused": make_model(d / "fused.onnx", enc, "fused", head),
            "head_inputs": make_model(d / "hi.onnx", enc, "head_inputs")}


def sim(n: int, size: int = 32) -> np.ndarray:
    return render(simulate(WorldConfig(), 1, n, 0), "top", size, 0)[0]


def test_json_lines_per_frame_with_values_and_latencies(models):
    enc, head = models["enc"], models["head"]
    frames = sim(6)  # 32x32, resized to the model's 16x16 inside the loop
    out = io.StringIO()
    summary = run(load_model(models["head_inputs"], "ort-cpu"), ArraySource(frames), head=head, out=out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 6 == summary.frames and summary.reason == "end_of_stream"
    resized = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in frames])
    for i, rec in enumerate(lines):
        assert rec["frame"] == i and rec["dropped"] == 0 and rec["corrupt"] == 0 and rec["head_version"] == 1
        assert set(rec["latency_ms"]) == {"wait", "read", "preprocess", "infer", "head", "e2e"}
        assert all(v >= 0 for v in rec["latency_ms"].values())
        assert rec["latency_ms"]["e2e"] >= rec["latency_ms"]["infer"]
        want = expected_named(head, head.split(head.apply(enc.z(resized[i : i + 1]))))
        got = grouped(rec["outputs"])
        assert set(got) == set(want)  # z is left out unless emit_latent
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=2e-5)
        position = next(o for o in head.outputs if o.name == "position")
        assert [k for k in rec["outputs"] if k.startswith("position.")] == [f"position.{c}" for c in position.labels]
    assert set(summary.latency_ms) == {"wait", "read", "preprocess", "infer", "head", "e2e", "output"}
    assert summary.latency_ms["infer"]["n"] == 6
    assert summary.rss_start_kb is None or summary.rss_end_kb > 0
    json.dumps(summary.to_dict())  # JSON-able


def test_max_frames_emit_latent_and_sim_spec(models):
    out = io.StringIO()
    cfg = PipelineConfig(max_frames=3, emit_latent=True)
    summary = run(load_model(models["fused"], "ort-cpu"), "sim:top?size=16&seed=1", cfg, out=out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert summary.reason == "max_frames" and len(lines) == 3
    assert len(lines[0]["outputs"]["z"]) == 8 and set(grouped(lines[0]["outputs"])) == {"z", "z_mapped", "position"}
    assert len(lines[0]["source"]["positions"]) == 3  # simulator ground truth travels with the frame


def test_annotated_video_written(models, tmp_path):
    path = tmp_path / "annotated.avi"
    cfg = PipelineConfig(video_out=str(path), annotate_size=128)
    src = ArraySource(sim(5), fps=12.0)
    run(load_model(models["fused"], "ort-cpu"), src, cfg, out=None)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    got = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        got.append(img)
    cap.release()
    assert len(got) == 5 and got[0].shape == (128, 128, 3)
    plain = cv2.resize(src.frames[0], (128, 128), interpolation=cv2.INTER_NEAREST)
    text_rows = np.abs(got[0][:40].astype(int) - plain[:40].astype(int)).mean()
    assert text_rows > 5  # captions and probe values were drawn


def test_stop_event_and_interrupt(models):
    stop = threading.Event()

    def on_frame(record, outputs):
        if record["frame"] == 2:
            stop.set()

    src = open_source("sim:top?size=16")  # endless
    summary = run(load_model(models["fused"], "ort-cpu"), src, out=None, stop=stop, on_frame=on_frame)
    assert summary.reason == "stopped" and summary.frames == 3

    def interrupt(record, outputs):
        raise KeyboardInterrupt

    summary = run(load_model(models["fused"], "ort-cpu"), open_source("sim:top?size=16"), out=None,
                  on_frame=interrupt)
    assert summary.reason == "interrupted" and summary.frames == 0


def test_latest_policy_drops_when_inference_is_slow(models):
    """A realtime-paced source faster than the consumer: frames are skipped, never queued."""
    seen = []

    def slow(record, outputs):
        seen.append(record["frame"])
        threading.Event().wait(0.03)

    cfg = PipelineConfig(capture=CaptureConfig(realtime=True))
    summary = run(load_model(models["fused"], "ort-cpu"), ArraySource(sim(20), fps=200.0), cfg, out=None,
                  on_frame=slow)
    assert summary.capture["dropped"] > 0
    assert seen == sorted(seen) and len(seen) < 20 and seen[-1] >= 15  # fresh frames, not a backlog


def test_swap_on_fused_model_is_refused(models):
    with pytest.raises(HeadModeError, match="cannot be swapped.*--mode head-inputs.*--head-mode numpy"):
        run(load_model(models["fused"], "ort-cpu"), ArraySource(sim(2)), PipelineConfig(head_mode="model"),
            head=models["head"], out=None)


def test_bad_video_suffix(models, tmp_path):
    with pytest.raises(ValueError, match="annotated video must be"):
        run(load_model(models["fused"], "ort-cpu"), ArraySource(sim(2)),
            PipelineConfig(video_out=str(tmp_path / "x.gif")), out=None)


def test_source_lost_mid_run_raises_with_the_summary_of_what_ran(models):
    from fake_sources import LostCamera

    from jepa_edge.runtime.errors import SourceLostError

    src = LostCamera(frames=3)
    src.open()
    out = io.StringIO()
    cfg = PipelineConfig(capture=CaptureConfig(policy="all", max_retries=1, reconnect_initial_s=0.01))
    with pytest.raises(SourceLostError, match="1 reopen attempts failed") as info:
        run(load_model(models["fused"], "ort-cpu"), src, cfg, out=out)
    summary = info.value.summary
    assert summary.reason == "source_lost" and summary.frames == 3 == len(out.getvalue().splitlines())
    assert summary.capture["reconnects"] == 0


@pytest.mark.parametrize("bad", [{"max_frames": -1}, {"head_mode": "gpu"}, {"video_out": "x.gif"},
                                 {"capture": CaptureConfig(policy="newest")}])
def test_bad_pipeline_config_is_refused_before_any_frame_is_read(models, bad):
    reads = []

    class Spy(ArraySource):
        def read(self):
            reads.append(True)
            return super().read()

    with pytest.raises(ValueError):
        run(load_model(models["fused"], "ort-cpu"), Spy(np.zeros((1, 16, 16, 3), np.uint8)), PipelineConfig(**bad))
    assert not reads  # refused before the first frame was read
