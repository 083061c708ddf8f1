"""`jepa-edge train`: one flat training loop with labelled sections.

Sections per step, in order: eval/checkpoint → forward/backward → clip/step
→ EMA → log. The learning rate and EMA momentum are pure functions of
``step`` and the clips are drawn on the device from a generator seeded by
``(seed, step, rank)`` (``train/clips.py``), so ``--resume`` only needs the step
and the saved tensors to continue exactly where an interrupted run stopped.

A step never waits for the host (but the first three, synced to time the
warm-up: ``WarmupClock``): the frames live on the training device,
losses and metrics are summed there (``Meter``) and read back every
``log_every`` steps, which is also when a non-finite loss is detected
(``TrainingDivergedError``; the check runs again before every checkpoint, so
a diverged run never overwrites the last good one). On one CUDA process the
step runs as CUDA graphs by default (``choose_cuda_graphs``).

Runs under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on
CUDA): each process samples its own clips, gradients are averaged, rank 0
evaluates and writes checkpoints.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from jepa_edge.calib.fingerprint import fingerprint_arrays
from jepa_edge.config import to_dict
from jepa_edge.train.checkpoint import (
    CheckpointError,
    load_agent_meta,
    load_train_state,
    save_agent,
    save_train_state,
    state_to_numpy,
)
from jepa_edge.train.clips import DeviceClips
from jepa_edge.train.config import RunConfig, TrainConfig, saved_run_config, unused_worlds_from
from jepa_edge.train.evaluate import encode_frames, state_probe
from jepa_edge.train.jepa import JEPA, ema_momentum_at, lr_at
from jepa_edge.train.log import STATE_FILE, open_log, read_train_state
from jepa_edge.world.dataset import ViewData, make_view_dataset
from jepa_edge.world.worlds import on_robot


class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN/Inf; the checkpoint on disk is still the last good one."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    fingerprint: str
    metrics: dict[str, Any]  # final eval of the saved encoder
    untrained: dict[str, Any]  # the same eval at step 0 (the control)
    wall_time_s: float
    attention: dict[str, Any] = field(default_factory=dict)  # which attention path ran, and why
    cuda_graphs: dict[str, Any] = field(default_factory=dict)  # {"setting", "used", "why"}
    warmup_time: dict[str, float] = field(default_factory=dict)  # WarmupClock.record: where the first steps went


class LossModule(torch.nn.Module):
    """DDP and torch.compile wrap ``forward``; this makes ``forward(clip)`` the JEPA loss."""

    def __init__(self, jepa: JEPA):
        super().__init__()
        self.jepa = jepa

    def forward(self, clip: torch.Tensor):
        return self.jepa.loss(clip)


# ---------------------------------------------------------------- device, processes, data


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def setup_distributed(tc: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun each process binds its GPU *before* NCCL starts."""
    rank, world, local_rank = _dist_info()
    device = _resolve_device(tc.device)
    if device.type == "cuda":  # an explicit index: torchrun's local rank, else the one asked for or the current one
        index = local_rank if world > 1 else (device.index if device.index is not None else torch.cuda.current_device())
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)  # NCCL and the default CUDA stream must use this rank's GPU
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    return rank, world, device


def load_view_data(cfg: RunConfig) -> tuple[ViewData, ViewData | None]:
    """Training frames and held-out eval frames (a different world seed, with what a 3-D view shows) of one view."""
    d = cfg.data
    if d.recording:
        return make_view_dataset(d.view, d.img_size, recording=d.recording, topics=d.topics or None), None
    world = d.sim_world()
    train = make_view_dataset(d.view, d.img_size, world=world, n_episodes=d.n_episodes,
                              n_steps=d.episode_len, seed=d.world_seed)
    held_out = make_view_dataset(d.view, d.img_size, world=world, n_episodes=d.eval_episodes,
                                 n_steps=d.episode_len, seed=d.world_seed + 10_007, visible=True)
    return train, held_out


# ---------------------------------------------------------------- model, optimiser, compile


