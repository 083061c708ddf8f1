"""`jepa-edge reproduce`: the paper's experiment on the built-in simulator.

Trains (or reuses) agent A on one view and agent B on another, each on its own
simulated episodes, plus a control agent trained on a *different world*;
renders a fresh set of paired moments; hands every latent, with untrained
encoders as controls, to the numpy study (``jepa_edge.study.alignment``); writes
the report, a postcard W_BA and agent A's probes for export.

``world = "3d"`` runs the same experiment over several view pairs of the 3D world
(``jepa_edge.study.reproduce3d``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from jepa_edge.agents.latents import agent_descriptor, latents_of, untrained_like, world_moments
from jepa_edge.artifacts import atomic_write
from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.postcard import Postcard, save_postcard
from jepa_edge.calib.probes import fit_probe, save_probe
from jepa_edge.config import ConfigError, deep_merge, from_dict, to_dict
from jepa_edge.study.alignment import StudyConfig, StudyInputs, run_study, write_report
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.train.config import RunConfig, agent_config, preset_config
from jepa_edge.train.log import train_wall_time
from jepa_edge.train.loop import ensure_trained
from jepa_edge.world.sim import WorldConfig, position_labels, with_object_count
from jepa_edge.world.worlds import WORLD_KINDS, views_of, world_kind_of_view

# Train-time metrics of a 3D agent (meta.json): the state its camera can see, checked instead of position_r2. A camera
# on robot 0 sees objects in the robot's frame (visible_ego_r2, which then replaces the world-frame visible_position_r2:
# world positions are its pose composed with them).
SEEN_METRICS = {"visible_ego_r2": "visible-object position R² (robot frame)",
                "visible_position_r2": "visible-object position R²", "robot_pose_r2": "robot pose R²"}


def seen_objects_metric(metrics: dict[str, Any]) -> str:
    """The train-time metric of the objects a 3D agent's camera sees: in the robot's frame for a robot camera
    (visible_ego_r2, where measured), else in the world (visible_position_r2)."""
    return "visible_ego_r2" if metrics.get("visible_ego_r2") is not None else "visible_position_r2"


@dataclass
class RecipeTargets:
    """The training recipe's targets (docs/RECIPE.md), checked on every reproduce run (report "Recipe targets")."""

    agent_position_r2: float = 0.9  # each agent's own held-out position probe (train-time, meta.json; 3D: SEEN_METRICS)
    position_kept: float = 0.95  # probe_A ∘ W on B, fraction of B's native score above chance
    danger_kept: float = 0.85  # the danger label's probe (3D: the obstacle label)
    retrieval_top1: float = 0.2
    retrieval_margin: float = 0.15  # above the best control of the retrieval verdict (different world, shifts, …;
    # 3D: untrained, shuffled and shifted, the different world being a finding)
    cka: float = 0.35
    wall_s_per_agent: float = 600.0  # training wall time of each agent, from its train_state.json


def recipe_targets(results: dict[str, Any], walls: dict[str, float | None], targets: RecipeTargets) -> list[dict]:
    """One row per target: what was measured, the threshold, pass/fail (None where it was not measured)."""
    rows: list[dict] = []

    def add(name: str, value: float | None, threshold: float, at_most: bool = False, digits: int = 3) -> None:
        ok = None if value is None else (value <= threshold if at_most else value >= threshold)
        rows.append({"target": name, "value": value, "threshold": threshold, "at_most": at_most, "pass": ok,
                     "digits": digits})

    for key, agent in results.get("agent_training", {}).items():
        metrics = agent.get("metrics") or {}
        if "robot_pose_r2" not in metrics:  # 2D: every object is in view
            add(f"agent {key} position R²", metrics.get("position_r2"), targets.agent_position_r2)
            continue
        # 3D: the state the agent's camera sees; the objects in view in the robot's frame for a robot camera, where
        # that was measured (too few moments with an object in view: not measured, never the all-object R²)
        for k in (seen_objects_metric(metrics), "robot_pose_r2"):
            add(f"agent {key} {SEEN_METRICS[k]}", metrics.get(k), targets.agent_position_r2)
    v = results["verdicts"]
    if "error" not in v:
        probes = v["probe_keep"]["probes"]
        name = results.get("danger_name", "danger")
        add("position kept", probes.get("position", {}).get("kept"), targets.position_kept)
        add(f"{name} kept", probes.get(name, {}).get("kept"), targets.danger_kept)
        r = v["retrieval"]
        add("retrieval top-1", r["trained"], targets.retrieval_top1)
        add(f"retrieval margin over the best control ({r['best_control']})", r["margin"], targets.retrieval_margin)
    add("linear CKA", results["similarity"]["trained"]["cka"], targets.cka)
    for key, wall in walls.items():
        add(f"agent {key} training wall (s)", wall, targets.wall_s_per_agent, at_most=True, digits=0)
    return rows


