"""`jepa-edge reproduce --world 3d`: the experiment over view pairs of the 3D world.

One agent per view, trained once on its own simulated episodes and shared by every pair that names the
view (OUT/runs/<view>), plus a different-world agent: an agent of the first pair's B view trained on
another World3DConfig (other object sizes, speeds and colours), fed this world's frames. One set of
paired moments (an anchor world seed nobody trained on) is rendered from every view, with each
camera's visibility masks. Each pair (A = W's target, B = W's source) goes through ``run_study`` with
every control (untrained encoders, shuffled anchors, time shifts) and the different world as a finding;
probes: object positions (also per visibility group), the obstacle label, robot 0's pose.

Writes OUT/pairs/<A>_from_<B>/ (results.json, report.md, plots), OUT/report.md (a summary table of the
pairs, the recipe's targets per pair, then every pair's section), OUT/results.json, and the first
pair's postcard and agent A's probes for export (as in 2D).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from jepa_edge.agents.latents import agent_descriptor, latents_of, untrained_like, world_moments
from jepa_edge.artifacts import atomic_write_bytes, jsonable
from jepa_edge.config import ConfigError, to_dict
from jepa_edge.study.alignment import StudyConfig, StudyInputs, render_report, run_study, write_report
from jepa_edge.study.reproduce import (
    ReproduceConfig,
    check_views,
    ensure_agent,
    recipe_targets,
    short_run_notice,
    write_artifacts,
)
from jepa_edge.study.visibility import GROUPS
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.train.config import RunConfig, agent_config
from jepa_edge.world.sim import position_labels

# (A, B): A = W's target (its probes are transferred), B = W's source.
PAIRS_3D: tuple[tuple[str, str], ...] = (
    ("overhead", "front"),  # the mountain and the forest: a fixed view from above, a camera on a moving robot
    ("front", "rear"),  # one robot, two cameras with disjoint fields of view
    ("corner", "front"),  # a grey thermal camera at ground level in a corner, the robot's colour camera
    ("overhead", "corner"),  # two fixed cameras: from above, and across the arena from the ground (grey, thermal)
)
OBSTACLE = "obstacle"  # the 3D name of the states' danger label
OTHER_WORLD_NAME = "otherworld"  # OUT/runs/otherworld_<view>

# World3DConfig overrides of the different world: other object sizes, speeds and colours; same arena, shapes,
# posts, robots and physics rules.
OTHER_WORLD_3D: dict[str, Any] = {
    "sizes": [0.2, 0.36, 0.15, 0.3, 0.18, 0.34],
    "colors": [[120, 40, 200], [40, 110, 230], [150, 40, 160], [90, 230, 120], [30, 160, 250], [110, 110, 110]],
    "speed": 0.03, "max_speed": 0.06, "dynamics_noise": 0.012,
}


def study_3d(study: StudyConfig) -> StudyConfig:
    """``study`` with the different world as a finding: in 3D it is no control to beat (shared physics)."""
    return replace(study, findings=tuple(dict.fromkeys((*study.findings, "other_world"))))


def pairs_of(cfg: ReproduceConfig) -> tuple[tuple[str, str], ...]:
    pairs = cfg.pairs or PAIRS_3D
    for a, b in pairs:
        if a == b:
            raise ConfigError(f"view pair ({a}, {b}): A and B must be different views")
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"view pairs {[list(p) for p in pairs]} name one pair twice")
    check_views("3d", [v for p in pairs for v in p])
    return tuple(pairs)


def pair_key(a: str, b: str) -> str:
    """The pair's folder name under OUT/pairs: W maps B into A."""
    return f"{a}_from_{b}"


# Each view's agent has its own model seed and training episodes (seed_a + offset), whichever pairs are run, so
# OUT/runs/<view> is the same agent for every choice of pairs.
VIEW_SEED_OFFSET = {"overhead": 0, "front": 1, "rear": 2, "corner": 3, "side": 4}


