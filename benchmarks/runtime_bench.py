"""Runtime latency: backends × head mode (in the model / numpy) × batch size on a generated video.

    python benchmarks/runtime_bench.py                       # fixture ONNX (tests/onnx_fixtures.py)
    python benchmarks/runtime_bench.py --model out/agentB.onnx --backends ort-cpu ort-cuda tensorrt
    python benchmarks/runtime_bench.py --torch               # + PyTorch eager of the fixture, if torch is here
    python benchmarks/runtime_bench.py --model demo/agentB.onnx --torch-run demo/runs/agentB \
        --view oblique --video-size 32 --threads 1 --decode-threads 1          # the demo agent
    python benchmarks/runtime_bench.py --model demo/agentB.onnx --view oblique --video-size 32 \
        --threads 1 --decode-threads 1 --batch-size 1 --head-modes model --frames 50000 --out soak.json

Writes a simulator video (MJPG .avi, jepa_edge.video), then runs
``jepa_edge.runtime.benchmark`` on it: every configuration decodes the same
file through the capture thread, so capture age, decode, resize, inference and
head are timed separately and end to end (from the decoded frame in hand to
outputs ready; decode is the ``read`` column); GPU backends add enqueue, H2D,
GPU compute and D2H where they measure them. Prints the tables; writes JSON
(with the machine: CPU, GPU and driver, ONNX Runtime build) to
``benchmarks/results/runtime_bench.json``. Backends missing on this machine
are listed as skipped, with the reason, below the tables. ``--threads`` is
given to every backend: ONNX Runtime and PyTorch eager. Keep ``--frames`` small on a shared
machine: numbers from a loaded CPU are noisy, compare p50 rather than max.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from jepa_edge.runtime import BenchConfig
from jepa_edge.runtime.bench import bench_detail, bench_notes, bench_table, benchmark
from jepa_edge.video import open_video_writer
from jepa_edge.world import WorldConfig, render, simulate

ROOT = Path(__file__).resolve().parents[1]


def write_sim_video(path: Path, n_frames: int, size: int, view: str, fps: float = 30.0) -> Path:
    frames = render(simulate(WorldConfig(), 1, n_frames, 0), view, size, 0)[0]  # (T, S, S, 3) BGR
    writer = open_video_writer(path, fps, (size, size))  # MJPG for .avi
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def fixture_models(folder: Path, size: int, latent_dim: int):
    """A contract ONNX pair (fused + head_inputs) the size of a small real agent, and its head."""
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_fixtures import make_encoder, make_model, reference_head

    enc = make_encoder(height=size, width=size, latent_dim=latent_dim, seed=0)
    head = reference_head(enc)
    models = [make_model(folder / "fixture_fused.onnx", enc, "fused", head),
              make_model(folder / "fixture_head_inputs.onnx", enc, "head_inputs")]
    return models, enc, head


def torch_eager(enc, head, threads: int):
    """PyTorch eager of the fixture encoder + head: the runtime cannot import torch, so it is passed in."""
    import torch

    from jepa_edge.agents.eager import EagerBackend

    class FixtureEncoder(torch.nn.Module):  # the fixture's tanh(x W + b) on frames scaled to [0, 1]
        def __init__(self):
            super().__init__()
            self.w, self.b = torch.from_numpy(enc.weight), torch.from_numpy(enc.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) float 0..255
            flat = x.permute(0, 2, 3, 1).reshape(len(x), -1) / 255.0  # (B, H*W*3), NHWC order as exported
            return torch.tanh(flat @ self.w + self.b)

    return EagerBackend(FixtureEncoder(), head, threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="exported .onnx / .engine (repeatable); default: fixture")
    ap.add_argument("--backends", nargs="*", default=[], help="default: every backend available here")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per configuration")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches per configuration")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--head-modes", nargs="+", default=["model", "numpy"], choices=["model", "numpy"],
                    help="model: the head inside the exported model; numpy: on z after the encoder")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads of ONNX Runtime and PyTorch eager (0 = their defaults)")
    ap.add_argument("--decode-threads", type=int, default=0, help="FFmpeg decoder threads (0 = FFmpeg's default)")
    ap.add_argument("--video-size", type=int, default=64, help="side of the generated video frames")
    ap.add_argument("--model-size", type=int, default=64, help="fixture input side (frames are resized to it)")
    ap.add_argument("--latent-dim", type=int, default=64, help="fixture latent dim")
    ap.add_argument("--view", default="top")
    ap.add_argument("--realtime", action="store_true", help="play the video at 30 FPS (drops when too slow)")
    ap.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                    help="ort-cuda: replay a captured CUDA graph per batch size (auto: fused / encoder-only graphs)")
    ap.add_argument("--torch", action="store_true", help="also time PyTorch eager of the fixture model")
    ap.add_argument("--torch-run", type=Path, help="agent run dir: also time its PyTorch eager encoder + head")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_bench.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = write_sim_video(tmp / "sim.avi", 150, args.video_size, args.view)
        extra = {}
        if args.model:
            models = [Path(m) for m in args.model]
            if args.torch_run:
                from jepa_edge.agents.eager import eager_backend

                extra["torch-eager"] = eager_backend(args.torch_run, threads=args.threads)
        else:
            models, enc, head = fixture_models(tmp, args.model_size, args.latent_dim)
            if args.torch:
                extra["torch-eager"] = torch_eager(enc, head, args.threads)
        cfg = BenchConfig(warmup=args.warmup, n_frames=args.frames, batch_sizes=tuple(args.batch_size),
                          head_modes=tuple(args.head_modes), backends=tuple(args.backends),
                          realtime=args.realtime, threads=args.threads,
                          decode_threads=args.decode_threads,
                          cuda_graph={"auto": None, "on": True, "off": False}[args.cuda_graph])
        report = benchmark(models, str(video), cfg, extra_backends=extra)
    report["source"] = f"generated {args.view} video {args.video_size}px, 150 frames, MJPG (looped)"
    report["models"] = [str(m) if args.model else m.name for m in models]
    console = Console(width=100)
    for table in (bench_table(report), *bench_detail(report)):
        console.print(table)
    for line in bench_notes(report):
        print(line, file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
