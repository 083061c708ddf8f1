"""Student study: figures computed from log files match hand values; FLOPs match hand counts; tiny end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jepa_edge.study.student import (
    StudentStudyConfig,
    StudentStudyError,
    analyse,
    run_student_study,
    steps_to_target,
    write_outputs,
)
from jepa_edge.train.flops import count_step_flops, forward_backward_flops
from jepa_edge.train.log import RunLogError, last_logged_step, read_evals

# ---------------------------------------------------------------- synthetic logs


def write_log(path, scores: list[float], eval_every: int = 10, sec_per_step: float = 0.5, log_every: int = 5):
    """A log.jsonl as the loop writes it: eval records at 0, eval_every, ...; train records with time_s."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(scores):
        step = i * eval_every
        lines.append({"step": step, "eval": {"position_r2": s}})
        if i + 1 < len(scores):
            for t in range(step + 1, step + eval_every + 1):
                if t % log_every == 0 or t == 1:
                    lines.append({"step": t, "lr": 1e-3, "loss": 1.0, "time_s": round(t * sec_per_step, 2)})
    (path / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


CFG = StudentStudyConfig(steps=40, eval_every=10, seeds=(0, 1), target_mode="final")
# scratch final 0.8 → target 0.72; scratch reaches it at step 40, the student at 10 (seed 0) / 20 (seed 1)
CURVES = {
    "scratch": {0: [0.1, 0.3, 0.5, 0.6, 0.8], 1: [0.1, 0.3, 0.5, 0.6, 0.8]},
    "teacher": {0: [0.1, 0.75, 0.8, 0.85, 0.85], 1: [0.1, 0.5, 0.73, 0.8, 0.8]},
    "shuffled": {0: [0.1, 0.3, 0.5, 0.6, 0.7], 1: [0.1, 0.3, 0.5, 0.6, 0.75]},
}
FLOPS = {"scratch": 100.0, "teacher": 125.0, "shuffled": 125.0}


@pytest.fixture()
def logged(tmp_path):
    runs = {c: {s: write_log(tmp_path / f"{c}_{s}", sc, sec_per_step=0.5 if c == "scratch" else 0.6)
                for s, sc in by_seed.items()} for c, by_seed in CURVES.items()}
    return runs


def test_steps_wall_flops_and_speedups_match_hand_values(logged):
    an = analyse(logged, FLOPS, CFG)
    t0, t1 = an["per_seed"]["teacher"][0], an["per_seed"]["teacher"][1]
    assert t0["target"] == pytest.approx(0.72) and t0["steps_to_target"] == 10 and t1["steps_to_target"] == 20
    assert an["per_seed"]["scratch"][0]["steps_to_target"] == 40
    assert t0["wall_to_target_s"] == pytest.approx(6.0) and an["per_seed"]["scratch"][0]["wall_to_target_s"] == 20.0
    assert t0["flops_to_target"] == 1250.0 and an["per_seed"]["scratch"][0]["flops_to_target"] == 4000.0
    assert t0["speedup_steps"] == 4.0 and t1["speedup_steps"] == 2.0
    assert t0["speedup_wall"] == pytest.approx(20 / 6) and t1["speedup_flops"] == pytest.approx(4000 / 2500)
    assert t0["compute_saving"] == pytest.approx(1 - 1250 / 4000)
    s = an["summary"]["teacher"]
    assert s["speedup_steps"]["mean"] == 3.0 and s["speedup_steps"]["std"] == pytest.approx(math.sqrt(2))
    assert s["compute_saving"]["mean"] == pytest.approx(((1 - 1250 / 4000) + (1 - 2500 / 4000)) / 2)
    assert s["step_cost_vs_scratch"] == 1.25 and s["final"]["mean"] == pytest.approx(0.825)
    sh = an["summary"]["shuffled"]  # 0.7 < 0.72 never reached for seed 0; seed 1 at step 40
    assert sh["steps_to_target"]["n"] == 1 and an["per_seed"]["shuffled"][0]["steps_to_target"] is None
    assert an["per_seed"]["shuffled"][1]["speedup_steps"] == 1.0
    v = an["verdict"]
    assert v["steps_holds"] is True and "3.00x fewer steps" in v["steps"]  # mean 3.0 >= claim 3.0
    assert v["compute_holds"] is False and "53% less" in v["compute"]  # (0.6875 + 0.375) / 2 = 53% < 65%
    assert v["teacher_beats_controls"] is True and v["holds"] is False


def test_gain_target_and_trivial_target(logged, tmp_path):
    gain = StudentStudyConfig(steps=40, eval_every=10, seeds=(0, 1), target_mode="gain", target_fraction=0.5)
    an = analyse(logged, FLOPS, gain)
    assert an["per_seed"]["scratch"][0]["target"] == pytest.approx(0.1 + 0.5 * 0.7)  # 0.45 → step 20
    assert an["per_seed"]["scratch"][0]["steps_to_target"] == 20 and an["per_seed"]["teacher"][0]["speedup_steps"] == 2
    flat = {"scratch": {0: write_log(tmp_path / "flat_s", [0.9, 0.9, 0.95])},
            "teacher": {0: write_log(tmp_path / "flat_t", [0.9, 0.95, 0.95])}}
    an = analyse(flat, {"scratch": 1.0, "teacher": 1.0}, CFG)  # the untrained encoder already reaches 0.855
    assert an["trivial_target_seeds"] == [0] and an["per_seed"]["teacher"][0]["speedup_steps"] is None
    assert "not measurable" in an["verdict"]["steps"] and an["verdict"]["holds"] is False


def test_scratch_that_never_learns_is_an_error(tmp_path):
    runs = {"scratch": {0: write_log(tmp_path / "s", [0.0, -0.1, -0.2])},
            "teacher": {0: write_log(tmp_path / "t", [0, 1])}}
    with pytest.raises(StudentStudyError, match="<= 0"):
        analyse(runs, {"scratch": 1.0, "teacher": 1.0}, CFG)


def test_read_evals_handles_a_resumed_run(tmp_path):
    recs = [{"step": 0, "eval": {"position_r2": 0.1}}, {"step": 1, "time_s": 1.0}, {"step": 5, "time_s": 5.0},
            {"step": 10, "time_s": 10.0}, {"step": 10, "eval": {"position_r2": 0.3}}, {"step": 15, "time_s": 15.0},
            # interrupted after step 15, checkpoint at 10: resume re-runs 11..20 with a fresh clock
            {"step": 15, "time_s": 6.0}, {"step": 20, "time_s": 11.0}, {"step": 20, "eval": {"position_r2": 0.5}}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = read_evals(tmp_path / "log.jsonl", "position_r2")
    assert s.steps.tolist() == [0, 10, 20] and s.scores.tolist() == [0.1, 0.3, 0.5]
    assert s.wall_s.tolist() == [0.0, 10.0, 21.0]  # 10 s before the checkpoint + 11 s after the resume
    assert steps_to_target(s, 0.3) == (10, 10.0) and steps_to_target(s, 0.6) == (None, None)


def test_unusable_logs_are_refused_by_name(tmp_path, logged):
    (tmp_path / "bad.jsonl").write_text('{"step": 0, "eval": {"position_r2": 0.1}}\n{"step": 5,\n')
    with pytest.raises(RunLogError, match=r"bad.jsonl:2: not JSON"):
        read_evals(tmp_path / "bad.jsonl", "position_r2")
    with pytest.raises(StudentStudyError, match="no eval records with 'danger_bal_acc'"):  # the study's own error
        analyse(logged, FLOPS, StudentStudyConfig(steps=40, eval_every=10, seeds=(0, 1), metric="danger_bal_acc"))


def test_report_json_and_png_from_logs(logged, tmp_path):
    results = {"config": {**CFG.__dict__, "seeds": list(CFG.seeds), "view_teacher": "top", "view_student": "oblique",
                          "teacher_steps": 80}, "analysis": analyse(logged, FLOPS, CFG)}
    paths = write_outputs(results, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths)
    md = paths[1].read_text()
    assert "the claim does not hold here" in md and "| with teacher | 0.825 ± 0.035" in md
    back = json.loads(paths[0].read_text())
    assert back["analysis"]["per_seed"]["teacher"]["0"]["steps_to_target"] == 10
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_config_validation():
    with pytest.raises(StudentStudyError, match="scratch"):
        StudentStudyConfig(conditions=("teacher",)).validate()
    with pytest.raises(StudentStudyError, match="target_mode"):
        StudentStudyConfig(target_mode="best").validate()


# ---------------------------------------------------------------- FLOPs


def test_flops_match_a_hand_count_on_two_linear_layers():
    B, a, h, o = 8, 16, 32, 4
    net = torch.nn.Sequential(torch.nn.Linear(a, h), torch.nn.ReLU(), torch.nn.Linear(h, o))
    fwd = 2 * B * a * h + 2 * B * h * o  # 2·B·in·out per Linear (the bias add is not a matmul)
    x = torch.randn(B, a, requires_grad=True)
    got = forward_backward_flops(lambda: net(x).pow(2).sum())
    assert got == {"forward": fwd, "backward": 2 * fwd}  # grad wrt input and wrt weight: 2x forward
    x = torch.randn(B, a)  # no grad wanted for the input: the first layer's backward is the weight grad only
    got = forward_backward_flops(lambda: net(x).pow(2).sum())
    assert got == {"forward": fwd, "backward": 2 * (2 * B * h * o) + 2 * B * a * h}


def _encoder_forward_flops(enc: dict, n_images: int) -> int:
    """Hand count of Encoder.forward (manual attention path) for n images."""
    S, p, D, depth, Z = enc["img_size"], enc["patch_size"], enc["embed_dim"], enc["depth"], enc["latent_dim"]
    N, hidden = (S // p) ** 2, int(D * enc["mlp_ratio"])
    patch = 2 * N * D * 3 * p * p
    block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * hidden  # qkv, attn, proj, mlp
    if enc["pool"] == "flatten":
        pool = 2 * N * D * Z  # one matrix over all N*D token values
    else:
        pool = 2 * N * D * 2 * D + 2 * 2 * N * D + 2 * D * Z  # kv, q·k and attn·v for one query, out
    return n_images * (patch + depth * block + pool)


def test_step_flops_of_a_tiny_run_and_its_alignment_term(tmp_path):
    from test_teacher import STUDENT, tiny_config

    from jepa_edge.train.loop import train

    cfg = tiny_config("top")
    f = count_step_flops(cfg)
    enc = cfg.to_dict()["jepa"]["encoder"]
    one = _encoder_forward_flops(enc, 1)
    assert f["separate"]["eval"]["forward"] == 2 * cfg.data.eval_episodes * cfg.data.episode_len * one
    assert f["jepa"]["forward"] > cfg.train.batch_size * (cfg.jepa.context_frames + 1) * one  # encoders + predictor
    assert f["jepa"]["forward"] < f["jepa"]["backward"] < 2.2 * f["jepa"]["forward"]
    assert f["align"] is None and f["train_step"] == f["jepa"]["forward"] + f["jepa"]["backward"]
    train(cfg, tmp_path / "teacher", progress=False)
    s = count_step_flops(tiny_config("oblique", str(tmp_path / "teacher")))
    b, d = STUDENT["anchor_batch"], enc["latent_dim"]
    assert s["jepa"] == f["jepa"]  # the JEPA part does not change in student mode
    assert s["align"]["forward"] == b * one + 2 * b * d * d + 2 * d * d * d  # encoder, z·Wᵀ, WᵀW
    assert s["train_step"] == f["train_step"] + s["align"]["forward"] + s["align"]["backward"]


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    from test_teacher import STUDENT, TINY

    run = json.loads(json.dumps(TINY))
    run["train"].pop("steps")
    cfg = StudentStudyConfig(teacher_steps=4, teacher_eval_every=2, steps=4, eval_every=2, seeds=(0,), run=run,
                             teacher=dict(STUDENT), target_mode="final", workers=1,  # in-process
                             # (the process pool of train.pool.train_all runs in test_study_scaling.py::test_cli_scaling_study_trains_in_a_pool_and_writes_table_plot_and_json)
                             metric="effective_rank")  # positive from step 0: the plumbing, not the science
    res = run_student_study(cfg, tmp_path, progress=False)
    assert set(res["analysis"]["per_seed"]) == {"scratch", "teacher", "shuffled", "random"}
    assert res["crossed"]["floats"] == STUDENT["anchors"] * 8
    assert (tmp_path / "student_report.md").is_file() and (tmp_path / "student_curves.png").is_file()
    assert (tmp_path / "runs" / "teacher_s0" / "log.jsonl").is_file()
    log = (tmp_path / "runs" / "scratch_s0" / "log.jsonl").read_text()
    again = run_student_study(cfg, tmp_path, progress=False)  # finished runs are reused, not retrained
    assert (tmp_path / "runs" / "scratch_s0" / "log.jsonl").read_text() == log
    assert again["analysis"]["summary"]["teacher"]["final"] == res["analysis"]["summary"]["teacher"]["final"]


def test_pool_progress_reads_the_last_logged_step(tmp_path):
    assert last_logged_step(tmp_path) == 0  # no log yet
    (tmp_path / "log.jsonl").write_text('{"step": 25, "loss": 1.0}\n{"step": 50, "loss": 0.9}\n{"step": 7')
    assert last_logged_step(tmp_path) == 0  # a record being written is not read as a step
    (tmp_path / "log.jsonl").write_text('{"step": 25, "loss": 1.0}\n{"step": 50, "eval": {}}\n')
    assert last_logged_step(tmp_path) == 50


def test_a_teacher_that_reaches_the_target_on_fewer_seeds_than_a_control_does_not_beat_it():
    from jepa_edge.study.student import _beats

    teacher = {"n": 1, "of": 3, "mean": 0.25}
    assert not _beats(teacher, {"n": 2, "of": 3, "mean": 1.0})  # the control reached on more seeds
    assert _beats(teacher, {"n": 0, "of": 3, "mean": None})
    assert _beats({"n": 3, "of": 3, "mean": 4.0}, {"n": 3, "of": 3, "mean": 1.0})
    assert not _beats({"n": 3, "of": 3, "mean": 1.0}, {"n": 3, "of": 3, "mean": 1.5})
    assert not _beats({"n": 0, "of": 3, "mean": None}, {"n": 0, "of": 3, "mean": None})  # nobody reached it
