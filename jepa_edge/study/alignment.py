"""The Social-JEPA alignment study, computed from latents (numpy only).

Given agent A's (target) and agent B's (source) latents of the same world
moments, plus control latents, ``run_study`` measures whether a linear W
fitted on a few anchors aligns the two spaces, always beside its controls:

  trained      W_BA between the two trained agents
  untrained    the same between untrained encoders A0/B0 of the same architecture
  other_world  an encoder trained on a different world, fed this world's frames, as source
  objects_world  an encoder trained on a world with a different number of objects, as source
  shuffled     the trained pair, W fitted on anchors whose pairing is shuffled
  shift_Δ      the trained pair, B at step t paired with A at step t+Δ of the same episode
               (anchors and held-out pairs), for each Δ in ``time_shifts``

Besides the map metrics it says how much the two spaces share (``study.cca``:
held-out canonical correlations, W's R² inside / outside the shared subspace) and
why the danger probe transfers worse than the position probe (``danger_analysis``).

In the 3D world (``study.reproduce3d``) the inputs also carry robot 0's pose (one more probe), the
obstacle label's name, and both cameras' visibility masks: the position probe is then also scored per
(moment, object) visibility group (``study.visibility``). ``StudyConfig.findings`` names conditions shown
beside the controls but left out of the verdicts (the 3D different-world agent).

Moments are split into an anchor pool and a held-out set *by episode* (``world.dataset.heldout_split``);
everything is scored on held-out moments. ``write_report`` turns the result
dict into results.json, report.md (verdicts derived from config thresholds)
and PNG plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import AgentRef, atomic_write_bytes, jsonable
from jepa_edge.calib.fit import ESTIMATORS, FitConfig, FitError, LinearMap, fit_map
from jepa_edge.calib.metrics import (
    kept_fraction,
    linear_cka,
    map_spectrum,
    paired_metrics,
    permutation_null,
    probe_chance,
    similarity_metrics,
)
from jepa_edge.calib.postcard import Postcard
from jepa_edge.calib.probes import Probe, ProbeConfig, evaluate_probe, fit_probe, primary_score, transfer_probe
from jepa_edge.config import to_dict
from jepa_edge.study.cca import fit_cca, heldout_correlations, shared_dimensions, split_r2
from jepa_edge.study.plots import TITLES, write_plots
from jepa_edge.study.visibility import GROUP_TITLES, GROUPS, group_table, visibility_groups
from jepa_edge.world.dataset import heldout_split

CONTROLS = ("untrained", "other_world", "objects_world", "shuffled")


class StudyError(ValueError):
    """Study inputs or config that cannot give meaningful numbers."""


@dataclass
class StudyConfig:
    estimators: tuple[str, ...] = ESTIMATORS  # every estimator gets a held-out table
    primary_estimator: str = "ridge"  # the estimator behind verdicts, probe transfer and the PCA plot
    sweep_estimators: tuple[str, ...] = ("ridge", "procrustes")  # estimators in the anchor-count sweep
    ridge_alpha: float = 1e-2  # FitConfig.ridge_alpha for every fit
    heldout_fraction: float = 0.3  # fraction of *episodes* held out for evaluation
    n_anchors: int = 1000  # anchors for the main tables (capped by the anchor pool)
    anchor_counts: tuple[int, ...] = (10, 30, 100, 300, 1000)  # sweep; counts above the pool size are dropped
    sweep_repeats: int = 3  # random anchor draws per count
    n_perm: int = 10  # shuffled-anchor fits (permutation null)
    k: int = 10  # mutual k-NN neighbourhood
    max_eval: int = 1000  # held-out moments used for metrics (random subset; retrieval chance = 1/this)
    pca_points: int = 400  # points drawn in the PCA plot
    seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    retrieval_margin: float = 0.2  # "wide margin": trained top-1 retrieval minus the best control's
    keep_fraction: float = 0.9  # probe_A ∘ W must keep this fraction of the native probe's score above chance
    cka_margin: float = 0.2  # map-free check: trained CKA minus the best control's (untrained, other world)
    min_native_above_chance: float = 0.05  # below this the native probe is at chance: "kept" is undefined
    cca_ridge: float = 1e-3  # CCA shrinkage, × the mean eigenvalue of each side's covariance
    cca_pca_dims: int = 0  # > 0: SVCCA, each side first cut to its top principal dims (0 = plain CCA)
    shared_threshold: float = 0.5  # held-out canonical correlation that puts a direction in the shared subspace
    time_shifts: tuple[int, ...] = (1, 5, 25)  # Δ of the time-shifted control (steps within an episode)
    shift_verdict_min: int = 5  # shifts >= this count as controls in the retrieval verdict
    # conditions measured and shown beside the controls but left out of the verdicts: a finding, not a control
    # to beat (in 3D the different-world agent: does the isomorphism come from shared physics or shared data?)
    findings: tuple[str, ...] = ()

    def validate(self) -> None:
        for e in (*self.estimators, *self.sweep_estimators, self.primary_estimator):
            FitConfig(estimator=e, ridge_alpha=self.ridge_alpha).validate()
        if self.primary_estimator not in self.estimators:
            raise StudyError(f"StudyConfig.primary_estimator={self.primary_estimator!r} must be one of "
                             f"estimators {list(self.estimators)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise StudyError(f"StudyConfig.heldout_fraction={self.heldout_fraction} must be in (0, 1)")
        if any(d < 1 for d in self.time_shifts) or self.cca_ridge < 0 or self.cca_pca_dims < 0:
            raise StudyError("StudyConfig: time_shifts must be >= 1, cca_ridge and cca_pca_dims >= 0")
        if not 0.0 < self.shared_threshold < 1.0:
            raise StudyError(f"StudyConfig.shared_threshold={self.shared_threshold} must be in (0, 1)")
        unknown = sorted(set(self.findings) - set(CONTROLS))
        if unknown:
            raise StudyError(f"StudyConfig.findings {unknown}: use conditions among {list(CONTROLS)}")
        if self.n_anchors < 3 or self.n_perm < 1 or self.sweep_repeats < 1 or self.max_eval < 20:
            raise StudyError("StudyConfig: need n_anchors >= 3, n_perm >= 1, sweep_repeats >= 1, max_eval >= 20")
        self.probe.validate()


@dataclass
class StudyInputs:
    target: np.ndarray  # (M, Dt) agent A latents: W's target, where the probes are trained
    source: np.ndarray  # (M, Ds) agent B latents of the same moments
    positions: np.ndarray  # (M, 2n) ground-truth object positions (position probe)
    danger: np.ndarray  # (M,) int danger labels (danger probe)
    episode: np.ndarray  # (M,) episode id of each moment; the anchor/held-out split is by episode
    target_agent: AgentRef | dict[str, Any]  # or a partial {name, view, fingerprint}: latent_dim from the latents
    source_agent: AgentRef | dict[str, Any]
    target_untrained: np.ndarray | None = None  # (M, Dt) untrained A0 on A's frames
    source_untrained: np.ndarray | None = None  # (M, Ds) untrained B0 on B's frames
    other_world: np.ndarray | None = None  # (M, Dc) encoder trained on another world, on B's frames
    position_labels: list[str] | None = None  # names of the position columns, e.g. obj0.x
    objects_world: np.ndarray | None = None  # (M, Dd) encoder trained on a world with another object count, B's frames
    step: np.ndarray | None = None  # (M,) time step within the episode; None = row order within each episode
    danger_name: str = "danger"  # the danger label's probe and report name ("obstacle" in the 3D world)
    robot_pose: np.ndarray | None = None  # (M, 4) robot 0's x, y, cos, sin heading (3D world): one more probe
    robot_pose_labels: list[str] | None = None  # names of the robot_pose columns
    target_visible: np.ndarray | None = None  # (M, n) bool: object k shows in A's camera (3D); with source_visible,
    source_visible: np.ndarray | None = None  # the position probe is also scored per visibility group

    def steps(self) -> np.ndarray:
        """Time step of every row (given, or the row's rank among its episode's rows)."""
        if self.step is not None:
            return np.asarray(self.step, np.int64)
        ep = np.asarray(self.episode)
        order = np.argsort(ep, kind="stable")
        first = np.searchsorted(ep[order], ep[order])  # (M,) index of the episode's first row in sorted order
        out = np.empty(len(ep), np.int64)
        out[order] = np.arange(len(ep)) - first
        return out

    def validate(self) -> None:
        m = len(self.target)
        arrays = {"target": self.target, "source": self.source, "positions": self.positions,
                  "danger": self.danger, "episode": self.episode, "target_untrained": self.target_untrained,
                  "source_untrained": self.source_untrained, "other_world": self.other_world,
                  "objects_world": self.objects_world, "step": self.step, "robot_pose": self.robot_pose,
                  "target_visible": self.target_visible, "source_visible": self.source_visible}
        for name, a in arrays.items():
            if a is None:
                continue
            if len(a) != m:
                raise StudyError(f"StudyInputs.{name} has {len(a)} rows, target has {m}: give every array per moment")
            if not np.all(np.isfinite(a)):
                raise StudyError(f"StudyInputs.{name} contains NaN or Inf")
        if (self.target_visible is None) != (self.source_visible is None):
            raise StudyError("StudyInputs: give both target_visible and source_visible, or neither")
        n = np.asarray(self.positions).reshape(m, -1).shape[1] // 2
        for name, a in (("target_visible", self.target_visible), ("source_visible", self.source_visible)):
            if a is not None and np.shape(a) != (m, n):
                raise StudyError(f"StudyInputs.{name} has shape {np.shape(a)}: need (moments, objects) = {(m, n)}")
        if self.danger_name in ("position", "robot_pose"):
            raise StudyError(f"StudyInputs.danger_name={self.danger_name!r} collides with another probe's name")
        if len(np.unique(self.episode)) < 2:
            raise StudyError("StudyInputs.episode has a single episode; need >= 2 to hold episodes out")


# ---------------------------------------------------------------- setup


def _agent(desc: AgentRef | dict[str, Any], dim: int, fallback: str) -> AgentRef:
    """The agent of latents of width ``dim``: ``desc`` (an AgentRef or a partial dict), gaps filled from ``fallback``."""
    if isinstance(desc, AgentRef):
        return replace(desc, latent_dim=int(dim))
    return AgentRef(desc.get("name", fallback), desc.get("fingerprint", fallback), int(dim), desc.get("view", "?"))


def _pairs(inputs: StudyInputs) -> dict[str, dict[str, Any]]:
    """condition → {source, target latents and agent descriptors}; shuffled reuses 'trained'."""
    A = _agent(inputs.target_agent, inputs.target.shape[1], "agentA")
    B = _agent(inputs.source_agent, inputs.source.shape[1], "agentB")
    pairs = {"trained": {"source": inputs.source, "target": inputs.target, "s_agent": B, "t_agent": A}}
    if inputs.source_untrained is not None or inputs.target_untrained is not None:
        s = inputs.source if inputs.source_untrained is None else inputs.source_untrained
        t = inputs.target if inputs.target_untrained is None else inputs.target_untrained
        pairs["untrained"] = {
            "source": s, "target": t,
            "s_agent": B if inputs.source_untrained is None else _agent({}, s.shape[1], "untrained:" + B.name),
            "t_agent": A if inputs.target_untrained is None else _agent({}, t.shape[1], "untrained:" + A.name)}
    if inputs.other_world is not None:
        c = inputs.other_world
        pairs["other_world"] = {"source": c, "target": inputs.target, "s_agent": _agent({}, c.shape[1], "other_world"),
                                    "t_agent": A}
    if inputs.objects_world is not None:
        d = inputs.objects_world
        pairs["objects_world"] = {"source": d, "target": inputs.target,
                                  "s_agent": _agent({}, d.shape[1], "objects_world"), "t_agent": A}
    return pairs


def shifted_pairs(episode: np.ndarray, step: np.ndarray, rows: np.ndarray, delta: int) -> tuple[np.ndarray, np.ndarray]:
    """(source rows, target rows): each row r of ``rows`` paired with the row of the same episode at step + delta.

    Rows without such a partner (the episode ends first) are dropped.
    """
    episode, step = np.asarray(episode, np.int64), np.asarray(step, np.int64)
    span = int(step.max()) + abs(delta) + 1
    keys = (episode - episode.min()) * span + (step - step.min())  # (M,) unique per (episode, step)
    order = np.argsort(keys)
    want = keys[rows] + delta  # (R,)
    pos = np.clip(np.searchsorted(keys[order], want), 0, len(keys) - 1)
    found = keys[order][pos] == want
    src = np.asarray(rows)[found]
    tgt = order[pos][found]
    return src, tgt


def _fit(src: np.ndarray, tgt: np.ndarray, estimator: str, config: StudyConfig) -> LinearMap:
    return fit_map(src, tgt, FitConfig(estimator=estimator, ridge_alpha=config.ridge_alpha))


def _summary(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "p95": float(np.nanpercentile(v, 95))}


# ---------------------------------------------------------------- probes


@dataclass
class _Probes:
    home: dict[str, Probe]  # task name → probe trained on the pair's target (agent A's side)
    native: dict[str, Probe]  # task name → probe trained on the pair's source with its own labels


def _fit_probes(pair: dict[str, Any], pool: np.ndarray, labels: dict[str, Any], config: StudyConfig) -> _Probes:
    out = _Probes({}, {})
    for name, (task, y, names) in labels.items():
        out.home[name] = fit_probe(pair["target"][pool], y[pool], task, name, pair["t_agent"], config.probe, names)
        out.native[name] = fit_probe(pair["source"][pool], y[pool], task, name, pair["s_agent"], config.probe, names)
    return out


def _probe_scores(probes: _Probes, lm: LinearMap, pair: dict[str, Any], held: np.ndarray,
                  labels: dict[str, Any]) -> dict[str, float]:
    """Held-out score of probe_A ∘ W on the source, per probe task."""
    pc = Postcard.from_map(lm, "study", pair["s_agent"], pair["t_agent"])
    scores = {}
    for name, (task, y, _) in labels.items():
        moved = transfer_probe(probes.home[name], pc)
        scores[name] = primary_score(evaluate_probe(moved, pair["source"][held], y[held]), task)
    return scores


def _probe_table(probes: _Probes, lm: LinearMap, pair: dict[str, Any], held: np.ndarray,
                 labels: dict[str, Any], config: StudyConfig, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Home, native and zero-shot scores; ``kept`` is the share of the native score above chance.

    With visibility ``groups`` ((M, n), ``study.visibility``) the position probe is also scored per group.
    """
    transferred = _probe_scores(probes, lm, pair, held, labels)
    table: dict[str, Any] = {}
    for name, (task, y, _) in labels.items():
        native = primary_score(evaluate_probe(probes.native[name], pair["source"][held], y[held]), task)
        home = primary_score(evaluate_probe(probes.home[name], pair["target"][held], y[held]), task)
        chance = probe_chance(task, y[held])
        table[name] = {"metric": "r2" if task == "regression" else "balanced_accuracy", "chance": chance,
                       "home_on_target": home, "native_on_source": native, "transferred": transferred[name],
                       "kept": kept_fraction(transferred[name], native, chance, config.min_native_above_chance),
                       "kept_raw": transferred[name] / native if native > 0 else None}
    if groups is not None:
        pc = Postcard.from_map(lm, "study", pair["s_agent"], pair["t_agent"])
        src, tgt = pair["source"][held], pair["target"][held]
        y = labels["position"][1][held]
        table["position"]["by_visibility"] = group_table(
            transfer_probe(probes.home["position"], pc).apply(src), probes.native["position"].apply(src),
            probes.home["position"].apply(tgt), y, groups[held], config.min_native_above_chance)
    return table


