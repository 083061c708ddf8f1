"""`reproduce --scaling` on a tiny config: every point trains, studies, and lands in the table and plot."""

import json

import pytest

from jepa_edge.study.scaling import ScalingConfig, ScalingError, render_scaling, run_scaling

TINY_RUN = {
    "data": {"img_size": 16, "episode_len": 12, "eval_episodes": 8},
    "train": {"warmup": 1, "eval_every": 1000, "ckpt_every": 1000, "log_every": 1, "device": "cpu", "threads": 1},
    "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
                         "latent_dim": 16, "fused_attn": True}},
}


def _tiny(**kw) -> ScalingConfig:
    # one view pair keeps the test fast; pairs are looped like budgets
    # workers 1 (in-process) unless asked: spawning training processes costs seconds
    kw = {"views_b": ("oblique",), "steps": (1, 3), "batch_sizes": (8, 8), "n_episodes": (4, 6), "workers": 1, **kw}
    return ScalingConfig(seeds=(0, 1), anchor_episodes=8, anchor_steps=12, run=TINY_RUN, **kw)


@pytest.mark.slow
def test_cli_scaling_study_trains_in_a_pool_and_writes_table_plot_and_json(tmp_path):
    """The whole study through the CLI: 2 budgets × 2 seeds, agents trained by a pool of 2 processes."""
    from dataclasses import asdict

    from typer.testing import CliRunner

    from jepa_edge.cli import app

    cfg, run, out = tmp_path / "scaling.json", tmp_path / "run.json", tmp_path / "out"
    study = {k: v for k, v in asdict(_tiny(workers=2)).items() if k != "run"}
    cfg.write_text(json.dumps(study))
    run.write_text(json.dumps(TINY_RUN))
    res = CliRunner().invoke(app, ["reproduce", "--scaling", "--scaling-config", str(cfg), "--config", str(run),
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    loaded = json.loads((out / "scaling.json").read_text())
    assert len(loaded["points"]) == 2 * 2 * 1  # budgets × seeds × pairs
    assert {p["pair"] for p in loaded["points"]} == {"oblique->top"}
    assert len(loaded["summary"]) == 2 and all(r["seeds"] == 2 for r in loaded["summary"])
    row = loaded["summary"][0]
    for key in ("retrieval_top1", "untrained_retrieval_top1", "shuffled_retrieval_top1", "other_world_retrieval_top1",
                "time_shift_retrieval_top1", "cka", "shared_dims_0.5", "position_transferred"):
        assert row[key] is not None and row[key]["n"] == 2, key
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "scaling.md").read_text()
    assert render_scaling(loaded) == md and "3 × 8" in md and "oblique->top" in md
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["b0_s0", "b0_s1", "b1_s0", "b1_s1"]
    assert sorted(p.name for p in (out / "runs/b1_s1").iterdir()) == ["A", "B_oblique", "C"]
    # finished agents are reused (the first budget alone: its study is re-run, not its agents), same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs/b0_s1").rglob("encoder.safetensors")}
    again = run_scaling(_tiny(steps=(1,), batch_sizes=(8,), n_episodes=(4,)), out, progress=False)
    assert [p["w_r2"] for p in again["points"]] == pytest.approx([p["w_r2"] for p in loaded["points"][:2]])
    assert mtimes and all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    cfg.write_text(json.dumps({"budgets": [1]}))
    res = CliRunner().invoke(app, ["reproduce", "--scaling", "--scaling-config", str(cfg), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "budgets" in res.output


def test_bad_scaling_configs_refused():
    with pytest.raises(ScalingError, match="one entry per budget"):
        ScalingConfig(steps=(1, 2), batch_sizes=(8,), n_episodes=(4, 4)).validate()
    with pytest.raises(ScalingError, match="must not contain view_a"):
        ScalingConfig(views_b=("top",)).validate()
