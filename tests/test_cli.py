"""The `jepa-edge` command line, in-process (typer's CliRunner) on tiny agents.

One module-scoped world trains two tiny agents (16 px, 4 steps) through the CLI and derives every
artifact from them (postcard, probes, ONNX, recording). Each command's happy path runs once; the
bad-input matrix checks that every bad input gives exit code 2 and ONE line naming the file, the
problem and the fix, with no traceback, nothing written or half-written, and any existing state kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from jepa_edge.calib.fingerprint import fingerprint_arrays
from jepa_edge.cli import app

TINY = {
    "data": {"img_size": 16, "n_episodes": 24, "episode_len": 12, "eval_episodes": 8},
    "train": {"steps": 4, "batch_size": 16, "warmup": 2, "eval_every": 4, "ckpt_every": 4, "log_every": 1,
              "device": "cpu", "threads": 1},
    "jepa": {"encoder": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
                         "latent_dim": 16}},
}
MOMENTS = ["--episodes", "8", "--episode-len", "12"]  # calib / probe: 8 fresh episodes x 12 steps at 16 px


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"


def error_line(result) -> str:
    """The single error line of a failed command (asserting there is exactly one, and no traceback)."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert not isinstance(result.exception, Exception), repr(result.exception)  # SystemExit(2), not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@dataclass
class World:
    root: Path
    config: Path
    run_a: Path
    run_b: Path
    postcard: Path  # W_BA: agent B → agent A
    probes: dict[str, Path]  # agent A's probes by task
    onnx: Path  # agent B + W_BA + A's position probe, fused
    recording: Path
    results: dict[str, object] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    w = World(root, config, root / "runs/agentA", root / "runs/agentB", root / "W_BA.postcard.safetensors",
              {t: root / f"probes/agentA.{t}.probe.safetensors" for t in ("position", "danger")},
              root / "agentB.onnx", root / "rec")
    w.results["train"] = cli("train", w.run_a, "--config", config, "--no-progress")
    w.results["train_b"] = cli("train", w.run_b, "--view", "oblique", "--seed", 1, "--config", config,
                               "--no-progress")
    w.results["calib"] = cli("calib", "--from", w.run_b, "--to", w.run_a, "--out", w.postcard,
                             "--anchors", 40, *MOMENTS)
    w.results["probe"] = cli("probe", w.run_a, "--out", root / "probes", *MOMENTS)
    w.results["export"] = cli("export", w.run_b, "--postcard", w.postcard, "--probe", w.probes["position"],
                              "--out", w.onnx)
    w.results["record"] = cli("world", "record", w.recording, "--episodes", 3, "--episode-len", 12, "--size", 16)
    return w


# ---------------------------------------------------------------- happy paths


def test_train_writes_an_agent_and_prints_the_probe_table(world):
    for key in ("train", "train_b"):
        assert_ok(world.results[key])
    assert "held-out state probe" in world.results["train"].stdout
    meta = json.loads((world.run_a / "meta.json").read_text())
    assert meta["step"] == 4 and meta["name"] == "agentA" and meta["encoder"]["img_size"] == 16


def test_world_record_and_info(world):
    assert_ok(world.results["record"])
    info = cli("world", "info", world.recording)
    assert_ok(info)
    assert "3 episode(s) x 12 steps" in info.stdout and "states yes" in info.stdout


def test_calib_writes_a_postcard_and_the_controls(world):
    res = world.results["calib"]
    assert_ok(res)
    assert world.postcard.is_file()
    for word in ("trained", "untrained", "shuffled anchors", "retrieval chance"):
        assert word in res.stdout


def test_probe_and_transfer(world):
    assert_ok(world.results["probe"])
    assert all(p.is_file() for p in world.probes.values())
    res = cli("probe", world.run_b, "--transfer", world.postcard, "--probe", world.probes["position"], *MOMENTS)
    assert_ok(res)
    assert "zero-shot transfer" in res.stdout and "position" in res.stdout


def test_export_fuses_postcard_and_probe(world):
    assert_ok(world.results["export"])
    meta = json.loads({p.key: p.value for p in onnx.load(str(world.onnx)).metadata_props}["jepa_edge"])
    assert meta["mode"] == "fused" and meta["head"]["outputs"][-1]["name"] == "position"


def test_run_writes_one_json_line_per_frame_and_a_summary(world, tmp_path):
    out = tmp_path / "frames.jsonl"
    res = cli("run", world.onnx, "--source", "sim:oblique?size=16", "--frames", 3, "--jsonl", out,
              "--backend", "ort-cpu")
    assert_ok(res)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2]
    named = [k for k in records[0]["outputs"] if k.startswith("position.")]
    assert named == [f"position.obj{i}.{a}" for i in range(3) for a in "xy"]  # every value named, in column order
    assert '"reason": "max_frames"' in res.stderr


def test_run_records_an_mcap_and_serves_a_live_page(world, tmp_path):
    """`run --record out.mcap --serve 127.0.0.1:0`: one MCAP message per frame per channel, the page's URL said."""
    pytest.importorskip("mcap")
    from jepa_edge.bags.mcap_out import read_mcap_summary

    out, rec = tmp_path / "frames.jsonl", tmp_path / "run.mcap"
    res = cli("run", world.onnx, "--source", "sim:oblique?size=16", "--frames", 4, "--jsonl", out,
              "--backend", "ort-cpu", "--record", rec, "--serve", "127.0.0.1:0")
    assert_ok(res)
    assert "live page: http://127.0.0.1:" in res.stderr
    summary = read_mcap_summary(rec)
    counts = {topic: c["messages"] for topic, c in summary["channels"].items()}
    assert counts["/camera/image"] == 4 and counts["/outputs/position"] == 4 and counts["/latency"] == 4
    again = cli("run", world.onnx, "--source", "sim:oblique?size=16", "--frames", 1, "--backend", "ort-cpu",
                "--record", rec)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_run_applies_a_postcard_and_probes_in_numpy(world, tmp_path):
    bare = tmp_path / "bare.onnx"
    assert_ok(cli("export", world.run_b, "--mode", "encoder-only", "--out", bare))
    out = tmp_path / "frames.jsonl"
    res = cli("run", bare, "--source", "sim:oblique?size=16", "--frames", 2, "--jsonl", out,
              "--postcard", world.postcard, "--probe", world.probes["danger"])
    assert_ok(res)
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first["outputs"]) == {"z_mapped", "danger.safe", "danger.danger"}
    assert first["outputs"]["danger.safe"] + first["outputs"]["danger.danger"] == pytest.approx(1, abs=1e-5)