# ---------------------------------------------------------------- the study


def _main_tables(pairs, anchors, held, ev, probes, labels, config, rng, groups=None) -> dict[str, Any]:
    """Per estimator: held-out map metrics and probe transfer for every condition."""
    trained = pairs["trained"]
    out: dict[str, Any] = {}
    for est in config.estimators:
        row: dict[str, Any] = {}
        for cond, pair in pairs.items():
            try:
                lm = _fit(pair["source"][anchors], pair["target"][anchors], est, config)
            except FitError as exc:
                row[cond] = {"error": str(exc)}
                continue
            m = paired_metrics(lm.apply(pair["source"][ev]), pair["target"][ev], lm.target_mean)
            m.update(map_spectrum(lm.weight))
            m.pop("w_singular_values")
            m["probes"] = _probe_table(probes[cond], lm, pair, held, labels, config, groups)
            row[cond] = m
        try:
            null = permutation_null(trained["source"][anchors], trained["target"][anchors], trained["source"][ev],
                                    trained["target"][ev], FitConfig(est, config.ridge_alpha), config.n_perm, rng)
        except FitError as exc:
            row["shuffled"] = {"error": str(exc)}
        else:
            row["shuffled"] = {k: _summary(v) for k, v in null.items()}
            row["shuffled"]["probes"] = _shuffled_probes(probes["trained"], trained, anchors, held, labels,
                                                         est, config, rng)
        out[est] = row
    return out


