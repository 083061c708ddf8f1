"""The fast training paths against their references: clips on the device, foreach EMA and AdamW,
metrics read at log steps, divergence, --compile on the call path, the attention choice, DDP device binding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jepa_edge.cli import app
from jepa_edge.train import loop
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.train.clips import DeviceClips
from jepa_edge.train.config import TrainConfig
from jepa_edge.train.jepa import JEPA
from jepa_edge.train.loop import LossModule, Meter, TrainingDivergedError, train
from tests.gpu import skip_or_fail
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _tiny(fused_attn=True, **train_overrides):
    cfg = tiny_config(**train_overrides)
    cfg.jepa.encoder.fused_attn = fused_attn
    return cfg


def _host_sampler(frames, batch, clip_len, seed, step, rank):
    """The sampler the loop used before clips moved to the device (the reference)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + rank)
    E, T = frames.shape[:2]
    e = torch.randint(0, E, (batch,), generator=g)  # (B,)
    t = torch.randint(0, T - clip_len + 1, (batch,), generator=g)  # (B,)
    idx = t[:, None] + torch.arange(clip_len)[None]  # (B, L)
    return frames[e[:, None], idx].float()  # (B, L, 3, S, S)


# ---------------------------------------------------------------- clips on the device


def test_device_clips_draw_what_the_host_sampler_drew_on_cpu():
    frames = torch.randint(0, 256, (6, 9, 8, 8, 3), dtype=torch.uint8)  # (E, T, S, S, 3)
    clips = DeviceClips(frames.numpy(), batch=5, clip_len=3, seed=7, rank=1, device="cpu")
    nchw = frames.permute(0, 1, 4, 2, 3).contiguous()  # (E, T, 3, S, S)
    assert clips.frames.dtype == torch.uint8 and clips.frames.shape == (6, 9, 3, 8, 8)
    for step in (0, 1, 17):
        torch.testing.assert_close(clips.sample(step), _host_sampler(nchw, 5, 3, 7, step, 1), rtol=0, atol=0)
    assert torch.equal(clips.sample(4), clips.sample(4))  # a pure function of the step
    assert not torch.equal(clips.sample(4), clips.sample(5))


def test_device_clips_stay_on_the_gpu():
    if not torch.cuda.is_available():
        skip_or_fail("no CUDA device")
    frames = torch.randint(0, 256, (6, 9, 8, 8, 3), dtype=torch.uint8)
    clips = DeviceClips(frames.numpy(), batch=5, clip_len=3, seed=7, rank=0, device="cuda")
    e, t = clips.indices(3)
    assert clips.frames.is_cuda and e.is_cuda and t.is_cuda
    clip = clips.sample(3)
    assert clip.is_cuda and clip.shape == (5, 3, 3, 8, 8)
    nchw = frames.permute(0, 1, 4, 2, 3)  # (E, T, 3, S, S)
    ref = nchw[e.cpu()[:, None], t.cpu()[:, None] + torch.arange(3)[None]].float()  # (B, L, 3, S, S)
    torch.testing.assert_close(clip.cpu(), ref, rtol=0, atol=0)
    assert torch.equal(clips.sample(3), clip)


# ---------------------------------------------------------------- EMA and optimiser


def test_foreach_ema_equals_the_per_parameter_reference():
    torch.manual_seed(0)
    model = JEPA(_tiny().jepa)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))  # online and target now differ
    reference = [p.clone() for p in model.target_encoder.parameters()]
    for momentum in (0.99, 0.9, 0.998):
        for p_t, p_o in zip(reference, model.encoder.parameters(), strict=True):  # the four explicit lines
            p_t.mul_(momentum)
            p_t.add_(p_o.detach(), alpha=1.0 - momentum)
        model.update_target(momentum)
    for got, want in zip(model.target_encoder.parameters(), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same two ops per tensor: bit-identical


def test_optimizer_implementation_per_device():
    assert loop.optimizer_options(torch.device("cuda", 0)) == {"fused": True, "foreach": False}
    assert loop.optimizer_options(torch.device("cpu")) == {"fused": False, "foreach": True}
    opt = loop.make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(), torch.device("cpu"))
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0]["fused"]


