"""Linear probes: fit/evaluate on synthetic data, files, and transfer through W."""

import numpy as np
import pytest

from jepa_edge.artifacts import ArtifactError
from jepa_edge.calib.fit import FitConfig, fit_map
from jepa_edge.calib.head import build_head
from jepa_edge.calib.postcard import Postcard, PostcardError, save_postcard
from jepa_edge.calib.probes import (
    Probe,
    ProbeConfig,
    ProbeError,
    evaluate_probe,
    fit_probe,
    load_probe,
    save_probe,
    transfer_probe,
)

FP_A, FP_B = "a" * 64, "b" * 64
AGENT_A = {"name": "agentA", "fingerprint": FP_A, "latent_dim": 8, "view": "top"}
AGENT_B = {"name": "agentB", "fingerprint": FP_B, "latent_dim": 10, "view": "oblique"}


def _latents(rng, n, d):
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 4.0, d) + rng.normal(scale=3.0, size=d)


def test_regression_probe_recovers_a_linear_readout():
    rng = np.random.default_rng(0)
    z = _latents(rng, 400, 8)
    P, c = rng.normal(size=(3, 8)), rng.normal(size=3)
    y = z @ P.T + c + 0.01 * rng.normal(size=(400, 3))
    probe = fit_probe(z, y, "regression", "position", AGENT_A, labels=["x", "y", "r"])
    assert probe.weight.shape == (3, 8) and probe.labels == ["x", "y", "r"]
    np.testing.assert_allclose(probe.weight, P, atol=0.01)  # standardisation folded back out
    z_new = _latents(rng, 100, 8)
    m = evaluate_probe(probe, z_new, z_new @ P.T + c)
    assert m["r2"] > 0.999 and len(m["r2_per_output"]) == 3
    assert probe.metrics["alpha"] in ProbeConfig().alphas and probe.metrics["train"]["r2"] > 0.999


def test_regression_r2_by_hand():
    probe = Probe(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2), "p", "regression", ["a", "b"], AGENT_A | {
        "latent_dim": 2})
    z = np.array([[1.0, 0.0], [2.0, 2.0], [4.0, 2.0]])  # predictions = z
    y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0]])  # SSE 1 / 4, SST 2 / 8
    m = evaluate_probe(probe, z, y)
    assert m["r2"] == pytest.approx(0.5) and m["r2_per_output"] == pytest.approx([0.5, 0.5])
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 6))


def test_classification_metrics_by_hand():
    probe = Probe(np.eye(2), np.zeros(2), "d", "classification", ["safe", "danger"], AGENT_A | {"latent_dim": 2})
    z = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # predicts 0, 0, 0, 1
    y = np.array([0, 0, 1, 1])
    m = evaluate_probe(probe, z, y)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    np.testing.assert_array_equal(probe.predict(z), [0, 0, 0, 1])


@pytest.mark.parametrize("classifier", ["logistic", "ridge"])
def test_classifier_learns_three_classes(classifier):
    rng = np.random.default_rng(1)
    z = _latents(rng, 600, 8)
    scores = z @ rng.normal(size=(8, 3))
    y = scores.argmax(1)
    probe = fit_probe(z[:450], y[:450], "classification", "zone", AGENT_A, ProbeConfig(classifier=classifier))
    assert probe.labels == ["0", "1", "2"]
    m = evaluate_probe(probe, z[450:], y[450:])
    assert m["accuracy"] > (0.9 if classifier == "logistic" else 0.75)
    assert m["balanced_accuracy"] > 0.7


def test_logistic_probe_beats_chance_only_when_there_is_signal():
    rng = np.random.default_rng(2)
    z = _latents(rng, 400, 8)
    y = rng.integers(0, 2, 400)  # labels unrelated to latents
    probe = fit_probe(z[:300], y[:300], "classification", "noise", AGENT_A)
    assert evaluate_probe(probe, z[300:], y[300:])["balanced_accuracy"] < 0.65


