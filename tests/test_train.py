"""Training: attention parity, loss without collapse, checkpoints, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from jepa_edge.config import ConfigError, from_dict, to_dict
from jepa_edge.train.checkpoint import CheckpointError, load_agent, load_train_state
from jepa_edge.train.config import RunConfig
from jepa_edge.train.jepa import JEPA
from jepa_edge.train.loop import ensure_trained, train
from jepa_edge.train.model import Encoder, EncoderConfig

TINY = {
    "data": {"img_size": 16, "n_episodes": 24, "episode_len": 12, "eval_episodes": 8},
    "train": {"steps": 8, "batch_size": 16, "lr": 2e-3, "warmup": 2, "eval_every": 4, "ckpt_every": 4,
              "log_every": 1, "device": "cpu", "threads": 1},
    "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
                         "latent_dim": 16}},
}


def tiny_config(**train_overrides) -> RunConfig:
    d = json.loads(json.dumps(TINY))
    d["train"].update(train_overrides)
    base = to_dict(RunConfig())
    for section, values in d.items():
        for k, v in values.items():
            if isinstance(v, dict):
                base[section][k].update(v)
            else:
                base[section][k] = v
    return from_dict(RunConfig, base)


@pytest.mark.parametrize("depth", [1, 2])
def test_fused_and_manual_attention_agree(depth):
    torch.manual_seed(0)
    cfg = EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=4, latent_dim=8)
    enc = Encoder(cfg).eval()
    x = torch.rand(3, 3, 16, 16) * 255
    enc.set_fused_attn(True)
    fused_tokens, fused_z = enc.forward_features(x), enc(x)
    enc.set_fused_attn(False)
    manual_tokens, manual_z = enc.forward_features(x), enc(x)
    torch.testing.assert_close(fused_tokens, manual_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_z, manual_z, atol=1e-5, rtol=1e-5)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = JEPA(cfg.jepa)
    clip = torch.rand(8, cfg.jepa.context_frames + cfg.jepa.horizon, 3, 16, 16) * 255
    loss, logs = model.loss(clip)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in logs.values())


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RunConfig, {"train": {"stepz": 3}})


def test_loss_decreases_without_collapse(tmp_path):
    cfg = tiny_config(steps=40, eval_every=40, ckpt_every=40, log_every=1)
    res = train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # no collapse: the latent keeps several effective dimensions, the tokens keep their variance
    assert res.metrics["effective_rank"] > 2.0
    tok_var = [r["tok_var"] for r in log if "tok_var" in r]
    assert np.mean(tok_var[-5:]) < np.mean(tok_var[:5])
    assert "position_r2" in res.untrained


def test_checkpoint_round_trip(tmp_path):
    res = train(tiny_config(), tmp_path / "run", progress=False)
    enc, meta = load_agent(tmp_path / "run")
    assert meta["fingerprint"] == res.fingerprint and meta["step"] == 8
    x = torch.rand(2, 3, 16, 16) * 255
    model = JEPA(tiny_config().jepa)
    load_train_state(tmp_path / "run", {"model": model}, torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(enc(x), model.target_encoder.eval()(x))


def test_resume_matches_uninterrupted_run(tmp_path):
    full = train(tiny_config(), tmp_path / "full", progress=False)
    train(tiny_config(), tmp_path / "cut", progress=False, stop_at=4)
    assert json.loads((tmp_path / "cut" / "train_state.json").read_text())["step"] == 4
    resumed = train(tiny_config(), tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == full.step == 8
    assert resumed.fingerprint == full.fingerprint  # bit-identical weights


def test_a_run_saved_with_cuda_graphs_off_resumes_under_auto_where_auto_is_off(tmp_path):
    """A run of an earlier release (cuda_graphs false → "off") resumes with today's default "auto" on a CPU: the same
    choice under another name. "on" is still a different config."""
    cfg = tiny_config()
    off = replace(cfg, train=replace(cfg.train, cuda_graphs="off"))
    train(off, tmp_path / "run", progress=False, stop_at=4)
    auto = replace(cfg, train=replace(cfg.train, cuda_graphs="auto"))
    assert train(auto, tmp_path / "run", resume=True, progress=False).step == 8


def test_the_other_worlds_defaults_do_not_stop_a_resume_or_a_reuse(tmp_path):
    """A 2-D run never reads data.world3d: a release that changes the 3-D world's defaults still resumes it and
    reuses it when finished; a change of its own world is still a different config."""
    from jepa_edge.train.loop import ensure_trained

    cfg = tiny_config()
    train(cfg, tmp_path / "run", progress=False, stop_at=4)
    moved = replace(cfg, data=replace(cfg.data, world3d=replace(cfg.data.world3d, arena=5.0)))
    assert train(moved, tmp_path / "run", resume=True, progress=False).step == 8
    assert ensure_trained(moved, tmp_path / "run", progress=False) is True  # finished: reused
    own = replace(cfg, data=replace(cfg.data, world=replace(cfg.data.world, speed=0.03)))
    with pytest.raises(CheckpointError, match="data.world.speed"):
        ensure_trained(own, tmp_path / "run", progress=False)


def test_refuses_to_overwrite_or_resume_mismatched(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False, stop_at=4)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"different config \(train\.lr 0\.002 → 0\.01\)"):
        train(tiny_config(lr=1e-2), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_config(), tmp_path / "empty", resume=True, progress=False)


def test_corrupt_checkpoint_is_refused(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False, stop_at=4)
    enc_file = tmp_path / "run" / "encoder.safetensors"
    enc_file.write_bytes(enc_file.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_agent(tmp_path / "run")
    state = tmp_path / "run" / "train_state.safetensors"
    data = bytearray(state.read_bytes())
    data[-8:] = b"\x00" * 8  # same size, flipped bytes: fingerprint no longer matches
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        train(tiny_config(), tmp_path / "run", resume=True, progress=False)
    state_json = tmp_path / "run" / "train_state.json"
    state_json.write_text(state_json.read_text()[:50])  # truncated JSON: refused by name, no JSONDecodeError
    with pytest.raises(CheckpointError, match="train_state.json: train state is not valid JSON"):
        train(tiny_config(), tmp_path / "run", resume=True, progress=False)
    state_json.write_text('{"step": 4}')  # valid JSON, but not a train state
    with pytest.raises(CheckpointError, match="no saved config in it"):
        train(tiny_config(), tmp_path / "run", resume=True, progress=False)


def test_mismatched_architecture_is_refused(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False, stop_at=4)
    meta_path = tmp_path / "run" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["encoder"]["embed_dim"] = 48
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape|match"):
        load_agent(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no such run"):
        load_agent(tmp_path / "nope")


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(to_dict(tiny_config(steps=4, eval_every=4, ckpt_every=4))))
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import json, os\nfrom jepa_edge.config import from_dict\nfrom jepa_edge.train.config import RunConfig\n"
        "from jepa_edge.train.loop import train\n"
        f"cfg = from_dict(RunConfig, json.load(open({str(cfg_path)!r})))\n"
        f"r = train(cfg, {str(tmp_path / 'ddp')!r}, progress=False)\n"
        f"open(os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.json'), 'w')"
        ".write(json.dumps([r.step, r.fingerprint, r.attention]))\n"
    )
    # the two ranks as torchrun would start them (its launcher process would import torch a third time); a port
    # taken between choosing and binding it (a race with another process) is retried once with a new one
    from jepa_edge.fleet.transport import free_loopback_ports

    for attempt in range(2):
        (port,) = free_loopback_ports(1)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        ranks = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        errs = [p.communicate(timeout=240)[1] for p in ranks]
        if all(p.returncode == 0 for p in ranks) or attempt or "address already in use" not in " ".join(errs).lower():
            break
    assert all(p.returncode == 0 for p in ranks), errs[0][-2000:] + errs[1][-2000:]
    done = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]  # one file per rank
    assert all(step == 4 for step, _, _ in done)
    # gradients were averaged: both ranks end with identical weights, and rank 0 saved exactly those
    assert done[0][1] == done[1][1]
    assert done[0][2]["fused"] == done[1][2]["fused"] and done[0][2]["how"] == "measured"  # rank 0's choice, shared
    _enc, meta = load_agent(tmp_path / "ddp")
    assert meta["step"] == 4 and meta["fingerprint"] == done[0][1]


def test_flatten_pool_trains_saves_and_reloads_the_same_encoder(tmp_path):
    d = to_dict(tiny_config(steps=4, eval_every=4, ckpt_every=4))
    d["jepa"]["encoder"]["pool"] = "flatten"
    cfg = from_dict(RunConfig, d)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.step == 4 and np.isfinite(res.metrics["position_r2"])
    enc, meta = load_agent(tmp_path / "run")
    e = cfg.jepa.encoder
    assert meta["encoder"]["pool"] == "flatten" and enc.pool.out.in_features == e.num_patches * e.embed_dim
    x = torch.rand(3, 3, e.img_size, e.img_size) * 255
    saved = Encoder(from_dict(EncoderConfig, meta["encoder"]))  # rebuilt from meta.json alone: same z
    saved.load_state_dict(enc.state_dict())
    torch.testing.assert_close(saved.eval()(x), enc.eval()(x), rtol=0, atol=0)
    d["jepa"]["encoder"]["pool"] = "mean"
    with pytest.raises(ValueError, match="pool 'mean' is not one of"):
        from_dict(RunConfig, d).jepa.validate()


def test_agents_saved_before_the_pool_option_load_as_the_first_release_recipe(tmp_path):
    d = to_dict(tiny_config(steps=2, eval_every=2, ckpt_every=2))
    d["jepa"]["encoder"]["pool"] = "attention"
    d["jepa"]["predictor"]["z_head"] = "mlp"
    d["jepa"]["z_target_norm"] = "none"
    cfg = from_dict(RunConfig, d)
    train(cfg, tmp_path / "run", progress=False)
    for name, key in (("meta.json", "run"), ("train_state.json", "config")):  # as the first release wrote them
        f = tmp_path / "run" / name
        saved = json.loads(f.read_text())
        run = saved[key]
        del run["jepa"]["encoder"]["pool"], run["jepa"]["predictor"]["z_head"], run["jepa"]["z_target_norm"]
        saved.get("encoder", {}).pop("pool", None)
        f.write_text(json.dumps(saved))
    enc, _meta = load_agent(tmp_path / "run")  # the attention pool, not today's default
    assert type(enc.pool).__name__ == "AttentionPool"
    assert ensure_trained(cfg, tmp_path / "run", progress=False)  # recognised as this finished run: not retrained


def test_z_decorrelation_term_measures_correlation_and_trains(tmp_path):
    from jepa_edge.train.jepa import z_correlation

    g = torch.Generator().manual_seed(0)
    iid = torch.randn(4096, 8, generator=g)
    assert z_correlation(iid) < 0.01  # independent dimensions: ~Z/M
    tied = torch.cat([iid[:, :4], iid[:, :4]], 1)  # 4 pairs of identical dimensions
    assert z_correlation(tied) == pytest.approx(1.0, abs=0.01)  # 8 off-diagonal ones / Z
    d = to_dict(tiny_config(steps=4, eval_every=4, ckpt_every=4, log_every=2))
    d["jepa"]["z_decorr_weight"] = 0.5
    res = train(from_dict(RunConfig, d), tmp_path / "run", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert res.step == 4 and all(np.isfinite(r["z_corr"]) for r in logged if "loss" in r)
    d["jepa"]["z_decorr_weight"] = -1.0
    with pytest.raises(ValueError, match="z_decorr_weight -1.0 must be >= 0"):
        from_dict(RunConfig, d).jepa.validate()


def test_z_reconstruction_term_decodes_target_tokens_and_resumes(tmp_path):
    d = to_dict(tiny_config(steps=4, eval_every=2, ckpt_every=2, log_every=2))
    d["jepa"]["z_recon_weight"] = 1.0
    cfg = from_dict(RunConfig, d)
    model = JEPA(cfg.jepa)
    e = cfg.jepa.encoder
    assert model.z_decoder.weight.shape == ((e.img_size // e.patch_size) ** 2 * e.embed_dim, e.latent_dim)
    assert not hasattr(JEPA(from_dict(RunConfig, to_dict(tiny_config())).jepa), "z_decoder")  # off: no module
    clip = torch.rand(3, model.clip_len, 3, e.img_size, e.img_size) * 255
    loss, logs = model.loss(clip)
    loss.backward()
    assert float(logs["loss_z_recon"]) > 0 and model.z_decoder.weight.grad.abs().sum() > 0
    assert model.encoder.pool.out.weight.grad.abs().sum() > 0  # the term reaches the pool through the predicted z
    train(cfg, tmp_path / "run", progress=False, stop_at=2)
    res = train(cfg, tmp_path / "run", resume=True, progress=False)  # the decoder is in train_state
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert res.step == 4 and all(np.isfinite(r["loss_z_recon"]) for r in logged if "loss" in r)
    d["jepa"]["z_recon_weight"] = -0.5
    with pytest.raises(ValueError, match="z_recon_weight -0.5 must be >= 0"):
        from_dict(RunConfig, d).jepa.validate()


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_z_target_norm_makes_the_z_loss_scale_free(norm):
    d = to_dict(tiny_config())
    cfg = from_dict(RunConfig, d)
    e = cfg.jepa.encoder
    clip = torch.rand(16, 3, 3, e.img_size, e.img_size) * 255
    losses = {}
    for mode in ("none", norm):
        d["jepa"]["z_target_norm"] = mode
        torch.manual_seed(0)
        model = JEPA(from_dict(RunConfig, d).jepa)
        with torch.no_grad():
            model.target_encoder.pool.out.weight.mul_(1000.0)  # a target z 1000x larger
        losses[mode] = float(model.loss(clip)[1]["loss_z"])
    assert losses["none"] > 100 * losses[norm]  # raw: the loss follows z's scale; normalised: it does not
    assert losses[norm] < 5.0
    d["jepa"]["z_target_norm"] = "instance"
    with pytest.raises(ValueError, match="z_target_norm 'instance' is not one of"):
        from_dict(RunConfig, d).jepa.validate()


def test_linear_z_head_is_one_matrix_and_trains(tmp_path):
    d = to_dict(tiny_config(steps=6, eval_every=6, ckpt_every=6))
    d["jepa"]["predictor"]["z_head"] = "linear"
    cfg = from_dict(RunConfig, d)
    model = JEPA(cfg.jepa)
    Z, k = cfg.jepa.encoder.latent_dim, cfg.jepa.context_frames
    assert isinstance(model.predictor.z_head, torch.nn.Linear) and model.predictor.z_head.weight.shape == (Z, k * Z)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.step == 6 and np.isfinite(res.metrics["position_r2"])
    assert load_agent(tmp_path / "run")[1]["run"]["jepa"]["predictor"]["z_head"] == "linear"
    d["jepa"]["predictor"]["z_head"] = "quadratic"
    with pytest.raises(ValueError, match="z_head 'quadratic' is not one of"):
        from_dict(RunConfig, d).jepa.validate()


def test_agent_config_layers_preset_overrides_agent_fields_and_sections():
    from jepa_edge.config import ConfigError
    from jepa_edge.train.config import agent_config

    over = {"name": "ignored", "data": {"view": "top", "n_episodes": 7, "world": {"speed": 0.5}},
            "train": {"steps": 9, "seed": 5, "lr": 0.1}}
    cfg = agent_config("a", "oblique", overrides=over, seed=3, world_seed=4)
    assert (cfg.name, cfg.data.view, cfg.data.world_seed, cfg.train.seed) == ("a", "oblique", 4, 3)
    assert (cfg.train.steps, cfg.train.lr, cfg.data.n_episodes, cfg.data.world.speed) == (9, 0.1, 7, 0.5)
    cfg = agent_config("a", "top", overrides=over, steps=11, data={"world": {"max_speed": 0.7}},
                       train={"lr": 0.2}, teacher={"run": "t", "control": "shuffled"})
    assert (cfg.train.steps, cfg.train.lr, cfg.data.world.speed, cfg.data.world.max_speed) == (11, 0.2, 0.5, 0.7)
    assert (cfg.teacher.run, cfg.teacher.control) == ("t", "shuffled")
    assert agent_config("v", "top", preset="vit-tiny").data.img_size == 224
    with pytest.raises(ConfigError, match="lrr"):
        agent_config("a", "top", train={"lrr": 1.0})
    with pytest.raises(ValueError, match="train.steps must be >= 1"):
        agent_config("a", "top", steps=0)