def test_foreach_adamw_equals_the_for_loop_adamw():
    """The CPU switch from torch's default (per-parameter loop) to foreach keeps the numerics."""
    cfg = _tiny()
    clip = torch.rand(8, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255  # (B, L, 3, S, S)
    results = []
    for foreach in (False, True):
        torch.manual_seed(0)
        model = JEPA(cfg.jepa)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05, foreach=foreach)
        for _ in range(5):
            loss, _ = model.loss(clip)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        results.append(params)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- metrics and divergence


def test_meter_sums_on_the_device_and_reads_means():
    meter = Meter(torch.device("cpu"), world=1)
    for v in (1.0, 2.0, 6.0):
        meter.add({"loss": torch.tensor(v), "grad_norm": torch.tensor(2 * v)})
    assert meter.n == 3 and meter.read() == {"loss": 3.0, "grad_norm": 6.0}
    meter.reset()
    meter.add({"loss": torch.tensor(float("nan")), "grad_norm": torch.tensor(1.0)})
    assert meter.read()["loss"] != meter.read()["loss"]  # NaN survives the sum


def _nan_from_call(monkeypatch, first_bad: int) -> None:
    original, calls = JEPA.loss, [0]

    def loss(self, clip):
        calls[0] += 1
        out, logs = original(self, clip)
        return (out * float("nan"), logs) if calls[0] >= first_bad else (out, logs)

    monkeypatch.setattr(JEPA, "loss", loss)


def test_divergence_before_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    _nan_from_call(monkeypatch, first_bad=6)  # steps 0-4 fine, step 5 NaN; log every 5, checkpoint every 4
    cfg = _tiny(steps=12, log_every=5, ckpt_every=4, eval_every=4)
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "steps 6..8" in msg and "last good checkpoint (step 4)" in msg and "--lr" in msg
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 4
    _enc, meta = load_agent(tmp_path / "run")  # loads: the weights on disk are finite
    assert meta["step"] == 4


def test_divergence_is_caught_at_log_cadence(tmp_path, monkeypatch):
    _nan_from_call(monkeypatch, first_bad=5)  # step 4 (0-based) is NaN
    cfg = _tiny(steps=40, log_every=2, ckpt_every=40, eval_every=40)
    with pytest.raises(TrainingDivergedError, match=r"steps 5\.\.6 .*no checkpoint was written"):
        train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and log[-1]["loss"] != log[-1]["loss"]  # the NaN record is logged, then raised
    assert not (tmp_path / "run" / "train_state.json").exists()


