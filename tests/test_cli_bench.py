"""`jepa-edge bench` in-process (typer's CliRunner) on a tiny contract ONNX model.

The summary fits a 100-column terminal; skip reasons are stderr lines, never table cells; the report path,
head modes and batch sizes are checked before anything runs; --threads reaches every backend.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from onnx_fixtures import make_encoder, make_model, reference_head
from typer.testing import CliRunner

from jepa_edge.agents import eager
from jepa_edge.cli import app
from jepa_edge.runtime import bench as bench_mod
from jepa_edge.runtime.errors import BackendUnavailableError

SOURCE = "sim:top?size=16"
FAST = ("--source", SOURCE, "--frames", "2", "--warmup", "0", "--batch-size", "1")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=0)
    return make_model(tmp_path_factory.mktemp("bench_cli") / "fused.onnx", enc, "fused", reference_head(enc))


def cli(*args: object):
    return CliRunner().invoke(app, ["bench", *(str(a) for a in args)])


def one_error(result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    """ort-cuda missing, whatever this machine has."""
    real = bench_mod.load_model

    def load(path, backend, *args, **kwargs):
        if backend == "ort-cuda":
            raise BackendUnavailableError("backend 'ort-cuda' is not available on this machine (no CUDA here)")
        return real(path, backend, *args, **kwargs)

    monkeypatch.setattr(bench_mod, "load_model", load)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Any option refused up front never reaches the benchmark."""

    def ran(*args, **kwargs):
        raise AssertionError("the benchmark ran before the options were checked")

    monkeypatch.setattr(bench_mod, "benchmark", ran)


def test_summary_fits_100_columns_and_skips_are_stderr_lines(onnx_model, no_cuda, tmp_path):
    out = tmp_path / "b.json"
    res = cli(onnx_model, *FAST, "--backend", "ort-cpu", "--backend", "ort-cuda", "--out", out)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100 and "…" not in res.stdout
    header = next(line for line in lines if line.startswith("#"))
    assert header.split() == ["#", "model", "backend", "head", "batch", "e2e", "p50", "e2e", "p99", "infer", "p50",
                              "e2e", "FPS", "drops"]
    assert "skipped" not in res.stdout and "wait" not in res.stdout  # no reasons, no stage detail in the table
    assert res.stderr.strip().splitlines() == [
        "skipped ort-cuda (fused.onnx): backend 'ort-cuda' is not available on this machine (no CUDA here)"]
    assert lines[-1] == f"wrote {out}"
    report = json.loads(out.read_text())
    assert {(r["backend"], r["head_mode"], r["status"]) for r in report["results"]} == {
        ("ort-cpu", "model", "ok"), ("ort-cpu", "numpy", "ok"), ("ort-cuda", "model", "skipped"),
        ("ort-cuda", "numpy", "skipped")}
    assert "wait" in report["results"][0]["stages_ms_per_batch"]  # stage detail is always in the JSON


def test_detail_adds_the_stage_tables_and_json_replaces_the_table(onnx_model, tmp_path):
    res = cli(onnx_model, *FAST, "--backend", "ort-cpu", "--head-mode", "numpy", "--detail")
    assert res.exit_code == 0, res.output
    assert "wait" in res.stdout and "RSS Δ MB" in res.stdout and "threads" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 100 and "…" not in res.stdout
    out = tmp_path / "b.json"
    res = cli(onnx_model, *FAST, "--backend", "ort-cpu", "--head-mode", "model", "--json", "--out", out)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is the JSON alone; "wrote" goes to stderr
    assert [r["head_mode"] for r in report["results"]] == ["model"] and report["machine"]["cores"] >= 1
    assert json.loads(out.read_text()) == report and res.stderr.strip() == f"wrote {out}"


def test_nothing_ran_is_one_error_line_naming_each_reason(onnx_model, no_cuda, tmp_path):
    line = one_error(cli(onnx_model, *FAST, "--backend", "ort-cuda", "--out", tmp_path / "b.json"))
    assert "nothing could be benchmarked: skipped ort-cuda (fused.onnx): backend 'ort-cuda' is not available" in line
    assert "--backend" in line and not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(("args", "needles"), [
    (("--out", "/proc/b.json"), ["cannot write in /proc"]),
    (("--out", "{tmp}/b.txt"), ["b.txt", "*.json"]),
    (("--out", "{tmp}/missing/b.json"), ["missing", "does not exist"]),
    (("--out", "{tmp}/old.json"), ["old.json", "exists", "pass --overwrite"]),
    (("--batch-size", "100000"), ["--batch-size 100000", "cap of 1024", "use a smaller --batch-size"]),
    (("--head-mode", "fused"), ["fused", "model and/or numpy", "--head-mode"]),
    (("--threads", "-1"), ["threads", ">= 0"]),
])
def test_bad_options_are_refused_before_anything_runs(onnx_model, nothing_runs, tmp_path, args, needles):
    (tmp_path / "old.json").write_text('{"kept": true}')
    line = one_error(cli(onnx_model, "--backend", "ort-cpu", *(a.format(tmp=tmp_path) for a in args)))
    for needle in needles:
        assert needle in line, line
    assert (tmp_path / "old.json").read_text() == '{"kept": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # the write check left nothing


def test_overwrite_replaces_an_existing_report(onnx_model, tmp_path):
    out = tmp_path / "b.json"
    out.write_text("{}")
    res = cli(onnx_model, *FAST, "--backend", "ort-cpu", "--head-mode", "model", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["results"][0]["status"] == "ok"


@pytest.mark.parametrize("old", [("--batch", "1"), ("--head-mode", "unfused")])
def test_old_names_are_gone(onnx_model, nothing_runs, old):
    res = cli(onnx_model, "--backend", "ort-cpu", *old)
    assert res.exit_code == 2 and "Traceback" not in res.output


class Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) → (B, 3)
        return x.mean(dim=(2, 3))


class CountingEager(eager.EagerBackend):
    """PyTorch eager on a stand-in encoder that notes torch's thread count at every call."""

    seen: ClassVar[list[int]] = []

    def __call__(self, frames: np.ndarray) -> dict:
        self.seen.append(torch.get_num_threads())
        return super().__call__(frames)


def test_threads_reach_torch_eager_only_while_timed(onnx_model, monkeypatch, tmp_path):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    CountingEager.seen = []
    monkeypatch.setattr(eager, "eager_backend", lambda run, head=None, threads=0: CountingEager(Mean(), head, threads))
    out = tmp_path / "b.json"
    res = cli(onnx_model, *FAST, "--backend", "ort-cpu", "--head-mode", "model", "--threads", want,
              "--torch", tmp_path, "--out", out)
    assert res.exit_code == 0, res.output
    assert set(CountingEager.seen) == {want} and torch.get_num_threads() == before  # set while timed, then restored
    rows = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["torch-eager"]["threads"] == want and rows["ort-cpu"]["threads"] == want
    assert "torch-eager" in res.stdout


def test_eager_backend_refuses_negative_threads():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        eager.EagerBackend(Mean(), threads=-1)
    backend = eager.EagerBackend(Mean())
    with backend:
        out = backend(np.zeros((2, 4, 4, 3), np.uint8))
    assert out["z"].shape == (2, 3)