def agent_3d(cfg: ReproduceConfig, view: str) -> RunConfig:
    """The agent of one view: the "3d" training preset, model seed seed_a + the view's offset, its own episodes."""
    offset = VIEW_SEED_OFFSET[view]
    return agent_config(f"agent_{view}", view, overrides=cfg.run, seed=cfg.seed_a + offset,
                        world_seed=cfg.world_seed_a + offset, steps=cfg.steps or None)


def other_world_agent(cfg: ReproduceConfig, view: str) -> RunConfig:
    """The different-world agent on ``view``: another World3DConfig (OTHER_WORLD_3D), seeds no other agent uses."""
    return agent_config(f"{OTHER_WORLD_NAME}_{view}", view, overrides=cfg.run, seed=cfg.seed_b + 100,
                        world_seed=cfg.world_seed_b + 100, steps=cfg.steps or None,
                        data={"world3d": OTHER_WORLD_3D})


def study_extras(moments: Any, pairs: list[tuple[str, str]], size: int, world: Any) -> dict[tuple[str, str], dict]:
    """StudyInputs fields of each 3D pair beyond the 2D ones: the obstacle name, robot 0's pose, and each
    camera's visibility mask of every object at size ``size`` (the agents' frames)."""
    from jepa_edge.world.render3d import visibility
    from jepa_edge.world.sim3d import ROBOT_POSE_LABELS

    e, t = moments.shape
    views = dict.fromkeys(v for p in pairs for v in p)
    visible = {v: visibility(moments.states, v, size, world).reshape(e * t, -1) for v in views}  # (M, n)
    pose = moments.states.robot_pose_vector().reshape(e * t, 4)  # (M, 4): x, y, cos, sin of robot 0
    return {(a, b): {"danger_name": OBSTACLE, "robot_pose": pose, "robot_pose_labels": list(ROBOT_POSE_LABELS),
                     "target_visible": visible[a], "source_visible": visible[b]} for a, b in pairs}


