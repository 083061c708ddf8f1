"""benchmark(): every configuration measured on a real video file, skipped backends say why."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx_fixtures import make_encoder, make_model, reference_head
from rich.console import Console

from jepa_edge.runtime import BenchConfig, bench_table, benchmark
from jepa_edge.runtime.bench import MAX_BATCH, bench_detail, bench_notes, check_report_path
from jepa_edge.world import WorldConfig, render, simulate, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    enc = make_encoder(height=16, width=16, latent_dim=8, seed=0)
    head = reference_head(enc)
    video = d / "sim.avi"
    frames = render(simulate(WorldConfig(), 1, 10, 0), "top", 32, 0)[0]
    write_video(video, frames, fps=30.0)
    return {"enc": enc, "head": head, "video": str(video),
            "fused": make_model(d / "fused.onnx", enc, "fused", head),
            "head_inputs": make_model(d / "hi.onnx", enc, "head_inputs")}


def test_benchmark_compares_models_modes_batches_and_extra_backends(setup):
    enc = setup["enc"]
    calls = []

    def numpy_reference(frames: np.ndarray) -> dict:  # stands in for a PyTorch-eager callable
        calls.append(frames.shape)
        return {"z": enc.z(frames)}

    cfg = BenchConfig(warmup=1, n_frames=12, batch_sizes=(1, 4), backends=("ort-cpu", "ort-cuda"))
    report = benchmark([setup["fused"], setup["head_inputs"]], setup["video"], cfg,
                       extra_backends={"numpy-ref": numpy_reference})
    ok = [r for r in report["results"] if r["status"] == "ok"]
    skipped = [r for r in report["results"] if r["status"] == "skipped"]
    # 2 models x 2 head modes x 2 batch sizes on the CPU, + the extra backend at 2 batch sizes
    assert len([r for r in ok if r["backend"] == "ort-cpu"]) == 2 * 2 * 2
    assert len([r for r in ok if r["backend"] == "numpy-ref"]) == 2
    assert {(r["head_mode"], r["graph"]) for r in ok} >= {("model", "fused"), ("model", "head_inputs"),
                                                          ("numpy", "encoder-only"), ("callable", "callable")}
    # ort-cuda, whether or not this machine has it: each (model, mode) is measured at both batch sizes or
    # skipped once with its reason; a missing CUDA provider names the extra that installs it
    cuda = [r for r in report["results"] if r["backend"] == "ort-cuda"]
    for model in (setup["fused"], setup["head_inputs"]):
        for mode in ("model", "numpy"):
            runs = [r for r in cuda if r["model"] == str(model) and r["head_mode"] == mode]
            assert [r["status"] for r in runs] in (["skipped"], ["ok", "ok"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert len(skipped) == 4 and all("jepa-edge[gpu]" in r["reason"] for r in skipped)
    for r in ok:
        assert r["frames"] == 12 and r["fps"] > 0 and r["dropped"] == 0  # the file loops: 10 frames, 12 timed
        device = set(r["device_stages"])  # what the backend measured (none for ONNX Runtime on the CPU today)
        assert device <= {"enqueue", "h2d", "compute", "d2h"}
        assert set(r["stages_ms_per_batch"]) == {"wait", "read", "preprocess", "infer", "head"} | device
        e, age = r["e2e_ms"], r["capture_age_ms"]
        assert e["n"] == 12 and e["p50_ms"] <= e["p90_ms"] <= e["p99_ms"] <= e["max_ms"]
        assert age["n"] == 12 and 0 <= age["p50_ms"] <= e["max_ms"]  # inline reads: the frame waits nowhere
        assert r["drift"]["ratio"] > 0 and "rss_start_kb" in r
        assert r["rss_trace"][-1][0] == 12 and r["samples_kb"] >= 0  # frames done at the last RSS reading
        assert all(a[0] < b[0] for a, b in zip(r["rss_trace"], r["rss_trace"][1:]))
    assert calls[0] == (1, 16, 16, 3) and (4, 16, 16, 3) in calls  # timed at the first model's input size
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["gpu"] is not None
    assert machine["onnxruntime"]["version"] == ort.__version__
    assert machine["onnxruntime"]["providers"] == ort.get_available_providers()
    cpu = next(r for r in ok if r["backend"] == "ort-cpu")
    assert cpu["precision"] == "fp32" and "provider_options" in cpu
    assert all(r["threads"] == 0 for r in ok if r["backend"] == "ort-cpu")  # 0 = ONNX Runtime's default
    json.dumps(report)
    text = _render(bench_table(report), *bench_detail(report))
    assert "numpy-ref" in text and "fused.onnx" in text and "hi.onnx" in text
    assert "skipped" not in text and "error" not in text  # reasons are lines of their own, never table cells
    notes = bench_notes(report)
    assert len(notes) == (1 if skipped else 0)  # one reason for ort-cuda, whatever model and head mode
    if skipped:
        assert notes[0].startswith("skipped ort-cuda (fused.onnx, hi.onnx): ") and "jepa-edge[gpu]" in notes[0]


def _render(*tables, width: int = 100) -> str:
    """The tables as printed on a ``width``-column terminal; asserts every line fits and no cell was cut."""
    console = Console(record=True, width=width)
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    return text


def test_tables_fit_100_columns_with_long_names_and_every_device_stage():
    """Long model names fold onto more lines, never cut; the widest detail table (4 device stages) fits too."""
    stages = {k: {"p50_ms": 1234.5678} for k in ("wait", "read", "preprocess", "infer", "enqueue", "h2d",
                                                  "compute", "d2h", "head")}
    e2e = {k: 98765.4321 for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
    row = {"model": "/models/a_rather_long_exported_model_name_fused_vit_small_patch16.onnx", "backend": "ort-cuda",
           "head_mode": "callable", "batch": 1024, "status": "ok", "stages_ms_per_batch": stages, "e2e_ms": e2e,
           "device_stages": ["enqueue", "h2d", "compute", "d2h"], "capture_age_ms": {"p50_ms": 12.5},
           "fps": 123456.7, "dropped": 123456, "threads": 16, "drift": {"ratio": 1.05}, "rss_start_kb": 1000,
           "rss_end_kb": 2_000_000, "samples_kb": 10, "cuda_graph": "on: one CUDA graph per static batch size"}
    skipped = {"model": "x.onnx", "backend": "tensorrt", "head_mode": "model", "status": "skipped",
               "reason": "TensorRT is not installed; pip install 'jepa-edge[trt]'"}
    report = {"source": "sim:top?size=224", "results": [row, {**row, "backend": "ort-cpu", "cuda_graph": None},
                                                       skipped]}
    text = _render(bench_table(report), *bench_detail(report))
    header = next(line for line in text.splitlines() if line.startswith("#"))  # the summary's column names
    for col in ("model", "backend", "head", "batch", "e2e p50", "e2e p99", "infer p50", "e2e FPS", "drops"):
        assert col in header, col
    assert "ort-cuda*" in text and "CUDA graph" in text and "123456.7" in text and "98765" in text
    assert all(col in text for col in ("enqueue", "H2D", "compute", "D2H", "RSS Δ MB", "threads"))
    assert "tensorrt" not in text and bench_notes(report) == [
        "skipped tensorrt (x.onnx): TensorRT is not installed; pip install 'jepa-edge[trt]'"]


def test_benchmark_with_given_head_and_bad_config(setup):
    report = benchmark(setup["head_inputs"], "sim:top?size=16", BenchConfig(warmup=0, n_frames=3, batch_sizes=(2,),
                       backends=("ort-cpu",), head_modes=("model",)), head=setup["head"])
    (r,) = report["results"]
    assert r["status"] == "ok" and r["head_width"] == setup["head"].width and r["frames"] == 4  # whole batches
    for bad, match in [({"head_modes": ("fused",)}, "'fused'.*model and/or numpy.*--head-mode"),
                       ({"head_modes": ("auto",)}, "'auto'"), ({"head_modes": ()}, "head mode missing"),
                       ({"batch_sizes": (1, MAX_BATCH + 1)}, f"--batch-size {MAX_BATCH + 1} is over .* cap of 1024"),
                       ({"batch_sizes": (0,)}, "--batch-size >= 1"), ({"threads": -1}, "threads")]:
        with pytest.raises(ValueError, match=match):
            benchmark(setup["fused"], "sim:top", BenchConfig(**bad))


def test_a_model_that_cannot_load_is_an_error_row_not_a_skip(setup, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    cfg = BenchConfig(warmup=0, n_frames=1, batch_sizes=(1,), backends=("ort-cpu",), head_modes=("model",))
    report = benchmark([garbage, setup["fused"]], "sim:top?size=16", cfg)
    assert [r["status"] for r in report["results"]] == ["error", "ok"]
    (note,) = bench_notes(report)
    assert note.startswith("error ort-cpu (garbage.onnx): ") and "\n" not in note


class ThreadedCallable:
    """An extra backend that holds a thread count while timed, as PyTorch eager does (agents/eager.py)."""

    def __init__(self):
        self.threads, self.entered, self.exited = None, 0, 0

    def __enter__(self):
        self.entered, self.threads = self.entered + 1, 3
        return self

    def __exit__(self, *exc):
        self.exited += 1

    def __call__(self, frames):
        assert self.entered == 1 and not self.exited  # only ever called inside its context
        return {"z": frames.reshape(len(frames), -1)[:, :4].astype(np.float32)}


def test_extra_backend_is_timed_inside_its_context_and_its_threads_recorded(setup):
    fn = ThreadedCallable()
    cfg = BenchConfig(warmup=1, n_frames=2, batch_sizes=(1, 2), backends=("ort-cpu",), head_modes=("model",),
                      threads=1)
    report = benchmark(setup["fused"], "sim:top?size=16", cfg, extra_backends={"threaded": fn})
    assert (fn.entered, fn.exited) == (1, 1)
    rows = {r["backend"]: r for r in report["results"] if r["batch"] == 2}
    assert rows["threaded"]["threads"] == 3 and rows["ort-cpu"]["threads"] == 1 and report["config"]["threads"] == 1


def test_report_path_is_checked_before_anything_runs(tmp_path):
    assert check_report_path(tmp_path / "b.json") == tmp_path / "b.json"
    assert not list(tmp_path.iterdir())  # the write check left nothing behind
    (tmp_path / "old.json").write_text("{}")
    for path, overwrite, match in [(tmp_path / "b.txt", False, "name it \\*.json"),
                                   (tmp_path / "old.json", False, "exists; pass --overwrite"),
                                   (tmp_path / "no" / "b.json", False, "folder .* does not exist"),
                                   (tmp_path, False, "name it")]:
        with pytest.raises((ValueError, OSError), match=match):
            check_report_path(path, overwrite)
    assert check_report_path(tmp_path / "old.json", overwrite=True)
    with pytest.raises(OSError, match="cannot write in /proc"):
        check_report_path("/proc/b.json")


def test_benchmark_cuda_graph_is_asked_of_ort_cuda_only_and_recorded(setup):
    cfg = BenchConfig(warmup=3, n_frames=4, batch_sizes=(1,), head_modes=("model",), backends=("ort-cpu", "ort-cuda"),
                      cuda_graph=True)
    report = benchmark([setup["fused"], setup["head_inputs"]], setup["video"], cfg)
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert all(r["cuda_graph"].startswith("off (auto: ") for r in ok if r["backend"] == "ort-cpu")  # not asked there
    for r in (r for r in ok if r["backend"] == "ort-cuda"):  # a GPU machine: the fused graph replays a capture
        want = "on" if r["graph"] == "fused" else "fallback"  # head_inputs rebinds its head: no capture
        assert r["cuda_graph"].startswith(want), r["cuda_graph"]
    text = _render(bench_table(report))
    assert ("ort-cuda*" in text) == ("CUDA graph" in text) == any(r["cuda_graph"].startswith("on") for r in ok)


class StagedModel:
    """A real ONNX Runtime model that also reports device stages, as the CUDA/TensorRT backends do."""

    def __init__(self, model, measure_every: int):
        self.model, self.meta, self.measure_every, self.calls = model, model.meta, measure_every, 0
        self.last_stages: dict[str, float] = {}
        self.precision, self.provider_options = "tf32", {"CUDAExecutionProvider": {"use_tf32": "1"}}

    def infer(self, frames):
        self.calls += 1
        out = self.model.infer(frames)
        if self.calls % self.measure_every == 0:  # a backend that measures only some calls
            self.last_stages.update(h2d=0.5, compute=float(len(frames)), d2h=0.25, enqueue=0.125)
        return out

    def set_head(self, head):
        self.model.set_head(head)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model.close()


def test_device_stages_shown_only_where_measured(setup, monkeypatch):
    from jepa_edge.runtime import bench

    real_load = bench.load_model
    monkeypatch.setattr(bench, "load_model", lambda *a, **k: StagedModel(real_load(*a, **k), measure_every=2))
    cfg = BenchConfig(warmup=1, n_frames=8, batch_sizes=(2,), backends=("ort-cpu",), head_modes=("model",))
    report = benchmark(setup["head_inputs"], setup["video"], cfg, head=setup["head"])
    (r,) = report["results"]
    assert r["device_stages"] == ["enqueue", "h2d", "compute", "d2h"]
    st = r["stages_ms_per_batch"]
    # 1 warm-up + 4 timed calls, every 2nd measured: the timed calls 2 and 4 only (cleared in between)
    assert st["infer"]["n"] == 4 and st["compute"]["n"] == 2 and st["h2d"]["n"] == 2
    assert (st["compute"]["p50_ms"], st["h2d"]["max_ms"], st["d2h"]["p99_ms"], st["enqueue"]["mean_ms"]) == (
        2.0, 0.5, 0.25, 0.125)
    assert r["precision"] == "tf32" and r["provider_options"] == {"CUDAExecutionProvider": {"use_tf32": "1"}}
    summary, (stages, spread) = _render(bench_table(report)), bench_detail(report)
    assert "enqueue" not in summary  # stage detail is --detail only
    assert [c.header for c in stages.columns] == ["#", "age", "wait", "read", "prep", "infer", "enqueue", "H2D",
                                                  "compute", "D2H", "head"]
    _render(stages, spread)


def test_machine_info_reads_nvidia_smi_or_says_none(tmp_path, monkeypatch):
    from jepa_edge.machine import cpu_model, gpu_info, machine_info

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    info = machine_info()
    assert gpu_info() == "none" and info["gpu"] == "none"
    assert len(info["load_avg"]) == 3 and info["numpy"] == np.__version__ and info["opencv"]
    assert info["onnxruntime"]["version"] == ort.__version__ and "torch" in info and "tensorrt" in info
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 580.65.06, 81559'\necho 'Orin (nvgpu), N/A, N/A'\n")
    smi.chmod(0o755)
    assert gpu_info() == [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "memory_mib": 81559},
                          {"name": "Orin (nvgpu)", "driver": "N/A", "memory_mib": None}]
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")  # driver not loaded
    assert gpu_info() == "none"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    assert cpu_model(tmp_path / "missing")  # falls back to the architecture


def test_missing_onnxruntime_names_both_builds(monkeypatch):
    """ONNX Runtime is an extra (cpu or gpu, never both): the error says which to install."""
    from jepa_edge.export import ort_session
    from jepa_edge.runtime import BackendUnavailableError
    from jepa_edge.runtime.backend_ort import available_providers

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    for call in (available_providers, lambda: ort_session(b"", "cpu")):
        with pytest.raises(BackendUnavailableError) as err:
            call()
        msg = str(err.value)
        assert "pip install 'jepa-edge[cpu]'" in msg and "pip install 'jepa-edge[gpu]'" in msg and "not both" in msg
