"""fit_map recovers planted maps; bad anchors are refused with a clear error."""

import numpy as np
import pytest

from jepa_edge.calib.fit import ESTIMATORS, FitConfig, FitError, fit_map, ridge_solve
from jepa_edge.config import ConfigError, from_dict


def _source(rng, n, d):
    # per-dim scales and offsets differ, as in real latents
    return rng.normal(size=(n, d)) * rng.uniform(0.3, 3.0, d) + rng.normal(scale=2.0, size=d)


def _orthogonal(rng, rows, cols):
    q, _ = np.linalg.qr(rng.normal(size=(max(rows, cols), max(rows, cols))))
    return q[:rows, :cols]


@pytest.mark.parametrize("estimator", ["lstsq", "ridge"])
@pytest.mark.parametrize("dt", [6, 12, 20])
def test_general_linear_map_recovered_from_noisy_anchors(estimator, dt):
    rng = np.random.default_rng(1)
    ds, n = 12, 600
    W, b = rng.normal(size=(dt, ds)), rng.normal(size=dt)
    x = _source(rng, n, ds)
    y = x @ W.T + b + 0.01 * rng.normal(size=(n, dt))
    lm = fit_map(x, y, FitConfig(estimator=estimator, ridge_alpha=1e-5))
    assert lm.weight.shape == (dt, ds) and lm.bias.shape == (dt,)
    np.testing.assert_allclose(lm.weight, W, atol=0.01)
    np.testing.assert_allclose(lm.bias, b, atol=0.05)
    x_new = _source(rng, 50, ds)
    np.testing.assert_allclose(lm.apply(x_new), x_new @ W.T + b, atol=0.1)


@pytest.mark.parametrize("estimator", ["procrustes", "orth_lstsq"])
@pytest.mark.parametrize("dt", [10, 16])  # square and Dt > Ds (semi-orthogonal, R^T R = I)
def test_scaled_orthogonal_map_recovered_exactly(estimator, dt):
    rng = np.random.default_rng(2)
    ds = 10
    R = _orthogonal(rng, dt, ds)
    x = _source(rng, 200, ds)
    y = 2.5 * x @ R.T - 0.7
    lm = fit_map(x, y, FitConfig(estimator=estimator))
    np.testing.assert_allclose(lm.weight, 2.5 * R, atol=1e-10)
    np.testing.assert_allclose(lm.bias, -0.7, atol=1e-10)
    assert np.allclose(lm.source_scale, lm.source_scale[0])  # one global scale per side


@pytest.mark.parametrize("estimator", ["procrustes", "orth_lstsq"])
def test_orthogonal_estimators_return_scaled_isometry_under_noise(estimator):
    rng = np.random.default_rng(3)
    x = _source(rng, 300, 8)
    y = x @ rng.normal(size=(8, 8)) + 0.1 * rng.normal(size=(300, 8))  # not orthogonal at all
    lm = fit_map(x, y, FitConfig(estimator=estimator))
    # weight = t_scale/s_scale * c * R, so W W^T is a multiple of the identity
    wwt = lm.weight @ lm.weight.T
    np.testing.assert_allclose(wwt / wwt[0, 0], np.eye(8), atol=1e-9)


def test_statistics_come_from_the_anchors_and_are_folded_in():
    rng = np.random.default_rng(4)
    x, y = _source(rng, 100, 5), _source(rng, 100, 4)
    lm = fit_map(x, y, FitConfig(estimator="ridge"))
    np.testing.assert_allclose(lm.source_mean, x.mean(0))
    np.testing.assert_allclose(lm.target_scale, y.std(0))
    # the map sends the anchor mean to the target mean (centring folded into the bias)
    np.testing.assert_allclose(lm.apply(x.mean(0)[None]), y.mean(0)[None], atol=1e-10)
    assert lm.n_anchors == 100 and lm.estimator == "ridge"


def test_ridge_handles_fewer_anchors_than_dims_and_shrinks():
    rng = np.random.default_rng(5)
    x, y = _source(rng, 10, 32), _source(rng, 10, 8)
    norms = [np.linalg.norm(fit_map(x, y, FitConfig("ridge", ridge_alpha=a)).weight) for a in (1e-3, 1e-1, 10.0)]
    assert norms[0] > norms[1] > norms[2] > 0
    lm = fit_map(x, y, FitConfig("procrustes"))  # also fine with N < Ds
    assert np.all(np.isfinite(lm.weight))


def test_lstsq_with_too_few_anchors_suggests_ridge():
    rng = np.random.default_rng(6)
    with pytest.raises(FitError, match="ridge"):
        fit_map(_source(rng, 16, 16), _source(rng, 16, 4), FitConfig("lstsq"))
    with pytest.raises(FitError, match="more anchors"):
        fit_map(_source(rng, 10, 16), _source(rng, 10, 4), FitConfig("orth_lstsq"))


def test_lstsq_refuses_collinear_source():
    rng = np.random.default_rng(7)
    x = _source(rng, 100, 4)
    x = np.concatenate([x, x[:, :1] * 2.0 + 1.0], 1)  # 5th dim is a copy of the 1st
    with pytest.raises(FitError, match="collinear"):
        fit_map(x, _source(rng, 100, 3), FitConfig("lstsq"))


@pytest.mark.parametrize(
    "source, target, match",
    [
        (np.zeros((10, 3)), np.zeros((9, 3)), "paired"),
        (np.zeros((10,)), np.zeros((10, 3)), "2-D"),
        (np.full((10, 3), np.nan), np.zeros((10, 3)), "NaN"),
        (np.zeros((2, 3)), np.zeros((2, 3)), "at least"),
    ],
)
def test_bad_anchors_refused(source, target, match):
    with pytest.raises(FitError, match=match):
        fit_map(source, target)


def test_identical_anchors_refused_for_orthogonal_estimators():
    with pytest.raises(FitError, match="identical"):
        fit_map(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3)), FitConfig("procrustes"))


def test_config_validation():
    with pytest.raises(FitError, match="unknown"):
        fit_map(np.eye(5), np.eye(5), FitConfig(estimator="cca"))
    with pytest.raises(FitError, match="ridge_alpha"):
        FitConfig(ridge_alpha=-1.0).validate()
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(FitConfig, {"estimator": "ridge", "alpha": 1.0})
    assert from_dict(FitConfig, {"estimator": "procrustes"}).estimator == "procrustes"
    assert set(ESTIMATORS) == {"lstsq", "ridge", "procrustes", "orth_lstsq"}


@pytest.mark.parametrize("n", [8, 300])  # wide (SVD path) and tall (Gram path)
def test_ridge_solve_matches_the_normal_equations(n):
    rng = np.random.default_rng(8)
    x, y, alpha = rng.normal(size=(n, 20)), rng.normal(size=(n, 3)), 0.05
    expected = np.linalg.solve(x.T @ x + alpha * n * np.eye(20), x.T @ y).T  # (3, 20)
    np.testing.assert_allclose(ridge_solve(x, y, alpha), expected, atol=1e-10)