def test_fit_probe_rejects_bad_inputs():
    rng = np.random.default_rng(3)
    z = _latents(rng, 50, 8)
    with pytest.raises(ProbeError, match="integer class"):
        fit_probe(z, rng.normal(size=50), "classification", "d", AGENT_A)
    with pytest.raises(ProbeError, match="latent_dim"):
        fit_probe(z[:, :5], rng.normal(size=50), "regression", "p", AGENT_A)
    with pytest.raises(ProbeError, match="task"):
        fit_probe(z, rng.normal(size=50), "ranking", "p", AGENT_A)
    with pytest.raises(ProbeError, match="NaN"):
        fit_probe(np.full((50, 8), np.nan), rng.normal(size=50), "regression", "p", AGENT_A)


def _pair(rng):
    """Agent B latents (10-D) linearly related to agent A latents (8-D)."""
    zb = _latents(rng, 500, 10)
    za = zb @ rng.normal(size=(10, 8)) + 0.01 * rng.normal(size=(500, 8))
    lm = fit_map(zb[:300], za[:300], FitConfig("ridge", ridge_alpha=1e-5))
    return zb, za, Postcard.from_map(lm, "B_to_A", AGENT_B, AGENT_A)


def test_transfer_probe_equals_probe_after_W_and_build_head():
    rng = np.random.default_rng(4)
    zb, za, pc = _pair(rng)
    y = za[:, :2] * 0.5 + 1.0
    probe_a = fit_probe(za[:300], y[:300], "regression", "position", AGENT_A)
    moved = transfer_probe(probe_a, pc)
    assert moved.agent_fingerprint == FP_B and moved.weight.shape == (2, 10)
    np.testing.assert_allclose(moved.apply(zb), probe_a.apply(pc.apply(zb)), rtol=1e-4, atol=1e-4)
    head = build_head(FP_B, 10, postcard=pc, probes=[probe_a])
    np.testing.assert_allclose(head.split(head.apply(zb))["position"], moved.apply(zb), rtol=1e-4, atol=1e-4)
    # zero-shot on B keeps nearly all of A's score
    assert evaluate_probe(moved, zb[300:], y[300:])["r2"] > 0.98


def test_transfer_probe_refuses_a_foreign_probe():
    rng = np.random.default_rng(5)
    _, _za, pc = _pair(rng)
    probe_b = fit_probe(rng.normal(size=(50, 10)), rng.normal(size=50), "regression", "p", AGENT_B)
    with pytest.raises(ProbeError, match="target is the probe's agent"):
        transfer_probe(probe_b, pc)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_probe_round_trip(tmp_path, task):
    rng = np.random.default_rng(6)
    z = _latents(rng, 200, 8)
    y = z[:, :2] if task == "regression" else (z[:, 0] > z[:, 0].mean()).astype(int)
    labels = ["x", "y"] if task == "regression" else ["safe", "danger"]
    probe = fit_probe(z, y, task, "head1", AGENT_A, labels=labels)
    path = tmp_path / "head1.probe.safetensors"
    save_probe(path, probe)
    back = load_probe(path, expect_agent_fingerprint=FP_A)
    np.testing.assert_array_equal(back.weight, probe.weight)
    np.testing.assert_array_equal(back.bias, probe.bias)
    assert (back.name, back.task, back.labels, back.agent) == (probe.name, probe.task, probe.labels, probe.agent)
    assert back.metrics == probe.metrics  # python floats survive JSON exactly
    assert ("classes" in back.metadata()) == (task == "classification")


def test_bad_probe_files_refused(tmp_path):
    rng = np.random.default_rng(7)
    probe = fit_probe(_latents(rng, 100, 8), rng.normal(size=100), "regression", "p", AGENT_A)
    path = tmp_path / "p.probe.safetensors"
    save_probe(path, probe)
    with pytest.raises(ProbeError, match="agent fingerprint"):
        load_probe(path, expect_agent_fingerprint=FP_B)
    cut = tmp_path / "cut.probe.safetensors"
    cut.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ProbeError, match="cut.probe"):
        load_probe(cut)
    _, _, pc = _pair(rng)
    pc_path = tmp_path / "w.postcard.safetensors"
    save_postcard(pc_path, pc)
    with pytest.raises(ProbeError, match="'postcard', not a probe"):
        load_probe(pc_path)
    assert not issubclass(ProbeError, PostcardError) and not issubclass(PostcardError, ProbeError)
    with pytest.raises(ArtifactError):  # both are ArtifactErrors: one except clause for exchanged files
        load_probe(pc_path)
