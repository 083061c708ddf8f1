"""Run configuration for `jepa-edge train`: one dataclass per component."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jepa_edge.config import ConfigError, check_finite, from_dict, to_dict
from jepa_edge.train.jepa import JEPAConfig
from jepa_edge.world.sim import WorldConfig
from jepa_edge.world.sim3d import World3DConfig


@dataclass
class DataConfig:
    view: str = "top"  # simulator view, or the camera name inside a recording folder
    recording: str = ""  # "" = built-in simulator; else a folder of multi-camera video, a ROS 2 bag or an .mcap
    topics: dict[str, str] = field(default_factory=dict)  # bag: view → image topic ({} = views named from topics)
    img_size: int = 32  # frames are rendered / resized to img_size x img_size
    n_episodes: int = 2048  # simulated training episodes (pre-rendered once, ~200 MB at 32 px; 4x the first
    # release's 512: docs/RECIPE.md, "Levers toward a stronger default")
    episode_len: int = 32  # steps per episode
    eval_episodes: int = 64  # held-out episodes for the state probe (a different world seed)
    world_seed: int = 0  # seed of the simulated world (the training episodes)
    world: WorldConfig = field(default_factory=WorldConfig)  # the 2-D world (views top, oblique, rotated, partial)
    world3d: World3DConfig = field(default_factory=World3DConfig)  # the 3-D world (overhead, corner, front, rear, side)

    def sim_world(self) -> WorldConfig | World3DConfig:
        """The simulated world of ``view``: ``world`` for a view of the 2-D world, ``world3d`` for a 3-D one."""
        return getattr(self, world_key(self.view))


def world_key(view: str) -> str:
    """The DataConfig field that holds the world of ``view``'s kind: "world" (2-D) or "world3d"."""
    from jepa_edge.world.worlds import world_kind_of_view

    return "world3d" if world_kind_of_view(view) == "3d" else "world"


CUDA_GRAPH_SETTINGS = ("auto", "on", "off")


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps; R² was still rising at 1500 (wall times and scores: docs/RECIPE.md)
    batch_size: int = 128  # clips per step (per process under DDP); VICReg needs a batch well above token width
    lr: float = 3e-3  # peak AdamW lr (2e-3: partial 0.884 vs 0.918 at 2000 steps; 1e-3 slower still: docs/RECIPE.md)
    warmup: int = 30  # linear warm-up steps, then cosine decay to 0
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0  # model init and clip sampling
    eval_every: int = 250  # state-probe evaluation period (steps)
    ckpt_every: int = 250  # checkpoint period (steps)
    log_every: int = 25
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast (CUDA only; CPU stays fp32)
    compile: bool = False  # torch.compile the loss module the step calls (CPU needs a C++ compiler)
    # CUDA graphs (torch.compile mode="reduce-overhead"): auto = on where they can run (one process on a CUDA
    # device, triton installed), off elsewhere; on = required (refused where they cannot run). JSON true/false
    # (the first releases' flag) read as on/off.
    cuda_graphs: Literal["auto", "on", "off"] | bool = "auto"
    threads: int = 0  # torch intra-op threads on CPU (0 = torch default)

    def __post_init__(self) -> None:
        if isinstance(self.cuda_graphs, bool):
            self.cuda_graphs = "on" if self.cuda_graphs else "off"
        if self.cuda_graphs not in CUDA_GRAPH_SETTINGS:
            raise ConfigError(f"train.cuda_graphs must be one of {', '.join(CUDA_GRAPH_SETTINGS)}, "
                              f"got {self.cuda_graphs!r}")


@dataclass
class TeacherConfig:
    run: str = ""  # teacher agent run dir ("" = no teacher: plain JEPA)
    anchors: int = 256  # anchor moments whose teacher latents the student receives
    weight: float = 1.0  # alignment loss weight (added to the JEPA loss)
    anchor_batch: int = 64  # anchor moments per step
    anchor_seed: int = 999  # world seed of the anchor moments (both robots can re-create them)
    control: str = "none"  # none | shuffled (teacher latents permuted) | random (untrained teacher)