@dataclass
class ReproduceConfig:
    preset: str = "demo"  # PRESETS (3D: PRESETS_3D) entry: what is left at its default here takes the preset's
    world: str = "2d"  # "2d": one pair, view_a and view_b | "3d": the 3D world's view pairs (``pairs``)
    pairs: tuple[tuple[str, str], ...] = ()  # 3D: (A, B) view pairs, A = W's target; () = reproduce3d.PAIRS_3D
    view_a: str = "top"  # agent A (W's target; its probes get transferred)
    view_b: str = "oblique"  # agent B (W's source; receives A's probes zero-shot)
    steps: int = 0  # training steps per agent (0 = RunConfig default)
    seed_a: int = 1  # model seeds: the agents share nothing but the world's physics
    seed_b: int = 2
    world_seed_a: int = 0  # each agent trains on its own simulated episodes
    world_seed_b: int = 1
    other_world: bool = True  # also train the different-world control agent (costs one more run; 3D: a finding)
    objects_world: bool = False  # also train the control agent of a world with objects_world_count objects (+1 run)
    objects_world_count: int = 5  # object count of that world (the agents' world has WorldConfig.n_objects)
    anchor_episodes: int = 96  # paired moments for W and its evaluation: 96 x 32 = 3072
    anchor_steps: int = 32
    anchor_seed: int = 4242  # a world neither agent trained on
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides shared by all agents
    study: StudyConfig = field(default_factory=StudyConfig)
    targets: RecipeTargets = field(default_factory=RecipeTargets)


# `reproduce --preset`: ReproduceConfig overrides ("demo" is ReproduceConfig() itself, the recipe's agents).
# "quick" runs the whole pipeline in about two minutes on 2 CPU cores: short training on few episodes, no
# different-world agent, fewer moments, a lighter study; the untrained and shuffled controls stay.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "quick": {
        "steps": 400, "other_world": False, "anchor_episodes": 24,
        "run": {"data": {"n_episodes": 128, "eval_episodes": 16},
                "train": {"batch_size": 64, "eval_every": 200, "ckpt_every": 400}},
        "study": {"estimators": ["ridge", "procrustes"], "anchor_counts": [10, 30, 100, 300], "sweep_repeats": 1,
                  "n_perm": 3},
    },
}


# The 3D world's presets: agents at the "3d" training preset (64 px); "quick" is as tiny as 2D's (a few
# minutes on 2 CPU cores, no different-world agent).
PRESETS_3D: dict[str, dict[str, Any]] = {
    "demo": {},
    "quick": deep_merge(PRESETS["quick"], {"steps": 300, "run": {"data": {"n_episodes": 96},
                                                                 "train": {"eval_every": 150, "ckpt_every": 300}}}),
}


def presets_of(world: str) -> dict[str, dict[str, Any]]:
    return PRESETS_3D if world == "3d" else PRESETS


def with_preset(cfg: ReproduceConfig) -> ReproduceConfig:
    """``cfg`` on top of its preset: every field the caller left at ReproduceConfig's default takes the preset's
    value; ``run`` and ``study`` merge key by key (the caller's keys win)."""
    check_views(cfg.world, [])
    presets = presets_of(cfg.world)
    if cfg.preset not in presets:
        raise ConfigError(f"unknown preset {cfg.preset!r}; pass --preset with one of {', '.join(presets)}")
    cls = type(cfg)
    default = to_dict(cls())
    return from_dict(cls, deep_merge(deep_merge(default, presets[cfg.preset]), _changed(to_dict(cfg), default)))


