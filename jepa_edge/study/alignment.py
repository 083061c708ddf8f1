"""The Social-JEPA alignment study, computed from latents (numpy only).

Given agent A's (target) and agent B's (source) latents of the same world
moments, plus control latents, ``run_study`` measures whether a linear W
fitted on a few anchors aligns the two spaces, always beside its controls:

  trained      W_BA between the two trained agents
  untrained    the same between untrained encoders A0/B0 of the same architecture
  other_world  an encoder trained on a different world, fed this world's frames, as source
  shuffled     the trained pair, W fitted on anchors whose pairing is shuffled

Moments are split into an anchor pool and a held-out set *by episode*;
everything is scored on held-out moments. ``write_report`` turns the result
dict into results.json, report.md (verdicts derived from config thresholds)
and PNG plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes
from jepa_edge.calib.fit import ESTIMATORS, FitConfig, FitError, LinearMap, fit_map
from jepa_edge.calib.metrics import map_spectrum, paired_metrics, permutation_null, similarity_metrics
from jepa_edge.calib.postcard import Postcard, jsonable
from jepa_edge.calib.probes import Probe, ProbeConfig, evaluate_probe, fit_probe, primary_score, transfer_probe
from jepa_edge.config import to_dict
from jepa_edge.study.plots import TITLES, write_plots

CONTROLS = ("untrained", "other_world", "shuffled")


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

    def validate(self) -> None:
        for e in (*self.estimators, *self.sweep_estimators, self.primary_estimator):
            FitConfig(estimator=e, ridge_alpha=self.ridge_alpha).validate()
        if self.primary_estimator not in self.estimators:
            raise StudyError(f"StudyConfig.primary_estimator={self.primary_estimator!r} must be one of "
                             f"estimators {list(self.estimators)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise StudyError(f"StudyConfig.heldout_fraction={self.heldout_fraction} must be in (0, 1)")
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
    target_agent: dict[str, Any]  # {name, view, fingerprint} (+ latent_dim, filled in if absent)
    source_agent: dict[str, Any]
    target_untrained: np.ndarray | None = None  # (M, Dt) untrained A0 on A's frames
    source_untrained: np.ndarray | None = None  # (M, Ds) untrained B0 on B's frames
    other_world: np.ndarray | None = None  # (M, Dc) encoder trained on another world, on B's frames
    position_labels: list[str] | None = None  # names of the position columns, e.g. obj0_x

    def validate(self) -> None:
        m = len(self.target)
        arrays = {"target": self.target, "source": self.source, "positions": self.positions,
                  "danger": self.danger, "episode": self.episode, "target_untrained": self.target_untrained,
                  "source_untrained": self.source_untrained, "other_world": self.other_world}
        for name, a in arrays.items():
            if a is None:
                continue
            if len(a) != m:
                raise StudyError(f"StudyInputs.{name} has {len(a)} rows, target has {m}: give every array per moment")
            if not np.all(np.isfinite(a)):
                raise StudyError(f"StudyInputs.{name} contains NaN or Inf")
        if len(np.unique(self.episode)) < 2:
            raise StudyError("StudyInputs.episode has a single episode; need >= 2 to hold episodes out")


# ---------------------------------------------------------------- setup


def _agent(desc: dict[str, Any], dim: int, fallback: str) -> dict[str, Any]:
    return {"name": desc.get("name", fallback), "view": desc.get("view", "?"),
            "fingerprint": desc.get("fingerprint", fallback), "latent_dim": int(dim)}


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
            "s_agent": B if inputs.source_untrained is None else _agent({}, s.shape[1], "untrained:" + B["name"]),
            "t_agent": A if inputs.target_untrained is None else _agent({}, t.shape[1], "untrained:" + A["name"])}
    if inputs.other_world is not None:
        c = inputs.other_world
        pairs["other_world"] = {"source": c, "target": inputs.target, "s_agent": _agent({}, c.shape[1], "other_world"),
                                    "t_agent": A}
    return pairs


def _split(episode: np.ndarray, config: StudyConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-pool and held-out row indices, split by episode."""
    eps = rng.permutation(np.unique(episode))
    n_held = min(len(eps) - 1, max(1, round(len(eps) * config.heldout_fraction)))
    held = np.isin(episode, eps[:n_held])
    return np.flatnonzero(~held), np.flatnonzero(held)


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
                 labels: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Home, native and zero-shot scores; ``kept`` is the share of the native score above chance."""
    transferred = _probe_scores(probes, lm, pair, held, labels)
    table = {}
    for name, (task, y, _) in labels.items():
        native = primary_score(evaluate_probe(probes.native[name], pair["source"][held], y[held]), task)
        home = primary_score(evaluate_probe(probes.home[name], pair["target"][held], y[held]), task)
        chance = 0.0 if task == "regression" else 1.0 / len(np.unique(y[held]))  # R² 0 / balanced acc 1/k
        room = native - chance
        table[name] = {"metric": "r2" if task == "regression" else "balanced_accuracy", "chance": chance,
                       "home_on_target": home, "native_on_source": native, "transferred": transferred[name],
                       "kept": (transferred[name] - chance) / room if room >= config.min_native_above_chance
                       else None,
                       "kept_raw": transferred[name] / native if native > 0 else None}
    return table


# ---------------------------------------------------------------- the study


def _main_tables(pairs, anchors, held, ev, probes, labels, config, rng) -> dict[str, Any]:
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
            m["probes"] = _probe_table(probes[cond], lm, pair, held, labels, config)
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


def _verdicts(main: dict[str, Any], similarity: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    row = main[config.primary_estimator]
    trained = row["trained"]
    if "error" in trained:
        return {"error": trained["error"]}
    ctrl = {c: (row[c]["retrieval_top1"]["mean"] if c == "shuffled" else row[c]["retrieval_top1"])
            for c in CONTROLS if c in row and "error" not in row[c]}
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
    ctrl = {c: s["cka"] for c, s in similarity.items() if c != "trained"}
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
    pool, held = _split(np.asarray(inputs.episode), config, rng)
    if len(pool) < 3 or len(held) < 20:
        raise StudyError(f"anchor pool {len(pool)} / held-out {len(held)} moments is too small; record more episodes")
    ev = np.sort(rng.choice(held, min(config.max_eval, len(held)), replace=False))
    anchors = rng.choice(pool, min(config.n_anchors, len(pool)), replace=False)
    pairs = _pairs(inputs)
    positions = np.asarray(inputs.positions, np.float64).reshape(len(inputs.target), -1)  # (M, 2n)
    pos_names = inputs.position_labels or [f"obj{i // 2}_{'xy'[i % 2]}" for i in range(positions.shape[1])]
    danger = np.asarray(inputs.danger).astype(np.int64)
    labels = {"position": ("regression", positions, pos_names),
              "danger": ("classification", danger, [str(c) for c in range(int(danger.max()) + 1)])}
    probes = {cond: _fit_probes(pair, pool, labels, config) for cond, pair in pairs.items()}
    similarity = {c: similarity_metrics(p["source"][ev], p["target"][ev], config.k) for c, p in pairs.items()}
    main = _main_tables(pairs, anchors, held, ev, probes, labels, config, rng)
    return {
        "config": to_dict(config),
        "agents": {"target": pairs["trained"]["t_agent"], "source": pairs["trained"]["s_agent"]},
        "conditions": [*pairs, "shuffled"],
        "split": {"n_pool": len(pool), "n_heldout": len(held), "n_eval": len(ev),
                  "n_anchors": len(anchors), "n_episodes": len(np.unique(inputs.episode))},
        "similarity": similarity,
        "estimators": main,
        "sweep": _sweep(pairs, pool, ev, probes, labels, config, rng),
        "pca": _pca_panel(pairs, anchors, ev, positions, config, rng),
        "verdicts": _verdicts(main, similarity, config),
    }


# ---------------------------------------------------------------- report


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
    best = f"{_f(r['controls'][r['best_control']])} ({TITLES[r['best_control']]})" if r["best_control"] else "none"
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
                     f"({TITLES[c['best_control']]}).")
    return lines


def render_report(results: dict[str, Any]) -> str:
    """report.md: every number beside its controls, verdicts from the config thresholds."""
    cfg, sp, ag = results["config"], results["split"], results["agents"]
    conds = results["conditions"]
    est = cfg["primary_estimator"]
    L = [(f"# Alignment study: {ag['source']['name']} ({ag['source']['view']}) → "
         f"{ag['target']['name']} ({ag['target']['view']})"), "",
         (f"{sp['n_episodes']} episodes, split by episode: anchor pool {sp['n_pool']} moments, held-out "
         f"{sp['n_heldout']} (metrics on {sp['n_eval']}); {sp['n_anchors']} anchors. Verdicts use `{est}`."), "",
         "## Verdicts", "", *_verdict_lines(results["verdicts"]), ""]
    map_rows = [("R² (mapped vs true)", "r2"), ("mean cosine (centred on anchor mean)", "cosine"),
                ("retrieval top-1", "retrieval_top1"), ("retrieval top-5", "retrieval_top5"),
                ("W condition number", "w_condition_number"), ("W isometry deviation", "w_isometry_deviation")]
    for e, row in results["estimators"].items():
        L += [f"## Held-out alignment, estimator `{e}`", ""]
        L += _table(["metric", *(TITLES[c] for c in conds)],
                    [[name, *(_cell(row.get(c), key) for c in conds)] for name, key in map_rows])
        L += ["", (f"Retrieval chance: {_f(1 / sp['n_eval'], 4)}. Shuffled: mean ± sd over {cfg['n_perm']} "
              "shuffled-anchor fits."), ""]
    sim = results["similarity"]
    L += ["## Map-free similarity (held-out, no W)", ""]
    L += _table(["metric", *(TITLES[c] for c in sim), "chance"],
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
                rows.append([f"{name}", TITLES[c], "—", "—", _cell(d, "transferred"), "—", "—", "—"])
            else:
                rows.append([f"{name} ({d['metric']})", TITLES[c], _f(d["home_on_target"]),
                             _f(d["native_on_source"]), _f(d["transferred"]), _f(d["chance"]),
                             _f(d["kept"], 2), _f(d["kept_raw"], 2)])
    L += _table(["probe", "condition", "probe_A on A", "native probe on B", "probe_A ∘ W on B (zero-shot)",
                 "chance", "kept (above chance)", "transferred / native"], rows)
    L += ["", ("kept (above chance) = (zero-shot − chance) / (native − chance); — where the native probe is "
          f"within {cfg['min_native_above_chance']} of chance."), ""]
    L += ["", *_sweep_section(results), "", "![anchor sweep](anchor_sweep.png)", "",
          "![controls](controls.png)", "", "![PCA](pca.png)", ""]
    return "\n".join(L)


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
            L += [*_table(["anchors", *(TITLES[c] for c in d)], rows), ""]
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
