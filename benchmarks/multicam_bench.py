"""Many cameras, one batch: N videos played in real time, the newest frame of each in one inference per step.

    python benchmarks/multicam_bench.py                          # 8 streams x 30 FPS, the 32 px agent, ort-cpu
    python benchmarks/multicam_bench.py --streams 16 --backend ort-cuda --seconds 30
    python benchmarks/multicam_bench.py --model out/agentB.onnx --head-mode model   # a trained, fused agent

Writes ``--streams`` simulator videos (MJPG .avi, different scenes and views, ``--fps`` each) and runs
``jepa_edge.runtime.benchmark`` on all of them at once with ``realtime`` on: every video is played at its
rate by its own latest-frame capture thread, as a camera would be, so a camera whose frame is not taken before
its next one arrives drops it. One static batch per step (runtime/multi.py: one row per camera; a camera with
no new frame is padded, not output). Per stream: frames, drops, padded steps and capture → outputs latency
p50/p99 (from the frame read to its outputs ready); in all: outputs per second. Without ``--model`` the model is
the default 32 px agent's architecture (preset ``demo``) with untrained weights, encoder only, and the head in
numpy (the compute of a deployed agent; its outputs mean nothing). Prints the tables and one verdict line;
writes JSON (with the machine) to ``benchmarks/results/multicam_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

from rich.console import Console

from jepa_edge.runtime import BenchConfig
from jepa_edge.runtime.bench import bench_notes, bench_streams, bench_table, benchmark
from jepa_edge.video import open_video_writer
from jepa_edge.world import WorldConfig, render, simulate

VIEWS = ("top", "oblique")


def write_videos(folder: Path, n: int, frames: int, size: int, fps: float) -> list[str]:
    """``n`` videos of different scenes (world seed i, views alternating)."""
    paths = []
    for i in range(n):
        images = render(simulate(WorldConfig(), 1, frames, i), VIEWS[i % 2], size, 0)[0]  # (T, S, S, 3) BGR
        path = folder / f"cam{i}.avi"
        writer = open_video_writer(path, fps, (size, size))
        for img in images:
            writer.write(img)
        writer.release()
        paths.append(str(path))
    return paths


def default_model(folder: Path) -> Path:
    """The default 32 px agent (preset demo), untrained, exported encoder only: a deployed agent's compute."""
    from jepa_edge.agents.untrained import save_untrained_run
    from jepa_edge.export import export_agent

    run_dir = folder / "agent32"
    save_untrained_run(run_dir, "demo", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        return Path(export_agent(run_dir, folder / "agent32.onnx", mode="encoder_only").path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="exported .onnx (default: the untrained 32 px agent, encoder only)")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--fps", type=float, default=30.0, help="each camera's rate")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed outputs = streams x fps x seconds")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps")
    ap.add_argument("--video-size", type=int, default=32)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--head-mode", default="numpy", choices=("model", "numpy"))
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--decode-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/multicam_bench.json"))
    args = ap.parse_args()
    if args.streams < 1 or args.fps <= 0 or args.seconds <= 0:
        ap.error("need --streams >= 1, --fps > 0 and --seconds > 0")
    n_frames = round(args.streams * args.fps * args.seconds)
    cfg = BenchConfig(warmup=args.warmup, n_frames=n_frames, head_modes=(args.head_mode,), backends=(args.backend,),
                      realtime=True, threads=args.threads, decode_threads=args.decode_threads)
    with tempfile.TemporaryDirectory(prefix="jepa-edge-multicam-") as tmp:
        folder = Path(tmp)
        videos = write_videos(folder, args.streams, 300, args.video_size, args.fps)  # looped: 10 s at 30 FPS
        model = args.model or default_model(folder)
        report = benchmark(model, videos, cfg)
    report["what"] = (f"{args.streams} videos at {args.fps:g} FPS each, played in real time, one batch per step; "
                      + ("the given model" if args.model else "default 32 px agent (preset demo), untrained, "
                         "encoder only + numpy head"))
    console = Console(width=100)
    console.print(bench_table(report))
    for table in bench_streams(report):
        console.print(table)
    for line in bench_notes(report):
        console.print(line, highlight=False, markup=False)
    ok = [r for r in report["results"] if r["status"] == "ok"]
    for r in ok:
        worst = max(s["e2e_ms"]["p99_ms"] for s in r["streams"])
        console.print(f"{r['backend']} {r['head_mode']}: {len(r['streams'])} streams, {r['frames']} outputs, "
                      f"{r['fps']:.1f} outputs/s, drops {r['dropped']}, worst stream p99 capture → output "
                      f"{worst:.2f} ms", highlight=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
