"""The 3D world's study: position transfer per visibility group on synthetic latents with a known answer,
the obstacle and robot-pose probes, the different-world agent as a finding, and the 3D reproduce options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jepa_edge.calib.probes import ProbeConfig
from jepa_edge.study.alignment import StudyConfig, StudyError, StudyInputs, render_report, run_study, write_report
from jepa_edge.study.visibility import GROUPS, group_table, grouped_r2, visibility_groups

SMALL = StudyConfig(estimators=("ridge",), sweep_estimators=("ridge",), anchor_counts=(30, 300), sweep_repeats=1,
                    n_perm=2, n_anchors=300, max_eval=200, pca_points=50, time_shifts=(1, 5),
                    probe=ProbeConfig(alphas=(1e-4, 1e-2), max_iter=150), findings=("other_world",))


def test_visibility_groups_and_grouped_r2_match_hand_values():
    a = np.array([[True, True, False, False]])
    b = np.array([[True, False, True, False]])
    assert visibility_groups(a, b).tolist() == [[0, 1, 2, 3]]  # both, only A, only B, neither
    with pytest.raises(ValueError, match="moments, objects"):
        visibility_groups(a, b[:, :3])
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 4))  # 50 moments x 2 objects x (x, y)
    groups = np.tile([0, 3], (50, 1))  # object 0 in "both", object 1 in "neither"
    pred = true.copy()
    pred[:, 2:] = true[:, 2:].mean(0)  # object 1 predicted at its mean: R² 0 exactly
    r = grouped_r2(pred, true, groups)
    assert r["both"]["r2"] == pytest.approx(1.0) and r["neither"]["r2"] == pytest.approx(0.0, abs=1e-12)
    assert r["only_a"] == {"r2": None, "n": 0, "share": 0.0} and r["both"]["share"] == 0.5
    table = group_table(pred, pred, true, true, groups, min_native=0.05)
    assert table["both"]["kept"] == pytest.approx(1.0) and table["neither"]["kept"] is None  # native at chance
    assert table["neither"]["home_on_target"] == pytest.approx(1.0)


def _world3d(rng, episodes=16, steps=40, n=3):
    """A sees every object; B's latents carry an object's position only while B's camera sees it.

    B's features per object are [x·v, y·v, v] (v = B sees it), so the best linear readout of the position
    is exact where B sees the object and the mean where it does not: the transferred probe must score
    R² ≈ 1 on "both" / "only B" and ≈ 0 on "only A" / "neither".
    """
    m = episodes * steps
    pos = rng.uniform(0, 4, size=(m, n, 2))  # (M, n, 2)
    vis_a = rng.random((m, n)) < 0.6
    vis_b = rng.random((m, n)) < 0.5
    pose = np.concatenate([rng.uniform(0, 4, (m, 2)), np.cos(h := rng.uniform(0, 6.28, (m, 1))), np.sin(h)], 1)
    feats_a = np.concatenate([pos.reshape(m, -1), pose], 1)  # (M, 2n + 4)
    feats_b = np.concatenate([(pos * vis_b[..., None]).reshape(m, -1), vis_b, pose], 1)  # (M, 3n + 4)
    target = feats_a @ rng.normal(size=(feats_a.shape[1], 16)) + 0.01 * rng.normal(size=(m, 16))
    source = feats_b @ rng.normal(size=(feats_b.shape[1], 16)) + 0.01 * rng.normal(size=(m, 16))
    ahead = np.linalg.norm(pos[:, 0] - pose[:, :2], axis=1) < 1.5  # an "obstacle" label on the state
    return StudyInputs(
        target=target, source=source, positions=pos.reshape(m, -1), danger=ahead.astype(int),
        episode=np.repeat(np.arange(episodes), steps), step=np.tile(np.arange(steps), episodes),
        target_agent={"name": "agent_overhead", "view": "overhead"}, source_agent={"name": "agent_front", "view": "front"},
        target_untrained=rng.normal(size=(m, 16)), source_untrained=rng.normal(size=(m, 16)),
        other_world=source + 0.5 * rng.normal(size=source.shape),  # aligns well: it must not sink the verdict
        danger_name="obstacle", robot_pose=pose, robot_pose_labels=["robot0.x", "robot0.y", "robot0.cos", "robot0.sin"],
        target_visible=vis_a, source_visible=vis_b)


def test_study_scores_position_per_visibility_group_and_reports_it(tmp_path):
    res = run_study(_world3d(np.random.default_rng(1)), SMALL)
    probes = res["estimators"]["ridge"]["trained"]["probes"]
    assert set(probes) == {"position", "obstacle", "robot_pose"}
    g = probes["position"]["by_visibility"]
    assert list(g) == list(GROUPS) and sum(d["share"] for d in g.values()) == pytest.approx(1.0)
    for seen in ("both", "only_b"):
        assert g[seen]["transferred"] > 0.9 and g[seen]["native_on_source"] > 0.9 and g[seen]["kept"] > 0.9
    for hidden in ("only_a", "neither"):
        assert g[hidden]["transferred"] < 0.15 and g[hidden]["native_on_source"] < 0.15
        assert g[hidden]["home_on_target"] > 0.9  # A sees everything
    assert probes["robot_pose"]["kept"] > 0.9
    untrained = res["estimators"]["ridge"]["untrained"]["probes"]["position"]["by_visibility"]
    assert untrained["both"]["transferred"] < 0.3
    v = res["verdicts"]  # the different world aligns as well as the pair, yet is not a control in any verdict
    assert "other_world" not in v["retrieval"]["controls"] and "other_world" not in v["cka"]["controls"]
    assert res["estimators"]["ridge"]["other_world"]["retrieval_top1"] > v["retrieval"]["controls"]["untrained"]
    assert set(res["time_shift"]) == {"1", "5"}
    paths = write_report(res, tmp_path)
    assert "visibility.png" in {p.name for p in paths}
    md = (tmp_path / "report.md").read_text()
    assert "## Position transfer by what each camera sees" in md and "only B sees it" in md
    assert "## Why obstacle transfers worse than position" in md and "danger" not in md
    assert "Findings, not controls to beat" in md and "shared physics" in md
    assert render_report(json.loads((tmp_path / "results.json").read_text())) == md
    assert "](pairs/x/visibility.png)" in render_report(res, assets="pairs/x/")


def test_bad_3d_inputs_are_refused():
    base = _world3d(np.random.default_rng(2), episodes=4, steps=10)
    with pytest.raises(StudyError, match="both target_visible and source_visible"):
        run_study(StudyInputs(**{**base.__dict__, "source_visible": None}), SMALL)
    with pytest.raises(StudyError, match="source_visible has shape"):
        run_study(StudyInputs(**{**base.__dict__, "source_visible": base.source_visible[:, :2]}), SMALL)
    with pytest.raises(StudyError, match="findings"):
        StudyConfig(findings=("trained",)).validate()


def _pair_results(seed: int, a: str, b: str, agent_metrics: dict) -> dict:
    from jepa_edge.study.reproduce import RecipeTargets, recipe_targets

    inputs = _world3d(np.random.default_rng(seed), episodes=10, steps=30)
    if b != "front":
        inputs.other_world = None  # the different-world agent sees front only
    res = run_study(inputs, SMALL)
    res["pair"] = {"target": a, "source": b}
    res["agent_training"] = {f"A ({a})": {"metrics": agent_metrics}, f"B ({b})": {"metrics": agent_metrics}}
    res["recipe_targets"] = recipe_targets(res, {}, RecipeTargets())
    return res


def test_3d_summary_and_report_name_every_miss_and_the_finding():
    from jepa_edge.study.reproduce3d import pair_key, render_3d_report, summary_row

    good = {"visible_position_r2": 0.95, "robot_pose_r2": 0.97, "position_r2": 0.4}
    pairs = {pair_key("overhead", "front"): _pair_results(3, "overhead", "front", good),
             pair_key("front", "rear"): _pair_results(4, "front", "rear", {**good, "robot_pose_r2": 0.5})}
    rows = {r["target"]: r for r in (summary_row(k, r) for k, r in pairs.items())}
    names = [t["target"] for t in pairs["overhead_from_front"]["recipe_targets"]]
    assert "agent A (overhead) visible-object position R²" in names and "obstacle kept" in names
    assert not any("position_r2" in n or "wall" in n for n in names)  # the seen state, not all objects; no wall
    front = rows["front"]
    assert any(t["target"] == "agent A (front) robot pose R²" and t["value"] == 0.5 for t in front["missed"])
    assert not front["meets_targets"] and front["other_world"] is None
    assert rows["overhead"]["other_world"]["retrieval_top1"] > 0.3  # measured beside the pair, as a finding
    assert "other_world" not in rows["overhead"]["retrieval_controls"]
    results = {"world": "3d", "notice": "Short run", "reproduce_config": {"anchor_seed": 4242},
               "other_world": {"view": "front", "run": "runs/otherworld_front", "world3d": {}},
               "pairs": pairs, "summary": list(rows.values())}
    md = render_3d_report(results)
    assert md.count("| overhead ← front |") == 1 and "| front ← rear |" in md
    assert "n/a (B is not front)" in md and "not a control to beat" in md
    assert "- front ← rear: missed agent A (front) robot pose R² 0.500 (target ≥ 0.900)" in md
    assert "## Alignment study: agent_front (front) → agent_overhead (overhead)" in md  # each pair, one level down
    assert "](pairs/front_from_rear/visibility.png)" in md and md.count("Short run") == 1


def _cli_error(*args: object) -> str:
    """The one error line of a refused `jepa-edge` command (exit 2, no traceback)."""
    from typer.testing import CliRunner

    from jepa_edge.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and not isinstance(res.exception, Exception), (res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "words"), [
    (["--world", "4d"], ["unknown world '4d'", "--world", "2d, 3d"]),
    (["--world", "3d", "--view-a", "top", "--view-b", "front"], ["'top' is a 2D view", "--world 3d", "overhead"]),
    (["--view-a", "overhead"], ["'overhead' is a 3D view", "--world 2d", "oblique", "(or --world 3d)"]),
    (["--world", "3d", "--view-a", "nowhere", "--view-b", "front"], ["unknown view 'nowhere'", "top", "overhead"]),
    (["--world", "3d", "--view-a", "overhead"], ["pass both --view-a and --view-b"]),
    (["--world", "3d", "--objects-world"], ["--objects-world", "2D control"]),
    (["--world", "3d", "--student", "--view-b", "oblique"], ["'oblique' is a 2D view"]),
    (["--world", "3d", "--scaling", "--view-a", "front", "--view-b", "front"], ["must not contain view_a"]),
])
def test_reproduce_refuses_bad_world_and_view_options(tmp_path, args, words):
    line = _cli_error("reproduce", "--out", tmp_path / "out", "--no-progress", *args)
    assert all(w in line for w in words), line
    assert not (tmp_path / "out").exists()  # refused before anything trained or was written


def test_3d_presets_and_configs():
    from jepa_edge.config import ConfigError
    from jepa_edge.study.reproduce import PRESETS, ReproduceConfig, short_run_notice, with_preset
    from jepa_edge.study.reproduce3d import PAIRS_3D, agent_3d, other_world_agent, pairs_of, study_3d
    from jepa_edge.study.scaling import ScalingConfig, ScalingError, budget_agent
    from jepa_edge.study.student import StudentStudyConfig, StudentStudyError, student_config, teacher_config
    from jepa_edge.train.config import preset_config

    quick = with_preset(ReproduceConfig(world="3d", preset="quick"))
    assert not quick.other_world and quick.steps < 1000 and quick.anchor_episodes == PRESETS["quick"]["anchor_episodes"]
    assert study_3d(quick.study).findings == ("other_world",) == study_3d(study_3d(quick.study)).findings
    assert pairs_of(quick) == PAIRS_3D == (("overhead", "front"), ("front", "rear"), ("corner", "front"),
                                               ("overhead", "corner"))
    with pytest.raises(ConfigError, match="twice"):
        pairs_of(ReproduceConfig(world="3d", pairs=(("overhead", "front"),) * 2))
    with pytest.raises(ConfigError, match="must be different views"):
        pairs_of(ReproduceConfig(world="3d", pairs=(("front", "front"),)))
    with pytest.raises(ConfigError, match="--world 3d"):
        pairs_of(ReproduceConfig(world="3d", pairs=(("top", "front"),)))
    a, b = agent_3d(quick, "overhead"), agent_3d(quick, "front")
    three = preset_config("3d")
    assert (a.data.img_size, a.jepa.encoder.patch_size) == (three.data.img_size, three.jepa.encoder.patch_size)
    assert (a.train.seed, a.data.world_seed) != (b.train.seed, b.data.world_seed)  # nothing shared but physics
    c = other_world_agent(quick, "front")
    assert c.data.view == "front" and c.data.world3d != a.data.world3d and c.data.world == a.data.world
    assert "--world 3d" in short_run_notice(quick, a) and "make demo WORLD=3d" in short_run_notice(quick, a)
    # student and scaling on 3D views: the 3d preset, the 3D world; 2D defaults unchanged
    s3 = StudentStudyConfig(view_teacher="overhead", view_student="front")
    s3.validate()
    assert teacher_config(s3).data.img_size == three.data.img_size
    assert student_config(s3, "teacher", 0, "t").data.view == "front"
    assert teacher_config(StudentStudyConfig()).data.img_size == preset_config("demo").data.img_size
    with pytest.raises(StudentStudyError, match="different worlds"):
        StudentStudyConfig(view_teacher="top", view_student="front").validate()
    sc = ScalingConfig(view_a="overhead", views_b=("front",))
    sc.validate()
    assert sc.three_d and sc.study_config().findings == ("other_world",)
    assert budget_agent(sc, sc.budgets()[0], "x", "front", 0, 0).data.img_size == three.data.img_size
    assert not ScalingConfig().three_d and ScalingConfig().study_config().findings == ()
    with pytest.raises(ScalingError, match="different worlds"):
        ScalingConfig(view_a="top", views_b=("front",)).validate()


TINY_3D = {  # 32 px, patch 8: the 4x4 token grid of the 3d preset at a quarter of the pixels
    "data": {"img_size": 32, "n_episodes": 6, "episode_len": 12, "eval_episodes": 4},
    "train": {"batch_size": 8, "warmup": 1, "eval_every": 2, "ckpt_every": 2, "log_every": 1, "device": "cpu",
              "threads": 1},
    "jepa": {"encoder": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                         "latent_dim": 16}},
}


@pytest.mark.slow
def test_reproduce_3d_quick_runs_every_pair_and_writes_the_export_artifacts(tmp_path, monkeypatch):
    """The whole 3D command on tiny agents: agents shared per view, the different world on front, a section
    and plots per pair, the summary, and the first pair's postcard and probes for export."""
    from typer.testing import CliRunner

    from jepa_edge.calib.postcard import load_postcard
    from jepa_edge.cli import app
    from jepa_edge.study import reproduce as reproduce_mod
    from jepa_edge.study.scaling import LIGHT_STUDY

    monkeypatch.setitem(reproduce_mod.PRESETS_3D, "quick", {"other_world": True, "anchor_episodes": 8,
                                                            "anchor_steps": 12, "study": LIGHT_STUDY})
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_3D))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["reproduce", "--world", "3d", "--preset", "quick", "--steps", "2", "--config",
                                   str(tmp_path / "tiny.json"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["corner", "front", "otherworld_front", "overhead",
                                                                "rear"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["pairs"]) == ["overhead_from_front", "front_from_rear", "corner_from_front",
                                      "overhead_from_corner"]
    for key, pair in results["pairs"].items():
        assert pair["config"]["findings"] == ["other_world"]
        assert ("other_world" in pair["conditions"]) == key.endswith("_from_front")
        probes = pair["estimators"]["ridge"]["trained"]["probes"]
        assert set(probes) == {"position", "obstacle", "robot_pose"}
        assert set(probes["position"]["by_visibility"]) == {"both", "only_a", "only_b", "neither"}
        assert {"visibility.png", "report.md", "results.json"} <= {p.name for p in (out / "pairs" / key).iterdir()}
        names = [t["target"] for t in pair["recipe_targets"]]
        assert any("visible-object position R²" in n for n in names) and "obstacle kept" in names
    front = json.loads((out / "runs/front/meta.json").read_text())
    assert front["run"]["data"]["img_size"] == 32 and front["view"] == "front"
    other = json.loads((out / "runs/otherworld_front/meta.json").read_text())
    assert other["run"]["data"]["world3d"]["speed"] != front["run"]["data"]["world3d"]["speed"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Alignment study in the 3D world") and "> **Short run (preset quick, 2 training" in md
    assert all(f"| {a} ← {b} |" in md for a, b in (("overhead", "front"), ("front", "rear"), ("corner", "front")))
    assert "## Recipe targets per pair" in md and "danger" not in md
    card = load_postcard(out / "W_BA.postcard.safetensors")
    assert (card.source.view, card.target.view) == ("front", "overhead")
    assert {p.name for p in (out / "probes").iterdir()} == {
        f"agentA.{t}.probe.safetensors" for t in ("position", "obstacle", "robot_pose")}


def test_cli_student_on_3d_views_builds_the_3d_study(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from jepa_edge.cli import app
    from jepa_edge.study import student

    seen = []
    monkeypatch.setattr(student, "run_student_study", lambda cfg, out, progress: seen.append(cfg))
    for args in (["--world", "3d"], ["--world", "3d", "--view-a", "corner", "--view-b", "rear"], []):
        res = CliRunner().invoke(app, ["reproduce", "--student", "--out", str(tmp_path / "s"), *args])
        assert res.exit_code == 0, res.output
    (d3, pair, d2) = seen
    assert (d3.view_teacher, d3.view_student, d3.metric) == ("overhead", "front", "visible_ego_r2")
    assert (pair.view_teacher, pair.view_student) == ("corner", "rear")
    assert (d2.view_teacher, d2.view_student, d2.metric) == ("top", "oblique", "position_r2")  # 2D unchanged


@pytest.mark.slow
def test_student_and_scaling_studies_run_on_a_3d_pair(tmp_path):
    from typer.testing import CliRunner

    from jepa_edge.cli import app
    from jepa_edge.study.student import StudentStudyConfig, run_student_study

    run = {**TINY_3D, "data": {**TINY_3D["data"], "n_episodes": 4}}
    cfg = StudentStudyConfig(view_teacher="overhead", view_student="front", teacher_steps=2, teacher_eval_every=2,
                             steps=2, eval_every=2, seeds=(0,), run=run, teacher={"anchors": 16, "anchor_batch": 8},
                             target_mode="final", workers=1, metric="effective_rank")  # the plumbing, not the science
    res = run_student_study(cfg, tmp_path / "student", progress=False)
    assert set(res["analysis"]["per_seed"]) == {"scratch", "teacher", "shuffled", "random"}
    teacher = json.loads((tmp_path / "student/runs/teacher/meta.json").read_text())
    assert teacher["view"] == "overhead" and "visible_position_r2" in teacher["metrics"]
    scaling = {"views_b": ["front"], "steps": [2], "batch_sizes": [8], "n_episodes": [4], "seeds": [0], "workers": 1,
               "anchor_episodes": 8, "anchor_steps": 12}
    (tmp_path / "scaling.json").write_text(json.dumps(scaling))
    (tmp_path / "run.json").write_text(json.dumps(run))
    res = CliRunner().invoke(app, ["reproduce", "--scaling", "--world", "3d", "--scaling-config",
                                   str(tmp_path / "scaling.json"), "--config", str(tmp_path / "run.json"),
                                   "--out", str(tmp_path / "scaling"), "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    loaded = json.loads((tmp_path / "scaling/scaling.json").read_text())
    assert [p["pair"] for p in loaded["points"]] == ["front->overhead"]
    assert loaded["study_config"]["findings"] == ["other_world"] and "robot_pose_kept" in loaded["points"][0]
    md = (tmp_path / "scaling/scaling.md").read_text()
    assert "obstacle kept" in md and "position kept by visibility" in md and "a finding" in md


def test_a_robot_camera_is_held_to_its_own_frame():
    from jepa_edge.study.reproduce import RecipeTargets, recipe_targets

    res = _pair_results(3, "front", "rear", {"visible_position_r2": -0.3, "visible_ego_r2": 0.92,
                                             "robot_pose_r2": 0.6, "position_r2": -0.3})
    rows = {t["target"]: t for t in recipe_targets(res, {}, RecipeTargets())}
    assert rows["agent A (front) visible-object position R² (robot frame)"]["pass"] is True
    assert "agent A (front) visible-object position R²" not in rows  # world positions: not what it sees
    assert rows["agent A (front) robot pose R²"]["pass"] is False


def test_a_3d_agent_without_objects_in_view_is_not_measured_never_scored_on_all_objects():
    from jepa_edge.study.reproduce import RecipeTargets, recipe_targets

    res = _pair_results(5, "front", "rear", {"robot_pose_r2": 0.6, "position_r2": 0.95})
    rows = {t["target"]: t for t in recipe_targets(res, {}, RecipeTargets())}
    assert rows["agent A (front) visible-object position R²"]["pass"] is None
    assert not any(name.endswith(") position R²") for name in rows)  # the all-object R² is no 3D target
