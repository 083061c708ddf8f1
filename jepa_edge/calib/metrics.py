"""How well two latent spaces line up, measured on held-out paired moments.

Paired metrics compare ``mapped = W(source)`` with the true ``target`` row by
row (R², cosine, top-k retrieval). Similarity metrics compare two spaces
without any map (linear CKA, mutual k-NN overlap, Procrustes distance); they
work across different latent dims. ``permutation_null`` is the
shuffled-anchor control: W fitted on anchors whose pairing is destroyed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jepa_edge.calib.fit import FitConfig, fit_map


def _check_pair(a: np.ndarray, b: np.ndarray, same_dim: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need two (N, D) arrays with the same N, got {a.shape} and {b.shape}")
    if same_dim and a.shape[1] != b.shape[1]:
        raise ValueError(f"paired metrics need equal dims, got {a.shape[1]} and {b.shape[1]}; map the source first")
    if a.shape[0] < 2:
        raise ValueError("need at least 2 held-out moments")
    return a, b


def r2_score(pred: np.ndarray, true: np.ndarray, weighting: str = "variance") -> float:
    """1 - SSE/SST. ``variance``: pooled over dims; ``uniform``: mean of per-dim R².

    A dim with zero variance scores 1 if predicted exactly, else 0.
    """
    pred, true = _check_pair(pred, true, same_dim=True)
    sse = ((pred - true) ** 2).sum(0)  # (D,)
    sst = ((true - true.mean(0)) ** 2).sum(0)  # (D,)
    if weighting == "variance":
        return float(1.0 - sse.sum() / sst.sum()) if sst.sum() > 0 else float(sse.sum() == 0)
    if weighting != "uniform":
        raise ValueError(f"weighting={weighting!r}: use 'variance' or 'uniform'")
    per_dim = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), (sse == 0).astype(float))
    return float(per_dim.mean())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over rows of cos(pred_i, true_i)."""
    pred, true = _check_pair(pred, true, same_dim=True)
    return float((_unit_rows(pred) * _unit_rows(true)).sum(1).mean())


def retrieval_accuracy(pred: np.ndarray, true: np.ndarray, top_k: int = 1) -> float:
    """Fraction of rows i whose own true_i is among the top_k true rows by cosine to pred_i.

    Chance is ``top_k / N``.
    """
    pred, true = _check_pair(pred, true, same_dim=True)
    sim = _unit_rows(pred) @ _unit_rows(true).T  # (N, N)
    own = np.diag(sim)[:, None]  # (N, 1)
    rank = (sim >= own).sum(1) - 1  # others at least as close as the true partner (ties count against)
    return float((rank < top_k).mean())


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019); 1 = same up to rotation and scale."""
    x, y = _check_pair(x, y, same_dim=False)
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def _knn(x: np.ndarray, k: int) -> np.ndarray:
    u = _unit_rows(x - x.mean(0))
    sim = u @ u.T  # (N, N)
    np.fill_diagonal(sim, -np.inf)  # a point is not its own neighbour
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (N, k), unordered


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each moment's k nearest neighbours (cosine) shared by both spaces.

    Chance is about ``k / (N - 1)``.
    """
    x, y = _check_pair(x, y, same_dim=False)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} must be in [1, N-1] with N={x.shape[0]} moments")
    nx, ny = _knn(x, k), _knn(y, k)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(nx, ny)]
    return float(np.mean(shared) / k)


