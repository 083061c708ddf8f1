"""How much two latent spaces share: canonical correlations fitted on anchors, scored held-out (numpy only).

``fit_cca`` finds directions ``a_i`` in x-space and ``b_i`` in y-space whose projections are
maximally correlated on the anchors (ridge-regularised CCA; with ``pca_dims`` first projects each
side on its top principal components, i.e. SVCCA). ``heldout_correlations`` scores each canonical
pair on moments the fit never saw: a direction that is only correlated on the anchors by chance
(over-fitting, ~D/N) drops there, so the count of held-out correlations above 0.9 / 0.5 says how
many dimensions the two agents really share.

``split_r2`` then asks where a map's error lives: the target's shared subspace (the y-side canonical
directions whose held-out correlation passes a threshold) against the rest. Low R² inside says
"W is bad"; high inside but low outside says "the latents hold view-specific content that nothing
fitted from the other view can predict".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLDS = (0.9, 0.5)


@dataclass
class CCAModel:
    x_mean: np.ndarray  # (Dx,)
    y_mean: np.ndarray  # (Dy,)
    x_weights: np.ndarray  # (Dx, K) x-side canonical directions: u = (x - x_mean) @ x_weights
    y_weights: np.ndarray  # (Dy, K) y-side canonical directions: v = (y - y_mean) @ y_weights
    y_cov: np.ndarray  # (Dy, Dy) regularised anchor covariance of y (y_weights are orthonormal in it)
    fit_correlations: np.ndarray  # (K,) canonical correlations on the anchors, descending

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical variates (N, K) of both sides."""
        return (np.asarray(x, np.float64) - self.x_mean) @ self.x_weights, \
            (np.asarray(y, np.float64) - self.y_mean) @ self.y_weights


def _check(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"CCA needs two (N, D) arrays with the same N, got {x.shape} and {y.shape}")
    if len(x) < 3:
        raise ValueError(f"CCA needs at least 3 paired moments, got {len(x)}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("CCA input contains NaN or Inf")
    return x, y


def _pca_basis(xc: np.ndarray, k: int | None) -> np.ndarray:
    """(D, k') orthonormal top-k principal directions of centred xc (identity when k is None or >= rank)."""
    if k is None or k >= min(xc.shape):
        return np.eye(xc.shape[1])
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return vt[:k].T  # (D, k)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def _reg_cov(xc: np.ndarray, ridge: float) -> np.ndarray:
    """Covariance plus ``ridge`` × its mean eigenvalue on the diagonal (scale-free shrinkage)."""
    c = xc.T @ xc / (len(xc) - 1)
    return c + ridge * max(float(np.trace(c)) / len(c), 1e-12) * np.eye(len(c))


def fit_cca(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, pca_dims: int | None = None) -> CCAModel:
    """Regularised CCA (SVCCA when ``pca_dims`` is set) of paired rows x (N, Dx), y (N, Dy)."""
    if ridge < 0:
        raise ValueError(f"ridge={ridge} must be >= 0")
    if pca_dims is not None and pca_dims < 1:
        raise ValueError(f"pca_dims={pca_dims} must be >= 1 or None")
    x, y = _check(x, y)
    mx, my = x.mean(0), y.mean(0)
    px, py = _pca_basis(x - mx, pca_dims), _pca_basis(y - my, pca_dims)  # (Dx, kx), (Dy, ky)
    xr, yr = (x - mx) @ px, (y - my) @ py  # (N, kx), (N, ky)
    cxx, cyy = _reg_cov(xr, ridge), _reg_cov(yr, ridge)
    cxy = xr.T @ yr / (len(x) - 1)  # (kx, ky)
    ix, iy = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(ix @ cxy @ iy, full_matrices=False)  # K = min(kx, ky)
    wx, wy = px @ (ix @ u), py @ (iy @ vt.T)  # (Dx, K), (Dy, K): back in the original coordinates
    # y_cov in original coordinates restricted to the PCA span: wy^T y_cov wy = I holds exactly.
    y_cov = py @ cyy @ py.T
    return CCAModel(mx, my, wx, wy, y_cov, np.clip(s, 0.0, 1.0))


def _corr_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def heldout_correlations(model: CCAModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each canonical pair on held-out rows (K,), in the fit's order."""
    x, y = _check(x, y)
    u, v = model.transform(x, y)
    return _corr_columns(u, v)


def shared_projector(model: CCAModel, keep: np.ndarray) -> np.ndarray:
    """(Dy, Dy) projector (row convention: y_c @ P) onto the y-side canonical directions ``keep``.

    P = B Bᵀ C_yy with B = y_weights[:, keep]; Bᵀ C_yy B = I, so P is idempotent and
    y_c @ P is the part of y that the kept canonical variates explain (their regression on y).
    """
    b = model.y_weights[:, keep]  # (Dy, k)
    return b @ (b.T @ model.y_cov)


def split_r2(model: CCAModel, mapped: np.ndarray, target: np.ndarray, keep: np.ndarray,
             min_share: float = 0.01) -> dict[str, Any]:
    """R² of ``mapped`` vs ``target`` inside the shared subspace ``keep`` and outside it.

    Also the share of the target's held-out variance that lies inside (a held-out estimate: the
    projector is orthogonal in the anchors' covariance, so it can exceed 1 by sampling noise). An R²
    is None where that part holds less than ``min_share`` of the target's variance (e.g. inside when
    ``keep`` is empty).
    """
    mapped, target = _check(mapped, target)
    p = shared_projector(model, np.asarray(keep, bool))
    q = np.eye(len(p)) - p
    t, m = target - model.y_mean, mapped - model.y_mean

    def r2(proj: np.ndarray) -> float | None:
        tt, mm = t @ proj, m @ proj
        sst = ((tt - tt.mean(0)) ** 2).sum()
        if sst <= min_share * max(((t - t.mean(0)) ** 2).sum(), 1e-300):
            return None  # (almost) nothing of the target lives there: an R² would be noise
        return float(1.0 - ((mm - tt) ** 2).sum() / sst)

    tp = t @ p
    var_in = float(((tp - tp.mean(0)) ** 2).sum())
    var_all = float(((t - t.mean(0)) ** 2).sum())
    return {"r2_inside": r2(p) if np.any(keep) else None, "r2_outside": r2(q),
            "target_variance_inside": var_in / var_all if var_all > 0 else None}


def shared_dimensions(
    x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
    ridge: float = 1e-3, pca_dims: int | None = None, thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, Any]:
    """CCA fitted on (x_fit, y_fit), scored on (x_eval, y_eval).

    ``n_above`` counts held-out canonical correlations above each threshold (as strings, for JSON).
    """
    model = fit_cca(x_fit, y_fit, ridge, pca_dims)
    held = heldout_correlations(model, x_eval, y_eval)
    return {"fit_correlations": model.fit_correlations.tolist(), "heldout_correlations": held.tolist(),
            "n_above": {f"{t:g}": int((held > t).sum()) for t in thresholds},
            "mean_heldout_correlation": float(held.mean()) if len(held) else 0.0,
            "n_components": len(held), "ridge": ridge, "pca_dims": pca_dims}