def test_bench_writes_the_json_report(world, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", world.onnx, "--source", "sim:oblique?size=16", "--frames", 4, "--warmup", 1,
              "--batch-size", 1, "--backend", "ort-cpu", "--out", out)
    assert_ok(res)
    report = json.loads(out.read_text())
    assert {(r["head_mode"], r["status"]) for r in report["results"]} == {("model", "ok"), ("numpy", "ok")}


@pytest.mark.slow
def test_reproduce_writes_the_report(world, tmp_path, monkeypatch):
    from jepa_edge.study import reproduce as reproduce_mod
    from jepa_edge.study.scaling import LIGHT_STUDY

    # the command's wiring, on fewer moments and the scaling study's light study (full: test_study_alignment.py),
    # with the object-count control agent: trained on its own world, it lands in every new section
    monkeypatch.setitem(reproduce_mod.PRESETS, "demo", {"anchor_episodes": 16, "study": LIGHT_STUDY})
    res = cli("reproduce", "--out", tmp_path / "demo", "--config", world.config, "--steps", 2, "--no-other-world",
              "--objects-world", "--no-progress")
    assert_ok(res)
    results = json.loads((tmp_path / "demo/results.json").read_text())
    meta = json.loads((tmp_path / "demo/runs/agentD_objects/meta.json").read_text())
    assert meta["run"]["data"]["world"]["n_objects"] == reproduce_mod.ReproduceConfig().objects_world_count == 5
    assert "objects_world" in results["conditions"] and "objects_world" in results["shared"]
    assert set(results["time_shift"]) == {"1", "5", "25"}
    md = (tmp_path / "demo/report.md").read_text()
    assert "different object count" in md and "## How much is shared" in md
    rows = {r["target"]: r for r in results["recipe_targets"]}  # the recipe's targets, with what was measured
    a_meta = json.loads((tmp_path / "demo/runs/agentA/meta.json").read_text())
    assert rows["agent A position R²"]["value"] == a_meta["metrics"]["position_r2"]
    assert 0 < rows["agent B training wall (s)"]["value"] < 600 and rows["agent B training wall (s)"]["pass"]
    assert md.splitlines()[2].startswith("> **Short run (preset demo, 2 training steps")  # said before any number
    assert "## Recipe targets" in md and "issue" not in md and ("Missed: " in md or "Every measured target is met." in md)


def test_train_on_a_recording_says_why_no_held_out_probe(world, tmp_path):
    res = cli("train", tmp_path / "rec_run", "--recording", world.recording, "--config", world.config,
              "--no-progress")
    assert_ok(res)
    note = [line for line in res.stdout.splitlines() if line.startswith("no held-out state probe")]
    assert len(note) == 1 and "jepa-edge probe" in note[0]


