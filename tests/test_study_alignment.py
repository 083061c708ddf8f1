"""run_study on synthetic latents: a planted linear relation beats random controls."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jepa_edge.calib.probes import ProbeConfig
from jepa_edge.config import from_dict, to_dict
from jepa_edge.study.alignment import StudyConfig, StudyError, StudyInputs, render_report, run_study, write_report

SMALL = StudyConfig(anchor_counts=(10, 30, 100, 300), sweep_repeats=1, n_perm=3, n_anchors=300, max_eval=150,
                    pca_points=100, probe=ProbeConfig(alphas=(1e-3, 1e-1), max_iter=150))


def _world(rng, episodes=12, steps=40, d=12, related=True, controls=True):
    """Ground truth moves smoothly; A's latents are a nonlinear readout of it; B = linear map of A + noise."""
    m = episodes * steps
    positions = np.cumsum(rng.normal(scale=0.1, size=(episodes, steps, 4)), 1).reshape(m, 4)  # (M, 2n)
    features = np.concatenate([positions, np.sin(2 * positions)], 1)  # (M, 8)
    target = features @ rng.normal(size=(8, d)) + 0.05 * rng.normal(size=(m, d))
    source = target @ rng.normal(size=(d, d)) / 3 + 0.05 * rng.normal(size=(m, d)) if related \
        else rng.normal(size=(m, d))
    noise = (lambda: rng.normal(size=(m, d))) if controls else (lambda: None)
    return StudyInputs(
        target=target, source=source, positions=positions, danger=(positions[:, 0] > 0).astype(int),
        episode=np.repeat(np.arange(episodes), steps),
        target_agent={"name": "agentA", "view": "top", "fingerprint": "a" * 64},
        source_agent={"name": "agentB", "view": "oblique", "fingerprint": "b" * 64},
        target_untrained=noise(), source_untrained=noise(), other_world=noise(),
    )


def test_trained_pair_beats_every_control_and_report_is_written(tmp_path):
    res = run_study(_world(np.random.default_rng(0)), SMALL)
    ridge = res["estimators"]["ridge"]
    chance = ridge["trained"]["retrieval_chance"]
    assert ridge["trained"]["retrieval_top1"] > 0.5
    for control in ("untrained", "other_world"):
        assert ridge[control]["retrieval_top1"] < 0.1
        assert res["similarity"][control]["cka"] < res["similarity"]["trained"]["cka"] - 0.3
    assert ridge["shuffled"]["retrieval_top1"]["mean"] < 10 * chance
    assert res["similarity"]["trained"]["cka"] > 0.8
    pos = ridge["trained"]["probes"]["position"]
    assert pos["native_on_source"] > 0.8 and pos["kept"] > 0.9
    assert ridge["untrained"]["probes"]["position"]["transferred"] < 0.2
    v = res["verdicts"]
    assert v["retrieval"]["pass"] and v["probe_keep"]["pass"]
    assert v["retrieval"]["margin"] == pytest.approx(v["retrieval"]["trained"] - max(v["retrieval"]["controls"].values()))
    assert res["sweep"]["counts"] == [10, 30, 100, 300]
    assert res["sweep"]["errors"] == []  # ridge and procrustes fit any anchor count
    sweep = res["sweep"]["ridge"]
    assert sweep["trained"]["retrieval_top1"]["mean"][-1] > sweep["trained"]["retrieval_top1"]["mean"][0]
    paths = write_report(res, tmp_path / "report")
    names = sorted(p.name for p in paths)
    assert names == ["anchor_sweep.png", "controls.png", "pca.png", "report.md", "results.json"]
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads((tmp_path / "report" / "results.json").read_text())
    assert loaded["verdicts"]["retrieval"]["pass"] is True
    md = (tmp_path / "report" / "report.md").read_text()
    assert "beats every control by at least 0.20: **yes**" in md
    assert "different world" in md and "shuffled anchors" in md
    assert render_report(loaded) == md  # the report can be rebuilt from results.json alone