def build_modules(cfg: RunConfig, device: torch.device, world: int) -> tuple[JEPA, dict[str, torch.nn.Module]]:
    """The JEPA (and, for a student, the alignment to its teacher), seeded by ``train.seed``."""
    torch.manual_seed(cfg.train.seed)
    model = JEPA(cfg.jepa).to(device)
    modules: dict[str, torch.nn.Module] = {"model": model}
    if cfg.teacher.run:
        if world > 1:
            raise ValueError("student training with --teacher runs in one process; drop torchrun for it")
        from jepa_edge.train.teacher import build_alignment  # student mode: align to a frozen teacher through W

        modules["align"] = build_alignment(cfg, device)
    return model, modules


def optimizer_options(device: torch.device) -> dict[str, bool]:
    """One fused AdamW kernel on CUDA; the multi-tensor (foreach) implementation on the CPU."""
    return {"fused": True, "foreach": False} if device.type == "cuda" else {"fused": False, "foreach": True}


def make_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, **optimizer_options(device))


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _cuda_graph_blocker(device: torch.device, world: int) -> tuple[str, str] | None:
    """Why CUDA graphs cannot run here, as (the reason, the fix in CLI words), or None when they can."""
    if device.type != "cuda":
        return f"device {device.type}", "pass --device cuda on a GPU machine"
    if world > 1:
        return f"torchrun with {world} processes (DDP)", "train in one process, or use --compile under torchrun"
    if not _has_triton():
        return "triton is not installed (torch.compile's CUDA backend)", "install triton (pip install triton)"
    return None


def choose_cuda_graphs(tc: TrainConfig, device: torch.device, world: int) -> dict[str, Any]:
    """Whether the step runs as CUDA graphs, and why: the record kept in the run meta under ``"cuda_graphs"``.

    ``train.cuda_graphs`` "off" is obeyed; "auto" turns them on where they can run (one process on a CUDA
    device, triton installed) and records why not elsewhere; "on" where they cannot run is a ValueError (one
    line naming the fix), raised before any work: a user who asked for them, or for the gpu preset, gets them
    or an error, never a silently 4-5x slower run.
    """
    setting = tc.cuda_graphs
    if setting == "off":
        return {"setting": setting, "used": False, "why": "off requested"}
    blocker = _cuda_graph_blocker(device, world)
    if blocker is None:
        return {"setting": setting, "used": True, "why": "requested" if setting == "on" else "one CUDA process"}
    why, fix = blocker
    if setting == "on":
        raise ValueError(f"CUDA graphs cannot run here ({why}) but train.cuda_graphs is on (--cuda-graphs on, or "
                         f"--preset gpu, which would take hours without them); {fix}, or pass --cuda-graphs off")
    return {"setting": setting, "used": False, "why": why}


def compile_options(tc: TrainConfig, device: torch.device, world: int) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments for the step's loss module, or None for eager."""
    if choose_cuda_graphs(tc, device, world)["used"]:
        return {"mode": "reduce-overhead"}  # CUDA graphs: the batch shape is fixed, so one graph is replayed
    return {} if tc.compile else None


def wrap_runner(model: JEPA, tc: TrainConfig, device: torch.device, world: int) -> torch.nn.Module:
    """What the step calls: the loss module, under DDP when distributed, compiled when asked."""
    runner: torch.nn.Module = LossModule(model)
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda"
                                                           else None)
    options = compile_options(tc, device, world)
    return runner if options is None else torch.compile(runner, **options)


# ---------------------------------------------------------------- attention path per device

_ATTENTION_CHOICES: dict[tuple, dict[str, Any]] = {}  # (device, config, batch, amp) → measured choice, per process