# ---------------------------------------------------------------- bad inputs


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("meta.json", "encoder.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _garbage(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"\x00garbage, not what the name says" * 4)
    return dst


def _json(dst: Path, obj: object) -> Path:
    dst.write_text(json.dumps(obj))
    return dst


def _key(tmp: Path, mode: int) -> Path:
    """A real Ed25519 robot key file with ``mode``."""
    from jepa_edge.fleet.keys import Signer, write_private_key

    dst = tmp / f"robot{mode:o}.key"
    write_private_key(dst, Signer.generate(), overwrite=True)
    dst.chmod(mode)
    return dst


def _nan_run(w: World, tmp: Path) -> Path:
    """A run whose encoder holds NaN, with a matching fingerprint (so the NaN check itself must catch it)."""
    run = _copy_run(w.run_b, tmp / "nan_run")
    arrays = load_file(str(run / "encoder.safetensors"))
    first = min(arrays)
    arrays[first] = np.full_like(arrays[first], np.nan)
    save_file(arrays, str(run / "encoder.safetensors"))
    meta = json.loads((run / "meta.json").read_text())
    meta["fingerprint"] = fingerprint_arrays(arrays)
    _json(run / "meta.json", meta)
    return run


def _postcard_with(w: World, tmp: Path, change: Callable[[dict], None], name: str) -> Path:
    """A copy of W_BA with its tensors changed (e.g. a wrong shape or NaN), metadata kept."""
    from safetensors import safe_open

    with safe_open(str(w.postcard), "np") as f:
        meta = f.metadata()
    arrays = load_file(str(w.postcard))
    change(arrays)
    out = tmp / f"{name}.postcard.safetensors"
    save_file(arrays, str(out), metadata=meta)
    return out


def _wrong_hw_onnx(w: World, tmp: Path) -> Path:
    """agent B's ONNX with metadata claiming 24x24 input while the graph takes 16x16."""
    model = onnx.load(str(w.onnx))
    for p in model.metadata_props:
        if p.key == "jepa_edge":
            meta = json.loads(p.value)
            meta["input"].update(height=24, width=24)
            p.value = json.dumps(meta)
    out = tmp / "wrong_hw.onnx"
    onnx.save(model, str(out))
    return out


def _engine(w: World, tmp: Path) -> Path:
    engine = tmp / "model.engine"
    engine.write_bytes(b"plan")
    _json(tmp / "model.engine.json", {"precision": "fp16", "onnx": {"path": "model.onnx", "sha256": "0" * 64}})
    return engine


@dataclass
class Case:
    """A bad input: ``build(world, tmp)`` → (argv, substrings the error line must hold, paths that must not exist)."""

    build: Callable[[World, Path], tuple[list, list[str], list[Path]]]
    keep: Callable[[World], list[Path]] = lambda w: []  # files that must be byte-identical afterwards
    xfail: str = ""


CASES: dict[str, Case] = {
    # ---- train / config files
    "train config steps='abc'": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"train": {"steps": "abc"}})],
        ["c.json", "train.steps must be int", "str 'abc'"], [t / "o"])),
    "train config is a JSON list": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", [1, 2])],
        ["c.json", "must be a JSON object", "got list"], [t / "o"])),
    "train config unknown key": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"train": {"stepz": 3}})],
        ["c.json", "unknown key", "train.stepz"], [t / "o"])),
    "train config bool for int": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"data": {"img_size": True}})],
        ["c.json", "data.img_size must be int"], [t / "o"])),
    "train config section not an object": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"data": [16]})],
        ["c.json", "data must be an object"], [t / "o"])),
    "train config truncated JSON": Case(lambda w, t: (
        ["train", t / "o", "--config", _truncate(w.config, t / "c.json")],
        ["c.json", "not valid JSON"], [t / "o"])),
    "train config missing": Case(lambda w, t: (
        ["train", t / "o", "--config", t / "nope.json"], ["nope.json", "no such"], [t / "o"])),
    "train diverging loss": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--lr", "1e30", "--no-progress"],
        ["nan", "lr"], [t / "o" / "encoder.safetensors"])),
    "train into an existing run": Case(lambda w, t: (
        ["train", w.run_a, "--config", w.config, "--no-progress"], [str(w.run_a), "--resume"], []),
        keep=lambda w: [w.run_a / "encoder.safetensors", w.run_a / "meta.json", w.run_a / "train_state.json"]),
    "train --resume with nothing to resume": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--resume", "--no-progress"], ["nothing to resume"],
        [t / "o"])),
    "train --resume and --overwrite together": Case(lambda w, t: (
        ["train", w.run_a, "--config", w.config, "--resume", "--overwrite"], ["--resume", "--overwrite"], []),
        keep=lambda w: [w.run_a / "encoder.safetensors", w.run_a / "meta.json"]),
    "train unknown view": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--view", "bogus"], ["bogus", "views are top", "front"],
        [t / "o"])),
    "train missing recording": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--recording", t / "norec"], ["norec"], [t / "o"])),
    "train missing teacher": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--teacher", t / "noteacher", "--no-progress"],
        ["noteacher"], [t / "o" / "encoder.safetensors"])),
    # ---- world record / info
    "record over an existing recording": Case(lambda w, t: (
        ["world", "record", w.recording, "--episodes", 2, "--episode-len", 8, "--size", 16], [str(w.recording), "overwrite"],
        []), keep=lambda w: [w.recording / "recording.json", w.recording / "states.npz"]),
    "record odd size": Case(lambda w, t: (
        ["world", "record", t / "r", "--size", 15, "--episodes", 2, "--episode-len", 8], ["size", "15"], [t / "r"])),
    "record unknown view": Case(lambda w, t: (
        ["world", "record", t / "r", "--view", "bogus", "--episodes", 2, "--episode-len", 8], ["bogus"], [t / "r"])),
    "record a 2d view into the 3d world": Case(lambda w, t: (
        ["world", "record", t / "r", "--world", "3d", "--view", "top", "--episodes", 1, "--episode-len", 2],
        ["['top']", "2d world", "--world 2d"], [t / "r"])),
    "record views of two worlds": Case(lambda w, t: (
        ["world", "record", t / "r", "--view", "front", "--view", "top", "--episodes", 1, "--episode-len", 2],
        ["['top']", "one world at a time"], [t / "r"])),
    "record an unknown world": Case(lambda w, t: (
        ["world", "record", t / "r", "--world", "4d", "--episodes", 1, "--episode-len", 2], ["4d", "--world"],
        [t / "r"])),
    "record the 3d world as a bag": Case(lambda w, t: (
        ["world", "record", t / "r.mcap", "--format", "mcap", "--world", "3d", "--episodes", 1, "--episode-len", 2],
        ["--world 3d", "--format folder"], [t / "r.mcap"])),
    "info missing folder": Case(lambda w, t: (["world", "info", t / "nofolder"], ["nofolder", "does not exist"], [])),
    "info corrupt recording.json": Case(lambda w, t: (
        ["world", "info", _corrupt_recording(w, t, "recording.json")], ["recording.json", "not valid JSON"], [])),
    "info truncated video": Case(lambda w, t: (
        ["world", "info", _corrupt_recording(w, t, "oblique.avi")], ["oblique.avi"], [])),
    "info corrupt states.npz": Case(lambda w, t: (
        ["world", "info", _corrupt_recording(w, t, "states.npz")], ["states.npz"], [])),
    # ---- calib
    "calib missing run dir": Case(lambda w, t: (
        ["calib", "--from", t / "norun", "--to", w.run_a, "--out", t / "W.postcard.safetensors", *MOMENTS],
        ["norun", "jepa-edge train"], [t / "W.postcard.safetensors"])),
    "calib corrupt meta.json": Case(lambda w, t: (
        ["calib", "--from", _broken_run(w, t, "meta.json"), "--to", w.run_a,
         "--out", t / "W.postcard.safetensors", *MOMENTS], ["meta.json", "not valid JSON"],
        [t / "W.postcard.safetensors"])),
    "calib truncated checkpoint": Case(lambda w, t: (
        ["calib", "--from", _broken_run(w, t, "encoder.safetensors"), "--to", w.run_a,
         "--out", t / "W.postcard.safetensors", *MOMENTS], ["encoder.safetensors"],
        [t / "W.postcard.safetensors"])),
    "calib NaN weights": Case(lambda w, t: (
        ["calib", "--from", _nan_run(w, t), "--to", w.run_a, "--out", t / "W.postcard.safetensors", *MOMENTS],
        ["encoder.safetensors", "NaN"], [t / "W.postcard.safetensors"])),
    "calib too many anchors": Case(lambda w, t: (
        ["calib", "--from", w.run_b, "--to", w.run_a, "--out", t / "W.postcard.safetensors", "--anchors",
         100000, *MOMENTS], ["100000 anchors", "--anchors"], [t / "W.postcard.safetensors"])),
    "calib over an existing postcard": Case(lambda w, t: (
        ["calib", "--from", w.run_b, "--to", w.run_a, "--out", w.postcard, *MOMENTS], [str(w.postcard), "--overwrite"],
        []), keep=lambda w: [w.postcard]),
    "calib unknown estimator": Case(lambda w, t: (
        ["calib", "--from", w.run_b, "--to", w.run_a, "--out", t / "W.postcard.safetensors", "--estimator",
         "bogus", "--anchors", 40, *MOMENTS], ["bogus", "lstsq"], [t / "W.postcard.safetensors"])),
    # ---- probe
    "probe over existing probes": Case(lambda w, t: (
        ["probe", w.run_a, "--out", w.probes["position"].parent, *MOMENTS], ["agentA.position.probe", "--overwrite"],
        []), keep=lambda w: list(w.probes.values())),
    "probe unknown task": Case(lambda w, t: (
        ["probe", w.run_a, "--out", t / "p", "--task", "bogus", *MOMENTS], ["bogus", "position"], [t / "p"])),
    "probe --transfer without --probe": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", w.postcard, *MOMENTS], ["--probe"], [])),
    "probe garbage postcard": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", _garbage(t / "g.postcard.safetensors"), "--probe", w.probes["position"],
         *MOMENTS], ["g.postcard.safetensors"], [])),
    "probe truncated postcard": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", _truncate(w.postcard, t / "t.postcard.safetensors"), "--probe",
         w.probes["position"], *MOMENTS], ["t.postcard.safetensors", "truncated"], [])),
    "probe postcard of another agent": Case(lambda w, t: (
        ["probe", w.run_a, "--transfer", w.postcard, "--probe", w.probes["position"], *MOMENTS],
        ["W_BA.postcard.safetensors", "fingerprint"], [])),
    "probe truncated probe file": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", w.postcard, "--probe",
         _truncate(w.probes["position"], t / "x.probe.safetensors"), *MOMENTS], ["x.probe.safetensors"], [])),
    "probe missing probe file": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", w.postcard, "--probe", t / "none.probe.safetensors", *MOMENTS],
        ["none.probe.safetensors", "no such"], [])),
    "probe file is a symlink": Case(lambda w, t: (
        ["probe", w.run_b, "--transfer", w.postcard, "--probe", _symlink(w.probes["position"], t / "l.probe.safetensors"),
         *MOMENTS], ["l.probe.safetensors", "symbolic link"], [])),
    # ---- export
    "export over an existing model": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--out", w.onnx], [str(w.onnx), "--overwrite"], []),
        keep=lambda w: [w.onnx]),
    "export --format not onnx|engine": Case(lambda w, t: (
        ["export", w.run_b, "--format", "tflite", "--out", t / "m.onnx"], ["tflite", "onnx or engine"], [t / "m.onnx"])),
    "export missing run dir": Case(lambda w, t: (
        ["export", t / "norun", "--postcard", w.postcard, "--out", t / "m.onnx"], ["norun"], [t / "m.onnx"])),
    "export truncated checkpoint": Case(lambda w, t: (
        ["export", _broken_run(w, t, "encoder.safetensors"), "--postcard", w.postcard, "--out", t / "m.onnx"],
        ["encoder.safetensors"], [t / "m.onnx"])),
    "export NaN weights": Case(lambda w, t: (
        ["export", _nan_run(w, t), "--postcard", w.postcard, "--out", t / "m.onnx"], ["NaN"], [t / "m.onnx"])),
    "export garbage postcard": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", _garbage(t / "g.postcard.safetensors"), "--out", t / "m.onnx"],
        ["g.postcard.safetensors"], [t / "m.onnx"])),
    "export postcard with wrong dims": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", _postcard_with(w, t, lambda a: a.update(W=a["W"][:3, :3]), "dims"),
         "--out", t / "m.onnx"], ["dims.postcard.safetensors", "shape"], [t / "m.onnx"])),
    "export postcard with NaN": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", _postcard_with(w, t, lambda a: a["bias"].fill(np.nan), "nan"),
         "--out", t / "m.onnx"], ["nan.postcard.safetensors", "NaN"], [t / "m.onnx"])),
    "export postcard of another agent": Case(lambda w, t: (
        ["export", w.run_a, "--postcard", w.postcard, "--out", t / "m.onnx"], ["fingerprint"], [t / "m.onnx"])),
    "export unknown mode": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--mode", "bogus", "--out", t / "m.onnx"], ["bogus"],
        [t / "m.onnx"])),
    "export over an existing model, bad probe": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--probe", _garbage(t / "g.probe.safetensors"), "--out", w.onnx,
         "--overwrite"],
        ["g.probe.safetensors"], []), keep=lambda w: [w.onnx]),
    "export --trt without TensorRT": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--out", t / "m.onnx", "--trt"], ["TensorRT", "jepa-edge[trt]"],
        [t / "m.onnx"])),
    # ---- run
    "run model.engine default backend": Case(lambda w, t: (
        ["run", _engine(w, t), "--frames", 1, "--jsonl", t / "o.jsonl"], ["TensorRT", "jepa-edge[trt]"],
        [t / "o.jsonl"])),
    "run missing model": Case(lambda w, t: (
        ["run", t / "none.onnx", "--jsonl", t / "o.jsonl"], ["none.onnx", "jepa-edge export"], [t / "o.jsonl"])),
    "run garbage ONNX": Case(lambda w, t: (
        ["run", _garbage(t / "g.onnx"), "--jsonl", t / "o.jsonl"], ["g.onnx"], [t / "o.jsonl"])),
    "run truncated ONNX": Case(lambda w, t: (
        ["run", _truncate(w.onnx, t / "t.onnx"), "--jsonl", t / "o.jsonl"], ["t.onnx"], [t / "o.jsonl"])),
    "run ONNX H×W disagrees with metadata": Case(lambda w, t: (
        ["run", _wrong_hw_onnx(w, t), "--source", "sim:oblique?size=16", "--frames", 1, "--jsonl", t / "o.jsonl"],
        ["wrong_hw.onnx", "re-export"], [t / "o.jsonl"])),
    "run missing source file": Case(lambda w, t: (
        ["run", w.onnx, "--source", t / "none.mp4", "--jsonl", t / "o.jsonl"], ["none.mp4", "no such"],
        [t / "o.jsonl"])),
    "run unreadable source (not a video)": Case(lambda w, t: (
        ["run", w.onnx, "--source", _garbage(t / "g.mp4"), "--jsonl", t / "o.jsonl"], ["g.mp4", "ffprobe"],
        [t / "o.jsonl"])),
    "run unknown sim view": Case(lambda w, t: (
        ["run", w.onnx, "--source", "sim:nope", "--jsonl", t / "o.jsonl"], ["nope"], [t / "o.jsonl"])),
    "run a 3d view as sim:": Case(lambda w, t: (
        ["run", w.onnx, "--source", "sim:front?size=16", "--jsonl", t / "o.jsonl"], ["sim3d:front?size=16"],
        [t / "o.jsonl"])),
    "run a 2d view as sim3d:": Case(lambda w, t: (
        ["run", w.onnx, "--source", "sim3d:top", "--jsonl", t / "o.jsonl"], ["use sim:top"], [t / "o.jsonl"])),
    "bench bad sim3d setting": Case(lambda w, t: (
        ["bench", w.onnx, "--source", "sim3d:front?size=abc", "--backend", "ort-cpu", "--out", t / "b.json"],
        ["size=abc", "sim3d:front?size=64"], [t / "b.json"])),
    "run bad sim setting": Case(lambda w, t: (
        ["run", w.onnx, "--source", "sim:top?size=abc", "--jsonl", t / "o.jsonl"], ["size=abc"], [t / "o.jsonl"])),
    "run --jsonl over an existing file": Case(lambda w, t: (
        ["run", w.onnx, "--jsonl", _json(t / "o.jsonl", {"kept": 1})], ["o.jsonl", "--overwrite"], [])),
    "run unknown head mode": Case(lambda w, t: (
        ["run", w.onnx, "--head-mode", "graph", "--jsonl", t / "o.jsonl"], ["graph", "model"], [t / "o.jsonl"])),
    "run truncated postcard": Case(lambda w, t: (
        ["run", w.onnx, "--postcard", _truncate(w.postcard, t / "t.postcard.safetensors"), "--jsonl", t / "o.jsonl"],
        ["t.postcard.safetensors"], [t / "o.jsonl"])),
    "run missing watch folder": Case(lambda w, t: (
        ["run", w.onnx, "--watch", t / "inbox", "--jsonl", t / "o.jsonl"], ["inbox"], [t / "o.jsonl"])),
    "run bad video suffix": Case(lambda w, t: (
        ["run", w.onnx, "--video-out", t / "v.gif", "--jsonl", t / "o.jsonl"], ["v.gif", ".avi"],
        [t / "o.jsonl", t / "v.gif"])),
    "run --record not .mcap": Case(lambda w, t: (
        ["run", w.onnx, "--record", t / "run.txt", "--jsonl", t / "o.jsonl"], ["run.txt", ".mcap"],
        [t / "o.jsonl", t / "run.txt"])),
    "run --record in a missing folder": Case(lambda w, t: (
        ["run", w.onnx, "--record", t / "nope" / "run.mcap", "--jsonl", t / "o.jsonl"], ["nope"],
        [t / "o.jsonl", t / "nope"])),
    "run --serve on a public address": Case(lambda w, t: (
        ["run", w.onnx, "--serve", "0.0.0.0:8080", "--jsonl", t / "o.jsonl"], ["0.0.0.0", "loopback"],
        [t / "o.jsonl"])),
    "run --serve not HOST:PORT": Case(lambda w, t: (
        ["run", w.onnx, "--serve", "localhost:http", "--jsonl", t / "o.jsonl"], ["--serve", "HOST:PORT"],
        [t / "o.jsonl"])),
    "run unknown backend": Case(lambda w, t: (
        ["run", w.onnx, "--backend", "onnx", "--jsonl", t / "o.jsonl"], ["onnx", "ort-cpu"], [t / "o.jsonl"])),
    # ---- bench
    "bench model.engine without --backend": Case(lambda w, t: (
        ["bench", _engine(w, t), "--out", t / "b.json"], ["TensorRT", "jepa-edge[trt]"], [t / "b.json"])),
    "bench model.engine on ort-cpu": Case(lambda w, t: (
        ["bench", _engine(w, t), "--backend", "ort-cpu", "--out", t / "b.json"], ["model.engine", "tensorrt"],
        [t / "b.json"])),
    "bench garbage ONNX": Case(lambda w, t: (
        ["bench", _garbage(t / "g.onnx"), "--backend", "ort-cpu", "--out", t / "b.json"],
        ["nothing could be benchmarked", "g.onnx"], [t / "b.json"])),
    "bench unknown head mode": Case(lambda w, t: (
        ["bench", w.onnx, "--head-mode", "bogus", "--out", t / "b.json"], ["bogus"], [t / "b.json"])),
    "bench missing source": Case(lambda w, t: (
        ["bench", w.onnx, "--backend", "ort-cpu", "--source", t / "none.avi", "--out", t / "b.json"], ["none.avi"],
        [t / "b.json"])),
    "bench batch size far too large": Case(lambda w, t: (
        ["bench", w.onnx, "--batch-size", 100000, "--out", t / "b.json"], ["--batch-size 100000", "1024"],
        [t / "b.json"])),
    "bench --out in /proc": Case(lambda w, t: (
        ["bench", w.onnx, "--backend", "ort-cpu", "--out", "/proc/b.json"], ["/proc", "cannot write"], [])),
    "bench --out over an existing report": Case(lambda w, t: (
        ["bench", w.onnx, "--backend", "ort-cpu", "--out", _json(t / "b.json", {"kept": 1})],
        ["b.json", "--overwrite"], [])),
    # ---- reproduce
    "reproduce config is a JSON list": Case(lambda w, t: (
        ["reproduce", "--out", t / "demo", "--config", _json(t / "c.json", [])], ["c.json", "JSON object"],
        [t / "demo"])),
    "reproduce --student config wrong type": Case(lambda w, t: (
        ["reproduce", "--student", "--out", t / "demo", "--config", _json(t / "c.json", {"train": {"lr": "fast"}})],
        ["c.json", "train.lr must be float"], [t / "demo"])),
    # ---- fleet / calib-graph (no network is opened: each fails before the Zenoh session)
    "fleet missing model": Case(lambda w, t: (
        ["fleet", "run", t / "none.onnx", "--fleet", "x", "--jsonl", t / "f.jsonl", "--frames", 1],
        ["none.onnx", "jepa-edge export"], [t / "f.jsonl"])),
    "fleet config unknown key": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--config", _json(t / "f.json", {"fleets": "x"}), "--jsonl", t / "f.jsonl"],
        ["fleets"], [t / "f.jsonl"])),
    "fleet config is a JSON list": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--config", _json(t / "f.json", []), "--jsonl", t / "f.jsonl"],
        ["f.json", "JSON object"], [t / "f.jsonl"])),
    "fleet run missing key file": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--key", t / "none.key", "--jsonl", t / "f.jsonl"],
        ["none.key", "fleet keygen"], [t / "f.jsonl"])),
    "fleet run trusted keys without a key": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--trusted-keys", _json(t / "trust.json", {}), "--jsonl", t / "f.jsonl"],
        ["requires signed messages", "--key"], [t / "f.jsonl"])),
    "fleet run key readable by others": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--key", _key(t, 0o644), "--jsonl", t / "f.jsonl"],
        ["readable by others", "chmod 600"], [t / "f.jsonl"])),
    "fleet run trusted keys not JSON": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--key", _key(t, 0o600), "--trusted-keys", _garbage(t / "trust.json"),
         "--jsonl", t / "f.jsonl"], ["trust.json", "not JSON"], [t / "f.jsonl"])),
    "fleet run zenoh config missing": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--zenoh-config", t / "none.json5", "--jsonl", t / "f.jsonl"],
        ["none.json5"], [t / "f.jsonl"])),
    "fleet keygen bad agent name": Case(lambda w, t: (
        ["fleet", "keygen", "agent A", "--out", t / "a.key"], ["agent A", "[A-Za-z0-9_-]"], [t / "a.key"])),
    "fleet keygen unknown kind": Case(lambda w, t: (
        ["fleet", "keygen", "agentA", "--out", t / "a.key", "--kind", "video"], ["video", "card"], [t / "a.key"])),
    "calib-graph missing model": Case(lambda w, t: (
        ["calib-graph", t / "none.onnx", w.onnx, "--out", t / "g"], ["none.onnx"], [t / "g"])),
    # ---- out-of-range numbers, wrong output names, same agent twice, unreachable peers, unwritable paths
    "record size far too large": Case(lambda w, t: (
        ["world", "record", t / "a" / "r", "--size", 100000, "--episodes", 2, "--episode-len", 8],
        ["size 100000", "--size 1024"], [t / "a"])),
    "record size too small": Case(lambda w, t: (
        ["world", "record", t / "r", "--size", 4, "--episodes", 2, "--episode-len", 8], ["size 4", "--size 8"], [t / "r"])),
    "record negative fps": Case(lambda w, t: (
        ["world", "record", t / "a" / "r", "--fps", -1, "--episodes", 2, "--episode-len", 8, "--size", 16],
        ["fps -1", "--fps"], [t / "a"])),
    "record zero episodes": Case(lambda w, t: (
        ["world", "record", t / "r", "--episodes", 0, "--episode-len", 8, "--size", 16], ["episodes", ">= 1"], [t / "r"])),
    "record bag with zero steps": Case(lambda w, t: (
        ["world", "record", t / "r.mcap", "--format", "mcap", "--episodes", 2, "--episode-len", 0, "--size", 16],
        ["steps", ">= 1"], [t / "r.mcap"])),
    "record over the memory limit": Case(lambda w, t: (
        ["world", "record", t / "r", "--size", 1024, "--episodes", 1000], ["GiB", "fewer episodes"], [t / "r"])),
    "run too many ONNX Runtime threads": Case(lambda w, t: (
        ["run", w.onnx, "--threads", 100000, "--backend", "ort-cpu", "--jsonl", t / "o.jsonl"],
        ["100000", "--threads", "logical CPUs"], [t / "o.jsonl"])),
    "calib source and target the same folder": Case(lambda w, t: (
        ["calib", "--from", w.run_a, "--to", w.run_a, "--out", t / "W.postcard.safetensors", *MOMENTS],
        ["same run folder", "identity", "two different agents"], [t / "W.postcard.safetensors"])),
    "calib source and target the same agent": Case(lambda w, t: (
        ["calib", "--from", _copy_run(w.run_a, t / "copyA"), "--to", w.run_a,
         "--out", t / "W.postcard.safetensors", *MOMENTS], ["same agent", "identity", "two different agents"],
        [t / "W.postcard.safetensors"])),
    "calib --out not a postcard name": Case(lambda w, t: (
        ["calib", "--from", w.run_b, "--to", w.run_a, "--out", t / "W_BA.json", *MOMENTS],
        ["W_BA.json", ".postcard.safetensors", "--out"], [t / "W_BA.json"])),
    "export --out not .onnx": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--out", t / "model.txt"], ["model.txt", ".onnx", "--out"],
        [t / "model.txt", t / "model.onnx"])),
    "train config NaN lr": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"train": {"lr": float("nan")}})],
        ["c.json", "train.lr", "finite"], [t / "o"])),
    "train config infinite weight decay": Case(lambda w, t: (
        ["train", t / "o", "--config", _json(t / "c.json", {"train": {"weight_decay": float("inf")}})],
        ["c.json", "train.weight_decay", "finite"], [t / "o"])),
    "train --lr nan": Case(lambda w, t: (
        ["train", t / "o", "--config", w.config, "--lr", "nan", "--no-progress"], ["train.lr", "finite"],
        [t / "o"])),
    "fleet --follow a peer that never appears": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--source", "sim:oblique?size=16", "--backend", "ort-cpu", "--frames", 2,
         "--fleet", "lonely", "--follow", "agentZ", *_signed(t, "agentB")],
        ["never saw agent 'agentZ'", "fleet 'lonely'", "--follow", "--fleet"], [])),
    "fleet --listen not an endpoint": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--listen", "nonsense", "--jsonl", t / "f.jsonl"], ["--listen", "nonsense", "HOST:PORT"],
        [t / "f.jsonl"])),
    "fleet --listen with a bad address and port": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--listen", "tcp/999.1.1.1:99999", "--jsonl", t / "f.jsonl"],
        ["tcp/999.1.1.1:99999", "port", "HOST:PORT"], [t / "f.jsonl"])),
    "fleet --connect without a port": Case(lambda w, t: (
        ["fleet", "run", w.onnx, "--connect", "tcp/nonsense", "--jsonl", t / "f.jsonl"],
        ["--connect", "tcp/nonsense", "HOST:PORT"], [t / "f.jsonl"])),
    "keygen --out in /proc": Case(lambda w, t: (
        ["fleet", "keygen", "agentA", "--out", "/proc/agentA.key"], ["cannot write /proc/agentA.key", "check the path"],
        [])),
    "export --out in /proc": Case(lambda w, t: (
        ["export", w.run_b, "--postcard", w.postcard, "--out", "/proc/agentB.onnx"],
        ["cannot write /proc/agentB.onnx", "check the path"], [])),
    "run --record in /proc": Case(lambda w, t: (
        ["run", w.onnx, "--source", "sim:oblique?size=16", "--frames", 2, "--backend", "ort-cpu",
         "--jsonl", t / "o.jsonl", "--record", "/proc/run.mcap"], ["cannot write /proc/run.mcap", "check the path"],
        [])),
    "record a bag in /proc": Case(lambda w, t: (
        ["world", "record", "/proc/rec.mcap", "--format", "mcap", "--episodes", 2, "--episode-len", 8, "--size", 16],
        ["cannot write /proc/rec.mcap", "check the path"], [])),
    "keygen --out over a folder": Case(lambda w, t: (
        ["fleet", "keygen", "agentA", "--out", _folder(t / "adir"), "--overwrite"],
        [f"cannot write {t / 'adir'}: Is a directory"], [])),
}