def reproduce_3d(cfg: ReproduceConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Every pair's study, the summary report and the first pair's export artifacts (``cfg`` has its preset)."""
    if cfg.objects_world:
        raise ConfigError("the object-count control agent is a 2D control; drop --objects-world with --world 3d")
    pairs = pairs_of(cfg)
    console = Console(stderr=True)
    runs = out_dir / "runs"

    # ---- agents: one per view, shared by the pairs; the different world on the first pair's B view
    views = list(dict.fromkeys(v for p in pairs for v in p))
    configs = {v: agent_3d(cfg, v) for v in views}
    for v, run_cfg in configs.items():
        ensure_agent(run_cfg, runs / v, progress, console)
    other_view = pairs[0][1]
    other_dir = runs / f"{OTHER_WORLD_NAME}_{other_view}"
    if cfg.other_world:
        ensure_agent(other_world_agent(cfg, other_view), other_dir, progress, console)
    agents = {v: load_agent(runs / v) for v in views}

    # ---- paired moments, each camera's visibility, latents
    first = configs[views[0]]
    size, world = first.data.img_size, first.data.world3d
    moments = world_moments(views, cfg.anchor_episodes, cfg.anchor_steps, size, cfg.anchor_seed, world)
    extras = study_extras(moments, list(pairs), size, world)
    latents = {v: latents_of(enc, moments.frames[v]) for v, (enc, _) in agents.items()}
    untrained = {v: latents_of(untrained_like(meta, 10_001 + i), moments.frames[v])
                 for i, (v, (_, meta)) in enumerate(agents.items())}
    other = latents_of(load_agent(other_dir)[0], moments.frames[other_view]) if cfg.other_world else None
    step = np.tile(np.arange(cfg.anchor_steps), cfg.anchor_episodes)  # rows are episode-major

    notice = short_run_notice(cfg, first)
    results: dict[str, Any] = {"world": "3d", "notice": notice, "reproduce_config": to_dict(cfg),
                               "other_world": {"view": other_view, "run": str(other_dir) if cfg.other_world else None,
                                               "world3d": OTHER_WORLD_3D},
                               "pairs": {}}
    first_inputs = None
    for a, b in pairs:
        key = pair_key(a, b)
        console.print(f"pair {b} → {a}: running the study (W estimators, controls, anchor sweep, probe transfer)…")
        (_, meta_a), (_, meta_b) = agents[a], agents[b]
        inputs = StudyInputs(
            target=latents[a], source=latents[b], positions=moments.positions, danger=moments.danger,
            episode=moments.episode, step=step, position_labels=position_labels(moments.positions.shape[1] // 2),
            target_agent=agent_descriptor(meta_a), source_agent=agent_descriptor(meta_b),
            target_untrained=untrained[a], source_untrained=untrained[b],
            other_world=other if b == other_view else None, **extras[(a, b)])
        res = run_study(inputs, study_3d(cfg.study))
        res["pair"] = {"target": a, "source": b}
        res["agent_training"] = {
            f"{role} ({v})": {"run": str(runs / v), "metrics": meta.get("metrics"),
                              "untrained_metrics": meta.get("untrained_metrics")}
            for role, v, meta in (("A", a, meta_a), ("B", b, meta_b))}
        res["notice"] = notice
        res["recipe_targets"] = recipe_targets(res, {}, cfg.targets)
        write_report(res, out_dir / "pairs" / key)
        results["pairs"][key] = res
        first_inputs = first_inputs or inputs
    results["summary"] = [summary_row(k, r) for k, r in results["pairs"].items()]
    atomic_write_bytes(out_dir / "results.json", _json(results))
    atomic_write_bytes(out_dir / "report.md", render_3d_report(results).encode())

    # ---- artifacts for export: the first pair's W_BA on all anchors + its agent A's probes
    write_artifacts(first_inputs, study_3d(cfg.study), out_dir)
    return results


def _json(results: dict[str, Any]) -> bytes:
    return json.dumps(jsonable(results), indent=1, allow_nan=False).encode()


# ---------------------------------------------------------------- summary and report


def summary_row(key: str, res: dict[str, Any]) -> dict[str, Any]:
    """One pair's headline numbers, each beside its controls, and its recipe verdict."""
    est = res["config"]["primary_estimator"]
    row = res["estimators"][est]
    tr, v, sim = row["trained"], res["verdicts"], res["similarity"]
    out: dict[str, Any] = {"pair": key, "target": res["pair"]["target"], "source": res["pair"]["source"]}
    if "error" in tr:
        out["error"] = tr["error"]
    else:
        probes = tr["probes"]
        out.update({
            "retrieval_top1": tr["retrieval_top1"], "retrieval_controls": v["retrieval"]["controls"],
            "retrieval_margin": v["retrieval"]["margin"], "retrieval_best_control": v["retrieval"]["best_control"],
            "position_kept": probes["position"]["kept"], "obstacle_kept": probes[OBSTACLE]["kept"],
            "robot_pose_kept": probes["robot_pose"]["kept"],
            "position_kept_by_visibility": {g: d["kept"] for g, d in probes["position"]["by_visibility"].items()},
            "visibility_share": {g: d["share"] for g, d in probes["position"]["by_visibility"].items()},
        })
    out["cka"] = sim["trained"]["cka"]
    out["cka_controls"] = {c: s["cka"] for c, s in sim.items() if c != "trained"}
    ow = row.get("other_world")
    out["other_world"] = None if ow is None else (
        {"error": ow["error"]} if "error" in ow else
        {"retrieval_top1": ow["retrieval_top1"], "cka": sim["other_world"]["cka"],
         "position_kept": ow["probes"]["position"]["kept"]})
    targets = res["recipe_targets"]
    out["missed"] = [t for t in targets if t["pass"] is False]
    out["unmeasured"] = [t["target"] for t in targets if t["pass"] is None]
    out["meets_targets"] = not out["missed"] and not out["unmeasured"]
    return out


def _f(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ctrl(d: dict[str, float], names: tuple[str, ...]) -> str:
    return " / ".join(_f(d.get(c)) for c in names)


def render_3d_report(results: dict[str, Any]) -> str:
    """report.md: the pairs side by side, the recipe's targets per pair, then each pair's own section."""
    rows = results["summary"]
    shifts = sorted({c for r in rows for c in r.get("retrieval_controls", {}) if c.startswith("shift_")},
                    key=lambda c: int(c[6:]))
    ctrl_names = ("untrained", "shuffled", *shifts)
    ctrl_titles = " / ".join(["untrained", "shuffled", *(f"shift Δ={c[6:]}" for c in shifts)])
    ow = results["other_world"]
    L = ["# Alignment study in the 3D world: view pairs (W maps B's latents into A's)", "",
         *([f"> **{results['notice']}**", ""] if results.get("notice") else []),
         ("One agent per view, trained once on its own episodes and shared by the pairs; one set of paired moments "
          f"(world seed {results['reproduce_config']['anchor_seed']}, which no agent trained on) rendered from every "
          "view. Every number is held-out; controls break the moment-to-moment correspondence (untrained encoders, "
          "shuffled anchors, time shifts)."), "",
         "## Summary", ""]
    head = ["pair (A ← B)", "retrieval top-1", f"controls: {ctrl_titles}", "margin", "CKA",
            "CKA untrained", "position kept", "kept by visibility: both / only A / only B / neither", "obstacle kept",
            "robot pose kept", "different world (finding): retrieval / CKA / position kept", "recipe targets"]
    body = []
    for r in rows:
        label = f"{r['target']} ← {r['source']}"
        verdict = "**met**" if r["meets_targets"] else ", ".join(
            [*([f"**missed {len(r['missed'])}**"] if r["missed"] else []),
             *([f"{len(r['unmeasured'])} not measured"] if r["unmeasured"] else [])])
        o = r["other_world"]
        finding = ("n/a (B is not " + ow["view"] + ")" if o is None and ow["run"] else "not trained" if o is None
                   else "not fittable" if "error" in o
                   else f"{_f(o['retrieval_top1'])} / {_f(o['cka'])} / {_f(o['position_kept'], 2)}")
        if "error" in r:
            body.append([label, f"not fittable ({r['error']})", "", "", _f(r["cka"]),
                         _f(r["cka_controls"].get("untrained")), "", "", "", "", finding, verdict])
            continue
        body.append([label, _f(r["retrieval_top1"]), _ctrl(r["retrieval_controls"], ctrl_names),
                     _f(r["retrieval_margin"]), _f(r["cka"]), _f(r["cka_controls"].get("untrained")),
                     _f(r["position_kept"], 2),
                     " / ".join(_f(r["position_kept_by_visibility"][g], 2) for g in GROUPS),
                     _f(r["obstacle_kept"], 2), _f(r["robot_pose_kept"], 2), finding, verdict])
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(b) + " |" for b in body)]
    L += ["", ("kept = probe_A ∘ W on B's share of B's native probe score above chance; by visibility: R² kept on the "
               "(moment, object) entries both cameras see / only A sees / only B sees / neither sees (— where B's "
               "native probe cannot read that group either)."), ""]
    if ow["run"]:
        L += [(f"The different-world agent (a {ow['view']} agent trained on another 3D world: other object sizes, "
               "speeds and colours) is fed this world's frames as B: a finding about where the isomorphism comes "
               "from (shared physics, not shared data), not a control to beat."), ""]
    L += ["## Recipe targets per pair", ""]
    met = [f"{r['target']} ← {r['source']}" for r in rows if r["meets_targets"]]
    L.append(f"Pairs meeting every target: {', '.join(met) if met else 'none'}.")
    L.append("")
    for r in rows:
        label = f"{r['target']} ← {r['source']}"
        if r["meets_targets"]:
            L.append(f"- {label}: every target met.")
            continue
        misses = [f"{t['target']} {_f(t['value'], t['digits'])} (target {'≤' if t['at_most'] else '≥'} "
                  f"{_f(t['threshold'], t['digits'])})" for t in r["missed"]]
        if r["unmeasured"]:
            misses.append("not measured or undefined (a native probe at chance): " + ", ".join(r["unmeasured"]))
        L.append(f"- {label}: missed " + "; ".join(misses) + ".")
    L.append("")
    for key, res in results["pairs"].items():
        section = render_report({**res, "notice": ""}, assets=f"pairs/{key}/")  # the notice heads this report
        L += ["#" + line if line.startswith("#") else line for line in section.splitlines()]  # one level down
        L.append("")
    return "\n".join(L)