def test_cli_reports_divergence_in_one_line(tmp_path, monkeypatch):
    _nan_from_call(monkeypatch, first_bad=2)
    cfg = _tiny(steps=6, log_every=2, ckpt_every=6, eval_every=6).to_dict()
    del cfg["name"], cfg["data"]["view"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(app, ["train", str(tmp_path / "run"), "--config", str(tmp_path / "cfg.json"),
                                   "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "training diverged" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- --compile / --cuda-graphs


def test_compile_puts_the_compiled_loss_module_on_the_call_path(tmp_path, monkeypatch):
    real_compile, compiled, runs = torch.compile, [], [0]

    def counting_backend(gm, example_inputs):
        def run(*args):
            runs[0] += 1
            return gm.forward(*args)

        return run

    def spy(module, **kwargs):
        compiled.append((module, kwargs))
        return real_compile(module, backend=counting_backend)

    monkeypatch.setattr(torch, "compile", spy)
    try:
        eager = train(_tiny(steps=4, eval_every=4, ckpt_every=4), tmp_path / "eager", progress=False)
        assert compiled == [] and runs[0] == 0
        res = train(_tiny(steps=4, eval_every=4, ckpt_every=4, compile=True), tmp_path / "compiled", progress=False)
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1 and isinstance(compiled[0][0], LossModule) and compiled[0][1] == {}
    assert runs[0] >= 4  # the compiled graph ran in every step
    enc_e, _ = load_agent(eager.out_dir)
    enc_c, _ = load_agent(res.out_dir)
    for a, b in zip(enc_e.parameters(), enc_c.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_graphs_auto_choice_and_its_reasons(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(loop, "_has_triton", lambda: True)
    choose = loop.choose_cuda_graphs
    assert TrainConfig().cuda_graphs == "auto"
    assert choose(TrainConfig(), cpu, 1) == {"setting": "auto", "used": False, "why": "device cpu"}
    assert choose(TrainConfig(), torch.device("mps"), 1)["why"] == "device mps"
    assert choose(TrainConfig(), cuda, 1) == {"setting": "auto", "used": True, "why": "one CUDA process"}
    assert choose(TrainConfig(), cuda, 2) == {"setting": "auto", "used": False,
                                              "why": "torchrun with 2 processes (DDP)"}
    assert choose(TrainConfig(cuda_graphs="on"), cuda, 1) == {"setting": "on", "used": True, "why": "requested"}
    assert choose(TrainConfig(cuda_graphs="off"), cuda, 1) == {"setting": "off", "used": False,
                                                               "why": "off requested"}
    assert loop.compile_options(TrainConfig(), cuda, 1) == {"mode": "reduce-overhead"}  # the default on CUDA
    assert loop.compile_options(TrainConfig(compile=True, cuda_graphs="off"), cuda, 1) == {}
    assert loop.compile_options(TrainConfig(compile=True), cpu, 1) == {}
    assert loop.compile_options(TrainConfig(), cpu, 1) is None
    monkeypatch.setattr(loop, "_has_triton", lambda: False)
    assert choose(TrainConfig(), cuda, 1)["why"].startswith("triton is not installed")
    with pytest.raises(ValueError, match=r"\(triton is not installed.*install triton"):
        choose(TrainConfig(cuda_graphs="on"), cuda, 1)
    with pytest.raises(ValueError, match=r"\(torchrun with 2 processes \(DDP\)\).*--cuda-graphs off"):
        choose(TrainConfig(cuda_graphs="on"), cuda, 2)


def test_cuda_graphs_setting_is_checked_and_reads_the_old_booleans():
    from jepa_edge.config import ConfigError, from_dict
    from jepa_edge.train.config import RunConfig, saved_run_config

    assert from_dict(TrainConfig, {"cuda_graphs": True}).cuda_graphs == "on"  # JSON configs of earlier releases
    assert from_dict(TrainConfig, {"cuda_graphs": False}).cuda_graphs == "off"
    assert TrainConfig(cuda_graphs=True).cuda_graphs == "on"
    old_run = RunConfig().to_dict()
    old_run["train"]["cuda_graphs"] = False  # what a run saved by an earlier release holds: it trained without
    assert saved_run_config(old_run).train.cuda_graphs == "off"
    with pytest.raises(ConfigError, match="cuda_graphs"):
        from_dict(TrainConfig, {"cuda_graphs": "yes"})
    with pytest.raises(ConfigError, match="train.cuda_graphs must be one of auto, on, off, got 'sometimes'"):
        TrainConfig(cuda_graphs="sometimes")


def test_cuda_graphs_on_is_refused_off_cuda_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"CUDA graphs cannot run here \(device cpu\).*pass --device cuda"):
        train(_tiny(cuda_graphs="on"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_cpu_run_records_the_cuda_graph_choice_and_its_warm_up(tmp_path):
    res = train(_tiny(steps=4, eval_every=4, ckpt_every=4, log_every=2), tmp_path / "run", progress=False)
    off = {"setting": "auto", "used": False, "why": "device cpu"}
    laps = ("setup_s", "eval_s", "first_forward_s", "first_backward_s", "first_update_s", "second_step_s",
            "third_step_s")
    assert res.cuda_graphs == off
    assert set(res.warmup_time) == {*laps, "to_first_step_s"} and all(v >= 0 for v in res.warmup_time.values())
    first = ("setup_s", "eval_s", "first_forward_s", "first_backward_s", "first_update_s")
    assert res.warmup_time["to_first_step_s"] == pytest.approx(sum(res.warmup_time[k] for k in first), abs=1e-3)
    assert res.warmup_time["first_forward_s"] > 0 and res.warmup_time["eval_s"] > 0  # the step-0 probe ran
    _enc, meta = load_agent(tmp_path / "run")
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    for saved in (meta, state):
        assert saved["cuda_graphs"] == off and saved["warmup_time"] == res.warmup_time
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0] == {"step": 0, "setup": {"cuda_graphs": off, "attention": res.attention}}  # the first record
    timed = [r for r in log if "warmup_time" in r]
    assert len(timed) == 1 and timed[0]["step"] == 1
    assert timed[0]["warmup_time"] == {k: res.warmup_time[k] for k in (*first, "to_first_step_s")}
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 4]  # the train records are unchanged

    resumed = train(_tiny(steps=6, eval_every=4, ckpt_every=4, log_every=2), tmp_path / "more", progress=False,
                    stop_at=4)
    assert set(resumed.warmup_time) >= set(first)
    again = train(_tiny(steps=6, eval_every=4, ckpt_every=4, log_every=2), tmp_path / "more", resume=True,
                  progress=False)
    assert set(again.warmup_time) == {*first, "second_step_s", "to_first_step_s"}  # two steps after the resume
    log = [json.loads(line) for line in (tmp_path / "more" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "setup" in r] == [0, 4] and [r["step"] for r in log if "warmup_time" in r] == [1, 5]


def test_gpu_preset_is_the_measured_h200_recipe_on_the_demo_architecture():
    from jepa_edge.train.config import preset_config

    gpu, demo = preset_config("gpu"), preset_config("demo")
    assert (gpu.train.batch_size, gpu.data.n_episodes, gpu.train.steps, gpu.train.cuda_graphs) == (512, 4096, 3000, "on")
    assert gpu.jepa == demo.jepa and gpu.data.img_size == demo.data.img_size  # the demo agent, at GPU scale
    assert (gpu.train.lr, gpu.data.episode_len) == (demo.train.lr, demo.data.episode_len)


def test_cli_gpu_preset_on_a_cpu_and_cuda_graphs_flag(tmp_path):
    cli = CliRunner()
    res = cli.invoke(app, ["train", str(tmp_path / "gpu"), "--preset", "gpu", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "CUDA graphs cannot run here (device cpu)" in lines[0], res.output
    assert "--preset gpu" in lines[0] and "--device cuda" in lines[0]
    assert not (tmp_path / "gpu").exists()  # refused before rendering 4096 episodes
    res = cli.invoke(app, ["train", str(tmp_path / "x"), "--cuda-graphs", "yes", "--device", "cpu"])
    assert res.exit_code == 2 and "--cuda-graphs 'yes' is not one of auto, on, off" in res.output, res.output
    cfg = _tiny(steps=1, eval_every=1, ckpt_every=1).to_dict()
    del cfg["name"], cfg["data"]["view"], cfg["train"]["cuda_graphs"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    res = cli.invoke(app, ["train", str(tmp_path / "off"), "--config", str(tmp_path / "cfg.json"), "--device", "cpu",
                           "--cuda-graphs", "off", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    _enc, meta = load_agent(tmp_path / "off")
    assert meta["run"]["train"]["cuda_graphs"] == "off"
    assert meta["cuda_graphs"] == json.loads(res.output)["cuda_graphs"] == {"setting": "off", "used": False,
                                                                            "why": "off requested"}
    assert json.loads(res.output)["warmup_time"]["to_first_step_s"] > 0


# ---------------------------------------------------------------- attention path per device


def test_measure_attention_times_both_paths_without_side_effects():
    torch.manual_seed(0)
    model = JEPA(_tiny().jepa)
    before = [p.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    choice = loop.measure_attention(model, batch=4, amp=False, rounds=2)
    assert choice["fused_ms"] > 0 and choice["manual_ms"] > 0
    assert choice["fused"] == (choice["fused_ms"] <= choice["manual_ms"])
    assert torch.equal(torch.get_rng_state(), rng)  # training's seeded streams untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


def _fixed_measurement(monkeypatch, fused: bool) -> None:
    monkeypatch.setattr(loop, "_ATTENTION_CHOICES", {})
    monkeypatch.setattr(loop, "measure_attention", lambda model, batch, amp: {
        "fused": fused, "how": "measured", "fused_ms": 2.0 if not fused else 1.0, "manual_ms": 1.5})


def test_auto_attention_is_applied_and_recorded(tmp_path, monkeypatch):
    _fixed_measurement(monkeypatch, fused=False)
    res = train(_tiny(fused_attn="auto", steps=2, eval_every=2, ckpt_every=2), tmp_path / "run", progress=False)
    assert res.attention == {"fused": False, "how": "measured", "fused_ms": 2.0, "manual_ms": 1.5, "setting": "auto"}
    _enc, meta = load_agent(tmp_path / "run")
    assert meta["attention"]["fused"] is False and meta["attention"]["manual_ms"] == 1.5
    forced = train(_tiny(fused_attn=True, steps=2, eval_every=2, ckpt_every=2), tmp_path / "forced", progress=False)
    assert forced.attention == {"fused": True, "how": "config", "setting": True}


def test_resume_keeps_the_saved_attention_choice(tmp_path, monkeypatch):
    _fixed_measurement(monkeypatch, fused=False)
    full = train(_tiny(fused_attn="auto"), tmp_path / "full", progress=False)
    train(_tiny(fused_attn="auto"), tmp_path / "cut", progress=False, stop_at=4)
    _fixed_measurement(monkeypatch, fused=True)  # a new measurement would now pick the other path
    resumed = train(_tiny(fused_attn="auto"), tmp_path / "cut", resume=True, progress=False)
    assert resumed.attention["fused"] is False
    assert resumed.fingerprint == full.fingerprint  # bit-identical


def test_fused_attn_setting_is_validated(tmp_path):
    with pytest.raises(ValueError, match="fused_attn must be true, false or \"auto\", got 'yes'"):
        train(_tiny(fused_attn="yes"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- DDP on GPUs


def test_each_rank_binds_its_gpu_before_nccl_starts(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(loop.dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend, kw)))
    rank, world, device = loop.setup_distributed(TrainConfig(device="cuda", threads=0))
    assert (rank, world, device) == (1, 2, torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl", {"device_id": torch.device("cuda", 1)})]
    calls.clear()  # one process, plain "cuda": the current GPU, with its index (set_device refuses a bare "cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert loop.setup_distributed(TrainConfig(device="cuda", threads=0)) == (0, 1, torch.device("cuda", 0))
    assert calls == [("set_device", torch.device("cuda", 0))]


def test_gpu_training_resumes_bit_identically(tmp_path):
    if not torch.cuda.is_available():
        skip_or_fail("no CUDA device")
    cfg = _tiny(device="cuda", fused_attn="auto")
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_at=4)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.fingerprint == full.fingerprint


# ---------------------------------------------------------------- the benchmark script


def test_train_throughput_script_reports_modes_attention_and_machine(tmp_path, monkeypatch):
    from scripts import run_script

    out = tmp_path / "tt.json"
    run_script("train_throughput", ["--device", "cpu", "--batch", "4", "--steps", "1", "--warmup", "1", "--modes",
                                    "eager", "--threads", "1", "--out", str(out)], monkeypatch)
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"] and report["machine"]["device"] == "cpu"
    rows = report["results"]
    assert [(r["mode"], r["fused_attn"], r["status"]) for r in rows] == [("eager", True, "ok"), ("eager", False, "ok")]
    assert all(r["step_ms_p50"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert set(report["speedups"]) == {"fused_vs_manual/eager/b4"}


def test_gpu_training_with_cuda_graphs_runs(tmp_path):
    if not torch.cuda.is_available():
        skip_or_fail("no CUDA device")
    try:
        res = train(_tiny(device="cuda", cuda_graphs="on", fused_attn=True), tmp_path / "cg", progress=False)
    finally:
        torch._dynamo.reset()
    log = [json.loads(line) for line in (tmp_path / "cg" / "log.jsonl").read_text().splitlines()]
    assert res.step == 8 and all(r["loss"] == r["loss"] for r in log if "loss" in r)  # finite (no NaN)
    _enc, meta = load_agent(tmp_path / "cg")
    assert meta["step"] == 8