def test_verdicts_follow_the_numbers_and_thresholds():
    res = run_study(_world(np.random.default_rng(1), related=False), SMALL)  # B unrelated to A
    v = res["verdicts"]
    assert not v["retrieval"]["pass"] and not v["probe_keep"]["pass"]
    assert "**no**" in render_report(res)
    strict = from_dict(StudyConfig, {**to_dict(SMALL), "retrieval_margin": 1.01, "estimators": ["ridge"]})
    res = run_study(_world(np.random.default_rng(0)), strict)  # related, but the bar is impossible
    assert not res["verdicts"]["retrieval"]["pass"]


def test_recipe_targets_follow_the_numbers_and_a_missing_value_is_not_a_pass():
    from jepa_edge.study.alignment import _title  # the report's name of each control
    from jepa_edge.study.reproduce import RecipeTargets, recipe_targets

    res = run_study(_world(np.random.default_rng(0)), SMALL)
    res["agent_training"] = {"A": {"metrics": {"position_r2": 0.95}}, "B": {"metrics": {"position_r2": 0.85}}}
    rows = {r["target"]: r for r in recipe_targets(res, {"A": 300.0, "B": None}, RecipeTargets())}
    assert rows["agent A position R²"]["pass"] and rows["agent B position R²"]["pass"] is False
    assert rows["agent A training wall (s)"]["pass"] and rows["agent B training wall (s)"]["pass"] is None
    v = res["verdicts"]["retrieval"]
    margin = rows[f"retrieval margin over the best control ({v['best_control']})"]
    assert margin["value"] == v["margin"] and margin["pass"] == (v["margin"] >= 0.15)
    assert rows["linear CKA"]["value"] == res["similarity"]["trained"]["cka"]
    res["recipe_targets"] = list(rows.values())
    md = render_report(res)
    assert "## Recipe targets" in md and "| agent B training wall (s) | — | ≤ 600 | not measured |" in md
    assert "Missed: agent B position R²" in md
    for control, value in v["controls"].items():  # the margin over each control, not only the best one
        assert f"{_title(control)} {v['trained'] - value:.3f}" in md


def test_report_names_the_controls_a_missed_margin_is_missed_against():
    from jepa_edge.study.reproduce import RecipeTargets, recipe_targets

    res = run_study(_world(np.random.default_rng(0)), SMALL)
    res["agent_training"] = {}
    v = res["verdicts"]["retrieval"]
    v["controls"] = {"untrained": 0.4, "other_world": 0.86, "shuffled": 0.001, "shift_5": 0.01}
    v.update(trained=0.92, best_control="other_world", margin=0.92 - 0.86)
    res["recipe_targets"] = recipe_targets(res, {}, RecipeTargets())
    md = render_report(res)
    assert "Retrieval margin over each control: untrained encoders 0.520, different world 0.060" in md
    assert "is missed only against different world: a second agent of B's view" in md
    v["controls"]["untrained"] = 0.9  # missed against two controls: both named, no different-world explanation
    res["recipe_targets"] = recipe_targets(res, {}, RecipeTargets())
    md = render_report(res)
    assert "is missed only against untrained encoders and different world." in md and "second agent" not in md
    v["controls"] = {c: 0.0 for c in v["controls"]}  # every margin met: no "missed against" line
    v.update(margin=0.92)
    res["recipe_targets"] = recipe_targets(res, {}, RecipeTargets())
    assert "missed only against" not in render_report(res)


def test_study_without_controls_and_with_unfittable_estimators():
    cfg = from_dict(StudyConfig, {**to_dict(SMALL), "n_anchors": 8, "primary_estimator": "procrustes",
                                  "sweep_estimators": ["lstsq"], "anchor_counts": [5, 50]})
    res = run_study(_world(np.random.default_rng(2), controls=False), cfg)
    assert res["conditions"] == ["trained", "shuffled"]
    assert "error" in res["estimators"]["lstsq"]["trained"]  # 8 anchors < 12 dims
    assert res["estimators"]["procrustes"]["trained"]["retrieval_top1"] > 0
    assert res["sweep"]["lstsq"]["trained"]["r2"]["mean"][0] is None
    assert "lstsq/trained/N=5" in res["sweep"]["errors"]
    assert "not fittable" in render_report(res)


def test_bad_inputs_and_config_refused():
    inputs = _world(np.random.default_rng(3))
    inputs.source = inputs.source[:-1]
    with pytest.raises(StudyError, match="source has"):
        run_study(inputs, SMALL)
    with pytest.raises(StudyError, match="primary_estimator"):
        run_study(_world(np.random.default_rng(3)), from_dict(StudyConfig, {"estimators": ["procrustes"]}))


