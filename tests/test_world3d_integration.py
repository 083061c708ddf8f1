"""Every consumer of the simulator with the 3-D world's views: recordings, training data and the held-out probe,
the sim3d: runtime source, paired moments, fleet anchor moments and INT8 frames (tiny sizes, few steps).
The 2-D paths stay as they were (their own tests); here only that they still answer the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jepa_edge.config import to_dict
from jepa_edge.world import (
    RecordingError,
    World3DConfig,
    World3DStates,
    WorldConfig,
    WorldStates,
    episode_frames,
    load_recording,
    make_view_dataset,
    render_view,
    simulate_recording,
    simulate_world,
    views_of,
)
from jepa_edge.world.render3d import visibility
from tests.test_cli import assert_ok, cli, error_line

S = 32  # px: every 3-D frame here is rendered at 32 px

TINY3D = {
    "data": {"img_size": S, "n_episodes": 6, "episode_len": 12, "eval_episodes": 8},  # 2 held out: objects in view
    "train": {"steps": 2, "batch_size": 8, "warmup": 1, "eval_every": 2, "ckpt_every": 2, "log_every": 1,
              "device": "cpu", "threads": 1},
    "jepa": {"encoder": {"img_size": S, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                         "latent_dim": 16}},
}


# ---------------------------------------------------------------- recordings


@pytest.fixture(scope="module")
def rec3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec3d") / "r"
    simulate_recording(out, n_episodes=2, n_steps=4, views=["overhead", "front"], size=S, seed=3, codec="FFV1",
                       world="3d")
    return out


def test_3d_recording_round_trip(rec3d):
    rec = load_recording(rec3d)
    assert rec.meta["world_kind"] == "3d" == rec.world_kind and rec.meta["visible_views"] == ["overhead", "front"]
    assert isinstance(rec.world_config(), World3DConfig)
    truth = simulate_world(World3DConfig(), 2, 4, 3)
    assert isinstance(rec.states, World3DStates) and rec.states.kind == "3d"
    for key in ("positions", "velocities", "danger", "radius", "robot_pose"):
        np.testing.assert_array_equal(getattr(rec.states, key), getattr(truth, key), err_msg=key)
    for view in ("overhead", "front"):
        np.testing.assert_array_equal(rec.frames[view], render_view(truth, view, S, 3))  # FFV1 is lossless
        np.testing.assert_array_equal(rec.visible[view], visibility(truth, view, S))
    with np.load(rec3d / "states.npz") as npz:
        assert npz["robot_pose"].shape == (8, truth.robot_pose.shape[2], 3)
        assert npz["visible"].shape == (8, 2, truth.positions.shape[2]) and npz["visible"].dtype == np.uint8
    one = load_recording(rec3d, views=["front"])  # a subset of views keeps its own visibility
    assert list(one.visible) == ["front"]


def test_3d_view_data_from_a_recording_carries_what_the_camera_sees(rec3d):
    data = make_view_dataset("front", None, recording=rec3d)
    assert data.visible is not None and data.visible.shape == data.frames.shape[:2] + (data.states.positions.shape[2],)


def test_2d_recording_is_unchanged(tmp_path):
    out = simulate_recording(tmp_path / "r", n_episodes=1, n_steps=3, size=16, codec="FFV1")
    rec = load_recording(out)
    assert rec.views == ["top", "oblique"] and rec.world_kind == "2d" and rec.visible == {}
    assert type(rec.states) is WorldStates and isinstance(rec.world_config(), WorldConfig)
    with np.load(out / "states.npz") as npz:
        assert "robot_pose" not in npz.files and "visible" not in npz.files
    meta = json.loads((out / "recording.json").read_text())
    assert meta["version"] == 1 and "visible_views" not in meta


def test_3d_states_without_robot_pose_are_refused(rec3d, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in rec3d.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    with np.load(bad / "states.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "robot_pose"}
    np.savez(bad / "states.npz", **arrays)
    with pytest.raises(RecordingError, match="robot_pose"):
        load_recording(bad)


def test_recording_arguments_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(RecordingError, match="2d world"):
        simulate_recording(tmp_path / "a", views=["front", "top"], n_episodes=1, n_steps=2, size=S)
    with pytest.raises(RecordingError, match="--world 2d"):
        simulate_recording(tmp_path / "b", views=["top"], world="3d", n_episodes=1, n_steps=2, size=S)
    with pytest.raises(RecordingError, match="--format folder"):
        simulate_recording(tmp_path / "c.mcap", world="3d", fmt="mcap", n_episodes=1, n_steps=2, size=S)
    with pytest.raises(RecordingError, match="not a config of the 3d world"):
        simulate_recording(tmp_path / "d", WorldConfig(), world="3d", n_episodes=1, n_steps=2, size=S)
    with pytest.raises(RecordingError, match="size 15"):
        simulate_recording(tmp_path / "e", world="3d", n_episodes=1, n_steps=2, size=15)
    assert not list(tmp_path.iterdir())


def test_cli_world_record_3d_defaults_and_info(tmp_path):
    out = tmp_path / "r"
    assert_ok(cli("world", "record", out, "--world", "3d", "--episodes", 1, "--episode-len", 2, "--size", S))
    meta = json.loads((out / "recording.json").read_text())
    assert meta["views"] == views_of("3d") and meta["world_kind"] == "3d" and meta["size"] == S
    info = cli("world", "info", out)
    assert_ok(info)
    assert "1 episode(s) x 2 steps" in info.stdout and "3d world" in info.stdout
    inferred = tmp_path / "front_only"  # --view of the 3-D world without --world: the 3-D world, 64 px default
    assert_ok(cli("world", "record", inferred, "--view", "front", "--episodes", 1, "--episode-len", 1))
    meta = json.loads((inferred / "recording.json").read_text())
    assert meta["views"] == ["front"] and meta["size"] == 64 and meta["world_kind"] == "3d"


@pytest.mark.parametrize("argv, needles", [
    (["--world", "3d", "--view", "top"], ["top", "2d world", "--world 2d"]),
    (["--world", "2d", "--view", "front"], ["front", "3d world", "--world 3d"]),
    (["--view", "top", "--view", "front"], ["front", "one world at a time"]),
    (["--world", "4d"], ["4d", "--world"]),
    (["--world", "3d", "--view", "nowhere"], ["nowhere"]),
])
def test_cli_world_record_bad_worlds_are_one_line(tmp_path, argv, needles):
    line = error_line(cli("world", "record", tmp_path / "r", *argv, "--episodes", 1, "--episode-len", 2))
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- paired moments, fleet moments, INT8 frames


def test_world_moments_of_3d_views():
    from jepa_edge.agents.latents import world_moments

    m = world_moments(["front", "overhead", "front"], 2, 3, S, 5)
    frames, states = episode_frames("front", 2, 3, S, 5)
    assert list(m.frames) == ["front", "overhead"] and m.kind == "3d" and m.shape == (2, 3)
    np.testing.assert_array_equal(m.frames["front"], frames)
    np.testing.assert_array_equal(m.robot_pose, states.robot_pose_vector().reshape(6, 4))
    assert m.positions.shape == (6, 2 * states.positions.shape[2])
    np.testing.assert_array_equal(m.obstacle, states.danger.reshape(6))
    with pytest.raises(ValueError, match="mix worlds"):
        world_moments(["top", "front"], 1, 2, S, 0)
    with pytest.raises(ValueError, match="world3d"):
        world_moments(["front"], 1, 2, S, 0, WorldConfig())
    two_d = world_moments(["top"], 1, 2, 16, 0)
    assert two_d.kind == "2d"
    with pytest.raises(ValueError, match="3-D world"):
        two_d.robot_pose  # noqa: B018
    with pytest.raises(ValueError, match="obstacle"):
        two_d.obstacle  # noqa: B018


def test_fleet_moments_of_a_3d_view():
    from jepa_edge.fleet.moments import AnchorWorld, moment_frames, moment_positions

    world = AnchorWorld(seed=7, steps=3, pool=6)
    ids = [4, 0, 5]  # episodes 1, 0, 1
    frames = moment_frames(world, "rear", S, ids)
    ep0, s0 = episode_frames("rear", 1, 3, S, 7)
    ep1, s1 = episode_frames("rear", 1, 3, S, 8)
    np.testing.assert_array_equal(frames, np.stack([ep1[0, 1], ep0[0, 0], ep1[0, 2]]))
    pos = moment_positions(world, ids, kind="3d")
    np.testing.assert_array_equal(pos, np.stack([s1.positions[0, 1], s0.positions[0, 0], s1.positions[0, 2]])
                                  .reshape(3, -1))


def test_int8_frames_of_a_3d_view():
    from jepa_edge.export.int8 import Int8Config, Int8DataError, load_int8_frames

    got = load_int8_frames(Int8Config(source="sim", n_frames=8, batch_size=4, seed=2), S, S, agent_view="side")
    frames, _ = episode_frames("side", 1, 64, S, 2)
    np.testing.assert_array_equal(got, frames[0, :8])
    again = load_int8_frames(Int8Config(source="sim3d:side", n_frames=8, batch_size=4, seed=2), S, S)
    np.testing.assert_array_equal(again, got)
    with pytest.raises(Int8DataError, match="sim3d:side"):
        load_int8_frames(Int8Config(source="sim:side", n_frames=8, batch_size=4), S, S)
    with pytest.raises(Int8DataError, match="sim:top"):
        load_int8_frames(Int8Config(source="sim3d:top", n_frames=8, batch_size=4), S, S)


# ---------------------------------------------------------------- the sim3d: runtime source


def _read_all(spec: str) -> tuple[list[np.ndarray], list[dict]]:
    from jepa_edge.runtime.sources import open_source

    frames, infos = [], []
    with open_source(spec) as src:
        while (f := src.read()) is not None:
            frames.append(f)
            infos.append(dict(src.last_info))
    return frames, infos


def test_sim3d_source_is_deterministic_and_carries_the_ground_truth():
    spec = f"sim3d:front?size={S}&seed=4&frames=5&steps=3"
    frames, infos = _read_all(spec)
    again, _ = _read_all(spec)
    assert len(frames) == 5 and all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))
    first, s0 = episode_frames("front", 1, 3, S, 4)
    second, s1 = episode_frames("front", 1, 3, S, 5)  # episode 1 uses seed + 1
    np.testing.assert_array_equal(np.stack(frames), np.concatenate([first[0], second[0, :2]]))
    assert infos[4]["episode"] == 1 and infos[4]["step"] == 1
    np.testing.assert_allclose(infos[4]["robot_pose"], s1.robot_pose[0, 1], rtol=1e-6)
    np.testing.assert_allclose(infos[0]["positions"], s0.positions[0, 0], rtol=1e-6)
    default, _ = _read_all("sim3d:overhead?frames=1")
    assert default[0].shape == (64, 64, 3)  # the 3-D world's default size


@pytest.mark.parametrize("spec, needle", [
    ("sim:front", "sim3d:front"),
    ("sim3d:top?size=16", "sim:top?size=16"),
    ("sim3d:nowhere", "nowhere"),
    ("sim3d:front?bogus=1", "unknown key"),
])
def test_bad_sim3d_specs(spec, needle):
    from jepa_edge.runtime.errors import SourceOpenError
    from jepa_edge.runtime.sources import open_source

    with pytest.raises(SourceOpenError, match=needle.replace("?", r"\?")):
        open_source(spec)


def test_run_and_bench_read_the_sim3d_source(tmp_path):
    from onnx_fixtures import make_encoder, make_model, reference_head

    enc = make_encoder(S, S, latent_dim=8, seed=3, view="front")
    model = make_model(tmp_path / "front.onnx", enc, "fused", reference_head(enc))
    out = tmp_path / "out.jsonl"
    assert_ok(cli("run", model, "--source", f"sim3d:front?size={S}&steps=3", "--frames", 4, "--backend", "ort-cpu",
                  "--jsonl", out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and len(lines[3]["source"]["robot_pose"][0]) == 3
    report = tmp_path / "bench.json"
    assert_ok(cli("bench", model, "--source", f"sim3d:front?size={S}", "--frames", 4, "--warmup", 1,
                  "--batch-size", 1, "--backend", "ort-cpu", "--head-mode", "model", "--out", report))
    assert {r["status"] for r in json.loads(report.read_text())["results"]} == {"ok"}
    assert "sim3d:front" in error_line(cli("run", model, "--source", "sim:front", "--frames", 1))


# ---------------------------------------------------------------- training on a 3-D view


def test_the_3d_preset_applies_to_3d_views_unless_a_preset_is_named():
    from jepa_edge.train.config import PRESETS, agent_config

    size = PRESETS["3d"]["data"]["img_size"]
    cfg = agent_config("a", "front")
    assert cfg.data.img_size == cfg.jepa.encoder.img_size == size
    assert agent_config("a", "top").data.img_size == 32
    named = agent_config("a", "front", preset="demo")  # a 2-D preset named with a 3-D view: allowed, sizes agree
    assert named.data.img_size == named.jepa.encoder.img_size == 32
    recorded = agent_config("a", "front", data={"recording": "somewhere"})  # a camera name, not the simulator
    assert recorded.data.img_size == 32


def test_state_probe_of_the_3d_world():
    from jepa_edge.train.evaluate import state_probe, visible_r2

    states = simulate_world(World3DConfig(), 40, 8, 1)
    E, T = states.positions.shape[:2]
    rng = np.random.default_rng(0)
    truth = np.concatenate([states.state_vector(), states.robot_pose_vector()], -1).reshape(E * T, -1)  # (M, 2n+4)
    noise = 0.01 * rng.standard_normal((E * T, 4))
    z = np.concatenate([truth, noise], 1) @ np.linalg.qr(rng.standard_normal((truth.shape[1] + 4,) * 2))[0]
    seen = visibility(states, "front", S)
    assert seen[30:].sum(axis=(0, 1)).max() >= 2  # the held-out episodes see some object twice
    out = state_probe(z, states, visible=seen)
    assert out["position_r2"] > 0.95 and out["robot_pose_r2"] > 0.95 and out["visible_position_r2"] > 0.95
    flat = simulate_world(WorldConfig(), E, T, 1)
    assert "robot_pose_r2" not in state_probe(flat.state_vector().reshape(E * T, -1), flat)

    pos = np.array([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 7.0, 7.0]])  # (M=3, 2n=4)
    pred = pos.copy()
    pred[:, 2:] = 0.0  # object 1 predicted badly, but it is never visible
    assert visible_r2(pred, pos, np.array([[True, False]] * 3)) == pytest.approx(1.0)
    assert visible_r2(pred, pos, np.array([[True, True]] * 3)) < 0
    pred[0, 0] = 1.0  # one error of 1 on object 0's x: SSE 1, SST (x and y) 2 + 2
    assert visible_r2(pred, pos, np.array([[True, False]] * 3)) == pytest.approx(0.75)
    assert visible_r2(pred, pos, np.array([[False, False]] * 3)) is None


def test_cli_train_and_probe_on_a_3d_view(tmp_path):
    from jepa_edge.calib.probes import load_probe
    from jepa_edge.world.sim3d import ROBOT_POSE_LABELS

    config = tmp_path / "tiny3d.json"
    config.write_text(json.dumps(TINY3D))
    run = tmp_path / "runs" / "front"
    res = cli("train", run, "--view", "front", "--config", config, "--no-progress", "--json")
    assert_ok(res)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["view"] == "front" and meta["step"] == 2 and meta["encoder"]["img_size"] == S
    assert "view=front" in meta["data_source"]
    for key in ("position_r2", "robot_pose_r2", "visible_position_r2", "z_std"):
        assert key in meta["metrics"] and key in meta["untrained_metrics"], key
    assert meta["run"]["data"]["world3d"] == json.loads(json.dumps(to_dict(World3DConfig())))
    assert "robot_pose_r2" in json.loads(res.stdout)["heldout"]
    probes = tmp_path / "probes"
    res = cli("probe", run, "--out", probes, "--task", "position", "--task", "pose", "--episodes", 6,
              "--episode-len", 6, "--json")
    assert_ok(res)
    assert set(json.loads(res.stdout)["heldout"]) == {"position", "pose"}
    pose = load_probe(probes / "front.pose.probe.safetensors")
    assert pose.labels == ROBOT_POSE_LABELS and pose.task == "regression"
    student = cli("train", tmp_path / "student", "--view", "top", "--config", config, "--teacher", run, "--no-progress")
    assert "sees the 3d world" in error_line(student)

    rear, top = tmp_path / "runs" / "rear", tmp_path / "runs" / "top"
    for other, view in ((rear, "rear"), (top, "top")):
        assert_ok(cli("train", other, "--view", view, "--config", config, "--no-progress", "--json"))
    postcard = tmp_path / "W.postcard.safetensors"
    res = cli("calib", "--from", rear, "--to", run, "--out", postcard, "--anchors", 20, "--episodes", 6,
              "--episode-len", 6, "--json")
    assert_ok(res)
    assert postcard.is_file() and json.loads(res.stdout)["n_anchors"] == 20
    mixed = error_line(cli("calib", "--from", top, "--to", run, "--out", tmp_path / "X.postcard.safetensors",
                           "--episodes", 6, "--episode-len", 6))
    assert "mix worlds" in mixed and "top: 2d" in mixed


def test_visible_probe_is_fitted_where_the_camera_sees():
    from jepa_edge.artifacts import AgentRef
    from jepa_edge.train.evaluate import visible_probe_r2

    rng = np.random.default_rng(3)
    M = 600
    pos = rng.uniform(0, 3, (M, 2))  # (M, 2n), one object
    seen = rng.random((M, 1)) < 0.4  # (M, n)
    z = np.where(seen, pos, 0.0) + 0.01 * rng.standard_normal((M, 2))  # out of view the latent knows nothing
    fit, held = np.arange(450), np.arange(450, M)
    agent = AgentRef("probe", "eval", 2)
    assert visible_probe_r2(z, pos, seen, fit, held, agent) > 0.99
    # a probe fitted on every moment is pulled toward the zeros of the moments out of view
    from jepa_edge.calib.probes import fit_probe
    from jepa_edge.train.evaluate import visible_r2

    everywhere = fit_probe(z[fit], pos[fit], "regression", "obj0", agent).apply(z[held])
    assert visible_r2(everywhere, pos[held], seen[held]) < 0.9
    assert visible_probe_r2(z, pos, np.zeros_like(seen), fit, held, agent) is None  # never seen: no score
