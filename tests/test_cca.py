"""CCA / SVCCA on synthetic latents with a known shared subspace."""

import numpy as np
import pytest

from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.study.cca import fit_cca, heldout_correlations, shared_dimensions, shared_projector, split_r2


def _latents(rng, n, shared=3, weak=2, private=5, dx=16, dy=12, noise=0.05, scale=1.0):
    """x, y share `shared` strong factors and `weak` half-shared ones; each has `private` factors of its own."""
    s = scale * rng.normal(size=(n, shared))
    w = rng.normal(size=(n, weak))
    fx = np.concatenate([s, w + 0.8 * rng.normal(size=(n, weak)), rng.normal(size=(n, private))], 1)
    fy = np.concatenate([s, w + 0.8 * rng.normal(size=(n, weak)), rng.normal(size=(n, private))], 1)
    return fx, fy, dx, dy, noise


def _mixed(rng, n, seed_mix=7, scale=1.0):
    fx, fy, dx, dy, noise = _latents(rng, n, scale=scale)
    mix = np.random.default_rng(seed_mix)
    ax, ay = mix.normal(size=(fx.shape[1], dx)), mix.normal(size=(fy.shape[1], dy))
    return fx @ ax + noise * rng.normal(size=(n, dx)), fy @ ay + noise * rng.normal(size=(n, dy))


def test_counts_the_planted_shared_dimensions_held_out():
    rng = np.random.default_rng(0)
    x, y = _mixed(rng, 3000)
    xe, ye = _mixed(rng, 2000)
    res = shared_dimensions(x, y, xe, ye)
    held = np.array(res["heldout_correlations"])
    assert res["n_above"]["0.9"] == 3  # the three strong shared factors
    assert res["n_above"]["0.5"] == 5  # plus the two half-shared ones (true correlation 1/(1+0.64) ≈ 0.61)
    assert np.all(held[5:] < 0.2)  # private factors: nothing held-out
    assert np.all(np.diff(res["fit_correlations"]) <= 1e-9)  # descending on the anchors
    assert res["n_components"] == 12


def test_unrelated_spaces_share_nothing_held_out_even_when_the_fit_overfits():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 20)), rng.normal(size=(60, 20))  # N barely above D: anchor correlations are high
    model = fit_cca(x, y, ridge=1e-6)
    assert model.fit_correlations[0] > 0.8
    held = heldout_correlations(model, rng.normal(size=(500, 20)), rng.normal(size=(500, 20)))
    assert np.all(np.abs(held) < 0.3)


def test_svcca_keeps_the_top_principal_dims_and_still_finds_the_shared_factors():
    rng = np.random.default_rng(2)
    x, y = _mixed(rng, 3000, scale=4.0)  # the shared factors dominate the variance: the top PCs hold them
    xe, ye = _mixed(rng, 1500, scale=4.0)
    res = shared_dimensions(x, y, xe, ye, pca_dims=8)
    assert res["n_components"] == 8
    assert res["n_above"]["0.9"] == 3


def test_projector_is_idempotent_and_splits_variance():
    rng = np.random.default_rng(3)
    x, y = _mixed(rng, 2000)
    model = fit_cca(x, y)
    keep = np.zeros(model.y_weights.shape[1], bool)
    keep[:3] = True
    p = shared_projector(model, keep)
    np.testing.assert_allclose(p @ p, p, atol=1e-8)
    assert np.linalg.matrix_rank(p, tol=1e-6) == 3


def test_w_is_good_inside_the_shared_subspace_and_blind_outside():
    rng = np.random.default_rng(4)
    x, y = _mixed(rng, 3000)
    xe, ye = _mixed(rng, 2000)
    model = fit_cca(x, y)
    keep = heldout_correlations(model, xe, ye) > 0.9
    lm = fit_map(x, y, FitConfig(estimator="ridge", ridge_alpha=1e-2))
    split = split_r2(model, lm.apply(xe), ye, keep)
    assert split["r2_inside"] > 0.95
    assert split["r2_outside"] < 0.3  # private content of y: no map from x can predict it
    assert 0.1 < split["target_variance_inside"] < 0.6
    assert split_r2(model, ye, ye, keep)["r2_outside"] == pytest.approx(1.0)  # perfect prediction scores 1
    assert split_r2(model, lm.apply(xe), ye, np.zeros_like(keep))["r2_inside"] is None


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="same N"):
        fit_cca(np.zeros((10, 3)), np.zeros((9, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fit_cca(np.full((10, 3), np.nan), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="ridge"):
        fit_cca(np.zeros((10, 3)), np.zeros((10, 3)), ridge=-1)
