"""`jepa-edge train`: one flat training loop with labelled sections.

Sections per step, in order: eval/checkpoint → sample clips → forward/backward
→ clip/step → EMA → log. The learning rate and EMA momentum are pure
functions of ``step`` and clip sampling is seeded by ``(seed, step, rank)``,
so ``--resume`` only needs the step and the saved tensors to continue exactly
where an interrupted run stopped.

Runs under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on
CUDA): each process samples its own clips, gradients are averaged, rank 0
evaluates and writes checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jepa_edge.calib.fingerprint import fingerprint_arrays
from jepa_edge.config import from_dict, to_dict
from jepa_edge.train.checkpoint import (
    CheckpointError,
    load_agent_meta,
    load_train_state,
    save_agent,
    save_train_state,
    state_to_numpy,
)
from jepa_edge.train.config import RunConfig
from jepa_edge.train.evaluate import encode_frames, state_probe
from jepa_edge.train.jepa import JEPA, ema_momentum_at, lr_at
from jepa_edge.world.dataset import ViewData, make_view_dataset


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    fingerprint: str
    metrics: dict[str, Any]  # final eval of the saved encoder
    untrained: dict[str, Any]  # the same eval at step 0 (the control)
    wall_time_s: float


class _LossModule(torch.nn.Module):
    """DDP hooks ``forward``; this makes ``forward(clip)`` the JEPA loss."""

    def __init__(self, jepa: JEPA):
        super().__init__()
        self.jepa = jepa

    def forward(self, clip: torch.Tensor):
        return self.jepa.loss(clip)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def load_view_data(cfg: RunConfig) -> tuple[ViewData, ViewData | None]:
    """Training frames and held-out eval frames (a different world seed) of one view."""
    d = cfg.data
    if d.recording:
        return make_view_dataset(d.view, d.img_size, recording=d.recording), None
    train = make_view_dataset(d.view, d.img_size, world=d.world, n_episodes=d.n_episodes,
                              n_steps=d.episode_len, seed=d.world_seed)
    held_out = make_view_dataset(d.view, d.img_size, world=d.world, n_episodes=d.eval_episodes,
                                 n_steps=d.episode_len, seed=d.world_seed + 10_007)
    return train, held_out


def sample_clips(frames: torch.Tensor, batch: int, clip_len: int, seed: int, step: int, rank: int) -> torch.Tensor:
    """(E, T, 3, S, S) uint8 → (B, clip_len, 3, S, S) float; a pure function of (seed, step, rank)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + rank)
    E, T = frames.shape[:2]
    e = torch.randint(0, E, (batch,), generator=g)  # (B,)
    t = torch.randint(0, T - clip_len + 1, (batch,), generator=g)  # (B,)
    idx = t[:, None] + torch.arange(clip_len)[None]  # (B, L)
    return frames[e[:, None], idx].float()  # (B, L, 3, S, S)


def evaluate(model: JEPA, held_out: ViewData | None, device: torch.device) -> dict[str, Any]:
    if held_out is None or held_out.states is None:
        return {}
    out: dict[str, Any] = {}
    for tag, enc in (("", model.target_encoder), ("online_", model.encoder)):
        z = encode_frames(enc, held_out.frames, device=device)
        out.update({f"{tag}{k}": v for k, v in state_probe(z, held_out.states).items()})
    return out