def _timed_step(model: JEPA, clip: torch.Tensor, amp: bool) -> float:
    sync = torch.cuda.synchronize if clip.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.autocast(clip.device.type, dtype=torch.bfloat16, enabled=amp):
        loss, _ = model.loss(clip)
    loss.backward()
    sync()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure_attention(model: JEPA, batch: int, amp: bool, rounds: int = 3) -> dict[str, Any]:
    """Time forward+backward of a copy of ``model`` with each attention path, alternating; best of ``rounds``."""
    probe = copy.deepcopy(model)
    device = next(model.parameters()).device
    S, L = model.cfg.encoder.img_size, model.clip_len
    g = torch.Generator().manual_seed(0)  # a private generator: training's RNG streams stay untouched
    clip = (torch.rand(batch, L, 3, S, S, generator=g) * 255).to(device)  # (B, L, 3, S, S)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds + 1):  # round 0 warms both paths up
        for fused in (True, False):
            probe.set_fused_attn(fused)
            t = _timed_step(probe, clip, amp)
            if r:
                times[fused].append(t)
    fused_ms, manual_ms = 1e3 * min(times[True]), 1e3 * min(times[False])
    return {"fused": fused_ms <= manual_ms, "how": "measured", "fused_ms": round(fused_ms, 3),
            "manual_ms": round(manual_ms, 3), "batch": batch, "device": str(device)}


def choose_attention(model: JEPA, cfg: RunConfig, device: torch.device, amp: bool,
                     saved: dict[str, Any] | None) -> dict[str, Any]:
    """Set the attention path of every module and return the record kept in the run meta.

    ``jepa.encoder.fused_attn`` true/false is obeyed; "auto" times both paths on this
    device (cached per device and config in this process; rank 0's choice is used by every
    rank). A resumed run keeps the choice saved in its train state, so it stays bit-identical.
    """
    setting = cfg.jepa.encoder.fused_attn
    if saved is not None:
        choice = {**saved, "how": saved.get("how", "saved")}
    elif isinstance(setting, bool):
        choice = {"fused": setting, "how": "config"}
    else:
        key = (str(device), json.dumps(to_dict(cfg.jepa), sort_keys=True), cfg.train.batch_size, amp)
        if key not in _ATTENTION_CHOICES:
            _ATTENTION_CHOICES[key] = measure_attention(model, cfg.train.batch_size, amp)
        choice = dict(_ATTENTION_CHOICES[key])
        if dist.is_initialized():  # every rank runs rank 0's choice (a tensor broadcast: nothing is unpickled)
            shared = torch.tensor([float(choice["fused"]), choice["fused_ms"], choice["manual_ms"]], device=device)
            dist.broadcast(shared, src=0)
            fused, fused_ms, manual_ms = shared.tolist()
            choice.update(fused=bool(fused), fused_ms=round(fused_ms, 3), manual_ms=round(manual_ms, 3))
    model.set_fused_attn(bool(choice["fused"]))
    return {**choice, "setting": setting}


# ---------------------------------------------------------------- warm-up: where the time before steady steps goes


class WarmupClock:
    """Seconds from the start of ``train`` to the end of the first steps, in laps (the device synced at each).

    ``setup_s``: data, model, optimiser, resume, attention choice; ``eval_s``: the step-0 probe (and any
    checkpoint) before the first step; the first step split into ``first_forward_s`` (the first call of the
    loss module: torch.compile traces and compiles the forward there), ``first_backward_s`` (compiles the
    backward; a student's alignment loss too) and ``first_update_s`` (clipping, AdamW's lazy state, EMA);
    ``to_first_step_s``, the sum so far; then ``second_step_s`` (CUDA graphs record here: the first call only
    warms up) and ``third_step_s`` (the first replay). Only these first steps are synced for it.
    """

    STEP_LAPS = ("first_update_s", "second_step_s", "third_step_s")  # the lap that ends steps 1, 2 and 3

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.sync: Callable[[], None] = lambda: None
        self.record: dict[str, float] = {}

    def lap(self, key: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.record[key] = round(now - self._last, 4)
        self._last = now
        if key == self.STEP_LAPS[0]:
            self.record["to_first_step_s"] = round(now - self.start, 4)

    def timed(self, runner: Callable, key: str) -> Callable:
        """``runner`` with its call timed as lap ``key``."""
        def call(*args: Any) -> Any:
            out = runner(*args)
            self.lap(key)
            return out

        return call


# ---------------------------------------------------------------- resume


@dataclass
class _Start:
    step: int = 0
    untrained: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    attention: dict[str, Any] | None = None


def config_diff(saved: RunConfig, wanted: RunConfig, limit: int = 4) -> str:
    """The dotted keys where two run configs differ, with both values: "train.lr 0.002 → 0.01"."""
    def flat(d: dict, prefix: str = "") -> dict:
        out: dict = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved.to_dict()), flat(wanted.to_dict())
    diffs = [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs[:limit]) + (f", and {len(diffs) - limit} more" if len(diffs) > limit else "")


