"""Training throughput: eager vs torch.compile vs CUDA graphs, fused (SDPA) vs manual attention, per batch size.

Times the training step of ``jepa_edge/train/loop.py`` (clips gathered on the device →
forward/backward → grad clip → AdamW → EMA) on the default JEPA, with frames already on the
device. Two numbers per row: ``step_ms_p50`` (each step timed on its own, synchronised) and
``step_ms_pipelined`` (``--steps`` steps back to back with one synchronisation at the end, as
the training loop runs them). Writes JSON with the machine (CPU model, GPU name).

    python benchmarks/train_throughput.py [--device cuda] [--batch 128 512] [--modes eager compile cuda-graphs]
    python benchmarks/train_throughput.py --device cpu --batch 32 --steps 5 --modes eager   # a quick CPU check

``compile`` on the CPU builds C++ kernels with inductor: its warm-up took minutes on a shared 2-core
machine (reported as ``warmup_s``). Timings belong in benchmarks/results only from an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from jepa_edge.machine import machine_info
from jepa_edge.train.clips import DeviceClips
from jepa_edge.train.config import RunConfig
from jepa_edge.train.jepa import JEPA
from jepa_edge.train.loop import LossModule, compile_options, forward_backward, make_optimizer

MODES = ("eager", "compile", "cuda-graphs")


def machine(device: torch.device) -> dict:
    """The machine (jepa_edge.machine) and what torch trains on here: threads, device, CUDA build and GPU."""
    info = {**machine_info(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info.update(cuda_device=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


class Step:
    """One training step exactly as the loop runs it (sections in the same order)."""

    def __init__(self, mode: str, fused: bool, batch: int, device: torch.device):
        self.cfg = RunConfig()
        self.cfg.train.batch_size = batch
        self.cfg.train.compile, self.cfg.train.cuda_graphs = mode == "compile", "on" if mode == "cuda-graphs" else "off"
        tc, jc = self.cfg.train, self.cfg.jepa
        torch.manual_seed(0)
        self.model = JEPA(jc).to(device)
        self.model.set_fused_attn(fused)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, tc, device)
        options = compile_options(tc, device, 1)
        runner = LossModule(self.model)
        self.runner = runner if options is None else torch.compile(runner, **options)
        S = jc.encoder.img_size
        frames = np.random.default_rng(0).integers(0, 256, (64, 32, S, S, 3), dtype=np.uint8)  # (E, T, S, S, 3)
        self.clips = DeviceClips(frames, batch, self.model.clip_len, 0, 0, device)
        amp = tc.amp and device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
        self.step_index = 0

    def __call__(self) -> None:
        if self.cfg.train.cuda_graphs == "on":
            torch.compiler.cudagraph_mark_step_begin()
        logs = forward_backward(self.runner, self.model, None, self.clips.sample(self.step_index), self.step_index,
                                self.cfg, self.opt, self.autocast)
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.opt.step()
        self.model.update_target(0.996)
        self.step_index += 1


def measure(mode: str, fused: bool, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    row = {"mode": mode, "fused_attn": fused, "batch": batch}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        step = Step(mode, fused, batch, device)
        t0 = time.perf_counter()
        for _ in range(warmup):  # the first call compiles / records the graph
            step()
        sync()
        row["warmup_s"] = round(time.perf_counter() - t0, 2)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        pipelined = (time.perf_counter() - t0) / steps
    except Exception as exc:  # noqa: BLE001 (a mode that cannot run here is reported, not fatal)
        return {**row, "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    p50 = float(np.median(times))
    images = batch * step.model.clip_len  # context frames (online) + target frame (EMA)
    return {**row, "status": "ok", "step_ms_p50": round(1e3 * p50, 3), "step_ms_pipelined": round(1e3 * pipelined, 3),
            "images_per_s": round(images / pipelined), "clips_per_s": round(batch / pipelined)}


def ratios(rows: list[dict]) -> dict:
    """Speed-ups from the pipelined step times: fused/manual per (mode, batch), compiled/eager per (attention, batch)."""
    ok = {(r["mode"], r["fused_attn"], r["batch"]): r["step_ms_pipelined"] for r in rows if r["status"] == "ok"}
    out: dict[str, float] = {}
    for (mode, fused, batch), ms in ok.items():
        if fused and (mode, False, batch) in ok:
            out[f"fused_vs_manual/{mode}/b{batch}"] = round(ok[(mode, False, batch)] / ms, 3)
        if mode != "eager" and ("eager", fused, batch) in ok:
            attn = "fused" if fused else "manual"
            out[f"{mode}_vs_eager/{attn}/b{batch}"] = round(ok[("eager", fused, batch)] / ms, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=None,
                    help="default: eager compile, plus cuda-graphs on CUDA")
    ap.add_argument("--attention", nargs="+", choices=("fused", "manual"), default=["fused", "manual"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0 = torch default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modes = args.modes or (list(MODES) if device.type == "cuda" else ["eager", "compile"])
    rows = [measure(mode, attn == "fused", batch, args.steps, args.warmup, device)
            for batch in args.batch for mode in modes for attn in args.attention]
    amp = RunConfig().train.amp and device.type == "cuda"
    table = Table(title=f"JEPA training step ({device}, bf16 autocast={amp})")
    for col in ("batch", "mode", "attention", "step p50 ms", "pipelined ms", "images/s", "status"):
        table.add_column(col, justify="right")
    for r in rows:
        ok = r["status"] == "ok"
        table.add_row(str(r["batch"]), r["mode"], "fused (SDPA)" if r["fused_attn"] else "manual",
                      f"{r['step_ms_p50']:.1f}" if ok else "-", f"{r['step_ms_pipelined']:.1f}" if ok else "-",
                      f"{r['images_per_s']:.0f}" if ok else "-", r["status"][:60])
    console = Console()
    console.print(table)
    report = {"machine": machine(device), "amp_bf16": amp, "steps": args.steps, "warmup": args.warmup,
              "results": rows, "speedups": ratios(rows)}
    console.print(report["speedups"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
