"""N-agent alignment graph: W per ordered pair, composed paths, cycles (numpy), and the driver on ONNX models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx_fixtures import make_encoder, make_model

from jepa_edge.calib.fit import FitConfig
from jepa_edge.calib.graph import Affine, GraphConfig, alignment_graph
from jepa_edge.study.graph_report import graph_report


def linear_world(n: int = 400, d: int = 6, agents: str = "ABCD", noise: float = 0.0, seed: int = 0):
    """Each agent's latents are an invertible affine image of one shared state (plus optional noise)."""
    rng = np.random.default_rng(seed)
    state = rng.standard_normal((n, d))  # (N, d)
    lat = {a: state @ rng.standard_normal((d, d)) + rng.standard_normal(d) + noise * rng.standard_normal((n, d))
           for a in agents}
    return lat, state[:, :2]


def test_affine_composition_is_sequential_application():
    rng = np.random.default_rng(1)
    f = Affine(rng.standard_normal((4, 3)), rng.standard_normal(4))
    g = Affine(rng.standard_normal((2, 4)), rng.standard_normal(2))
    x = rng.standard_normal((5, 3))
    np.testing.assert_allclose(g.after(f).apply(x), g.apply(f.apply(x)), atol=1e-12)


def test_exact_linear_agents_compose_and_close_cycles():
    lat, y = linear_world()
    cfg = GraphConfig(fit=FitConfig(estimator="lstsq"), probe_alpha=0.0)
    res = alignment_graph(lat, np.arange(200), np.arange(200, 400), y, cfg)
    assert len(res["pairs"]) == 12 and all(len(p["paths"]) == 3 for p in res["pairs"].values())
    assert len(res["cycles"]) == 6 + 8  # 2-cycles {a<b}, 3-cycles with the smallest first, both directions
    for p in res["pairs"].values():
        assert all(r["latent_r2"] > 0.999999 and r["transfer_r2"] > 0.999 for r in p["paths"])
    assert all(c["relative_error"] < 1e-9 and c["identity_distance"] < 1e-6 for c in res["cycles"])
    assert abs(res["summary"]["composition_cost"]) < 1e-6


def test_noise_makes_composition_cost_something_and_report_says_it():
    lat, y = linear_world(noise=0.5, seed=2)
    res = alignment_graph(lat, np.arange(200), np.arange(200, 400), y, GraphConfig())
    s = res["summary"]
    assert s["composition_cost"] > 0 and 0 <= s["pairs_best_direct"] <= 12  # noise accumulates along a path
    assert all(c["relative_error"] > 0.01 for c in res["cycles"])
    md = graph_report(res)
    assert "Composition cost" in md and "A → B → C → A" in md and md.count("\n| A->") == 3
    with pytest.raises(ValueError, match="overlap"):
        alignment_graph(lat, np.arange(250), np.arange(200, 400), y)


def test_graph_from_four_exported_models_writes_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from jepa_edge.fleet.moments import AnchorWorld
    from jepa_edge.study.graph_models import graph_from_models

    paths = [make_model(tmp_path / f"{v}.onnx", make_encoder(16, 16, 8, seed=20 + i, name=f"agent_{v}", view=v),
                        "head_inputs") for i, v in enumerate(("top", "oblique", "rotated", "partial"))]
    res = graph_from_models(paths, tmp_path / "graph", AnchorWorld(seed=3, steps=64, pool=256), n_fit=128, n_eval=128)
    assert len(res["agents"]) == 4 and len(res["pairs"]) == 12
    saved = json.loads((tmp_path / "graph" / "graph.json").read_text())
    assert saved["summary"] == res["summary"] and (tmp_path / "graph" / "graph.png").stat().st_size > 1000
    assert "Alignment graph: 4 agents" in (tmp_path / "graph" / "graph.md").read_text()


def test_calib_graph_command(tmp_path):
    from typer.testing import CliRunner

    from jepa_edge.cli import app

    paths = [make_model(tmp_path / f"{v}.onnx", make_encoder(16, 16, 8, seed=30 + i, name=f"agent_{v}", view=v),
                        "head_inputs") for i, v in enumerate(("top", "oblique"))]
    res = CliRunner().invoke(app, ["calib-graph", *map(str, paths), "--out", str(tmp_path / "g"),
                                   "--fit-moments", "64", "--eval-moments", "64"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g" / "graph.json").read_text())["summary"]["pairs"] == 2
    res = CliRunner().invoke(app, ["calib-graph", str(paths[0]), str(paths[0]), "--out", str(tmp_path / "h")])
    assert res.exit_code == 2 and "each agent once" in res.output


def test_one_world_names_the_agents_of_each_world():
    from jepa_edge.study.graph_models import one_world

    assert one_world({"a": "3d", "b": "3d"}) == "3d"
    with pytest.raises(ValueError, match=r"different worlds \(2d: a, c; 3d: b\)"):
        one_world({"a": "2d", "b": "3d", "c": "2d"})


def test_graph_of_3d_models_scores_against_3d_positions(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from jepa_edge.fleet.moments import AnchorWorld
    from jepa_edge.study import graph_models

    asked: list[str] = []
    real = graph_models.moment_positions

    def spy(world, ids, kind="2d"):
        asked.append(kind)
        return real(world, ids, kind=kind)

    monkeypatch.setattr(graph_models, "moment_positions", spy)
    world = AnchorWorld(seed=3, steps=16, pool=32)
    paths = [make_model(tmp_path / f"{v}.onnx", make_encoder(16, 16, 8, seed=40 + i, name=f"agent_{v}", view=v),
                        "head_inputs") for i, v in enumerate(("front", "overhead"))]
    res = graph_models.graph_from_models(paths, tmp_path / "g3", world, n_fit=16, n_eval=16)
    assert asked == ["3d"] and len(res["pairs"]) == 2
    mixed = [paths[0], make_model(tmp_path / "top.onnx", make_encoder(16, 16, 8, seed=50, name="agent_top", view="top"),
                                  "head_inputs")]
    with pytest.raises(ValueError, match="different worlds"):
        graph_models.graph_from_models(mixed, tmp_path / "g_mixed", world, n_fit=16, n_eval=16)