def _corrupt_recording(w: World, tmp: Path, name: str) -> Path:
    rec = tmp / "rec"
    rec.mkdir()
    for f in w.recording.iterdir():
        (rec / f.name).write_bytes(f.read_bytes())
    if name == "recording.json":
        (rec / name).write_text('{"format": ')
    else:
        _truncate(w.recording / name, rec / name, 0.3)
    return rec


def _broken_run(w: World, tmp: Path, name: str) -> Path:
    run = _copy_run(w.run_b, tmp / "broken_run")
    _truncate(w.run_b / name, run / name, 0.5)
    return run


def _signed(tmp: Path, agent: str) -> list:
    """--key and --trusted-keys for ``agent`` (a fleet that signs and checks every message logs no warning)."""
    from jepa_edge.fleet.keys import Signer, add_trusted, write_private_key

    signer = Signer.generate()
    write_private_key(tmp / f"{agent}.key", signer)
    add_trusted(tmp / "trust.json", agent, signer)
    return ["--key", tmp / f"{agent}.key", "--trusted-keys", tmp / "trust.json"]


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _symlink(target: Path, link: Path) -> Path:
    link.symlink_to(target)
    return link


def _snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(world, tmp_path, name, request):
    case = CASES[name]
    if case.xfail:
        request.applymarker(pytest.mark.xfail(reason=case.xfail, strict=False))
    argv, needles, absent = case.build(world, tmp_path)
    kept = _snapshot(case.keep(world))
    line = error_line(cli(*argv))
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    for path in absent:
        assert not path.exists(), f"{path} was written"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    assert _snapshot(list(kept)) == kept, "existing state changed"