def restore(cfg: RunConfig, out_dir: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
            device: torch.device, resume: bool, graphs_used: bool = False) -> _Start:
    """Where this run starts: step 0 of a new run dir, or the saved state of an interrupted run."""
    if not resume:
        if (out_dir / STATE_FILE).exists():
            raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to start "
                                  "afresh, or choose another run folder")
        return _Start()
    if not (out_dir / STATE_FILE).is_file():
        raise CheckpointError(f"{out_dir}: nothing to resume (no {STATE_FILE}); drop --resume to start fresh")
    saved = read_train_state(out_dir)
    saved_cfg = unused_worlds_from(saved_run_config(saved["config"]), cfg)
    if saved_cfg.train.cuda_graphs != cfg.train.cuda_graphs:  # e.g. "off" saved, "auto" now: the same if it is off here
        renamed = replace(saved_cfg, train=replace(saved_cfg.train, cuda_graphs=cfg.train.cuda_graphs))
        if renamed == cfg and bool(saved.get("cuda_graphs", {}).get("used", False)) == graphs_used:
            saved_cfg = renamed
    if saved_cfg != cfg:
        raise CheckpointError(f"{out_dir}: the saved run used a different config ({config_diff(saved_cfg, cfg)}); "
                              f"resume with the same options, or train into another run folder (or pass --overwrite)")
    info = load_train_state(out_dir, modules, opt)
    for group in opt.param_groups:  # the saved groups carry the implementation flags of the machine that wrote them
        group.update(optimizer_options(device))
    return _Start(info["step"], info.get("untrained", {}), info.get("wall_time_s", 0.0), info.get("attention"))


# ---------------------------------------------------------------- metrics and divergence


class Meter:
    """Sums per-step metrics on the device; ``read()`` is the one host sync, at log/checkpoint steps.

    Under DDP ``read()`` averages over ranks too (one all-reduce), so every rank sees the
    same values and a divergence stops every process at the same step.
    """

    def __init__(self, device: torch.device, world: int):
        self.device, self.world = device, world
        self.names: list[str] = []
        self.total: torch.Tensor | None = None
        self.n = 0

    def add(self, logs: dict[str, torch.Tensor | float]) -> None:
        if not self.names:
            self.names = list(logs)
        vec = torch.stack([torch.as_tensor(logs[k], device=self.device).float() for k in self.names])  # (M,)
        self.total = vec if self.total is None else self.total + vec
        self.n += 1

    def read(self) -> dict[str, float]:
        """Means since the last ``reset()`` (over steps, and ranks)."""
        total = self.total.clone()
        if self.world > 1:
            dist.all_reduce(total)
        return dict(zip(self.names, (total / (self.n * self.world)).tolist(), strict=True))

    def reset(self) -> None:
        self.total, self.n = None, 0


