"""N-agent alignment graph (numpy only): W for every ordered pair, composed paths, cycle consistency.

Input: each agent's latents of the same world moments, ``latents[name] (N, D_name)``,
split into *fit* moments (anchors, used to fit every W and every probe) and
held-out *eval* moments. For every ordered pair (s → t):

* ``direct``: W_ts fitted on the anchors (``jepa_edge.calib.fit``);
* every composed path s → m → … → t (up to ``max_hops`` edges, no agent twice):
  the product of the direct maps along it (``W = W_tm · W_ms``, biases carried);
* each map is scored on held-out moments by the R² of the mapped latents
  against t's own latents, and — when state targets are given — by the
  *transfer* R² of t's probe (fitted on t's anchors) applied to the mapped
  latents, against the true state: what a robot s running t's probe gets;
* the best path per pair is the one with the highest transfer R² (latent R²
  without targets).

Cycle consistency for every cycle of 2 and 3 agents (a → b → a, a → b → c → a):
the held-out relative error ``||cycle(z_a) - z_a||² / ||z_a - mean||²`` and the
distance of the composed matrix from the identity ``||W_cycle - I||_F / sqrt(D)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.metrics import r2_score


@dataclass
class GraphConfig:
    fit: FitConfig = field(default_factory=FitConfig)  # estimator of every direct W
    max_hops: int = 2  # composed paths up to this many edges (2: through one intermediate agent)
    probe_alpha: float = 1e-2  # ridge penalty (× N, standardised) of the per-agent state probes

    def validate(self) -> None:
        self.fit.validate()
        if self.max_hops < 1:
            raise ValueError(f"GraphConfig.max_hops={self.max_hops} must be >= 1")
        if not np.isfinite(self.probe_alpha) or self.probe_alpha < 0:
            raise ValueError("GraphConfig.probe_alpha must be a finite number >= 0")


@dataclass(frozen=True)
class Affine:
    """y = x @ weight.T + bias; composition ``after.then(before)`` is applied right to left."""

    weight: np.ndarray  # (D_out, D_in) float64
    bias: np.ndarray  # (D_out,)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias

    def after(self, first: Affine) -> Affine:
        """self ∘ first: x → self(first(x))."""
        return Affine(self.weight @ first.weight, self.weight @ first.bias + self.bias)


def _check_inputs(latents: dict[str, np.ndarray], fit_idx: np.ndarray, eval_idx: np.ndarray,
                  targets: np.ndarray | None) -> None:
    if len(latents) < 2:
        raise ValueError(f"an alignment graph needs >= 2 agents, got {len(latents)}")
    n = {len(z) for z in latents.values()}
    if len(n) != 1:
        raise ValueError(f"agents' latents cover different numbers of moments {sorted(n)}: pair them row by row")
    if targets is not None and len(targets) != n.pop():
        raise ValueError("targets must have one row per moment")
    if len(np.intersect1d(fit_idx, eval_idx)):
        raise ValueError("fit and eval moments overlap: held-out scores would be optimistic")
    for name, z in latents.items():
        if z.ndim != 2 or not np.all(np.isfinite(z)):
            raise ValueError(f"latents of {name!r} must be a finite (N, D) array")


def _probe(z: np.ndarray, y: np.ndarray, alpha: float) -> Affine:
    """Ridge probe on standardised latents, folded back to raw latents."""
    from jepa_edge.calib.fit import ridge_solve

    mean, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    m = ridge_solve((z - mean) / sd, y - y.mean(0), alpha)  # (k, D)
    w = m / sd
    return Affine(w, y.mean(0) - w @ mean)


def _scores(m: Affine, zs: np.ndarray, zt: np.ndarray, probe: Affine | None, y: np.ndarray | None) -> dict:
    out = {"latent_r2": r2_score(m.apply(zs), zt)}
    if probe is not None:
        out["transfer_r2"] = r2_score(probe.apply(m.apply(zs)), y, weighting="uniform")
    return out


def _paths(names: list[str], s: str, t: str, max_hops: int) -> list[tuple[str, ...]]:
    """Simple paths s → … → t with 1..max_hops edges, shortest first."""
    others = [n for n in names if n not in (s, t)]
    out = []
    for k in range(max_hops):
        out += [(s, *mid, t) for mid in itertools.permutations(others, k)]
    return out


def alignment_graph(latents: dict[str, np.ndarray], fit_idx: Any, eval_idx: Any, targets: np.ndarray | None = None,
                    config: GraphConfig | None = None) -> dict[str, Any]:
    """Every ordered pair's direct and composed maps, scored held-out; cycles; best path per pair."""
    config = config or GraphConfig()
    config.validate()
    fit_idx, eval_idx = np.asarray(fit_idx), np.asarray(eval_idx)
    latents = {k: np.asarray(v, np.float64) for k, v in latents.items()}
    _check_inputs(latents, fit_idx, eval_idx, targets)
    names = list(latents)
    y = None if targets is None else np.asarray(targets, np.float64).reshape(len(targets), -1)  # (N, k)
    direct: dict[tuple[str, str], Affine] = {}
    for s, t in itertools.permutations(names, 2):
        lm = fit_map(latents[s][fit_idx], latents[t][fit_idx], config.fit)
        direct[(s, t)] = Affine(lm.weight, lm.bias)
    probes = {t: _probe(latents[t][fit_idx], y[fit_idx], config.probe_alpha) for t in names} if y is not None else {}
    native = {t: r2_score(p.apply(latents[t][eval_idx]), y[eval_idx], weighting="uniform") for t, p in probes.items()}
    pairs: dict[str, Any] = {}
    for s, t in itertools.permutations(names, 2):
        rows = []
        for path in _paths(names, s, t, config.max_hops):
            m = direct[(path[0], path[1])]
            for a, b in itertools.pairwise(path[1:]):
                m = direct[(a, b)].after(m)
            rows.append({"path": list(path), "hops": len(path) - 1,
                         **_scores(m, latents[s][eval_idx], latents[t][eval_idx], probes.get(t),
                                   None if y is None else y[eval_idx])})
        key = "transfer_r2" if y is not None else "latent_r2"
        best = max(rows, key=lambda r: r[key])
        pairs[f"{s}->{t}"] = {"direct": rows[0], "paths": rows, "best": best,
                              **({"native_r2": native[t]} if native else {})}
    return {"agents": names, "n_fit": len(fit_idx), "n_eval": len(eval_idx),
            "estimator": config.fit.estimator, "max_hops": config.max_hops, "pairs": pairs,
            "cycles": _cycles(names, direct, latents, eval_idx), "summary": _summary(pairs, y is not None)}