@dataclass
class RunConfig:
    name: str = "agent"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    jepa: JEPAConfig = field(default_factory=JEPAConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def validate(self) -> None:
        check_finite(self)
        if not self.train.lr > 0:
            raise ValueError(f"train.lr must be > 0 (the peak learning rate), got {self.train.lr}")
        if self.train.steps < 1 or self.train.batch_size < 2:
            raise ValueError("train.steps must be >= 1 and train.batch_size >= 2 (the regulariser needs a batch)")
        if self.data.img_size != self.jepa.encoder.img_size:
            raise ValueError(
                f"data.img_size={self.data.img_size} but jepa.encoder.img_size={self.jepa.encoder.img_size}; "
                "set both to the same value"
            )
        if self.data.episode_len < self.jepa.context_frames + self.jepa.horizon:
            raise ValueError("data.episode_len is shorter than one training clip (context_frames + horizon)")

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return from_dict(cls, d)

    def to_dict(self) -> dict:
        return to_dict(self)


def saved_run_config(d: dict) -> RunConfig:
    """A RunConfig as saved by train (meta.json "run", train_state.json "config"). Keys added to the config
    since the first release are filled with the values those runs used, not with today's defaults."""
    from jepa_edge.train.model import saved_encoder_dict

    jepa = d.get("jepa", {})
    if isinstance(jepa, dict) and isinstance(jepa.get("encoder"), dict):
        jepa = {**jepa, "encoder": saved_encoder_dict(jepa["encoder"])}
        jepa.setdefault("z_target_norm", "none")  # raw target z before the standardised target
        if isinstance(jepa.get("predictor"), dict):
            jepa["predictor"] = {"z_head": "mlp", **jepa["predictor"]}
        d = {**d, "jepa": jepa}
    return from_dict(RunConfig, d)


def unused_worlds_from(saved: RunConfig, wanted: RunConfig) -> RunConfig:
    """``saved`` with the simulated worlds ``wanted`` does not train on taken from ``wanted``: a 2-D run never
    reads ``data.world3d`` (nor a 3-D run ``data.world``, nor a recording's either), so a change of the other
    world's defaults must not stop a finished run from being reused or an interrupted one from resuming."""
    from dataclasses import replace

    used = None if wanted.data.recording or saved.data.recording else world_key(wanted.data.view)
    unused = {key: getattr(wanted.data, key) for key in ("world", "world3d") if key != used}
    return replace(saved, data=replace(saved.data, **unused))


# ---- presets: named starting points for RunConfig (the "demo" preset is RunConfig() itself) -------------------

PRESETS: dict[str, dict] = {
    "demo": {},  # 32 px, patch 8, width 64, depth 3: the recipe of docs/RECIPE.md (trains on 2 CPU cores)
    # ViT-Tiny size (DeiT-Ti: 224 px, patch 16, width 192, depth 12, 3 heads, MLP x4), for real-camera numbers.
    # Its training recipe is not tuned (never trained on CPU); it exists so export/run/bench see a deployable size.
    "vit-tiny": {
        "data": {"img_size": 224, "n_episodes": 64, "eval_episodes": 16},  # 64x32 frames at 224 px: ~0.3 GB uint8
        "jepa": {
            "encoder": {"img_size": 224, "patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3,
                        "mlp_ratio": 4.0, "latent_dim": 192, "pool": "attention"},  # flatten: 196x192 → 192, 7M
            "predictor": {"embed_dim": 192, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0},
        },
    },
    # The scale an earlier session measured on one H200 (docs/RECIPE.md, "GPU preset"): the demo architecture,
    # 4x the batch, 2x the episodes, 1.5x the steps, CUDA graphs required (a CPU run is refused: it would take hours).
    # The 3-D world's views: 64 px (a 0.2 m object 3 m away is ~2 px at 32 px), patch 16 keeps the 4x4 token
    # grid of the 32 px recipe, so the transformer costs the same; 1024 episodes (~0.4 GB uint8 at 64 px);
    # horizon 3: objects move under 1 px per step at 64 px, so t+1 is nearly a copy of t (docs/RECIPE.md).
    "3d": {
        "data": {"img_size": 64, "n_episodes": 1024},
        "jepa": {"encoder": {"img_size": 64, "patch_size": 16}, "horizon": 3},
    },
    "gpu": {
        "data": {"n_episodes": 4096},
        "train": {"batch_size": 512, "steps": 3000, "cuda_graphs": "on"},
    },
}


def preset_config(name: str) -> RunConfig:
    """The RunConfig of preset ``name`` (``PRESETS``): defaults with the preset's fields replaced."""
    from jepa_edge.config import deep_merge

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = RunConfig.from_dict(deep_merge(RunConfig().to_dict(), PRESETS[name]))
    cfg.validate()
    cfg.jepa.validate()
    return cfg


def agent_config(name: str, view: str, *, preset: str | None = None, overrides: dict | None = None, seed: int = 0,
                 world_seed: int = 0, steps: int | None = None, data: dict | None = None, train: dict | None = None,
                 teacher: dict | None = None) -> RunConfig:
    """The RunConfig of one agent: ``jepa-edge train`` and every study build their runs here, nowhere else.

    Layers, later ones winning: the preset (None: "3d" for a view of the simulated 3-D world, else "demo"),
    then ``overrides`` (a user's JSON RunConfig overrides), then the agent's own fields (``name``, ``view``,
    model ``seed``, ``world_seed`` of its training episodes, ``steps``; None = the preset's or the overrides'),
    then the caller's section updates ``data``, ``train`` and ``teacher`` (nested dicts, e.g.
    ``data={"world": {...}}``, merged key by key). Unknown keys are errors.
    """
    from jepa_edge.config import deep_merge

    if preset is None:  # a recording's camera is never taken for a simulator view (a camera may be named "front")
        from jepa_edge.world.worlds import views_of

        recording = (data or {}).get("recording") or (overrides or {}).get("data", {}).get("recording", "")
        preset = "3d" if not recording and view in views_of("3d") else "demo"
    d = deep_merge(preset_config(preset).to_dict(), overrides or {})
    own: dict = {"name": name, "data": {"view": view, "world_seed": world_seed}, "train": {"seed": seed}}
    if steps is not None:
        own["train"]["steps"] = steps
    d = deep_merge(deep_merge(d, own), {"data": data or {}, "train": train or {}, "teacher": teacher or {}})
    cfg = RunConfig.from_dict(d)
    cfg.validate()
    return cfg