def check_finite(values: dict[str, float], step: int, window: int, last_good: int | None, out_dir: Path,
                 lr: float) -> None:
    """Raise ``TrainingDivergedError`` when any metric of the last ``window`` steps is NaN/Inf."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if not bad:
        return
    kept = f"{out_dir} keeps the last good checkpoint (step {last_good})" if last_good is not None \
        else "no checkpoint was written"
    raise TrainingDivergedError(
        f"training diverged: {', '.join(f'{k}={v}' for k, v in bad.items())} in steps {step - window + 1}..{step} "
        f"(checked every log_every steps); {kept}; lower --lr (peak {lr:g}) or raise train.warmup / lower "
        "train.grad_clip, and train into another run folder (or pass --overwrite)"
    )


# ---------------------------------------------------------------- eval, checkpoint, log


def evaluate(model: JEPA, held_out: ViewData | None, device: torch.device) -> dict[str, Any]:
    if held_out is None or held_out.states is None:
        return {}
    out: dict[str, Any] = {}
    for tag, enc in (("", model.target_encoder), ("online_", model.encoder)):
        z = encode_frames(enc, held_out.frames, device=device)
        ego = held_out.states.kind == "3d" and on_robot(held_out.view)  # a camera on robot 0
        out.update({f"{tag}{k}": v for k, v in state_probe(z, held_out.states, visible=held_out.visible,
                                                                ego=ego).items()})
    return out


def _agent_meta(cfg: RunConfig, step: int, metrics: dict, untrained: dict, source: str,
                info: dict) -> dict[str, Any]:
    return {"name": cfg.name, "view": cfg.data.view, "step": step, "encoder": to_dict(cfg.jepa.encoder),
            "run": cfg.to_dict(), "data_source": source, "metrics": metrics, "untrained_metrics": untrained,
            "attention": info["attention"], "cuda_graphs": info["cuda_graphs"],
            "warmup_time": info["warmup_time"]}


def save_checkpoint(cfg: RunConfig, out_dir: Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                    info: dict[str, Any], source: str) -> str:
    """Train state (for --resume) then the agent (EMA target encoder); returns its fingerprint."""
    save_train_state(out_dir, modules, opt, info)
    meta = _agent_meta(cfg, info["step"], info["metrics"], info["untrained"], source, info)
    return save_agent(out_dir, modules["model"].target_encoder, meta)


def training_progress(show: bool) -> Progress:
    """The bar of training runs (one task per run, ``info`` field for the latest metrics)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not show)


def progress_task(bar: Progress, cfg: RunConfig, step: int = 0) -> Any:
    return bar.add_task(f"train {cfg.name} ({cfg.data.view})", total=cfg.train.steps, completed=step, info="")


def _progress_bar(cfg: RunConfig, step: int, show: bool) -> tuple[Progress, Any]:
    bar = training_progress(show)
    return bar, progress_task(bar, cfg, step)


# ---------------------------------------------------------------- one step's forward/backward


def forward_backward(runner: Callable[[torch.Tensor], Any], model: JEPA, align: torch.nn.Module | None,
                     clip: torch.Tensor, step: int, cfg: RunConfig, opt: torch.optim.Optimizer,
                     autocast) -> dict[str, torch.Tensor]:
    """Loss of one batch (plus the teacher alignment for a student), backward; returns detached logs."""
    with autocast:
        loss, logs = runner(clip)
        if align is not None:
            align_loss, align_logs = align.loss(model.encoder, step)
            loss = loss + cfg.teacher.weight * align_loss
            logs = {**logs, **align_logs}
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return {**logs, "loss": loss.detach()}