def test_importing_calib_and_the_alignment_study_does_not_import_torch():
    code = "import sys, jepa_edge.calib, jepa_edge.study.alignment; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shifted_pairs_pair_each_row_with_its_episode_t_plus_delta():
    from jepa_edge.study.alignment import shifted_pairs

    episode = np.repeat([3, 7, 9], 10)
    step = np.tile(np.arange(10), 3)
    perm = np.random.default_rng(0).permutation(30)  # row order must not matter
    episode, step = episode[perm], step[perm]
    rows = np.arange(30)
    src, tgt = shifted_pairs(episode, step, rows, 4)
    assert len(src) == 3 * 6  # steps 0..5 of each episode have a partner 4 steps later
    assert np.all(episode[src] == episode[tgt]) and np.all(step[tgt] == step[src] + 4)
    src, tgt = shifted_pairs(episode, step, rows[episode == 7], 9)
    assert len(src) == 1 and step[src[0]] == 0 and episode[tgt[0]] == 7
    assert len(shifted_pairs(episode, step, rows, 10)[0]) == 0  # never crosses into the next episode


def test_steps_default_to_row_order_within_each_episode():
    inputs = _world(np.random.default_rng(5), episodes=3, steps=4)
    inputs.episode = np.array([0, 0, 1, 1, 0, 2, 1, 2, 0, 2, 1, 2])
    assert inputs.steps().tolist() == [0, 1, 0, 1, 2, 0, 2, 1, 3, 2, 3, 3]
    inputs.step = np.arange(12)
    assert inputs.steps().tolist() == list(range(12))


def test_time_shift_and_shared_dims_and_danger_analysis_are_reported():
    rng = np.random.default_rng(0)
    inputs = _world(rng)
    inputs.objects_world = rng.normal(size=inputs.target.shape)
    p0 = inputs.positions[:, :2] - np.median(inputs.positions[:, :2], 0)
    inputs.danger = (np.linalg.norm(p0, axis=1) < np.median(np.linalg.norm(p0, axis=1))).astype(int)  # a disc
    res = run_study(inputs, SMALL)
    shifts = res["time_shift"]
    assert list(shifts) == ["1", "5", "25"]
    for d in ("5", "25"):  # the moment-to-moment correspondence is broken: retrieval collapses, Δ=0 does not
        assert shifts[d]["shifted"]["retrieval_top1"] < 0.1 and shifts[d]["matched"]["retrieval_top1"] > 0.8
    assert shifts["25"]["shifted"]["r2"] < shifts["1"]["shifted"]["r2"]
    assert shifts["25"]["n_eval"] < shifts["1"]["n_eval"]
    ctrl = res["verdicts"]["retrieval"]["controls"]
    assert {"shift_5", "shift_25", "objects_world"} <= set(ctrl) and "shift_1" not in ctrl
    sh = res["shared"]
    assert sh["trained"]["n_above"]["0.9"] >= 5 and sh["untrained"]["n_above"]["0.5"] == 0
    assert sh["objects_world"]["n_above"]["0.5"] == 0 and sh["shuffled"]["n_above"]["0.9"] == 0
    assert sh["w_split"]["by_threshold"]["0.9"]["r2_inside"] > 0.9
    dz = res["danger_analysis"]
    assert dz["quadratic_on_true_positions"] > dz["linear_on_true_positions"] + 0.1  # a disc is not linear
    assert 0.3 < dz["positive_fraction"]["all"] < 0.7
    md = render_report(res)
    for text in ("## How much is shared", "## Time-shifted pairing", "## Why danger transfers worse",
                 "different object count", "| 25 | "):
        assert text in md
    assert render_report(json.loads(json.dumps(res))) == md


def test_a_time_shift_longer_than_the_episodes_is_reported_not_fitted():
    res = run_study(_world(np.random.default_rng(0), episodes=40, steps=12), SMALL)  # 12-step episodes, Δ = 25
    assert "25 steps apart" in res["time_shift"]["25"]["error"] and "error" not in res["time_shift"]["5"]
    assert "shift_25" not in res["verdicts"]["retrieval"]["controls"]
    render_report(res)  # the report still renders, with the error in place of the row