def _shuffled_probes(probes, pair, anchors, held, labels, est, config, rng) -> dict[str, Any]:
    runs: dict[str, list[float]] = {name: [] for name in labels}
    for _ in range(config.n_perm):
        perm = rng.permutation(len(anchors))
        lm = _fit(pair["source"][anchors[perm]], pair["target"][anchors], est, config)
        for name, v in _probe_scores(probes, lm, pair, held, labels).items():
            runs[name].append(v)
    return {name: {"transferred": _summary(v)} for name, v in runs.items()}


def _sweep(pairs, pool, ev, probes, labels, config, rng) -> dict[str, Any]:
    """Anchor-count sweep: retrieval, R² and probe transfer vs number of anchors."""
    counts = [c for c in config.anchor_counts if c <= len(pool)] or [len(pool)]
    conds = [*pairs, "shuffled"]
    keys = ["retrieval_top1", "r2", *(f"probe_{n}" for n in labels)]
    out: dict[str, Any] = {"counts": counts, "errors": []}
    for est in config.sweep_estimators:
        acc = {c: {k: np.full((len(counts), config.sweep_repeats), np.nan) for k in keys} for c in conds}
        for i, n in enumerate(counts):
            for r in range(config.sweep_repeats):
                anchors = rng.choice(pool, n, replace=False)
                for cond in conds:
                    pair = pairs["trained" if cond == "shuffled" else cond]
                    src_rows = rng.permutation(anchors) if cond == "shuffled" else anchors
                    try:
                        lm = _fit(pair["source"][src_rows], pair["target"][anchors], est, config)
                    except FitError as exc:
                        out["errors"].append(f"{est}/{cond}/N={n}: {exc}")
                        continue
                    m = paired_metrics(lm.apply(pair["source"][ev]), pair["target"][ev], lm.target_mean)
                    acc[cond]["retrieval_top1"][i, r], acc[cond]["r2"][i, r] = m["retrieval_top1"], m["r2"]
                    ps = _probe_scores(probes["trained" if cond == "shuffled" else cond], lm, pair, ev, labels)
                    for name, v in ps.items():
                        acc[cond][f"probe_{name}"][i, r] = v
        out[est] = {c: {k: {"mean": _nanmean_rows(v), "std": _nanstd_rows(v)} for k, v in d.items()}
                    for c, d in acc.items()}
    out["errors"] = sorted({e.split(": ", 1)[0] for e in out["errors"]})  # which cells could not be fitted
    return out


