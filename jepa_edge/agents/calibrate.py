"""`jepa-edge calib` and `jepa-edge probe`: the torch side that feeds latents to calib.

Both agents see the same fresh simulated moments, each from its own view (views of one world: the 2-D world,
or the 3-D world's cameras).
Moments are split by episode (``world.dataset.heldout_split``): anchors and probes come from the pool,
every number is scored on the held-out episodes, and always beside its controls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.agents.latents import Moments, agent_descriptor, latents_of, untrained_like, world_moments
from jepa_edge.artifacts import refuse_existing
from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.metrics import isomorphism_metrics, kept_fraction, permutation_null, probe_chance
from jepa_edge.calib.postcard import POSTCARD_SUFFIX, Postcard, load_postcard, save_postcard
from jepa_edge.calib.probes import (
    PROBE_SUFFIX,
    Probe,
    evaluate_probe,
    fit_probe,
    load_probe,
    primary_score,
    save_probe,
    transfer_probe,
)
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.world.dataset import heldout_split, load_recording
from jepa_edge.world.sim import position_labels
from jepa_edge.world.sim3d import ROBOT_POSE_LABELS


@dataclass
class MomentsConfig:
    episodes: int = 64  # fresh simulated episodes (neither agent trained on them)
    steps: int = 32  # steps per episode
    seed: int = 777  # world seed of these moments
    heldout_fraction: float = 0.3  # held-out episodes (world.dataset.heldout_split): scoring only
    recording: str = ""  # a recorded multi-camera folder, ROS 2 bag or .mcap instead (states needed for probes)
    topics: dict[str, str] = field(default_factory=dict)  # bag: view → image topic ({} = views named from topics)
    tolerance_s: float = 0.0  # bag: cameras paired within this (0 = half the first camera's frame interval)
    states_topic: str = ""  # bag: ground-truth states topic ("" = /jepa_edge/states when present)


@dataclass
class CalibConfig:
    estimator: str = "ridge"  # lstsq | ridge | procrustes | orth_lstsq
    ridge_alpha: float = 1e-2
    anchors: int = 300  # paired anchor moments used to fit W
    n_perm: int = 10  # shuffled-anchor refits (the permutation null)
    anchor_seed: int = 0  # which pool moments become anchors


def load_moments(views: list[str], size: int, cfg: MomentsConfig, need_states: bool = False) -> Moments:
    """The moments both agents see: fresh simulated episodes, or a recording (folder, bag, .mcap)."""
    if not cfg.recording:
        return world_moments(views, cfg.episodes, cfg.steps, size, cfg.seed)  # the default world of the views
    rec = load_recording(cfg.recording, views=list(dict.fromkeys(views)), resize=size, topics=cfg.topics or None,
                         tolerance_s=cfg.tolerance_s or None, states_topic=cfg.states_topic or None)
    if need_states and rec.states is None:
        raise ValueError(f"{cfg.recording}: the recording has no ground-truth states (states.npz, or a bag's "
                         "/jepa_edge/states topic), and probes need labels; use a recording that has them")
    return Moments(rec.frames, rec.states)


def calibrate(source_run: str | Path, target_run: str | Path, out: str | Path, cfg: CalibConfig,
              mcfg: MomentsConfig) -> tuple[Postcard, dict[str, Any]]:
    """Fit W (source → target) on anchors, score it on held-out moments against controls, save a postcard."""
    check_postcard_out(out)
    if Path(source_run).resolve() == Path(target_run).resolve():
        raise _same_agent(source_run, target_run, "the same run folder")
    (enc_s, meta_s), (enc_t, meta_t) = load_agent(source_run), load_agent(target_run)
    if meta_s["fingerprint"] == meta_t["fingerprint"]:
        raise _same_agent(source_run, target_run, f"the same agent (fingerprint {str(meta_s['fingerprint'])[:16]}…)")
    size = int(meta_s["encoder"]["img_size"])
    if int(meta_t["encoder"]["img_size"]) != size:
        raise ValueError("the two agents take different input sizes; calibrate agents with the same img_size")
    moments = load_moments([meta_s["view"], meta_t["view"]], size, mcfg)
    fs, ft = moments.frames[meta_s["view"]], moments.frames[meta_t["view"]]
    pool, held = heldout_split(moments.episode, mcfg.heldout_fraction)
    rng = np.random.default_rng(cfg.anchor_seed)
    if cfg.anchors > len(pool):
        raise ValueError(f"{cfg.anchors} anchors requested but the pool holds {len(pool)} moments; "
                         "lower --anchors or raise --episodes")
    anchors = np.sort(rng.choice(pool, cfg.anchors, replace=False))
    fit_cfg = FitConfig(estimator=cfg.estimator, ridge_alpha=cfg.ridge_alpha)
    conditions = {
        "trained": (latents_of(enc_s, fs), latents_of(enc_t, ft)),
        "untrained": (latents_of(untrained_like(meta_s, 10_002), fs), latents_of(untrained_like(meta_t, 10_001), ft)),
    }
    report: dict[str, Any] = {"n_anchors": len(anchors), "n_heldout": len(held), "estimator": cfg.estimator}
    lm = None
    for name, (zs, zt) in conditions.items():
        fitted = fit_map(zs[anchors], zt[anchors], fit_cfg)
        report[name] = isomorphism_metrics(fitted.apply(zs[held]), zt[held], fitted.weight, center=fitted.target_mean)
        lm = fitted if name == "trained" else lm
    zs, zt = conditions["trained"]
    null = permutation_null(zs[anchors], zt[anchors], zs[held], zt[held], fit_cfg, cfg.n_perm, rng)
    report["shuffled"] = {k: float(np.mean(v)) for k, v in null.items()}
    report["retrieval_chance"] = 1.0 / len(held)
    postcard = Postcard.from_map(lm, name=Path(out).name.split(".")[0], source=agent_descriptor(meta_s),
                                 target=agent_descriptor(meta_t), metrics=report)
    save_postcard(out, postcard)
    return postcard, report


def _same_agent(source_run: str | Path, target_run: str | Path, what: str) -> ValueError:
    return ValueError(f"{source_run} and {target_run} are {what}: W from an agent to itself is the identity; "
                      "pass two different agents")


def check_postcard_out(out: str | Path) -> None:
    """Refuse a postcard file name that `run --watch` would never pick up, before any work."""
    if not Path(out).name.endswith(POSTCARD_SUFFIX) or Path(out).name == POSTCARD_SUFFIX:
        raise ValueError(f"{out}: a postcard file must be named NAME{POSTCARD_SUFFIX} (that is what run --watch "
                         f"picks up); pass e.g. --out W_BA{POSTCARD_SUFFIX}")


PROBE_TASKS = ("position", "danger", "pose")  # pose: robot 0's pose, 3-D world only


@dataclass
class ProbeRunConfig:
    tasks: tuple[str, ...] = ("position", "danger")  # simulator labels: object positions, danger zone / obstacle


def _task_targets(moments: Moments, task: str) -> tuple[str, np.ndarray, list[str]]:
    if task == "position":
        n = moments.positions.shape[1] // 2
        return "regression", moments.positions, position_labels(n)
    if task == "danger":  # in the 3-D world: an obstacle ahead of robot 0
        return "classification", moments.danger, ["clear", "obstacle"] if moments.kind == "3d" else ["safe", "danger"]
    if task == "pose":
        return "regression", moments.robot_pose, list(ROBOT_POSE_LABELS)
    raise ValueError(f"unknown probe task {task!r}; use one of {', '.join(PROBE_TASKS)}")


def train_probes(run: str | Path, out_dir: str | Path, cfg: ProbeRunConfig, mcfg: MomentsConfig,
                 overwrite: bool = False) -> tuple[list[Path], dict[str, Any]]:
    """Fit each task's probe on the agent's pool latents; score held-out, beside an untrained encoder's.

    Writes ``NAME.TASK.probe.safetensors`` in ``out_dir``; an existing one is refused unless ``overwrite``.
    """
    enc, meta = load_agent(run)
    paths = {task: Path(out_dir) / f"{meta['name']}.{task}{PROBE_SUFFIX}" for task in cfg.tasks}
    refuse_existing(*paths.values(), overwrite=overwrite)  # before the moments are rendered and encoded
    moments = load_moments([meta["view"]], int(meta["encoder"]["img_size"]), mcfg, need_states=True)
    frames = moments.frames[meta["view"]]
    pool, held = heldout_split(moments.episode, mcfg.heldout_fraction)
    z, z0 = latents_of(enc, frames), latents_of(untrained_like(meta, 10_003), frames)
    agent = agent_descriptor(meta)
    targets = {task: _task_targets(moments, task) for task in cfg.tasks}  # a task the world lacks fails before any write
    report = {}
    for task in cfg.tasks:
        kind, y, labels = targets[task]
        probe = fit_probe(z[pool], y[pool], kind, task, agent, labels=labels)
        control = fit_probe(z0[pool], y[pool], kind, task, replace(agent, fingerprint="untrained"), labels=labels)
        probe.metrics["heldout"] = evaluate_probe(probe, z[held], y[held])
        probe.metrics["heldout_untrained_control"] = evaluate_probe(control, z0[held], y[held])
        save_probe(paths[task], probe)
        report[task] = {"trained": primary_score(probe.metrics["heldout"], kind),
                        "untrained": primary_score(probe.metrics["heldout_untrained_control"], kind)}
    return list(paths.values()), report


def transfer_probes(probe_paths: list[Path], postcard_path: Path, run: str | Path, mcfg: MomentsConfig
                    ) -> dict[str, Any]:
    """probe_A ∘ W_BA on agent B (no gradient step) vs B's native probe and controls, held-out."""
    enc, meta = load_agent(run)
    postcard = load_postcard(postcard_path, expect_source_fingerprint=meta["fingerprint"])
    moments = load_moments([meta["view"]], int(meta["encoder"]["img_size"]), mcfg, need_states=True)
    frames = moments.frames[meta["view"]]
    pool, held = heldout_split(moments.episode, mcfg.heldout_fraction)
    z, z0 = latents_of(enc, frames), latents_of(untrained_like(meta, 10_004), frames)
    rng = np.random.default_rng(0)
    report = {}
    for path in probe_paths:
        probe_a: Probe = load_probe(path, expect_agent_fingerprint=postcard.target_fingerprint)
        kind, y, labels = _task_targets(moments, probe_a.name)
        moved = transfer_probe(probe_a, postcard)
        native = fit_probe(z[pool], y[pool], kind, probe_a.name, moved.agent, labels=labels)
        native0 = fit_probe(z0[pool], y[pool], kind, probe_a.name, moved.agent, labels=labels)
        scrambled = []  # control: the same W with its input dimensions shuffled (same spectrum, wrong pairing)
        for _ in range(5):
            perm = rng.permutation(z.shape[1])
            scrambled.append(primary_score(evaluate_probe(moved, z[held][:, perm], y[held]), kind))
        score = primary_score(evaluate_probe(moved, z[held], y[held]), kind)
        nat = primary_score(evaluate_probe(native, z[held], y[held]), kind)
        report[probe_a.name] = {
            "task": kind, "transferred": score, "native": nat,
            "untrained_native": primary_score(evaluate_probe(native0, z0[held], y[held]), kind),
            "scrambled_W": float(np.mean(scrambled)),
            "kept_fraction": kept_fraction(score, nat, probe_chance(kind, y[held])),
        }
    return report