def procrustes_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised orthogonal Procrustes distance in [0, 1].

    Both sides centred and scaled to unit Frobenius norm; the value is
    ``min_R ||x - y R||² / 2 = 1 - ||x^T y||_*`` (R semi-orthogonal), so 0 means
    equal up to rotation, reflection and scale.
    """
    x, y = _check_pair(x, y, same_dim=False)
    x = x - x.mean(0)
    y = y - y.mean(0)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return 1.0
    nuclear = np.linalg.svd((x / nx).T @ (y / ny), compute_uv=False).sum()
    return float(np.clip(1.0 - nuclear, 0.0, 1.0))


def map_spectrum(weight: np.ndarray) -> dict[str, Any]:
    """Singular values of W, condition number, and deviation from a scaled isometry."""
    s = np.linalg.svd(np.asarray(weight, np.float64), compute_uv=False)
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    iso = float(s.std() / s.mean()) if s.mean() > 0 else float("inf")  # 0 for c·(semi-)orthogonal
    return {"w_singular_values": s.tolist(), "w_condition_number": cond, "w_isometry_deviation": iso}


def paired_metrics(mapped: np.ndarray, target: np.ndarray, center: np.ndarray | None = None) -> dict[str, float]:
    """R², mean cosine and retrieval of mapped vs true target latents.

    ``center`` (e.g. the target's anchor mean) is subtracted from both before
    cosine and retrieval, so a shared offset cannot fake alignment.
    """
    mapped, target = _check_pair(mapped, target, same_dim=True)
    m, t = (mapped, target) if center is None else (mapped - center, target - center)
    n = mapped.shape[0]
    return {
        "r2": r2_score(mapped, target),
        "cosine": mean_cosine(m, t),
        "retrieval_top1": retrieval_accuracy(m, t, 1),
        "retrieval_top5": retrieval_accuracy(m, t, min(5, n)),
        "retrieval_chance": 1.0 / n,
    }


def similarity_metrics(x: np.ndarray, y: np.ndarray, k: int = 10) -> dict[str, float]:
    """Map-free similarity of two spaces over the same moments."""
    n = np.asarray(x).shape[0]
    return {
        "cka": linear_cka(x, y),
        "mutual_knn": mutual_knn(x, y, k),
        "mutual_knn_chance": k / (n - 1),
        "procrustes_distance": procrustes_distance(x, y),
    }


def isomorphism_metrics(
    mapped_or_source: np.ndarray,
    target: np.ndarray,
    W: np.ndarray | None = None,
    k: int = 10,
    center: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric that applies: paired ones when dims match, similarity always, spectrum if W is given."""
    out: dict[str, Any] = similarity_metrics(mapped_or_source, target, k)
    if np.shape(mapped_or_source)[1] == np.shape(target)[1]:
        out.update(paired_metrics(mapped_or_source, target, center))
    if W is not None:
        out.update(map_spectrum(W))
    return out


def permutation_null(
    anchor_source: np.ndarray,
    anchor_target: np.ndarray,
    heldout_source: np.ndarray,
    heldout_target: np.ndarray,
    fit_config: FitConfig,
    n_perm: int = 20,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Paired held-out metrics of W fitted on anchors with shuffled pairing.

    Returns ``{metric: (n_perm,) array}``; retrieval should sit near
    ``retrieval_chance`` and R² near or below 0.
    """
    if n_perm < 1:
        raise ValueError(f"n_perm={n_perm} must be >= 1")
    rng = rng if rng is not None else np.random.default_rng(0)
    runs: dict[str, list[float]] = {}
    for _ in range(n_perm):
        perm = rng.permutation(len(anchor_source))
        lm = fit_map(anchor_source[perm], anchor_target, fit_config)
        for key, v in paired_metrics(lm.apply(heldout_source), heldout_target, lm.target_mean).items():
            runs.setdefault(key, []).append(v)
    return {key: np.asarray(v) for key, v in runs.items()}


def probe_chance(task: str, targets: np.ndarray) -> float:
    """The chance level of a probe's primary score on ``targets``: 0 for R² (``task`` "regression": predicting
    the mean), 1/k for balanced accuracy over the k classes present in ``targets`` (any constant guess)."""
    return 0.0 if task == "regression" else 1.0 / len(np.unique(np.asarray(targets)))


def kept_fraction(transferred: float, native: float, chance: float, min_above_chance: float = 0.05) -> float | None:
    """The share of a native probe's score above chance that a transferred probe keeps.

    ``(transferred - chance) / (native - chance)``, with ``chance`` stated by the caller: 0 for R², 1/k for
    balanced accuracy over k classes (``probe_chance``). 1 = the transfer loses nothing, 0 = it is at chance.
    None when the native probe is less than ``min_above_chance`` above chance: there is nothing to keep.
    """
    room = native - chance
    if room < min_above_chance:
        return None
    return float((transferred - chance) / room)