def check_views(world: str, views: list[str] | tuple[str, ...]) -> None:
    """Every view exists and belongs to ``world`` (a ConfigError naming the flag and the choices otherwise)."""
    if world not in WORLD_KINDS:
        raise ConfigError(f"unknown world {world!r}; pass --world with one of {', '.join(WORLD_KINDS)}")
    for v in views:
        kind = world_kind_of_view(v)  # a ValueError naming both view lists for an unknown view
        if kind != world:
            raise ConfigError(f"view {v!r} is a {kind.upper()} view; with --world {world} pass --view-a/--view-b "
                              f"among {', '.join(views_of(world))} (or --world {kind})")


def _changed(mine: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``mine`` that differ from ``default``, nested dicts compared key by key."""
    return {k: _changed(v, default[k]) if isinstance(v, dict) and isinstance(default.get(k), dict) else v
            for k, v in mine.items() if v != default.get(k)}


def short_run_notice(cfg: ReproduceConfig, run: RunConfig) -> str:
    """The report's first words when the agents trained less than the demo preset's recipe ("" when they did not)."""
    three = cfg.world == "3d"
    demo_steps = (preset_config("3d") if three else RunConfig()).train.steps
    if cfg.preset == "demo" and run.train.steps >= demo_steps:
        return ""
    command, make = ("jepa-edge reproduce --world 3d", "make demo WORLD=3d") if three else \
        ("jepa-edge reproduce", "make demo")
    return (f"Short run (preset {cfg.preset}, {run.train.steps} training steps per agent; the demo preset trains "
            f"{demo_steps}): the agents are undertrained, so these numbers show the pipeline working, not the "
            f"paper's claim. `{command}` with the demo preset (`{make}`) measures the claim.")


def objects_world(cfg: ReproduceConfig, base: dict) -> dict:
    """data.world overrides of the object-count control world: same physics and sizes, more (or fewer) objects."""
    return to_dict(with_object_count(from_dict(WorldConfig, base), cfg.objects_world_count))


OTHER_WORLD = {"radius": [0.06, 0.13, 0.09], "speed": 0.03, "max_speed": 0.05, "dynamics_noise": 0.012}


def _agent_config(cfg: ReproduceConfig, name: str, view: str, seed: int, world_seed: int,
                  world: dict | None = None) -> RunConfig:
    return agent_config(name, view, overrides=cfg.run, seed=seed, world_seed=world_seed, steps=cfg.steps or None,
                        data={"world": world or {}})


def ensure_agent(run_cfg: RunConfig, out: Path, progress: bool, console: Console) -> None:
    if ensure_trained(run_cfg, out, progress):
        console.print(f"reusing {out} (step {run_cfg.train.steps})")


def reproduce(cfg: ReproduceConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    cfg = with_preset(cfg)
    if cfg.world == "3d":
        from jepa_edge.study.reproduce3d import reproduce_3d

        return reproduce_3d(cfg, Path(out_dir), progress)
    if cfg.pairs:
        raise ConfigError("ReproduceConfig.pairs is for the 3D world; in 2D set view_a and view_b (--view-a/--view-b)")
    check_views("2d", [cfg.view_a, cfg.view_b])
    out_dir = Path(out_dir)
    console = Console(stderr=True)
    runs = out_dir / "runs"

    # ---- agents
    cfg_a = _agent_config(cfg, "agentA", cfg.view_a, cfg.seed_a, cfg.world_seed_a)
    cfg_b = _agent_config(cfg, "agentB", cfg.view_b, cfg.seed_b, cfg.world_seed_b)
    ensure_agent(cfg_a, runs / "agentA", progress, console)
    ensure_agent(cfg_b, runs / "agentB", progress, console)
    if cfg.other_world:
        cfg_c = _agent_config(cfg, "agentC_otherworld", cfg.view_b, cfg.seed_b + 100, cfg.world_seed_b + 100,
                              OTHER_WORLD)
        ensure_agent(cfg_c, runs / "agentC_otherworld", progress, console)
    if cfg.objects_world:
        cfg_d = _agent_config(cfg, "agentD_objects", cfg.view_b, cfg.seed_b + 200, cfg.world_seed_b + 200,
                              objects_world(cfg, to_dict(cfg_a.data.world)))
        ensure_agent(cfg_d, runs / "agentD_objects", progress, console)
    (enc_a, meta_a), (enc_b, meta_b) = load_agent(runs / "agentA"), load_agent(runs / "agentB")

    # ---- paired moments and latents
    size = cfg_a.data.img_size
    moments = world_moments([cfg.view_a, cfg.view_b], cfg.anchor_episodes, cfg.anchor_steps, size, cfg.anchor_seed,
                            cfg_a.data.world)
    fa, fb = moments.frames[cfg.view_a], moments.frames[cfg.view_b]
    inputs = StudyInputs(
        target=latents_of(enc_a, fa), source=latents_of(enc_b, fb),
        positions=moments.positions, danger=moments.danger, episode=moments.episode,
        target_agent=agent_descriptor(meta_a), source_agent=agent_descriptor(meta_b),
        target_untrained=latents_of(untrained_like(meta_a, 10_001), fa),
        source_untrained=latents_of(untrained_like(meta_b, 10_002), fb),
        other_world=latents_of(load_agent(runs / "agentC_otherworld")[0], fb) if cfg.other_world else None,
        position_labels=position_labels(moments.positions.shape[1] // 2),
        objects_world=latents_of(load_agent(runs / "agentD_objects")[0], fb) if cfg.objects_world else None,
        step=np.tile(np.arange(cfg.anchor_steps), cfg.anchor_episodes),  # rows are episode-major
    )
    console.print("running the study (W estimators, controls, anchor sweep, probe transfer)…")
    results = run_study(inputs, cfg.study)
    results["agent_training"] = {
        key: {"run": str(runs / name), "metrics": meta.get("metrics"), "untrained_metrics": meta.get("untrained_metrics")}
        for key, name, meta in (("A", "agentA", meta_a), ("B", "agentB", meta_b))
    }
    results["reproduce_config"] = to_dict(cfg)
    results["notice"] = short_run_notice(cfg, cfg_a)
    walls = {key: train_wall_time(runs / name) for key, name in (("A", "agentA"), ("B", "agentB"))}
    results["recipe_targets"] = recipe_targets(results, walls, cfg.targets)
    write_report(results, out_dir)

    # ---- artifacts for export: W_BA on all anchors + agent A's probes
    write_artifacts(inputs, cfg.study, out_dir)
    return results


def write_artifacts(inputs: StudyInputs, study: StudyConfig, out_dir: Path) -> dict[str, Path]:
    """W_BA on all anchors and agent A's probes (position, danger or obstacle, robot pose where given)."""
    lm = fit_map(inputs.source, inputs.target, FitConfig(estimator=study.primary_estimator,
                                                          ridge_alpha=study.ridge_alpha))
    postcard = Postcard.from_map(lm, name="W_BA", source=inputs.source_agent, target=inputs.target_agent)
    paths = {"postcard": out_dir / "W_BA.postcard.safetensors"}
    save_postcard(paths["postcard"], postcard)
    name = inputs.danger_name
    tasks = [("position", inputs.positions, "regression", inputs.position_labels),
             (name, inputs.danger, "classification", ["safe", "danger"] if name == "danger" else ["clear", name])]
    if inputs.robot_pose is not None:
        tasks.append(("robot_pose", inputs.robot_pose, "regression", inputs.robot_pose_labels))
    for task, y, kind, labels in tasks:
        probe = fit_probe(inputs.target, y, kind, task, inputs.target_agent, labels=labels)
        paths[task] = out_dir / "probes" / f"agentA.{task}.probe.safetensors"
        save_probe(paths[task], probe)
    atomic_write(out_dir / "anchor_episode.npy", lambda f: np.save(f, inputs.episode))
    return paths