def _agent_meta(cfg: RunConfig, step: int, metrics: dict, untrained: dict, source: str) -> dict[str, Any]:
    return {"name": cfg.name, "view": cfg.data.view, "step": step, "encoder": to_dict(cfg.jepa.encoder),
            "run": cfg.to_dict(), "data_source": source, "metrics": metrics, "untrained_metrics": untrained}


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> TrainResult:
    """Train one agent; ``stop_at`` ends early after checkpointing at that step (for interruption tests)."""
    cfg.validate()
    out_dir = Path(out_dir)
    rank, world, local_rank = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo")
    device = _resolve_device(cfg.train.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    tc = cfg.train

    # ---- setup: data, model, optimiser, resume
    train_data, held_out = load_view_data(cfg)
    frames = torch.from_numpy(train_data.frames).permute(0, 1, 4, 2, 3).contiguous()  # (E, T, 3, S, S) uint8
    torch.manual_seed(tc.seed)
    model = JEPA(cfg.jepa).to(device)
    modules: dict[str, torch.nn.Module] = {"model": model}
    align = None
    if cfg.teacher.run:
        if world > 1:
            raise ValueError("student training with --teacher runs in one process; drop torchrun for it")
        from jepa_edge.train.teacher import build_alignment  # student mode: align to a frozen teacher through W

        align = build_alignment(cfg, device)
        modules["align"] = align
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    step, untrained, wall_before = 0, {}, 0.0
    if resume:
        saved = json.loads((out_dir / "train_state.json").read_text()) if (out_dir / "train_state.json").is_file() \
            else None
        if saved is None:
            raise CheckpointError(f"{out_dir}: nothing to resume (no train_state.json); drop --resume to start fresh")
        if from_dict(RunConfig, saved["config"]) != cfg:
            raise CheckpointError(
                f"{out_dir}: the saved run used a different config; resume with the same options "
                "(or train into a new --out)"
            )
        info = load_train_state(out_dir, modules, opt)
        step, untrained, wall_before = info["step"], info.get("untrained", {}), info.get("wall_time_s", 0.0)
    elif (out_dir / "train_state.json").exists():
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or choose a new --out")
    runner: torch.nn.Module = _LossModule(model)
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda"
                                                           else None)
    if tc.compile and device.type == "cuda":
        model.encoder = torch.compile(model.encoder)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=tc.amp and device.type == "cuda")
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log_f = open(out_dir / "log.jsonl", "a") if is_main else None  # noqa: SIM115 (closed below)

    def checkpoint(at: int, metrics: dict) -> str | None:
        if not is_main:
            return None
        info = {"step": at, "config": cfg.to_dict(), "untrained": untrained, "metrics": metrics,
                "wall_time_s": wall_before + time.time() - t0}
        save_train_state(out_dir, modules, opt, info)
        return save_agent(out_dir, model.target_encoder,
                          _agent_meta(cfg, at, metrics, untrained, train_data.source))

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                   disable=not (progress and is_main))
    task = bar.add_task(f"train {cfg.name} ({cfg.data.view})", total=tc.steps, completed=step, info="")
    t0 = time.time()
    metrics: dict[str, Any] = {}
    fingerprint = ""
    clip_len = cfg.jepa.context_frames + cfg.jepa.horizon
    with bar:
        while True:
            # ---- eval / checkpoint
            last = step >= tc.steps or (stop_at is not None and step >= stop_at)
            if is_main and (step % tc.eval_every == 0 or last):
                metrics = evaluate(model, held_out, device)
                if step == 0 and not untrained:
                    untrained = dict(metrics)
                if log_f:
                    log_f.write(json.dumps({"step": step, "eval": metrics}) + "\n")
                    log_f.flush()
            if (step > 0 and step % tc.ckpt_every == 0) or last:
                fingerprint = checkpoint(step, metrics) or fingerprint
            if world > 1:
                dist.barrier()
            if last:
                break

            # ---- sample clips
            clip = sample_clips(frames, tc.batch_size, clip_len, tc.seed, step, rank).to(device)

            # ---- forward / backward
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                loss, logs = runner(clip)
                if align is not None:
                    align_loss, align_logs = align.loss(model.encoder, step)
                    loss = loss + cfg.teacher.weight * align_loss
                    logs = {**logs, **align_logs}
            opt.zero_grad(set_to_none=True)
            loss.backward()

            # ---- clip / step / EMA
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            model.update_target(ema_momentum_at(step, tc.steps, cfg.jepa.ema_start, cfg.jepa.ema_end))
            step += 1

            # ---- log
            if is_main and (step % tc.log_every == 0 or step == 1):
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or resume "
                                             "from the last checkpoint")
                loss_value = float(loss.detach())
                rec = {"step": step, "lr": lr, **logs, "loss": loss_value, "grad_norm": float(grad_norm),
                       "time_s": round(time.time() - t0, 2)}
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                r2 = metrics.get("position_r2")
                bar.update(task, info=f"loss {loss_value:.4f}" + (f"  R² {r2:.3f}" if r2 is not None else ""))
            bar.update(task, completed=step)
    if log_f:
        log_f.close()
    if world > 1:
        dist.barrier()
    fingerprint = fingerprint_arrays(state_to_numpy(model.target_encoder.state_dict()))  # same on every rank
    return TrainResult(out_dir, step, fingerprint, metrics, untrained, wall_before + time.time() - t0)


def ensure_trained(cfg: RunConfig, out_dir: str | Path, progress: bool = True) -> bool:
    """Train ``out_dir`` unless it already holds this exact finished run (then return True);
    an interrupted run of it is resumed."""
    out_dir = Path(out_dir)
    try:
        meta = load_agent_meta(out_dir)
        if from_dict(RunConfig, meta["run"]) == cfg and meta["step"] == cfg.train.steps:
            return True
    except CheckpointError:
        pass
    train(cfg, out_dir, resume=(out_dir / "train_state.json").is_file(), progress=progress)
    return False