# ---------------------------------------------------------------- the loop


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_at: int | None = None) -> TrainResult:
    """Train one agent; ``stop_at`` ends early after checkpointing at that step (for interruption tests)."""
    clock = WarmupClock()
    cfg.validate()
    out_dir, tc = Path(out_dir), cfg.train
    rank, world, device = setup_distributed(tc)
    amp = tc.amp and device.type == "cuda"
    cuda_graphs = choose_cuda_graphs(tc, device, world)  # refuses an impossible --cuda-graphs on before any work

    # ---- setup: data on the device, model, optimiser, resume, attention path, what the step calls
    train_data, held_out = load_view_data(cfg)
    model, modules = build_modules(cfg, device, world)
    align = modules.get("align")
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = make_optimizer(params, tc, device)
    start = restore(cfg, out_dir, modules, opt, device, resume, cuda_graphs["used"])
    attention = choose_attention(model, cfg, device, amp, start.attention)
    runner = wrap_runner(model, tc, device, world)
    clips = DeviceClips(train_data.frames, tc.batch_size, model.clip_len, tc.seed, rank, device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else nullcontext()
    is_main, meter = rank == 0, Meter(device, world)
    step, untrained, last_good = start.step, start.untrained, (start.step if resume else None)
    metrics: dict[str, Any] = {}
    bar, task = _progress_bar(cfg, step, progress and is_main)
    clock.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else clock.sync
    clock.lap("setup_s")
    t0 = time.time()
    with bar, open_log(out_dir, is_main) as log:
        log.setup(step, {"cuda_graphs": cuda_graphs, "attention": attention})
        while True:
            # ---- eval / checkpoint (divergence checked first: a NaN run never overwrites a good checkpoint)
            last = step >= tc.steps or (stop_at is not None and step >= stop_at)
            due_eval, due_ckpt = step % tc.eval_every == 0 or last, (step > 0 and step % tc.ckpt_every == 0) or last
            if (due_eval or due_ckpt) and meter.n:
                check_finite(meter.read(), step, meter.n, last_good, out_dir, tc.lr)
            if due_eval and is_main:
                metrics = evaluate(model, held_out, device)
                untrained = untrained or (dict(metrics) if step == 0 else {})
                log.eval(step, metrics)
            if due_ckpt and is_main:
                info = {"step": step, "config": cfg.to_dict(), "untrained": untrained, "metrics": metrics,
                        "attention": attention, "cuda_graphs": cuda_graphs, "warmup_time": clock.record,
                        "wall_time_s": start.wall_time_s + time.time() - t0}
                save_checkpoint(cfg, out_dir, modules, opt, info, train_data.source)
            last_good = step if due_ckpt else last_good
            if world > 1:
                dist.barrier()
            if last:
                break

            # ---- forward / backward (clips gathered on the device; no host sync in the step after the first 3)
            done = step - start.step  # steps this process has run
            lr = lr_at(step, tc.steps, tc.lr, tc.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            if cuda_graphs["used"]:
                torch.compiler.cudagraph_mark_step_begin()
            if done == 0:
                clock.lap("eval_s")
            call = clock.timed(runner, "first_forward_s") if done == 0 else runner
            logs = forward_backward(call, model, align, clips.sample(step), step, cfg, opt, autocast)
            if done == 0:
                clock.lap("first_backward_s")

            # ---- clip / step
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()

            # ---- EMA
            model.update_target(ema_momentum_at(step, tc.steps, cfg.jepa.ema_start, cfg.jepa.ema_end))
            step += 1
            if done < len(clock.STEP_LAPS):
                clock.lap(clock.STEP_LAPS[done])
                if done == 0:
                    log.warmup_time(step, clock.record)

            # ---- log (metrics summed on the device; read back, and checked, every log_every steps)
            meter.add(logs)
            if step % tc.log_every == 0 or step == 1:
                values, window = meter.read(), meter.n
                meter.reset()
                log.train(step, lr, values, window, time.time() - t0)
                check_finite(values, step, window, last_good, out_dir, tc.lr)
                r2 = metrics.get("position_r2")
                bar.update(task, info=f"loss {values['loss']:.4f}" + (f"  R² {r2:.3f}" if r2 is not None else ""))
            bar.update(task, completed=step)
    if world > 1:
        dist.barrier()
    fingerprint = fingerprint_arrays(state_to_numpy(model.target_encoder.state_dict()))  # same on every rank
    return TrainResult(out_dir, step, fingerprint, metrics, untrained, start.wall_time_s + time.time() - t0, attention,
                       cuda_graphs, clock.record)


def ensure_trained(cfg: RunConfig, out_dir: str | Path, progress: bool = True) -> bool:
    """Train ``out_dir`` unless it already holds this exact finished run (then return True);
    an interrupted run of it is resumed."""
    out_dir = Path(out_dir)
    try:
        meta = load_agent_meta(out_dir)
        if unused_worlds_from(saved_run_config(meta["run"]), cfg) == cfg and meta["step"] == cfg.train.steps:
            return True
    except CheckpointError:
        pass
    train(cfg, out_dir, resume=(out_dir / STATE_FILE).is_file(), progress=progress)
    return False
