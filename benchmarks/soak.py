"""Soak: the deploy loop (capture → preprocess → infer → head) for many frames; memory and latency drift.

    python benchmarks/soak.py                                   # fixture ONNX, 50k frames
    python benchmarks/soak.py --model demo/agentB.onnx --view oblique --video-size 32 --threads 1

Writes a simulator video (MJPG .avi) and loops it through ``Capture`` for
``--frames`` frames with batch 1. Unlike ``runtime_bench.py`` (which keeps
every stage's samples, so its RSS grows by 8 bytes per stage per frame by
design), the only per-frame storage here is one e2e array allocated and
touched before the run, so any RSS growth is the runtime's. Every
``frames/20`` frames it reads RSS. Pass/fail: RSS growth from the first
reading to the last ≤ ``--max-growth-mb``, and the p50 of the last 10% of
frames ≤ ``--max-drift`` x the p50 of the first 10%. Prints a table, writes
JSON to ``benchmarks/results/soak.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from jepa_edge.machine import machine_info
from jepa_edge.runtime import OrtConfig, load_model
from jepa_edge.runtime.capture import Capture
from jepa_edge.runtime.headswap import HeadStage
from jepa_edge.runtime.pipeline import preprocess
from jepa_edge.runtime.sources import open_source
from jepa_edge.runtime.stats import drift, rss_kb, summarize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import ROOT, fixture_models, write_sim_video


def soak(model_path: Path, video: Path, frames: int, warmup: int, threads: int, decode_threads: int) -> dict:
    model = load_model(str(model_path), "ort-cpu", OrtConfig(intra_op_threads=threads))
    stage = HeadStage(model, "model")  # the head in the model (a fused export, or the head_inputs defaults)
    e2e = np.full(frames, np.nan)  # touched now: its pages do not count as growth later
    every = max(1, frames // 20)
    trace: list[list[int]] = []
    with model, Capture(open_source(str(video), loop=True, decode_threads=decode_threads)) as cap:
        for _ in range(warmup):
            stage(model.infer(preprocess([cap.get().image], model.meta.input_size)))
        t_start = time.perf_counter()
        for i in range(frames):
            frame = cap.get()
            stage(model.infer(preprocess([frame.image], model.meta.input_size)))  # (1, H, W, 3) → outputs
            e2e[i] = (time.perf_counter() - frame.t_mono) * 1e3
            if i % every == 0 or i + 1 == frames:
                trace.append([i + 1, rss_kb() or 0])
        elapsed = time.perf_counter() - t_start
    growth_mb = (trace[-1][1] - trace[0][1]) / 1024
    return {"model": str(model_path), "frames": frames, "fps": frames / elapsed,
            "e2e_ms": summarize(e2e).to_dict(), "drift": drift(e2e).to_dict(),
            "rss_trace_kb": trace, "rss_growth_mb": growth_mb, "capture": cap.stats.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="exported .onnx (default: the fixture of runtime_bench.py)")
    ap.add_argument("--frames", type=int, default=50_000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--decode-threads", type=int, default=1, help="FFmpeg decoder threads")
    ap.add_argument("--video-size", type=int, default=64)
    ap.add_argument("--view", default="top")
    ap.add_argument("--max-growth-mb", type=float, default=1.0)
    ap.add_argument("--max-drift", type=float, default=1.1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        video = write_sim_video(Path(tmp) / "sim.avi", 150, args.video_size, args.view)
        model = args.model or fixture_models(Path(tmp), args.video_size, 64)[0][0]
        result = soak(model, video, args.frames, args.warmup, args.threads, args.decode_threads)
    checks = {"rss_growth": result["rss_growth_mb"] <= args.max_growth_mb,
              "latency_drift": result["drift"]["ratio"] <= args.max_drift}
    report = {"machine": machine_info(),
              "source": f"generated {args.view} video {args.video_size}px, 150 frames, MJPG (looped)",
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "result": {**result, "model": args.model.name if args.model else "fixture_fused.onnx"},
              "checks": checks}

    table = Table(title=f"soak — {report['result']['model']}, {args.frames} frames")
    for col in ("e2e p50 ms", "p99", "max", "FPS", "drift (last/first p50)", "RSS first MB", "RSS last MB",
                "growth MB", "pass"):
        table.add_column(col, justify="right")
    e, tr = result["e2e_ms"], result["rss_trace_kb"]
    table.add_row(f"{e['p50_ms']:.3f}", f"{e['p99_ms']:.3f}", f"{e['max_ms']:.2f}", f"{result['fps']:.0f}",
                  f"{result['drift']['ratio']:.3f}", f"{tr[0][1] / 1024:.1f}", f"{tr[-1][1] / 1024:.1f}",
                  f"{result['rss_growth_mb']:+.2f}", "yes" if all(checks.values()) else "NO")
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
