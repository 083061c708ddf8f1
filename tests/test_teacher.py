"""Teacher-accelerated students: what crosses, where gradients go, controls, errors, train + resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jepa_edge.config import from_dict, to_dict
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.train.config import RunConfig
from jepa_edge.train.loop import train
from jepa_edge.train.model import Encoder
from jepa_edge.train.teacher import Alignment, AnchorSet, TeacherError, build_alignment, receive_teacher_latents

TINY = {
    "data": {"img_size": 16, "n_episodes": 16, "episode_len": 8, "eval_episodes": 8},
    "train": {"steps": 6, "batch_size": 8, "lr": 2e-3, "warmup": 2, "eval_every": 3, "ckpt_every": 3,
              "log_every": 1, "device": "cpu", "threads": 1},
    "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2,
                         "latent_dim": 8},
             "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 2}},
}
STUDENT = {"anchors": 24, "anchor_batch": 8}


def tiny_config(view: str = "top", teacher: str = "", **teacher_opts) -> RunConfig:
    d = to_dict(RunConfig())
    for section, values in json.loads(json.dumps(TINY)).items():
        for k, v in values.items():
            if isinstance(v, dict):
                d[section][k].update(v)
            else:
                d[section][k] = v
    d["data"]["view"] = view
    if teacher:
        d["teacher"].update(run=teacher, **{**STUDENT, **teacher_opts})
    return from_dict(RunConfig, d)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_config("top"), out, progress=False)
    return str(out)


def _graph_leaves(t: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the autograd graph of ``t`` would accumulate a gradient into."""
    seen, stack, leaves = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def test_gradient_reaches_student_and_w_never_the_teacher(teacher_run):
    cfg = tiny_config("oblique", teacher_run)
    align = build_alignment(cfg, "cpu")
    assert [n for n, _ in align.named_parameters()] == ["W"]  # no teacher module inside
    assert not any(isinstance(m, Encoder) for m in align.modules())
    assert isinstance(align.teacher, torch.Tensor) and not align.teacher.requires_grad
    assert align.teacher.grad_fn is None
    torch.manual_seed(0)
    student = Encoder(cfg.jepa.encoder)
    with torch.no_grad():
        align.W.copy_(torch.linalg.qr(torch.randn(8, 8))[0])  # a generic orthogonal W: the penalty has a gradient too
        align.W.mul_(1.1)
    loss, logs = align.loss(student, step=0)
    allowed = {id(p) for p in student.parameters()} | {id(align.W)}
    assert {id(v) for v in _graph_leaves(loss)} <= allowed  # nothing but student params and W in the graph
    loss.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(float(p.grad.abs().sum()) for p in student.parameters()) > 0
    assert align.W.grad is not None and float(align.W.grad.abs().sum()) > 0
    assert align.teacher.grad is None
    assert set(logs) == {"align", "align_fit", "align_orth", "align_r2"}


def test_an_isometry_is_fitted_exactly_and_the_penalty_is_zero_at_orthogonal_w():
    torch.manual_seed(0)
    frames = torch.randint(0, 255, (32, 6, 6, 3), dtype=torch.uint8)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 5))  # (b, 3, 6, 6) → (b, 5)
    with torch.no_grad():
        z = student(frames.permute(0, 3, 1, 2).float())  # (32, 5)
    rot = torch.linalg.qr(torch.randn(5, 5))[0]
    align = Alignment(3.0 * z @ rot.T + 7.0, frames, anchor_batch=16, seed=0)  # teacher = scaled rotation + shift
    with torch.no_grad():
        align.W.copy_(rot)
    _, logs = align.loss(student, 3)
    assert logs["align_fit"] < 1e-8 and logs["align_orth"] < 1e-10 and logs["align_r2"] > 0.999
    with torch.no_grad():
        align.W.mul_(2.0)
    assert float(align.orthogonality()) == pytest.approx(9.0, rel=1e-4)  # (4-1)² per diagonal entry, / D


def test_batches_are_a_pure_function_of_the_step():
    align = Alignment(torch.randn(20, 4), torch.zeros(20, 4, 4, 3, dtype=torch.uint8), anchor_batch=5, seed=3)
    assert torch.equal(align.batch_ids(7), align.batch_ids(7))
    assert not torch.equal(align.batch_ids(7), align.batch_ids(8))
    assert len(set(align.batch_ids(7).tolist())) == 5


