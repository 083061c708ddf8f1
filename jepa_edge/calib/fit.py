"""Fit W: the linear map from a source agent's latents to a target agent's.

Input is N paired *anchors*: ``source (N, Ds)`` and ``target (N, Dt)``, the two
agents' latents of the same world moments. Both sides are centred and scaled
with anchor statistics only, a map ``M`` is fitted between the standardised
latents, and the statistics are folded back so that
``apply(x) = x @ weight.T + bias`` works on raw latents.

Estimators:
  lstsq       ordinary least squares (needs N > Ds)
  ridge       least squares with an L2 penalty ``alpha * N`` on standardised data
  procrustes  global scale × semi-orthogonal matrix (Schönemann's SVD solution)
  orth_lstsq  least squares, then projected to the nearest (semi-)orthogonal
              matrix by the polar decomposition, then the best global scale
The orthogonal estimators use one global scale per side, so "orthogonal"
means an isometry of the raw latent space up to one scale factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("lstsq", "ridge", "procrustes", "orth_lstsq")
ORTHOGONAL_ESTIMATORS = ("procrustes", "orth_lstsq")


class FitError(ValueError):
    """Anchors that cannot give a well-defined W (shape, count or values)."""


@dataclass
class FitConfig:
    estimator: str = "ridge"  # one of ESTIMATORS; ridge is the safe default for few anchors
    ridge_alpha: float = 1e-2  # penalty on standardised latents, relative to N (λ = alpha·N)
    min_anchors: int = 3  # fewer anchors than this gives no usable statistics

    def validate(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise FitError(f"FitConfig.estimator={self.estimator!r} is unknown; use one of {list(ESTIMATORS)}")
        if not np.isfinite(self.ridge_alpha) or self.ridge_alpha < 0:
            raise FitError(f"FitConfig.ridge_alpha={self.ridge_alpha} must be a finite number >= 0")
        if self.min_anchors < 2:
            raise FitError(f"FitConfig.min_anchors={self.min_anchors} must be >= 2 (the mean uses one anchor)")


@dataclass
class LinearMap:
    weight: np.ndarray  # (Dt, Ds) float64, statistics folded in
    bias: np.ndarray  # (Dt,)
    source_mean: np.ndarray  # (Ds,) anchor statistics, kept for inspection
    source_scale: np.ndarray  # (Ds,)
    target_mean: np.ndarray  # (Dt,)
    target_scale: np.ndarray  # (Dt,)
    estimator: str
    n_anchors: int

    @property
    def source_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def target_dim(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(B, Ds) source latents → (B, Dt) estimated target latents."""
        return x @ self.weight.T + self.bias


def _check_anchors(source: np.ndarray, target: np.ndarray, config: FitConfig) -> None:
    for name, a in (("source", source), ("target", target)):
        if a.ndim != 2:
            raise FitError(f"{name} anchors must be 2-D (N, D), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise FitError(f"{name} anchors contain NaN or Inf; drop those moments or re-encode them")
    if source.shape[0] != target.shape[0]:
        raise FitError(
            f"source has {source.shape[0]} anchors but target has {target.shape[0]}; "
            "anchors must be paired row by row (the same world moments)"
        )
    if source.shape[0] < config.min_anchors:
        raise FitError(f"only {source.shape[0]} anchors; need at least {config.min_anchors} paired moments")


def _per_dim_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)  # constant dims: leave unscaled


def _global_stats(x: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    s = float(np.sqrt(((x - mean) ** 2).sum(1).mean() / x.shape[1]))  # RMS per-dim std
    if s <= 1e-12:
        raise FitError(f"all {side} anchors are identical; pick anchors from different world moments")
    return mean, np.full(x.shape[1], s)


def _lstsq(xs: np.ndarray, yt: np.ndarray) -> np.ndarray:
    N, Ds = xs.shape
    if N <= Ds:
        raise FitError(
            f"lstsq needs more anchors than source dims (got N={N}, Ds={Ds}); "
            f"use estimator 'ridge' or 'procrustes', or collect at least {Ds + 1} anchors"
        )
    m_t, _, rank, _ = np.linalg.lstsq(xs, yt, rcond=None)  # (Ds, Dt)
    if rank < Ds:
        raise FitError(
            f"source anchors span only {rank} of {Ds} dims (collinear latents); "
            "use estimator 'ridge' or 'procrustes', or anchors from more varied moments"
        )
    return m_t.T  # (Dt, Ds)


def ridge_solve(xs: np.ndarray, yt: np.ndarray, alpha: float) -> np.ndarray:
    """argmin_M ||yt - xs M^T||² + alpha·N·||M||²; returns M (Dt, Ds)."""
    n, d = xs.shape
    if alpha > 0 and n > 2 * d:  # tall: the (Ds, Ds) Gram matrix is much cheaper than an SVD of xs
        evals, v = np.linalg.eigh(xs.T @ xs)  # xs^T xs = v diag(evals) v^T
        return (v @ ((v.T @ (xs.T @ yt)) / (np.clip(evals, 0.0, None) + alpha * n)[:, None])).T  # (Dt, Ds)
    u, s, vt = np.linalg.svd(xs, full_matrices=False)  # xs = u diag(s) vt
    keep = s > s.max(initial=0.0) * 1e-12  # alpha=0 on a rank-deficient xs: min-norm solution
    shrink = np.where(keep, s / np.where(keep, s**2 + alpha * n, 1.0), 0.0)  # (r,)
    return ((vt.T * shrink) @ (u.T @ yt)).T  # (Dt, Ds)


def _polar(m: np.ndarray) -> np.ndarray:
    """Nearest (semi-)orthogonal matrix to m (Dt, Ds) in Frobenius norm."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u @ vt  # (Dt, Ds)


def _best_scale(xs: np.ndarray, yt: np.ndarray, r: np.ndarray) -> float:
    """argmin_c ||yt - c · xs r^T||: the global scale for a fixed rotation r."""
    xr = xs @ r.T  # (N, Dt)
    denom = float((xr**2).sum())
    return float((yt * xr).sum()) / denom if denom > 0 else 0.0


def fit_map(source: np.ndarray, target: np.ndarray, config: FitConfig | None = None) -> LinearMap:
    """Fit W with ``target ≈ source @ W.T + bias`` on paired anchors."""
    config = config or FitConfig()
    config.validate()
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    _check_anchors(source, target, config)
    est = config.estimator
    if est in ORTHOGONAL_ESTIMATORS:
        s_mean, s_scale = _global_stats(source, "source")
        t_mean, t_scale = _global_stats(target, "target")
    else:
        s_mean, s_scale = _per_dim_stats(source)
        t_mean, t_scale = _per_dim_stats(target)
    xs = (source - s_mean) / s_scale  # (N, Ds)
    yt = (target - t_mean) / t_scale  # (N, Dt)
    if est == "lstsq":
        m = _lstsq(xs, yt)
    elif est == "ridge":
        m = ridge_solve(xs, yt, config.ridge_alpha)
    elif est == "procrustes":
        r = _polar(yt.T @ xs)  # maximises tr(r^T yt^T xs) over semi-orthogonal r
        m = _best_scale(xs, yt, r) * r
    else:  # orth_lstsq
        r = _polar(_lstsq(xs, yt))
        m = _best_scale(xs, yt, r) * r
    weight = (t_scale[:, None] * m) / s_scale[None, :]  # (Dt, Ds) diag(t_scale) m diag(1/s_scale)
    bias = t_mean - weight @ s_mean
    return LinearMap(weight, bias, s_mean, s_scale, t_mean, t_scale, est, int(source.shape[0]))
