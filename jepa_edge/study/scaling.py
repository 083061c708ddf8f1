"""`jepa-edge reproduce --scaling`: where does the isomorphism emerge as the agents get more training?

For every compute budget (steps × batch over a number of distinct training episodes) and every seed,
trains agent A on ``view_a``, one agent B per view in ``views_b`` and a different-world control agent
(all with the same budget), renders one set of paired moments, and runs the alignment study
(``study.alignment``) for each pair (B → A). The untrained, shuffled-anchor, different-world and
time-shifted controls are measured at every point. Writes scaling.json, scaling.md (mean ± sd over
seeds per budget and pair) and scaling.png (every metric against training compute).

Agents are reused when their run directory already holds the same finished run, so an interrupted
study resumes and a larger study can reuse a smaller one's points.

The views may be the 3D world's (all of one world): agents train at the "3d" preset, the pairs get the
obstacle and robot-pose probes and the position probe per visibility group, and the different-world
agent (another World3DConfig) is a finding, not a control, as in `reproduce --world 3d`.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from jepa_edge.artifacts import atomic_write_bytes, atomic_write_json, jsonable
from jepa_edge.config import deep_merge, from_dict, to_dict
from jepa_edge.study.alignment import StudyConfig, StudyInputs, run_study
from jepa_edge.study.visibility import GROUPS
from jepa_edge.train.config import RunConfig, agent_config, world_key
from jepa_edge.world.sim import position_labels

# The study per point: the anchor sweep and most permutations are dropped (they are in `reproduce`).
LIGHT_STUDY = {"estimators": ["ridge"], "sweep_estimators": ["ridge"], "anchor_counts": [1000], "sweep_repeats": 1,
               "n_perm": 3}


class ScalingError(ValueError):
    """A scaling-study config that cannot run."""


@dataclass
class ScalingConfig:
    view_a: str = "top"  # W's target in every pair (a 2D or a 3D view: the world follows the views)
    views_b: tuple[str, ...] = ("oblique", "rotated")  # one pair per view: B → A, views of view_a's world
    # Budgets double in clips seen and in distinct episodes; the default fits ~1 h on 2 CPU cores (docs/SCALING.md).
    steps: tuple[int, ...] = (250, 500, 1000, 1000)  # per budget (same length as batch_sizes and n_episodes)
    batch_sizes: tuple[int, ...] = (64, 64, 64, 128)
    n_episodes: tuple[int, ...] = (128, 256, 512, 1024)  # distinct simulated training episodes
    seeds: tuple[int, ...] = (0, 1)  # each seed: new model seeds and new training worlds for every agent
    other_world: bool = True  # train the different-world control agent at every point
    # agents trained at once, one torch thread each unless run sets train.threads: on this 2-core CPU two
    # 1-thread runs gave 1.23x the clips/s of one 2-thread run (docs/SCALING.md); 1 = one at a time, in-process
    workers: int = 2
    anchor_episodes: int = 64  # paired moments: anchor_episodes × anchor_steps, one world for every point
    anchor_steps: int = 32
    anchor_seed: int = 4242
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides shared by every agent
    study: dict[str, Any] = field(default_factory=lambda: dict(LIGHT_STUDY))  # StudyConfig overrides

    def validate(self) -> None:
        if not (len(self.steps) == len(self.batch_sizes) == len(self.n_episodes)) or not self.steps:
            raise ScalingError("ScalingConfig.steps, batch_sizes and n_episodes need one entry per budget "
                               f"(got {len(self.steps)}, {len(self.batch_sizes)}, {len(self.n_episodes)})")
        if not self.views_b or not self.seeds:
            raise ScalingError("ScalingConfig needs at least one view in views_b and one seed")
        if self.view_a in self.views_b:
            raise ScalingError(f"ScalingConfig.views_b {list(self.views_b)} must not contain view_a {self.view_a!r}")
        if self.workers < 1:
            raise ScalingError(f"ScalingConfig.workers={self.workers} must be >= 1")
        if min(self.steps) < 1 or min(self.batch_sizes) < 2 or min(self.n_episodes) < 2:
            raise ScalingError("ScalingConfig: steps >= 1, batch_sizes >= 2, n_episodes >= 2")
        from jepa_edge.world.worlds import world_kind_of_view

        kinds = {v: world_kind_of_view(v) for v in (self.view_a, *self.views_b)}
        if len(set(kinds.values())) > 1:
            raise ScalingError(f"ScalingConfig views {kinds} are of different worlds: pick every view of one world")
        self.study_config().validate()

    @property
    def three_d(self) -> bool:
        from jepa_edge.world.worlds import world_kind_of_view

        return world_kind_of_view(self.view_a) == "3d"

    def study_config(self) -> StudyConfig:
        study = from_dict(StudyConfig, deep_merge(to_dict(StudyConfig()), self.study))
        if self.three_d:
            from jepa_edge.study.reproduce3d import study_3d

            return study_3d(study)
        return study

    def budgets(self) -> list[dict[str, int]]:
        return [{"steps": s, "batch_size": b, "n_episodes": e, "clips": s * b}
                for s, b, e in zip(self.steps, self.batch_sizes, self.n_episodes)]


OTHER_WORLD_VIEW = 0  # the different-world control agent is trained on views_b[0] (fed each pair's B frames)


def budget_agent(cfg: ScalingConfig, budget: dict[str, int], name: str, view: str, seed: int, world_seed: int,
                 world: dict | None = None) -> RunConfig:
    """One agent of one budget; the workers share the cores, one torch thread each unless ``run`` sets it."""
    threads = {"threads": 1} if cfg.workers > 1 and "threads" not in cfg.run.get("train", {}) else {}
    return agent_config(name, view, overrides=cfg.run, seed=seed, world_seed=world_seed,
                        steps=budget["steps"], data={"n_episodes": budget["n_episodes"], world_key(view): world or {}},
                        train={"batch_size": budget["batch_size"], **threads})


def _point_agents(cfg: ScalingConfig, budget: dict[str, int], seed: int) -> dict[str, tuple[RunConfig, str]]:
    """name → (RunConfig, view) of every agent of one (budget, seed) point."""
    from jepa_edge.study.reproduce import OTHER_WORLD
    from jepa_edge.study.reproduce3d import OTHER_WORLD_3D

    base = 1000 * (seed + 1)
    agents = {"A": (budget_agent(cfg, budget, "agentA", cfg.view_a, base + 1, base), cfg.view_a)}
    for i, v in enumerate(cfg.views_b):
        agents[f"B_{v}"] = (budget_agent(cfg, budget, f"agentB_{v}", v, base + 2 + i, base + 1 + i), v)
    if cfg.other_world:
        v = cfg.views_b[OTHER_WORLD_VIEW]
        world = OTHER_WORLD_3D if cfg.three_d else OTHER_WORLD
        agents["C"] = (budget_agent(cfg, budget, "agentC_otherworld", v, base + 100, base + 100, world), v)
    return agents


def _row(res: dict[str, Any], meta_a: dict, meta_b: dict) -> dict[str, Any]:
    """The numbers of one pair at one point (primary estimator), controls beside them."""
    est = res["config"]["primary_estimator"]
    row = res["estimators"][est]
    tr = row["trained"]
    sim = res["similarity"]
    danger = res["danger_name"]
    out: dict[str, Any] = {
        "agent_a_position_r2": (meta_a.get("metrics") or {}).get("position_r2"),
        "agent_b_position_r2": (meta_b.get("metrics") or {}).get("position_r2"),
        "w_r2": tr.get("r2"), "retrieval_top1": tr.get("retrieval_top1"), "cka": sim["trained"]["cka"],
        "mutual_knn": sim["trained"]["mutual_knn"],
        "position_kept": tr["probes"]["position"]["kept"], "danger_kept": tr["probes"][danger]["kept"],
        "position_transferred": tr["probes"]["position"]["transferred"],
        "danger_transferred": tr["probes"][danger]["transferred"],
        "shared_dims_0.9": res["shared"]["trained"]["n_above"]["0.9"],
        "shared_dims_0.5": res["shared"]["trained"]["n_above"]["0.5"],
        "w_r2_inside_shared": res["shared"]["w_split"]["by_threshold"].get("0.5", {}).get("r2_inside"),
        "w_r2_outside_shared": res["shared"]["w_split"]["by_threshold"].get("0.5", {}).get("r2_outside"),
        "retrieval_chance": tr.get("retrieval_chance"),
    }
    for g, d in tr["probes"]["position"].get("by_visibility", {}).items():  # 3D: what each camera sees
        out[f"position_kept_{g}"] = d["kept"]
    if "robot_pose" in tr["probes"]:
        out["robot_pose_kept"] = tr["probes"]["robot_pose"]["kept"]
        from jepa_edge.study.reproduce import seen_objects_metric

        for role, meta in (("a", meta_a), ("b", meta_b)):  # the objects the agent's camera sees
            metrics = meta.get("metrics") or {}
            out[f"agent_{role}_visible_position_r2"] = metrics.get(seen_objects_metric(metrics))
    for c in ("untrained", "other_world"):
        if c in row and "error" not in row[c]:
            out[f"{c}_retrieval_top1"] = row[c]["retrieval_top1"]
            out[f"{c}_cka"] = sim[c]["cka"]
            out[f"{c}_position_transferred"] = row[c]["probes"]["position"]["transferred"]
    if "shuffled" in row and "error" not in row["shuffled"]:
        out["shuffled_retrieval_top1"] = row["shuffled"]["retrieval_top1"]["mean"]
        out["shuffled_position_transferred"] = row["shuffled"]["probes"]["position"]["transferred"]["mean"]
    shifts = {int(d): e for d, e in res["time_shift"].items() if "error" not in e}
    if shifts:
        d = max(shifts)
        out["time_shift_delta"] = d
        out["time_shift_retrieval_top1"] = shifts[d]["shifted"]["retrieval_top1"]
        out["time_shift_cka"] = shifts[d]["shifted"]["cka"]
    return out


def run_scaling(cfg: ScalingConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    import torch  # noqa: F401  (the training side)

    from jepa_edge.agents.latents import world_moments
    from jepa_edge.train.pool import worker_pool

    cfg.validate()
    out_dir = Path(out_dir)
    console = Console(stderr=True)
    study = cfg.study_config()
    views = [cfg.view_a, *cfg.views_b]
    first = budget_agent(cfg, cfg.budgets()[0], "probe", cfg.view_a, 0, 0)
    world = first.data.sim_world()
    moments = world_moments(views, cfg.anchor_episodes, cfg.anchor_steps, first.data.img_size, cfg.anchor_seed, world)
    step = np.tile(np.arange(cfg.anchor_steps), cfg.anchor_episodes)  # rows are episode-major
    labels = position_labels(moments.positions.shape[1] // 2)
    pairs = [(cfg.view_a, v) for v in cfg.views_b]
    if cfg.three_d:  # obstacle and robot-pose probes, the position probe per visibility group
        from jepa_edge.study.reproduce3d import study_extras

        extras = {b: e for (_, b), e in study_extras(moments, pairs, first.data.img_size, world).items()}
    else:
        extras = {b: {} for _, b in pairs}
    pool = worker_pool(cfg.workers) if cfg.workers > 1 else None
    try:
        points = _run_points(cfg, out_dir, console, study, moments, step, labels, extras, pool, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    role = "a finding about shared physics, not a control" if cfg.three_d else "a control"
    results = {"config": to_dict(cfg), "study_config": to_dict(study), "points": points,
               "summary": summarise(points), "danger_name": "obstacle" if cfg.three_d else "danger",
               "note": (f"The different-world agent ({role}) is trained on {cfg.views_b[OTHER_WORLD_VIEW]} in another "
                        "world and fed each pair's B frames")}
    write_scaling(results, out_dir)
    return results


def _run_points(cfg: ScalingConfig, out_dir: Path, console: Console, study: StudyConfig, moments: Any,
                step: np.ndarray, labels: list[str], extras: dict[str, dict], pool: Any, progress: bool
                ) -> list[dict[str, Any]]:
    """Train every (budget, seed) point's agents, then study each pair: one row per (budget, seed, pair)."""
    from jepa_edge.agents.latents import agent_descriptor, latents_of, untrained_like
    from jepa_edge.train.checkpoint import load_agent
    from jepa_edge.train.pool import train_all

    points: list[dict[str, Any]] = []
    total, done = len(cfg.budgets()) * len(cfg.seeds), 0
    for bi, budget in enumerate(cfg.budgets()):
        for seed in cfg.seeds:
            t0 = time.perf_counter()
            done += 1
            console.print(f"[{done}/{total}] budget {bi}: {budget['steps']} steps × {budget['batch_size']} "
                          f"clips, {budget['n_episodes']} episodes, seed {seed}")
            agents = _point_agents(cfg, budget, seed)
            root = out_dir / "runs" / f"b{bi}_s{seed}"
            jobs = [(run_cfg, root / key) for key, (run_cfg, _) in agents.items()]
            train_all(jobs, cfg.workers, progress, pool, on_done=lambda out, reused, t0=t0: console.print(
                f"    {'reusing' if reused else 'trained'} {out.name} ({time.perf_counter() - t0:.0f} s)"))
            train_s = time.perf_counter() - t0
            loaded = {key: load_agent(root / key) for key in agents}
            lat = {key: latents_of(enc, moments.frames[agents[key][1]]) for key, (enc, _) in loaded.items()}
            meta_a = loaded["A"][1]
            for v in cfg.views_b:
                meta_b = loaded[f"B_{v}"][1]
                inputs = StudyInputs(
                    target=lat["A"], source=lat[f"B_{v}"], positions=moments.positions, danger=moments.danger,
                    episode=moments.episode, step=step, position_labels=labels,
                    target_agent=agent_descriptor(meta_a), source_agent=agent_descriptor(meta_b),
                    target_untrained=latents_of(untrained_like(meta_a, 10_001), moments.frames[cfg.view_a]),
                    source_untrained=latents_of(untrained_like(meta_b, 10_002), moments.frames[v]),
                    other_world=(latents_of(loaded["C"][0], moments.frames[v]) if "C" in loaded else None),
                    **extras[v],
                )
                res = run_study(inputs, study)
                points.append({"budget": bi, **budget, "seed": seed, "pair": f"{v}->{cfg.view_a}",
                               "train_seconds": train_s, **_row(res, meta_a, meta_b)})
            console.print(f"    done in {time.perf_counter() - t0:.0f} s (training {train_s:.0f} s)")
    return points