def test_what_crosses_is_latents_and_moment_ids_only(teacher_run):
    cfg = tiny_config("oblique", teacher_run)
    latents, anchors, crossed = receive_teacher_latents(cfg)
    assert latents.shape == (24, 8) and latents.dtype == np.float32
    assert crossed["floats"] == 24 * 8 and crossed["ids"] == 24 and crossed["frames"] == 0
    assert crossed["weights"] == 0 and crossed["bytes"] == 4 * 24 * 8 + 4 * 24 + 24
    assert crossed["teacher"]["view"] == "top" and crossed["student_view"] == "oblique"
    # the teacher's latents are of its own view's frames; the student holds only its own view's frames
    teacher_enc, _ = load_agent(teacher_run)
    own = anchors.frames(["top", "oblique"], 16, cfg.data.world)
    with torch.no_grad():
        expect = teacher_enc(torch.from_numpy(own["top"]).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(latents, expect, rtol=1e-4, atol=1e-5)
    align = build_alignment(cfg, "cpu")
    assert torch.equal(align.frames, torch.from_numpy(own["oblique"]).permute(0, 3, 1, 2))
    assert "frames" not in align.state_dict()  # re-rendered on resume, never stored
    assert align.crossed == crossed


def test_anchor_set_is_reproducible_and_spread():
    a, b = AnchorSet.make(40, 5), AnchorSet.make(40, 5)
    assert np.array_equal(a.ids, b.ids) and len(np.unique(a.ids)) == 40
    assert len(np.unique(a.ids // a.n_steps)) > 5  # many episodes, not one long stretch
    assert not np.array_equal(a.ids, AnchorSet.make(40, 6).ids)


def test_controls_build(teacher_run):
    base, _, _ = receive_teacher_latents(tiny_config("oblique", teacher_run))
    shuffled, _, c1 = receive_teacher_latents(tiny_config("oblique", teacher_run, control="shuffled"))
    random, _, c2 = receive_teacher_latents(tiny_config("oblique", teacher_run, control="random"))
    assert not np.array_equal(shuffled, base)
    np.testing.assert_array_equal(np.sort(shuffled, 0), np.sort(base, 0))  # the same rows, pairing destroyed
    assert random.shape == base.shape and not np.allclose(random, base)
    assert c1["control"] == "shuffled" and c2["teacher"]["fingerprint"].startswith("untrained")
    for control in ("shuffled", "random"):
        assert isinstance(build_alignment(tiny_config("oblique", teacher_run, control=control)), Alignment)


def test_building_leaves_the_global_rng_alone(teacher_run):
    torch.manual_seed(0)
    build_alignment(tiny_config("oblique", teacher_run, control="random"), "cpu")
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))  # students and scratch runs of one seed start identically


@pytest.mark.parametrize("change, match", [
    ({"teacher_run": "/nonexistent/run"}, "nonexistent"),
    ({"latent_dim": 12}, "latent dims differ"),
    ({"img_size": 8}, "image sizes differ"),
    ({"control": "bogus"}, "control"),
    ({"anchor_batch": 99}, "anchor_batch"),
])
def test_clear_errors(teacher_run, change, match):
    d = to_dict(tiny_config("oblique", change.get("teacher_run", teacher_run), control=change.get("control", "none"),
                            **({"anchor_batch": change["anchor_batch"]} if "anchor_batch" in change else {})))
    if "latent_dim" in change:
        d["jepa"]["encoder"]["latent_dim"] = change["latent_dim"]
    if "img_size" in change:
        d["data"]["img_size"] = d["jepa"]["encoder"]["img_size"] = change["img_size"]
    with pytest.raises(TeacherError, match=match):
        build_alignment(from_dict(RunConfig, d), "cpu")


def test_student_trains_end_to_end_and_resumes_exactly(teacher_run, tmp_path):
    cfg = tiny_config("oblique", teacher_run)
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_at=3)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == full.step == 6
    assert resumed.fingerprint == full.fingerprint  # W, teacher latents and optimiser state came back
    recs = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["align"]) for r in recs if "lr" in r)
    state = json.loads((tmp_path / "full" / "train_state.json").read_text())
    assert state["config"]["teacher"]["run"] == teacher_run
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "full" / "train_state.safetensors"))
    assert saved["align.W"].shape == (8, 8) and saved["align.teacher"].shape == (24, 8)
    assert not any(k.startswith("align.frames") for k in saved)