def _nanmean_rows(v: np.ndarray) -> list[float | None]:
    return [float(np.mean(r[np.isfinite(r)])) if np.isfinite(r).any() else None for r in v]


def _nanstd_rows(v: np.ndarray) -> list[float | None]:
    return [float(np.std(r[np.isfinite(r)])) if np.isfinite(r).any() else None for r in v]


def _halves(episode: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rows split into two halves by episode (alternate episodes), so a choice made on one is scored on the other."""
    eps = np.unique(episode[rows])
    first = np.isin(episode[rows], eps[::2])
    return rows[first], rows[~first]


def _shared(pairs, anchors, ev, episode, config, rng) -> dict[str, Any]:
    """Held-out canonical correlations per condition, and W's R² inside / outside the shared subspace."""
    pca = config.cca_pca_dims or None
    out: dict[str, Any] = {}
    for cond, pair in pairs.items():
        out[cond] = shared_dimensions(pair["source"][anchors], pair["target"][anchors], pair["source"][ev],
                                      pair["target"][ev], config.cca_ridge, pca)
    tr = pairs["trained"]
    perm = rng.permutation(anchors)
    out["shuffled"] = shared_dimensions(tr["source"][perm], tr["target"][anchors], tr["source"][ev],
                                        tr["target"][ev], config.cca_ridge, pca)
    # Directions are picked on half of the held-out episodes and W is scored on the other half.
    pick, score = _halves(episode, ev)
    model = fit_cca(tr["source"][anchors], tr["target"][anchors], config.cca_ridge, pca)
    corr = heldout_correlations(model, tr["source"][pick], tr["target"][pick])
    lm = _fit(tr["source"][anchors], tr["target"][anchors], config.primary_estimator, config)
    mapped, target = lm.apply(tr["source"][score]), tr["target"][score]
    split = {}
    for t in sorted({0.9, config.shared_threshold}, reverse=True):
        keep = corr > t
        split[f"{t:g}"] = {"n_dims": int(keep.sum()), **split_r2(model, mapped, target, keep)}
    out["w_split"] = {"estimator": config.primary_estimator, "r2_all": paired_metrics(mapped, target)["r2"],
                      "n_pick": len(pick), "n_score": len(score), "by_threshold": split}
    return out


def _time_shifts(inputs, pairs, pool, held, ev, probes, labels, config, rng) -> dict[str, Any]:
    """Trained pair with B at step t paired with A at t+Δ: anchors and held-out pairs shifted alike.

    Beside each, the same source rows paired at Δ = 0 ("matched"): same anchor count, same eval set size.
    """
    tr, est = pairs["trained"], config.primary_estimator
    episode, step = np.asarray(inputs.episode), inputs.steps()
    out: dict[str, Any] = {}
    for d in config.time_shifts:
        a_src, a_tgt = shifted_pairs(episode, step, pool, d)
        e_src, e_tgt = shifted_pairs(episode, step, ev, d)
        if len(a_src) < 3 or len(e_src) < 20:
            out[str(d)] = {"error": f"only {len(a_src)} anchor / {len(e_src)} held-out pairs {d} steps apart"}
            continue
        pick = rng.choice(len(a_src), min(config.n_anchors, len(a_src)), replace=False)
        a_src, a_tgt = a_src[pick], a_tgt[pick]
        try:
            lm = _fit(tr["source"][a_src], tr["target"][a_tgt], est, config)
            lm0 = _fit(tr["source"][a_src], tr["target"][a_src], est, config)
        except FitError as exc:
            out[str(d)] = {"error": str(exc)}
            continue
        shifted = paired_metrics(lm.apply(tr["source"][e_src]), tr["target"][e_tgt], lm.target_mean)
        matched = paired_metrics(lm0.apply(tr["source"][e_src]), tr["target"][e_src], lm0.target_mean)
        on_true = paired_metrics(lm.apply(tr["source"][ev]), tr["target"][ev], lm.target_mean)
        cca = shared_dimensions(tr["source"][a_src], tr["target"][a_tgt], tr["source"][e_src], tr["target"][e_tgt],
                                config.cca_ridge, config.cca_pca_dims or None)
        out[str(d)] = {
            "n_anchors": len(a_src), "n_eval": len(e_src),
            "shifted": {**shifted, "cka": linear_cka(tr["source"][e_src], tr["target"][e_tgt]),
                        "n_above": cca["n_above"]},
            "matched": {**matched, "cka": linear_cka(tr["source"][e_src], tr["target"][e_src])},
            "shifted_w_on_true_pairs": on_true,
            "probes_transferred": _probe_scores(probes["trained"], lm, tr, held, labels),
        }
    return out


def _state_features(labels: dict[str, Any]) -> np.ndarray:
    """The true state a danger rule can read: object positions, and robot 0's pose where it is a probe (3D)."""
    parts = [labels["position"][1], *([labels["robot_pose"][1]] if "robot_pose" in labels else [])]
    return np.concatenate(parts, 1)  # (M, 2n [+ 4])


def _danger_analysis(pool, held, labels, dname, main, config) -> dict[str, Any]:
    """Why danger transfers worse than position: class balance, the label's nonlinearity, native decodability.

    2D: danger = 1 when object 0 is inside a disc: not linear in positions, linear in [positions, positions²].
    3D (obstacle): something within range ahead of robot 0, a rule on positions and robot 0's pose.
    A classifier on the true state bounds what any linear probe on a perfect state code can do.
    """
    state = _state_features(labels)
    danger = labels[dname][1]
    quad = np.concatenate([state, state**2], 1)  # (M, 2 x state columns)
    out: dict[str, Any] = {"positive_fraction": {"all": float(danger.mean()), "anchor_pool": float(danger[pool].mean()),
                                                 "heldout": float(danger[held].mean())}}
    for name, feats in (("linear_on_true_positions", state), ("quadratic_on_true_positions", quad)):
        probe = fit_probe(feats[pool], danger[pool], "classification", dname,
                          AgentRef("ground_truth", "ground_truth", feats.shape[1]), config.probe)
        out[name] = primary_score(evaluate_probe(probe, feats[held], danger[held]), "classification")
    row = main[config.primary_estimator]["trained"]
    if "error" not in row:
        p = row["probes"]
        out["native_on_target"] = p[dname]["home_on_target"]
        out["native_on_source"] = p[dname]["native_on_source"]
        out["transferred"] = p[dname]["transferred"]
        out["position_transferred_r2"] = p["position"]["transferred"]
    return out


def _danger_via_positions(probes, pairs, anchors, held, labels, dname, config) -> float | None:
    """Danger read from the *transferred state probes'* output by a quadratic rule fitted on the true state."""
    tr = pairs["trained"]
    try:
        lm = _fit(tr["source"][anchors], tr["target"][anchors], config.primary_estimator, config)
    except FitError:
        return None
    pc = Postcard.from_map(lm, "study", tr["s_agent"], tr["t_agent"])
    state, danger = _state_features(labels), labels[dname][1]
    pred = np.concatenate([transfer_probe(probes["trained"].home[k], pc).apply(tr["source"][held])
                           for k in ("position", "robot_pose") if k in labels], 1)  # (H, state columns)
    agent = AgentRef("ground_truth", "ground_truth", 2 * state.shape[1])
    rule = fit_probe(np.concatenate([state, state**2], 1)[anchors], danger[anchors], "classification",
                     dname, agent, config.probe)
    feats = np.concatenate([pred, pred**2], 1)
    return primary_score(evaluate_probe(rule, feats, danger[held]), "classification")


def _pca_panel(pairs, anchors, ev, positions, config, rng) -> dict[str, Any]:
    """2-D PCA: A's latents, B's in its own basis (before W), B mapped by W in A's basis (after)."""
    pair = pairs["trained"]
    idx = np.sort(rng.choice(ev, min(config.pca_points, len(ev)), replace=False))
    lm = _fit(pair["source"][anchors], pair["target"][anchors], config.primary_estimator, config)

    def basis(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu = x.mean(0)
        _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
        return mu, vt[:2]  # (D,), (2, D)

    mu_a, va = basis(pair["target"][idx])
    mu_b, vb = basis(pair["source"][idx])
    return {"target": ((pair["target"][idx] - mu_a) @ va.T).tolist(),  # (P, 2)
            "source_before": ((pair["source"][idx] - mu_b) @ vb.T).tolist(),
            "source_after": ((lm.apply(pair["source"][idx]) - mu_a) @ va.T).tolist(),
            "color": positions[idx, 0].tolist(), "color_label": "object 0 x"}


def _verdicts(main: dict[str, Any], similarity: dict[str, Any], shifts: dict[str, Any],
              config: StudyConfig) -> dict[str, Any]:
    row = main[config.primary_estimator]
    trained = row["trained"]
    if "error" in trained:
        return {"error": trained["error"]}
    ctrl = {c: (row[c]["retrieval_top1"]["mean"] if c == "shuffled" else row[c]["retrieval_top1"])
            for c in CONTROLS if c in row and "error" not in row[c] and c not in config.findings}
    for d, entry in shifts.items():  # time-shifted pairing: same agents, same views, wrong moment
        if int(d) >= config.shift_verdict_min and "error" not in entry:
            ctrl[f"shift_{d}"] = entry["shifted"]["retrieval_top1"]
    best = max(ctrl, key=ctrl.get) if ctrl else None
    margin = trained["retrieval_top1"] - (ctrl[best] if best else 0.0)
    keep = {name: {"kept": p["kept"], "pass": p["kept"] is not None and p["kept"] >= config.keep_fraction}
            for name, p in trained["probes"].items()}
    return {
        "estimator": config.primary_estimator,
        "retrieval": {"trained": trained["retrieval_top1"], "controls": ctrl, "best_control": best,
                      "margin": margin, "threshold": config.retrieval_margin,
                      "chance": trained["retrieval_chance"], "pass": bool(best is not None and
                                                                          margin >= config.retrieval_margin)},
        "probe_keep": {"threshold": config.keep_fraction, "probes": keep,
                       "pass": bool(keep) and all(v["pass"] for v in keep.values())},
        "cka": _cka_verdict(similarity, config),
    }


def _cka_verdict(similarity: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Map-free check: is the trained pair's CKA above every control's by config.cka_margin?"""
    trained = similarity["trained"]["cka"]
    ctrl = {c: s["cka"] for c, s in similarity.items() if c != "trained" and c not in config.findings}
    best = max(ctrl, key=ctrl.get) if ctrl else None
    margin = trained - ctrl[best] if best else None
    return {"trained": trained, "controls": ctrl, "best_control": best, "margin": margin,
            "threshold": config.cka_margin, "pass": bool(best is not None and margin >= config.cka_margin)}


def run_study(inputs: StudyInputs, config: StudyConfig | None = None) -> dict[str, Any]:
    """All numbers of the alignment table, each beside its controls (a JSON-able dict)."""
    config = config or StudyConfig()
    config.validate()
    inputs.validate()
    rng = np.random.default_rng(config.seed)
    pool, held = heldout_split(np.asarray(inputs.episode), config.heldout_fraction)
    if len(pool) < 3 or len(held) < 20:
        raise StudyError(f"anchor pool {len(pool)} / held-out {len(held)} moments is too small; record more episodes")
    ev = np.sort(rng.choice(held, min(config.max_eval, len(held)), replace=False))
    anchors = rng.choice(pool, min(config.n_anchors, len(pool)), replace=False)
    pairs = _pairs(inputs)
    positions = np.asarray(inputs.positions, np.float64).reshape(len(inputs.target), -1)  # (M, 2n)
    pos_names = inputs.position_labels or [f"obj{i // 2}_{'xy'[i % 2]}" for i in range(positions.shape[1])]
    danger = np.asarray(inputs.danger).astype(np.int64)
    dname = inputs.danger_name
    labels = {"position": ("regression", positions, pos_names),
              dname: ("classification", danger, [str(c) for c in range(int(danger.max()) + 1)])}
    if inputs.robot_pose is not None:
        pose = np.asarray(inputs.robot_pose, np.float64)  # (M, 4)
        labels["robot_pose"] = ("regression", pose, inputs.robot_pose_labels
                                or [f"robot_pose_{i}" for i in range(pose.shape[1])])
    groups = (None if inputs.target_visible is None
              else visibility_groups(inputs.target_visible, inputs.source_visible))  # (M, n)
    probes = {cond: _fit_probes(pair, pool, labels, config) for cond, pair in pairs.items()}
    similarity = {c: similarity_metrics(p["source"][ev], p["target"][ev], config.k) for c, p in pairs.items()}
    main = _main_tables(pairs, anchors, held, ev, probes, labels, config, rng, groups)
    shifts = _time_shifts(inputs, pairs, pool, held, ev, probes, labels, config, rng)
    danger_info = _danger_analysis(pool, held, labels, dname, main, config)
    danger_info["via_transferred_positions"] = _danger_via_positions(probes, pairs, anchors, held, labels, dname,
                                                                     config)
    extra = {} if groups is None else {"visibility": {
        "groups": list(GROUPS), "share_heldout": {g: float((groups[held] == i).mean()) for i, g in enumerate(GROUPS)}}}
    return {
        "config": to_dict(config),
        "agents": {"target": pairs["trained"]["t_agent"].to_dict(), "source": pairs["trained"]["s_agent"].to_dict()},
        "conditions": [*pairs, "shuffled"],
        "split": {"n_pool": len(pool), "n_heldout": len(held), "n_eval": len(ev),
                  "n_anchors": len(anchors), "n_episodes": len(np.unique(inputs.episode))},
        "similarity": similarity,
        "estimators": main,
        "sweep": _sweep(pairs, pool, ev, probes, labels, config, rng),
        "pca": _pca_panel(pairs, anchors, ev, positions, config, rng),
        "shared": _shared(pairs, anchors, ev, np.asarray(inputs.episode), config, rng),
        "time_shift": shifts,
        "danger_analysis": danger_info,
        "danger_name": dname,
        **extra,
        "verdicts": _verdicts(main, similarity, shifts, config),
    }


# ---------------------------------------------------------------- report


def _title(cond: str) -> str:
    if cond.startswith("shift_"):
        return f"time shift Δ={cond[6:]}"
    return TITLES.get(cond, cond)


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _cell(entry: dict[str, Any] | None, key: str) -> str:
    """One table cell: a number, mean ± sd for the shuffled null, or the fit error."""
    if entry is None:
        return "n/a"
    if "error" in entry:
        return "not fittable"
    v = entry.get(key)
    if isinstance(v, dict):
        return f"{_f(v['mean'])} ± {_f(v['std'])}"
    return _f(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _verdict_lines(v: dict[str, Any]) -> list[str]:
    if "error" in v:
        return [f"- No verdict: the primary estimator could not be fitted ({v['error']})."]
    r, p = v["retrieval"], v["probe_keep"]
    yes = {True: "**yes**", False: "**no**"}
    best = f"{_f(r['controls'][r['best_control']])} ({_title(r['best_control'])})" if r["best_control"] else "none"
    lines = [(f"- Top-1 retrieval beats every control by at least {r['threshold']:.2f}: {yes[r['pass']]}. "
             f"Trained {_f(r['trained'])} vs best control {best}; chance {_f(r['chance'], 4)}.")]
    parts = [f"{name} " + (f"{_f(d['kept'], 2)} ({'yes' if d['pass'] else 'no'})" if d["kept"] is not None
                           else "undefined (the native probe is at chance)") for name, d in p["probes"].items()]
    lines.append(f"- probe_A ∘ W on B keeps at least {p['threshold']:.0%} of the native probe's score above chance: "
                 f"{yes[p['pass']]}. Fraction kept: {'; '.join(parts)}.")
    c = v["cka"]
    if c["best_control"] is None:
        lines.append(f"- Linear CKA (no W): trained {_f(c['trained'])}; no control latents were given.")
    else:
        lines.append(f"- Linear CKA (no W) exceeds every control's by at least {c['threshold']:.2f}: "
                     f"{yes[c['pass']]}. Trained {_f(c['trained'])} vs best control {_f(c['controls'][c['best_control']])} "
                     f"({_title(c['best_control'])}).")
    return lines


def _targets_section(results: dict[str, Any]) -> list[str]:
    """The training recipe's targets (docs/RECIPE.md), when the caller (reproduce) checked them."""
    rows = results.get("recipe_targets")
    if not rows:
        return []
    word = {True: "**yes**", False: "**no**", None: "not measured"}
    table = _table(["target", "measured", "threshold", "met"],
                   [[r["target"], _f(r["value"], r["digits"]),
                     ("≤ " if r["at_most"] else "≥ ") + _f(r["threshold"], r["digits"]), word[r["pass"]]] for r in rows])
    missed = [r["target"] for r in rows if r["pass"] is False]
    verdict = (f"Missed: {', '.join(missed)}." if missed else "Every measured target is met.")
    return ["## Recipe targets", "", *table, "", verdict, *_margin_lines(results, rows), ""]


def _margin_lines(results: dict[str, Any], rows: list[dict]) -> list[str]:
    """The retrieval margin over each control, and which controls a missed margin target is missed against."""
    r = results.get("verdicts", {}).get("retrieval") or {}
    target = next((t for t in rows if t["target"].startswith("retrieval margin")), None)
    if not r.get("controls") or target is None:
        return []
    margins = {c: r["trained"] - v for c, v in r["controls"].items() if v is not None}
    lines = ["", "Retrieval margin over each control: "
             + ", ".join(f"{_title(c)} {_f(m)}" for c, m in margins.items()) + "."]
    short = [c for c, m in margins.items() if m < target["threshold"]]
    if short and len(short) < len(margins):
        lines.append(f"The margin target ({_f(target['threshold'], 2)}) is missed only against "
                     + " and ".join(_title(c) for c in short)
                     + (": a second agent of B's view, trained on another world and fed B's frames, so it shares the "
                        "view, the objects and the moment (docs/RESULTS.md, \"The different-world control\")."
                        if short == ["other_world"] else "."))
    return lines


def render_report(results: dict[str, Any], assets: str = "") -> str:
    """report.md: every number beside its controls, verdicts from the config thresholds.

    ``assets``: prefix of the plots' paths (a folder, when the section is embedded in another report).
    """
    cfg, sp, ag = results["config"], results["split"], results["agents"]
    conds = results["conditions"]
    est = cfg["primary_estimator"]
    L = [(f"# Alignment study: {ag['source']['name']} ({ag['source']['view']}) → "
         f"{ag['target']['name']} ({ag['target']['view']})"), "",
         *([f"> **{results['notice']}**", ""] if results.get("notice") else []),
         (f"{sp['n_episodes']} episodes, split by episode: anchor pool {sp['n_pool']} moments, held-out "
         f"{sp['n_heldout']} (metrics on {sp['n_eval']}); {sp['n_anchors']} anchors. Verdicts use `{est}`."), "",
         "## Verdicts", "", *_verdict_lines(results["verdicts"]), "", *_targets_section(results)]
    map_rows = [("R² (mapped vs true)", "r2"), ("mean cosine (centred on anchor mean)", "cosine"),
                ("retrieval top-1", "retrieval_top1"), ("retrieval top-5", "retrieval_top5"),
                ("W condition number", "w_condition_number"), ("W isometry deviation", "w_isometry_deviation")]
    for e, row in results["estimators"].items():
        L += [f"## Held-out alignment, estimator `{e}`", ""]
        L += _table(["metric", *(_title(c) for c in conds)],
                    [[name, *(_cell(row.get(c), key) for c in conds)] for name, key in map_rows])
        L += ["", (f"Retrieval chance: {_f(1 / sp['n_eval'], 4)}. Shuffled: mean ± sd over {cfg['n_perm']} "
              "shuffled-anchor fits."), ""]
    sim = results["similarity"]
    L += ["## Map-free similarity (held-out, no W)", ""]
    L += _table(["metric", *(_title(c) for c in sim), "chance"],
                [[name, *(_f(sim[c][key]) for c in sim), chance] for name, key, chance in (
                    ("linear CKA", "cka", "—"),
                    (f"mutual {cfg['k']}-NN overlap", "mutual_knn", _f(sim["trained"]["mutual_knn_chance"])),
                    ("Procrustes distance (0 = isometric)", "procrustes_distance", "—"))])
    L += ["", f"## Probe transfer, estimator `{est}` (held-out)", ""]
    rows = []
    for c in conds:
        entry = results["estimators"][est].get(c, {})
        for name, d in entry.get("probes", {}).items():
            if c == "shuffled":
                rows.append([f"{name}", _title(c), "—", "—", _cell(d, "transferred"), "—", "—", "—"])
            else:
                rows.append([f"{name} ({d['metric']})", _title(c), _f(d["home_on_target"]),
                             _f(d["native_on_source"]), _f(d["transferred"]), _f(d["chance"]),
                             _f(d["kept"], 2), _f(d["kept_raw"], 2)])
    L += _table(["probe", "condition", "probe_A on A", "native probe on B", "probe_A ∘ W on B (zero-shot)",
                 "chance", "kept (above chance)", "transferred / native"], rows)
    L += ["", ("kept (above chance) = (zero-shot − chance) / (native − chance); — where the native probe is "
          f"within {cfg['min_native_above_chance']} of chance."), ""]
    L += [*_findings_lines(results), *_visibility_section(results, assets)]
    L += ["", *_shared_section(results), "", *_shift_section(results), "", *_danger_section(results)]
    L += ["", *_sweep_section(results), "", f"![anchor sweep]({assets}anchor_sweep.png)", "",
          f"![controls]({assets}controls.png)", "", f"![PCA]({assets}pca.png)", ""]
    return "\n".join(L)


def _findings_lines(results: dict[str, Any]) -> list[str]:
    """Conditions shown beside the controls but left out of the verdicts (StudyConfig.findings)."""
    found = [c for c in results["config"].get("findings", ()) if c in results["conditions"]]
    if not found:
        return []
    why = (" The different-world agent sees this world's frames from B's view but trained on another world (other "
           "object sizes, speeds and colours): how well W still aligns it says whether the shared structure comes "
           "from shared physics rather than shared data." if "other_world" in found else "")
    return ["", f"Findings, not controls to beat (left out of the verdicts): {', '.join(_title(c) for c in found)}.{why}",
            ""]


def _visibility_section(results: dict[str, Any], assets: str) -> list[str]:
    """Position transfer per (moment, object) visibility group of the two cameras (3D)."""
    if "visibility" not in results:
        return []
    est, conds = results["config"]["primary_estimator"], results["conditions"]
    rows = []
    for c in conds:
        groups = results["estimators"][est].get(c, {}).get("probes", {}).get("position", {}).get("by_visibility")
        for g, d in (groups or {}).items():
            rows.append([GROUP_TITLES[g], _title(c), str(d["n"]), f"{100 * d['share']:.0f}%", _f(d["home_on_target"]),
                         _f(d["native_on_source"]), _f(d["transferred"]), _f(d["kept"], 2)])
    return ["", f"## Position transfer by what each camera sees, estimator `{est}` (held-out)", "",
            *_table(["object is…", "condition", "entries", "share", "probe_A on A (R²)", "native probe on B (R²)",
                     "probe_A ∘ W on B (R²)", "kept (transferred / native)"], rows), "",
            ("Every (moment, object) entry falls in one group by the two cameras' visibility masks (at least one "
             "pixel, occlusion-aware). R² within a group is about that group's mean position; kept is — where the "
             "native probe's R² is within "
             f"{results['config']['min_native_above_chance']} of 0."), "",
            f"![visibility]({assets}visibility.png)"]


def _shared_section(results: dict[str, Any]) -> list[str]:
    sh, cfg = results.get("shared"), results["config"]
    if not sh:
        return []
    conds = [c for c in sh if c != "w_split"]
    kind = f"SVCCA (top {cfg['cca_pca_dims']} principal dims, then CCA)" if cfg["cca_pca_dims"] else "CCA"
    L = [f"## How much is shared: {kind}, ridge {cfg['cca_ridge']:g}, fitted on the anchors, scored held-out", "",
         *_table(["condition", "dims > 0.9", "dims > 0.5", "mean held-out corr", "top 5 held-out", "top 5 on anchors"],
                 [[_title(c), str(sh[c]["n_above"].get("0.9", "—")), str(sh[c]["n_above"].get("0.5", "—")),
                   _f(sh[c]["mean_heldout_correlation"]),
                   ", ".join(f"{v:.2f}" for v in sh[c]["heldout_correlations"][:5]),
                   ", ".join(f"{v:.2f}" for v in sh[c]["fit_correlations"][:5])] for c in conds]), ""]
    w = sh["w_split"]
    L.append(f"W (`{w['estimator']}`) on held-out moments: R² {_f(w['r2_all'])} over all of A's latent space. "
             f"Split by the trained pair's canonical directions (picked on {w['n_pick']} held-out moments, "
             f"scored on the other {w['n_score']}):")
    L.append("")
    for t, d in w["by_threshold"].items():
        share = d["target_variance_inside"]
        L.append(f"- shared = held-out correlation > {t} ({d['n_dims']} dims, "
                 f"{'—' if share is None else f'{100 * share:.0f}%'} of A's variance): R² inside {_f(d['r2_inside'])}, "
                 f"outside {_f(d['r2_outside'])}.")
    L += ["", ("Low R² inside means W itself is poor; high inside but low outside means A's latents hold content "
               "that B's do not (view-specific), which no map from B can predict.")]
    return L


def _shift_section(results: dict[str, Any]) -> list[str]:
    sh = results.get("time_shift")
    if not sh:
        return []
    rows = []
    for d, e in sh.items():
        if "error" in e:
            rows.append([d, "—", "—", e["error"], "", "", "", "", "", "", "", ""])
            continue
        s, m, p = e["shifted"], e["matched"], e["probes_transferred"]
        rows.append([d, str(e["n_anchors"]), str(e["n_eval"]), _f(s["retrieval_top1"]), _f(m["retrieval_top1"]),
                     _f(1 / e["n_eval"], 4), _f(s["r2"]), _f(m["r2"]), _f(s["cka"]), _f(m["cka"]),
                     str(s["n_above"].get("0.5", "—")), " / ".join(_f(v) for v in p.values())])
    names = " / ".join(next((list(e["probes_transferred"]) for e in sh.values() if "error" not in e), []))
    return ["## Time-shifted pairing (B at t, A at t+Δ, same episode)", "",
            *_table(["Δ", "anchors", "eval", "retrieval shifted", "retrieval Δ=0 (same rows)", "chance",
                     "R² shifted", "R² Δ=0", "CKA shifted", "CKA Δ=0", "CCA dims > 0.5 shifted",
                     f"{names} via shifted W (true labels)"], rows), "",
            ("Anchors and held-out pairs are shifted alike; the Δ=0 columns use the same source rows paired with "
             "their own moment, so anchor count and retrieval chance match. Shifts of at least "
             f"{results['config']['shift_verdict_min']} steps count as controls in the retrieval verdict.")]


def _danger_section(results: dict[str, Any]) -> list[str]:
    d = results.get("danger_analysis")
    if not d:
        return []
    pf = d["positive_fraction"]
    name = results.get("danger_name", "danger")
    if name == "danger":
        positive = "dangerous"
        rule = (f"- The label is not linear in positions (object 0 inside a disc): a linear classifier on the *true* "
                f"positions reaches {_f(d['linear_on_true_positions'])}, one on [positions, positions²] "
                f"{_f(d['quadratic_on_true_positions'])}.")
    else:
        positive = f"labelled {name}"
        rule = (f"- The label is not linear in the state (an object or robot within range ahead of robot 0): a linear "
                f"classifier on the *true* object positions and robot 0's pose reaches "
                f"{_f(d['linear_on_true_positions'])}, one on [state, state²] {_f(d['quadratic_on_true_positions'])}.")
    L = [f"## Why {name} transfers worse than position", "",
         (f"- Class balance: {100 * pf['all']:.0f}% of moments are {positive} (anchor pool "
          f"{100 * pf['anchor_pool']:.0f}%, held-out {100 * pf['heldout']:.0f}%); scores are balanced accuracy, "
          "chance 0.5."), rule]
    if "native_on_target" in d:
        L.append(f"- Natively linear in each agent: A {_f(d['native_on_target'])}, B {_f(d['native_on_source'])}; "
                 f"probe_A ∘ W on B {_f(d['transferred'])} (position R² transferred {_f(d['position_transferred_r2'])}).")
    if d.get("via_transferred_positions") is not None:
        read = "*position* probe's output" if name == "danger" else "*position* and *robot_pose* probes' outputs"
        L.append(f"- {name.capitalize()} read by the quadratic rule from the transferred {read}: "
                 f"{_f(d['via_transferred_positions'])}.")
    return L


def _sweep_section(results: dict[str, Any]) -> list[str]:
    """One table per (estimator, metric): rows = anchor counts, columns = conditions."""
    sweep = results["sweep"]
    L = []
    for e in results["config"]["sweep_estimators"]:
        if e not in sweep:
            continue
        d = sweep[e]
        for key in d["trained"]:
            L += [(f"## Anchor sweep: {key.replace('_', ' ')}, estimator `{e}` "
                  f"(mean over {results['config']['sweep_repeats']} anchor draws)"), ""]
            rows = [[str(n), *(_f(d[c][key]["mean"][i]) for c in d)] for i, n in enumerate(sweep["counts"])]
            L += [*_table(["anchors", *(_title(c) for c in d)], rows), ""]
    if sweep["errors"]:
        L += ["Not fittable (too few anchors for the estimator): " + ", ".join(sweep["errors"]) + "."]
    return L


def write_report(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write results.json, report.md and the PNG plots into out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", json.dumps(jsonable(results), indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "report.md", render_report(results).encode())
    return [out / "results.json", out / "report.md", *(out / name for name in write_plots(results, out))]