def test_engine_sidecar_problems_are_one_line(world, tmp_path, monkeypatch):
    """With the fake TensorRT (tests/fake_trt.py): missing / corrupt sidecar, tampered engine, stale ONNX."""
    from fake_trt import install_fakes

    from jepa_edge.export import TrtBuildConfig, build_engine

    install_fakes(monkeypatch)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(world.onnx.read_bytes())
    built = build_engine(onnx_path, None, TrtBuildConfig(precision="fp32", max_batch=2))
    engine, side = built.engine_path, built.sidecar_path
    good_side, good_engine = side.read_bytes(), engine.read_bytes()

    side.unlink()
    assert "sidecar model.engine.json is missing" in error_line(cli("run", engine))
    side.write_text('{"onnx": ')
    assert "model.engine.json" in error_line(cli("run", engine))
    side.write_bytes(good_side)
    engine.write_bytes(good_engine[:-1] + bytes([good_engine[-1] ^ 1]))  # one flipped bit
    assert "sha256" in error_line(cli("run", engine))
    engine.write_bytes(good_engine)
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")  # the ONNX changed after the build
    assert "stale" in error_line(cli("bench", engine, "--out", tmp_path / "b.json"))
    assert not (tmp_path / "b.json").exists()


def test_live_source_lost_mid_run_still_prints_the_summary(world, tmp_path, monkeypatch):
    import functools

    from fake_sources import LostCamera

    from jepa_edge import runtime
    from jepa_edge.runtime import CaptureConfig

    def open_flaky(spec, **kw):
        src = LostCamera(frames=3)
        src.open()
        return src

    monkeypatch.setattr(runtime, "open_source", open_flaky)
    monkeypatch.setattr(runtime, "CaptureConfig", functools.partial(
        CaptureConfig, policy="all", max_retries=2, reconnect_initial_s=0.01, reconnect_max_s=0.02))
    out = tmp_path / "frames.jsonl"
    res = cli("run", world.onnx, "--source", "0", "--jsonl", out)
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "cam0" in lines[-1] and "reopen" in lines[-1]
    summary = json.loads("\n".join(lines[:-1]))
    assert summary["reason"] == "source_lost" and summary["frames"] == 3
    assert len(out.read_text().splitlines()) == 3  # the frames processed before the loss are kept


