"""docs/ROBOTS.md's bag-to-probe commands, end to end on a ROS 2 bag the test writes (tiny agents, CPU).

A bag of two cameras (with a states topic, as `world record --format mcap` writes) → an agent per camera →
W fitted on the bag's paired frames → a probe on A → transferred to B → a fused ONNX → run on B's camera topic,
recorded to MCAP. Every step is the CLI, as a user types it (plus `--config tiny.json` to keep it fast).
"""

from __future__ import annotations

import json

import pytest
from test_cli import TINY, assert_ok, cli

pytest.importorskip("rosbags")
pytest.importorskip("mcap")


@pytest.mark.slow
def test_from_a_bag_of_two_cameras_to_a_fused_model_and_a_transferred_probe(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    bag, runs = tmp_path / "robot.mcap", tmp_path / "runs"
    assert_ok(cli("world", "record", bag, "--format", "mcap", "--encoding", "jpeg", "--episodes", 8, "--episode-len", 12,
                  "--size", 16, "--view", "top", "--view", "oblique"))
    info = cli("world", "info", bag)
    assert_ok(info)
    assert "top=/top/image_raw/compressed" in info.stdout and "states yes" in info.stdout
    for view, seed in (("top", 0), ("oblique", 1)):
        assert_ok(cli("train", runs / view, "--recording", bag, "--topic", f"{view}=/{view}/image_raw/compressed",
                      "--view", view, "--seed", seed, "--config", config, "--no-progress"))
    postcard = tmp_path / "W_oblique_top.postcard.safetensors"
    calib = cli("calib", "--from", runs / "oblique", "--to", runs / "top", "--out", postcard,
                "--recording", bag, "--anchors", 40)
    assert_ok(calib)
    assert "retrieval chance" in calib.stdout and postcard.is_file()
    assert_ok(cli("probe", runs / "top", "--out", tmp_path / "probes", "--recording", bag))
    position = tmp_path / "probes" / "top.position.probe.safetensors"
    transfer = cli("probe", runs / "oblique", "--transfer", postcard, "--probe", position, "--recording", bag)
    assert_ok(transfer)
    assert "kept" in transfer.stdout
    model = tmp_path / "oblique.onnx"
    assert_ok(cli("export", runs / "oblique", "--postcard", postcard, "--probe", position, "--out", model))
    frames, rec = tmp_path / "frames.jsonl", tmp_path / "run.mcap"
    assert_ok(cli("run", model, "--source", f"bag:{bag}?topic=/oblique/image_raw/compressed", "--backend", "ort-cpu",
                  "--jsonl", frames, "--record", rec))
    lines = [json.loads(x) for x in frames.read_text().splitlines()]
    assert len(lines) == 8 * 12 and sum(k.startswith("position.") for k in lines[0]["outputs"]) == 6  # every frame of the bag's camera
    from jepa_edge.bags.mcap_out import read_mcap_summary

    assert read_mcap_summary(rec)["channels"]["/outputs/position"]["messages"] == len(lines)


def test_bag_errors_are_one_line_and_write_nothing(tmp_path):
    bag = tmp_path / "robot.mcap"
    assert_ok(cli("world", "record", bag, "--format", "mcap", "--episodes", 2, "--episode-len", 6, "--size", 16))
    for args, words in [
        (["--topic", "top=/nope/image_raw"], ["/nope/image_raw", "/top/image_raw"]),
        (["--topic", "top"], ["--topic", "VIEW=/topic"]),
    ]:
        res = cli("train", tmp_path / "run", "--recording", bag, *args, "--no-progress")
        assert res.exit_code == 2 and all(w in res.output for w in words), res.output
        assert not (tmp_path / "run").exists()
    garbage = tmp_path / "junk.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + b"\x00garbage" * 20)
    res = cli("world", "info", garbage)
    assert res.exit_code == 2 and "junk.mcap" in res.output and len(res.output.strip().splitlines()) == 1
    res = cli("run", tmp_path / "none.onnx", "--source", f"bag:{bag}?topic=/nope", "--record", tmp_path / "r.mcap")
    assert res.exit_code == 2 and not (tmp_path / "r.mcap").exists()
    res = cli("train", tmp_path / "run", "--topic", "top=/top/image_raw", "--no-progress")
    assert res.exit_code == 2 and "--recording" in res.output


def test_unsupported_encoding_and_cameras_without_overlap_exit_2_and_write_nothing(tmp_path):
    from bag_fixtures import camera_msgs, jittered, sim_frames, two_cameras, write_bag

    bayer = write_bag(tmp_path / "bayer", camera_msgs("/front/image_raw", sim_frames(3, 16), jittered(3, 10**18, 0),
                                                      "bayer_rggb8"), "mcap")
    apart = write_bag(tmp_path / "apart", two_cameras(side_shift_ns=10**10).messages, "sqlite3")  # side 10 s late
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    res = cli("train", out, "--recording", bayer, "--view", "front", "--config", config, "--no-progress")
    assert res.exit_code == 2 and "bayer_rggb8" in res.output and "supported: rgb8" in res.output, res.output
    assert len([x for x in res.output.splitlines() if x.strip()]) == 1 and not out.exists()
    res = cli("world", "info", apart)  # both cameras: they must be paired, and cannot be
    assert res.exit_code == 2 and "share no time within" in res.output, res.output
    assert len([x for x in res.output.splitlines() if x.strip()]) == 1
    res = cli("run", tmp_path / "none.onnx", "--source", f"bag:{bayer}")
    assert res.exit_code == 2