METRICS = ("agent_a_position_r2", "agent_b_position_r2", "w_r2", "retrieval_top1", "cka", "mutual_knn",
           "position_kept", "danger_kept", "position_transferred", "danger_transferred", "shared_dims_0.9",
           "shared_dims_0.5", "w_r2_inside_shared", "w_r2_outside_shared")
CONTROL_METRICS = {"retrieval_top1": ("untrained_retrieval_top1", "other_world_retrieval_top1",
                                      "shuffled_retrieval_top1", "time_shift_retrieval_top1"),
                   "cka": ("untrained_cka", "other_world_cka", "time_shift_cka"),
                   "position_transferred": ("untrained_position_transferred", "other_world_position_transferred",
                                            "shuffled_position_transferred")}


# 3D pairs only: the position probe kept per visibility group, the robot-pose probe kept
METRICS_3D = (*(f"position_kept_{g}" for g in GROUPS), "robot_pose_kept", "agent_a_visible_position_r2",
              "agent_b_visible_position_r2")


def summarise(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per (budget, pair), for every metric and control."""
    keys = [*METRICS, *(c for cs in CONTROL_METRICS.values() for c in cs),
            *(k for k in METRICS_3D if any(k in p for p in points))]
    out = []
    for bi, pair in dict.fromkeys((p["budget"], p["pair"]) for p in points):
        group = [p for p in points if p["budget"] == bi and p["pair"] == pair]
        row = {k: group[0][k] for k in ("budget", "steps", "batch_size", "n_episodes", "clips", "pair")}
        row["seeds"] = len(group)
        for k in keys:
            vals = [p[k] for p in group if p.get(k) is not None]
            row[k] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals)), "n": len(vals)} if vals else None
        out.append(row)
    return out


def _ms(v: dict[str, float] | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"


def render_scaling(results: dict[str, Any]) -> str:
    cfg = results["config"]
    L = [f"# Scaling study: alignment against training compute (pairs → {cfg['view_a']})", "",
         (f"Budgets: steps × batch (clips seen) over distinct training episodes; {len(cfg['seeds'])} seeds each "
          f"(mean ± sd over seeds). Paired moments: {cfg['anchor_episodes']} × {cfg['anchor_steps']} of world "
          f"{cfg['anchor_seed']}; every metric held-out, W = `{results['study_config']['primary_estimator']}`. "
          f"{results['note']}."), ""]
    three_d = any("robot_pose_kept" in r for r in results["summary"])
    seen = "visible_" if three_d else ""  # 3D: each agent's R² on the objects its camera sees
    head = ["pair", "steps × batch", "episodes", f"A {seen}pos R²", f"B {seen}pos R²", "W R²", "retrieval top-1",
            "untrained / other world / shuffled / time shift", "CKA", "CKA untrained / other world / time shift",
            "position kept", f"{results.get('danger_name', 'danger')} kept", "shared dims >0.9 / >0.5",
            "W R² in / out shared"]
    if three_d:
        head += ["position kept by visibility: " + " / ".join(GROUPS), "robot pose kept"]
    rows = []
    for r in results["summary"]:
        ctrl = " / ".join(_ms(r.get(c), 3) for c in CONTROL_METRICS["retrieval_top1"])
        cka_ctrl = " / ".join(_ms(r.get(c), 2) for c in CONTROL_METRICS["cka"])
        rows.append([r["pair"], f"{r['steps']} × {r['batch_size']}", str(r["n_episodes"]),
                     _ms(r.get(f"agent_a_{seen}position_r2")), _ms(r.get(f"agent_b_{seen}position_r2")), _ms(r["w_r2"]),
                     _ms(r["retrieval_top1"]), ctrl, _ms(r["cka"]), cka_ctrl, _ms(r["position_kept"], 2),
                     _ms(r["danger_kept"], 2), f"{_ms(r['shared_dims_0.9'], 1)} / {_ms(r['shared_dims_0.5'], 1)}",
                     f"{_ms(r['w_r2_inside_shared'], 2)} / {_ms(r['w_r2_outside_shared'], 2)}",
                     *([" / ".join(_ms(r.get(f"position_kept_{g}"), 2) for g in GROUPS), _ms(r.get("robot_pose_kept"), 2)]
                       if three_d else [])])
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
    L += ["", "![scaling](scaling.png)", ""]
    return "\n".join(L)


def plot_scaling(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    panels = ("agent_b_position_r2", "w_r2", "retrieval_top1", "cka", "mutual_knn", "position_transferred",
              "danger_transferred", "position_kept", "danger_kept", "shared_dims_0.9", "shared_dims_0.5",
              "w_r2_inside_shared")
    from matplotlib.ticker import NullLocator

    # a fixed grid (constrained layout costs seconds per figure); x ticks at the budgets themselves
    fig = Figure(figsize=(16, 10))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.06, top=0.96, wspace=0.22, hspace=0.42)
    axes = fig.subplots(3, 4, squeeze=False).ravel()
    budgets = sorted({r["clips"] for r in results["summary"]})
    pairs = list(dict.fromkeys(r["pair"] for r in results["summary"]))
    for ax, key in zip(axes, panels):
        for i, pair in enumerate(pairs):
            rows = [r for r in results["summary"] if r["pair"] == pair and r.get(key)]
            x = [r["clips"] for r in rows]
            ax.errorbar(x, [r[key]["mean"] for r in rows], [r[key]["sd"] for r in rows], marker="o", ms=3,
                        capsize=2, color=f"C{i}", label=pair)
            for j, c in enumerate(CONTROL_METRICS.get(key, ())):
                crow = [r for r in rows if r.get(c)]
                ax.plot([r["clips"] for r in crow], [r[c]["mean"] for r in crow], ":", marker=".", color=f"C{i}",
                        alpha=0.35 + 0.15 * j, label=f"{pair}: {c.replace('_' + key, '')}" if i == 0 else None)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(budgets, [f"{c / 1000:g}k" for c in budgets], fontsize=7)
        ax.set_xlabel("training clips (steps × batch)")
        ax.set_ylabel(key.replace("_", " "), fontsize=8)
        ax.set_title(key.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        if key in CONTROL_METRICS or key == panels[0]:
            ax.legend(fontsize=5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def write_scaling(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "scaling.json", jsonable(results))
    atomic_write_bytes(out_dir / "scaling.md", render_scaling(results).encode())
    plot_scaling(results, out_dir / "scaling.png")
    return [out_dir / "scaling.json", out_dir / "scaling.md", out_dir / "scaling.png"]
