"""`jepa-edge export --trt` through the CLI against the fake TensorRT (tests/fake_trt.py): renamed INT8
options, the head profile options, and the INT8 view defaulting to the agent's own view."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from fake_trt import install_fakes
from typer.testing import CliRunner

from jepa_edge.cli import app
from jepa_edge.train.checkpoint import save_agent
from jepa_edge.train.model import Encoder, EncoderConfig

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "latent_dim": 8}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("cli") / "agentB"
    save_agent(path, enc, {"name": "agentB", "view": "oblique", "encoder": asdict(enc.cfg)})
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["export", *args], env={"COLUMNS": "1000"})  # rich wraps at the width


def one_line_error(result, *needles: str) -> None:
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    for needle in needles:
        assert needle in out, out


@pytest.mark.parametrize("old", ["--calib-source", "--calib-view", "--calib-frames"])
def test_old_int8_option_names_are_gone(run_dir, tmp_path, old):
    result = invoke(str(run_dir), "--out", str(tmp_path / "m.onnx"), old, "1")
    assert result.exit_code == 2 and "No such option" in result.output and not (tmp_path / "m.onnx").exists()


def test_max_head_below_72_builds_with_the_opt_head_derived(monkeypatch, run_dir, tmp_path):
    install_fakes(monkeypatch)
    out = tmp_path / "m.onnx"
    result = invoke(str(run_dir), "--out", str(out), "--mode", "head-inputs", "--trt", "--precision", "fp32",
                    "--max-head", "32")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["profile"]["head_bias"] == {"min": [1], "opt": [32], "max": [32]}
    assert side["precision"] == "fp32" and side["tf32"] is False


def test_opt_head_above_max_head_fails_before_the_export(monkeypatch, run_dir, tmp_path):
    install_fakes(monkeypatch)
    result = invoke(str(run_dir), "--out", str(tmp_path / "m.onnx"), "--mode", "head-inputs", "--trt",
                    "--opt-head", "64", "--max-head", "32")
    one_line_error(result, "1/64/32", "--opt-head at most --max-head")
    assert list(tmp_path.iterdir()) == []


def test_int8_frames_default_to_the_agents_own_view(monkeypatch, run_dir, tmp_path):
    install_fakes(monkeypatch)
    result = invoke(str(run_dir), "--out", str(tmp_path / "m.onnx"), "--mode", "encoder-only", "--trt",
                    "--precision", "int8", "--int8-frames", "32")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["int8"]["source"] == "sim" and side["int8"]["view"] == "oblique"  # agent B's view, not "top"
    assert side["int8"]["n_frames"] == 32