def test_a_missing_camera_prints_no_opencv_warnings(world, tmp_path):
    """OpenCV's own `[ WARN ]` lines must not leak: only our one line (a real process: OpenCV writes to fd 2)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))  # prepended, not replaced
    proc = subprocess.run([sys.executable, "-m", "jepa_edge.cli", "run", str(world.onnx), "--source", "63"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open camera source '63'"), proc.stderr


# ---------------------------------------------------------------- inspect, encoder-only export, --json


@pytest.mark.parametrize("what", ["postcard", "probe", "run", "onnx", "recording"])
def test_inspect_describes_each_kind_of_file(world, what):
    path = {"postcard": world.postcard, "probe": world.probes["danger"], "run": world.run_a, "onnx": world.onnx,
            "recording": world.recording}[what]
    res = cli("inspect", path, "--json")
    assert_ok(res)
    info = json.loads(res.stdout)
    assert info["kind"] == what and info["path"] == str(path)
    if what == "postcard":
        assert info["from"]["name"] == "agentB" and info["to"]["name"] == "agentA" and info["W_shape"] == [16, 16]
    elif what == "probe":
        assert info["task"] == "classification" and info["outputs"] == ["safe", "danger"]
    elif what == "run":
        assert info["name"] == "agentA" and info["step"] == 4 and "position_r2" in info["heldout"]
    elif what == "onnx":
        assert info["mode"] == "fused" and info["agent"]["name"] == "agentB"
        assert [o["name"] for o in info["outputs"]] == ["z_mapped", "position"]
        assert info["outputs"][1]["columns"] == [f"obj{i}.{a}" for i in range(3) for a in "xy"]
    else:
        assert info["episodes"] == 3 and info["episode_len"] == 12 and info["states"]
    text = cli("inspect", path)
    assert_ok(text)
    assert text.stdout.startswith(f"{path}: ")


def test_inspect_refuses_what_it_does_not_know(world, tmp_path):
    line = error_line(cli("inspect", _json(tmp_path / "x.json", {})))
    assert "x.json" in line and "run folder" in line
    assert "no such" in error_line(cli("inspect", tmp_path / "none.onnx"))


def test_export_without_a_head_writes_the_encoder_only_model_and_run_says_how_to_see_z(world, tmp_path):
    out = tmp_path / "enc.onnx"
    res = cli("export", world.run_b, "--out", out)
    assert_ok(res)
    assert "encoder only" in res.stdout and "--emit-latent" in res.stdout
    assert json.loads(cli("inspect", out, "--json").stdout)["mode"] == "encoder-only"
    run = cli("run", out, "--source", "sim:oblique?size=16", "--frames", 1, "--jsonl", tmp_path / "f.jsonl")
    assert_ok(run)
    assert "hint:" in run.stderr and "--emit-latent" in run.stderr
    run = cli("run", out, "--source", "sim:oblique?size=16", "--frames", 1, "--jsonl", tmp_path / "g.jsonl",
              "--emit-latent")
    assert_ok(run)
    assert "hint:" not in run.stderr
    assert len(json.loads((tmp_path / "g.jsonl").read_text())["outputs"]["z"]) == 16


def test_export_refuses_then_overwrites_with_the_flag(world, tmp_path):
    out = tmp_path / "m.onnx"
    assert_ok(cli("export", world.run_a, "--probe", world.probes["danger"], "--out", out))
    before = out.read_bytes()
    assert "--overwrite" in error_line(cli("export", world.run_a, "--out", out))
    assert out.read_bytes() == before
    assert_ok(cli("export", world.run_a, "--out", out, "--overwrite"))
    assert json.loads(cli("inspect", out, "--json").stdout)["mode"] == "encoder-only"


def test_world_info_json_and_quiet(world, tmp_path):
    info = cli("world", "info", world.recording, "--json")
    assert_ok(info)
    assert json.loads(info.stdout)["views"] == ["top", "oblique"]
    quiet = cli("-q", "world", "record", tmp_path / "r", "--episodes", 1, "--episode-len", 4, "--size", 16)
    assert_ok(quiet)
    assert quiet.stdout == "" and (tmp_path / "r" / "states.npz").is_file()
    loud = cli("world", "record", tmp_path / "r2", "--episodes", 1, "--episode-len", 4, "--size", 16)
    assert loud.stdout.startswith("wrote ")
