"""Training throughput (images/s) with fused vs manual attention.

Times full training steps (forward + backward + AdamW + EMA) of the default
JEPA on random clips; prints a table and writes JSON.

    python benchmarks/train_throughput.py [--steps 20] [--device cpu|cuda] [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from jepa_edge.train.config import RunConfig
from jepa_edge.train.jepa import JEPA


def measure(fused: bool, steps: int, warmup: int, batch: int, device: torch.device, amp: bool) -> dict:
    cfg = RunConfig().jepa
    torch.manual_seed(0)
    model = JEPA(cfg).to(device)
    for m in model.modules():  # encoder, target encoder, predictor and pool share the one switch
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    S = cfg.encoder.img_size
    clip = torch.rand(batch, cfg.context_frames + cfg.horizon, 3, S, S, device=device) * 255  # (B, L, 3, S, S)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = model.loss(clip)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target(0.996)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    p50 = times[len(times) // 2]
    images = batch * (cfg.context_frames + cfg.horizon)  # context frames (online) + target frame (EMA)
    return {"fused_attn": fused, "batch": batch, "step_ms_p50": 1e3 * p50, "images_per_s": images / p50,
            "clips_per_s": batch / p50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=RunConfig().train.batch_size)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda"
    rows = [measure(f, args.steps, args.warmup, args.batch, device, amp) for f in (True, False)]
    table = Table(title=f"JEPA training throughput ({device}, bf16 autocast={amp}, batch {args.batch})")
    for col in ("attention", "step p50 ms", "images/s", "clips/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row("fused (SDPA)" if r["fused_attn"] else "manual", f"{r['step_ms_p50']:.1f}",
                      f"{r['images_per_s']:.0f}", f"{r['clips_per_s']:.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "threads":
                                    torch.get_num_threads(), "platform": platform.platform(), "results": rows},
                                   indent=1))
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
