"""Alignment metrics against hand-computed values; the shuffled-anchor null sits at chance."""

import numpy as np
import pytest

from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.metrics import (
    isomorphism_metrics,
    linear_cka,
    map_spectrum,
    mean_cosine,
    mutual_knn,
    paired_metrics,
    permutation_null,
    procrustes_distance,
    r2_score,
    retrieval_accuracy,
)


def _rotation(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def test_r2_by_hand():
    true = np.array([[1.0], [2.0], [3.0]])
    pred = np.array([[1.0], [2.0], [4.0]])
    assert r2_score(pred, true) == pytest.approx(1 - 1 / 2)  # SSE 1, SST 2
    # two dims, per-dim R² = 1 - 1/2 and 1 - 4/8
    true2 = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0]])  # SST 2 and 8
    pred2 = np.array([[1.0, 0.0], [2.0, 2.0], [4.0, 2.0]])  # SSE 1 and 4
    assert r2_score(pred2, true2, "uniform") == pytest.approx((0.5 + 0.5) / 2)
    assert r2_score(pred2, true2, "variance") == pytest.approx(1 - 5 / 10)
    pred3 = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 0.0]])  # SSE 0 and 16: the two averages differ
    assert r2_score(pred3, true2, "uniform") == pytest.approx((1.0 + (1 - 16 / 8)) / 2)
    assert r2_score(pred3, true2, "variance") == pytest.approx(1 - 16 / 10)


def test_retrieval_on_a_hand_made_example():
    pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    true = np.array([[1.0, 0.1], [1.0, 1.0], [0.0, 1.0]])
    # row 0 → true 0 (correct); row 1 → true 2 (wrong, true 1 is 2nd); row 2 → true 1 (wrong, true 2 is 3rd)
    assert retrieval_accuracy(pred, true, 1) == pytest.approx(1 / 3)
    assert retrieval_accuracy(pred, true, 2) == pytest.approx(2 / 3)
    assert retrieval_accuracy(pred, true, 3) == pytest.approx(1.0)


def test_retrieval_ties_count_against_and_degenerate_maps_score_zero():
    true = np.random.default_rng(0).normal(size=(20, 4))
    assert retrieval_accuracy(np.zeros((20, 4)), true) == 0.0
    assert retrieval_accuracy(true * 3.0, true) == 1.0


def test_mean_cosine():
    x = np.random.default_rng(1).normal(size=(10, 3))
    assert mean_cosine(2 * x, x) == pytest.approx(1.0)
    assert mean_cosine(-x, x) == pytest.approx(-1.0)
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    assert mean_cosine(a, b) == pytest.approx((0.0 + 1 / np.sqrt(2)) / 2)


def test_cka_invariances():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 8))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ _rotation(rng, 8) + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 6))) < 0.15
    # by hand: 1-D, CKA = corr²
    u, v = np.array([[0.0], [1.0], [2.0], [5.0]]), np.array([[1.0], [0.0], [3.0], [4.0]])
    assert linear_cka(u, v) == pytest.approx(np.corrcoef(u[:, 0], v[:, 0])[0, 1] ** 2)


def test_procrustes_distance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 5))
    assert procrustes_distance(x, 2 * x @ _rotation(rng, 5) - 1) == pytest.approx(0.0, abs=1e-12)
    d = procrustes_distance(x, rng.normal(size=(100, 7)))
    assert 0.5 < d <= 1.0
    noisy = procrustes_distance(x, x + 0.3 * rng.normal(size=x.shape))
    assert 0.0 < noisy < d


def test_mutual_knn():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 6))
    assert mutual_knn(x, x @ _rotation(rng, 6) * 4.0, k=10) == pytest.approx(1.0)
    chance = 10 / 149
    assert mutual_knn(x, rng.normal(size=(150, 6)), k=10) < 3 * chance
    with pytest.raises(ValueError, match="k="):
        mutual_knn(x, x, k=150)


def test_map_spectrum():
    rng = np.random.default_rng(5)
    s = map_spectrum(2.0 * _rotation(rng, 4))
    assert s["w_condition_number"] == pytest.approx(1.0)
    assert s["w_isometry_deviation"] == pytest.approx(0.0, abs=1e-12)
    s = map_spectrum(np.diag([1.0, 3.0]))
    assert s["w_singular_values"] == pytest.approx([3.0, 1.0])
    assert s["w_condition_number"] == pytest.approx(3.0)
    assert s["w_isometry_deviation"] == pytest.approx(1.0 / 2.0)  # std [3,1] = 1, mean 2


def test_isomorphism_metrics_keys_depend_on_dims_and_W():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 6))
    assert "r2" not in isomorphism_metrics(x, y)  # different dims: similarity only
    full = isomorphism_metrics(y, y, W=np.eye(6), k=5)
    assert full["r2"] == 1.0 and full["retrieval_top1"] == 1.0 and full["cka"] == pytest.approx(1.0)
    assert full["w_condition_number"] == pytest.approx(1.0)


def test_paired_metrics_centering_removes_a_shared_offset():
    rng = np.random.default_rng(7)
    true = rng.normal(size=(100, 8)) + 50.0
    pred = rng.normal(size=(100, 8)) + 50.0  # unrelated, but both far from the origin
    assert paired_metrics(pred, true)["cosine"] > 0.99  # raw cosine is fooled by the offset
    assert abs(paired_metrics(pred, true, center=np.full(8, 50.0))["cosine"]) < 0.2


def test_permutation_null_is_near_chance_while_the_true_pairing_is_not():
    rng = np.random.default_rng(8)
    target = rng.normal(size=(400, 10))
    source = target @ rng.normal(size=(10, 10)) + 0.05 * rng.normal(size=(400, 10))
    cfg = FitConfig("ridge")
    lm = fit_map(source[:200], target[:200], cfg)
    real = paired_metrics(lm.apply(source[200:]), target[200:], lm.target_mean)
    null = permutation_null(source[:200], target[:200], source[200:], target[200:], cfg, 20, rng)
    assert null["retrieval_top1"].shape == (20,)
    chance = 1 / 200
    assert real["retrieval_top1"] > 0.9
    assert null["retrieval_top1"].mean() < 4 * chance
    assert null["r2"].mean() < 0.05
    assert abs(null["cosine"].mean()) < 0.1


def test_kept_fraction_is_measured_above_the_stated_chance():
    from jepa_edge.calib.metrics import kept_fraction, probe_chance

    assert probe_chance("regression", np.zeros((5, 2))) == 0.0
    assert probe_chance("classification", np.array([0, 1, 2, 2])) == pytest.approx(1 / 3)  # 1/k classes present
    assert kept_fraction(0.45, 0.9, 0.0) == pytest.approx(0.5)  # R²: half of the native score
    assert kept_fraction(0.6, 0.8, 1 / 3) == pytest.approx((0.6 - 1 / 3) / (0.8 - 1 / 3))
    assert kept_fraction(0.5, 0.5, 0.5) is None  # the native probe is at chance: nothing to keep
    assert kept_fraction(0.5, 0.54, 0.5) is None and kept_fraction(0.5, 0.54, 0.5, min_above_chance=0.01) == 0.0