def _cycles(names: list[str], direct: dict[tuple[str, str], Affine], latents: dict[str, np.ndarray],
            eval_idx: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for k in (2, 3):
        for combo in itertools.permutations(names, k):
            if combo[0] != min(combo):  # one rotation per cycle (both directions kept)
                continue
            m = direct[(combo[0], combo[1])]
            for a, b in zip(combo[1:], [*combo[2:], combo[0]]):
                m = direct[(a, b)].after(m)
            z = latents[combo[0]][eval_idx]
            err = float(((m.apply(z) - z) ** 2).sum() / ((z - z.mean(0)) ** 2).sum())
            ident = float(np.linalg.norm(m.weight - np.eye(len(m.weight))) / np.sqrt(len(m.weight)))
            out.append({"cycle": [*combo, combo[0]], "relative_error": err, "identity_distance": ident})
    return out


def _summary(pairs: dict[str, Any], with_targets: bool) -> dict[str, Any]:
    """Mean held-out scores of direct vs 2-hop maps: what one composition step costs."""
    key = "transfer_r2" if with_targets else "latent_r2"
    direct = [p["direct"][key] for p in pairs.values()]
    two = [r[key] for p in pairs.values() for r in p["paths"] if r["hops"] == 2]
    best_direct = sum(p["best"]["hops"] == 1 for p in pairs.values())
    return {"score": key, "direct_mean": float(np.mean(direct)),
            "two_hop_mean": float(np.mean(two)) if two else None,
            "composition_cost": float(np.mean(direct) - np.mean(two)) if two else None,
            "pairs_best_direct": best_direct, "pairs": len(pairs)}
