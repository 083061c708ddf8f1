"""fp16 models for ONNX Runtime (`export --precision fp16`): parity on ONNX Runtime CPU at the fp16 bound.

ONNX Runtime's CPU EP loads and runs the shipped fp16 file itself, but it computes most ops in float32 (it
inserts Casts around its float32 kernels): the parity measured here is that of fp16 weights and fp16 tensors
between ops, an emulation of the CUDA EP's fp16 kernels, not those kernels. Tiny encoders as in
test_export_onnx.py; the GPU numbers are benchmarks/gpu_check.py's (fp16 rows).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from test_export_onnx import agent, frames, make_encoder, make_postcard, make_probe, meta_of, torch_z
from typer.testing import CliRunner

from jepa_edge.calib.head import build_head
from jepa_edge.calib.probes import save_probe
from jepa_edge.cli import app
from jepa_edge.export import ExportError, OnnxExportConfig, ParityError, export_onnx, ort_session
from jepa_edge.export.onnx_export import head_nodes
from jepa_edge.train.checkpoint import save_agent

FP16_Z_RTOL = 1e-2  # the bound OnnxExportConfig states for an fp16 model: rtol x max(1, max |z|)


@pytest.fixture(scope="module")
def agents():
    enc_b, enc_a = make_encoder(0), make_encoder(1)
    meta_b, meta_a = meta_of(enc_b, "agentB", "oblique"), meta_of(enc_a, "agentA", "top")
    postcard = make_postcard(agent(meta_b), agent(meta_a))
    probes = [make_probe(agent(meta_a), "position", 6), make_probe(agent(meta_b), "danger", 2, "classification", 3)]
    head = build_head(meta_b["fingerprint"], 8, postcard, probes)
    return {"enc": enc_b, "meta": meta_b, "postcard": postcard, "probes": probes, "head": head}


def _export(agents, path, mode="fused", **cfg):
    head = agents["head"] if mode != "encoder_only" else None
    return export_onnx(agents["enc"], agents["meta"], path, head=head, mode=mode,
                       config=OnnxExportConfig(precision="fp16", **cfg))


@pytest.fixture(scope="module")
def fp16_models(agents, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp16")
    return {mode: _export(agents, tmp / f"{mode}.onnx", mode) for mode in ("fused", "head_inputs", "encoder_only")}


def _types(model):
    return {t.name: t.data_type for t in model.graph.initializer}


# ---- the written model -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fused", "head_inputs", "encoder_only"])
def test_fp16_model_keeps_the_runtime_contract_and_computes_the_encoder_in_fp16(agents, fp16_models, mode, tmp_path):
    res = fp16_models[mode]
    half = onnx.load(str(res.path))
    fp32 = onnx.load(str(export_onnx(agents["enc"], agents["meta"], tmp_path / "ref.onnx", mode=mode,
                                     head=agents["head"] if mode != "encoder_only" else None).path))
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]
    assert io(half) == io(fp32)  # uint8 frames in, float32 z / head out: the runtime is unchanged
    meta = json.loads({p.key: p.value for p in half.metadata_props}["jepa_edge"])
    assert meta["precision"] == "fp16" and meta["fp16"]["weights_clipped"] == 0
    assert meta["fp16"]["parity_max_abs_error"] == res.parity
    types = _types(half)
    encoder = [n for n, t in _types(fp32).items() if n.startswith("encoder.") and t == TensorProto.FLOAT]
    assert encoder and all(types[n] == TensorProto.FLOAT16 for n in encoder)  # every encoder weight, norms included
    if mode == "fused":
        assert types["head.weight"] == TensorProto.FLOAT  # W and the probes stay float32
    head_inputs = {i for n in head_nodes(half) for i in n.input}
    assert all(types.get(i, TensorProto.FLOAT) == TensorProto.FLOAT for i in head_inputs)
    assert res.tolerance == {"fp16_z_rtol": FP16_Z_RTOL, "head_rtol": 1e-4}


@pytest.mark.parametrize("mode", ["fused", "head_inputs"])
def test_fp16_parity_on_ort_cpu_is_within_the_fp16_bound_and_really_fp16(agents, fp16_models, mode):
    """Independent of the export's own check: ORT CPU on the file vs PyTorch z (+ the numpy head)."""
    sess = ort_session(fp16_models[mode].path, provider="cpu")
    head = agents["head"]
    for batch in (1, 5):
        x = frames(batch, seed=11)
        feeds = {"frames": x}
        if mode == "head_inputs":
            feeds |= {"head_weight": head.weight.astype(np.float32), "head_bias": head.bias.astype(np.float32)}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        z_ref = torch_z(agents["enc"], x)
        dz = got["z"].astype(np.float64) - z_ref
        err = float(np.abs(dz).max())
        assert 1e-4 < err <= FP16_Z_RTOL * max(1.0, float(np.abs(z_ref).max()))  # fp16, not fp32; and close
        ref = z_ref @ head.weight.T.astype(np.float64) + head.bias  # (B, width)
        outs = head.split(got["head"]) if mode == "head_inputs" else {o.name: got[o.name] for o in head.outputs}
        for o in head.outputs:
            want = ref[:, o.start:o.stop]
            bound = np.abs(dz) @ np.abs(head.weight[o.start:o.stop]).T + 1e-4 * max(1.0, float(np.abs(want).max()))
            assert np.all(np.abs(outs[o.name] - want) <= bound), o.name


def test_fused_transformer_ops_in_fp16_keep_parity(agents, tmp_path):
    res = _export(agents, tmp_path / "fused_tf.onnx", "fused", fuse_transformer=True)
    model = onnx.load(str(res.path))
    fused = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"Attention", "SkipLayerNormalization"} <= fused
    types = _types(model)
    qkv = [n.input[1] for n in model.graph.node if n.op_type == "Attention"]
    assert qkv and all(types[w] == TensorProto.FLOAT16 for w in qkv)  # the fused attention runs in fp16
    assert res.metadata["graph"]["contrib_ops"] is True and res.metadata["precision"] == "fp16"
    assert 1e-4 < res.parity["z"] <= FP16_Z_RTOL * 10  # |z| of this encoder is a few units


def test_fp16_parity_failure_raises_and_writes_nothing(agents, tmp_path):
    out = tmp_path / "tight.onnx"
    with pytest.raises(ParityError, match=r"fp16 model and PyTorch disagree on z .* --precision fp32"):
        _export(agents, out, "encoder_only", fp16_z_rtol=1e-6)  # below fp16's own rounding: must fail
    assert not out.exists()


def test_precision_is_checked():
    with pytest.raises(ExportError, match="int8 is for TensorRT engines"):
        OnnxExportConfig(precision="int8").validate()


def test_fp32_export_says_fp32(agents, tmp_path):
    res = export_onnx(agents["enc"], agents["meta"], tmp_path / "m.onnx", mode="encoder_only")
    assert res.metadata["precision"] == "fp32" and "fp16" not in res.metadata


# ---- runtime: run / bench an fp16 model on the CPU ---------------------------------------------------


@pytest.mark.parametrize("io_binding", [True, False])
def test_ort_cpu_runs_an_fp16_model_and_reports_fp16(agents, fp16_models, io_binding):
    from jepa_edge.runtime import OrtConfig, load_model

    model = load_model(fp16_models["fused"].path, "ort-cpu", OrtConfig(io_binding=io_binding))
    assert model.precision == "fp16"
    x = frames(3)
    out = model.infer(x)
    z_ref = torch_z(agents["enc"], x)
    assert out["z"].dtype == np.float32
    assert np.abs(out["z"] - z_ref).max() <= FP16_Z_RTOL * max(1.0, float(np.abs(z_ref).max()))


@pytest.mark.gpu
def test_ort_cuda_runs_the_fp16_model_as_a_cuda_graph_within_the_fp16_bound(agents, fp16_models):
    """On a GPU: the CUDA EP's own fp16 kernels (not the CPU's emulation), every node on the GPU (the capture
    fails otherwise), z within the fp16 bound of PyTorch and the head within the fp32 head bound."""
    import onnxruntime as ort
    from gpu import skip_or_fail

    from jepa_edge.runtime import OrtConfig, load_model

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skip_or_fail(f"needs onnxruntime-gpu's CUDAExecutionProvider (this onnxruntime {ort.__version__} has "
                     f"{ort.get_available_providers()})")
    model = load_model(fp16_models["fused"].path, "ort-cuda", OrtConfig(cuda_graph=True))
    head, rng = agents["head"], np.random.default_rng(5)
    for batch in (1, 4) * 4:  # warm-up, capture, then replays with new frames
        x = rng.integers(0, 256, (batch, 16, 16, 3), dtype=np.uint8)
        out, z_ref = model.infer(x), torch_z(agents["enc"], x)
        dz = out["z"].astype(np.float64) - z_ref
        assert np.abs(dz).max() <= FP16_Z_RTOL * max(1.0, float(np.abs(z_ref).max()))
        for o in head.outputs:
            want = (z_ref @ head.weight.T + head.bias)[:, o.start:o.stop]
            bound = np.abs(dz) @ np.abs(head.weight[o.start:o.stop]).T + 1e-4 * max(1.0, float(np.abs(want).max()))
            assert np.all(np.abs(out[o.name] - want) <= bound), o.name
    assert model.precision == "fp16" and model.cuda_graph_status.startswith("on"), model.cuda_graph_status


def test_tf32_reaches_the_onnx_runtime_config_of_run_and_bench(fp16_models, monkeypatch):
    from jepa_edge.runtime import backends, bench
    from jepa_edge.runtime.backend_ort import OrtConfig, cuda_provider_options, ort_precision

    seen = []
    monkeypatch.setattr(backends, "load_model", lambda path, backend, config, encoder_only=False: seen.append(config))
    backends.load_model_for_run(fp16_models["fused"].path, "ort-cpu", tf32=True)
    backends.load_model_for_run(fp16_models["fused"].path, "ort-cpu")
    assert seen[0].precision == "tf32" and seen[1] is None  # no flag: the defaults (TF32 off)
    assert cuda_provider_options(seen[0], "1.20.0")["use_tf32"] == "1"
    assert cuda_provider_options(OrtConfig(), "1.20.0")["use_tf32"] == "0"
    assert ort_precision("ort-cuda", seen[0], "1.20.0") == "tf32"
    assert ort_precision("ort-cuda", seen[0], "1.20.0", "fp16") == "fp16"
    assert bench.BenchConfig(tf32=True).tf32 is True


def test_cli_bench_and_run_an_fp16_model_on_cpu_with_tf32_passed_through(fp16_models, tmp_path, monkeypatch):
    from jepa_edge.runtime import backends, bench

    asked = []
    for module in (bench, backends):  # record the OrtConfig each command loads the model with
        monkeypatch.setattr(module, "load_model", lambda *a, _load=module.load_model, **k: (
            asked.append(a[2] if len(a) > 2 else k.get("config")), _load(*a, **k))[1])
    path = fp16_models["fused"].path
    res = CliRunner().invoke(app, ["bench", str(path), "--backend", "ort-cpu", "--frames", "4", "--warmup", "1",
                                   "--batch-size", "2", "--head-mode", "model", "--source", "sim:top?size=16",
                                   "--json", "--tf32"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout[res.stdout.index("{"):])["results"]
    assert [r["precision"] for r in rows if r["status"] == "ok"] == ["fp16"]
    res = CliRunner().invoke(app, ["run", str(path), "--backend", "ort-cpu", "--frames", "2", "--source",
                                   "sim:top?size=16", "--jsonl", str(tmp_path / "out.jsonl"), "--tf32"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "position.position0" in json.loads(lines[0])["outputs"]
    assert len(asked) == 2 and all(cfg.precision == "tf32" for cfg in asked)  # bench, then run


# ---- CLI: export --precision, inspect ----------------------------------------------------------------


@pytest.fixture()
def run_dir(agents, tmp_path):
    run = tmp_path / "runs" / "agentB"
    save_agent(run, agents["enc"], {"name": "agentB", "view": "oblique", "encoder": asdict(agents["enc"].cfg)})
    save_probe(tmp_path / "danger.probe.safetensors", agents["probes"][1])
    return run


def test_cli_export_precision_fp16_for_onnx_runtime_and_inspect_shows_it(run_dir, tmp_path):
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--probe",
                                   str(tmp_path / "danger.probe.safetensors"), "--precision", "fp16",
                                   "--fuse-transformer"])
    assert res.exit_code == 0, res.output
    assert ", fp16)" in res.output and "fp16 bound on z: 0.01 x max(1, max |z|)" in res.output
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "precision: fp16 (encoder; head, input and outputs fp32)" in shown.output
    info = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert json.loads(info.stdout[info.stdout.index("{"):])["precision"] == "fp16"

    plain = tmp_path / "p.onnx"  # the ONNX default stays fp32 (auto: fp32 for onnx, fp16 for an engine)
    assert CliRunner().invoke(app, ["export", str(run_dir), "--out", str(plain)]).exit_code == 0
    assert "precision: fp32" in CliRunner().invoke(app, ["inspect", str(plain)]).output


@pytest.mark.parametrize(("precision", "message"), [("int8", "--precision int8 is for TensorRT engines; pass --format engine"),
                                                    ("bf16", "--precision 'bf16'; use auto, fp32, fp16, int8")])
def test_cli_export_refuses_a_precision_onnx_cannot_take(run_dir, tmp_path, precision, message):
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--precision", precision])
    assert res.exit_code != 0 and message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not out.exists()


# ---- gpu_check: fp16 rows beside the fp32 ones ----------------------------------------------------


def test_gpu_check_measures_vit_tiny_fp16_beside_fp32(monkeypatch):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)

    def row(variant, batch, p50, status="on: one CUDA graph per static batch size"):
        return {"agent": "vit_tiny", "backend": "ort-cuda", "head_mode": "model", "batch": batch, "status": "ok",
                "variant": variant, "cuda_graph": status, "stages_ms_per_batch": {"infer": {"p50_ms": p50}}}

    rows = [row("graph", 1, 0.946), row("graph", 8, 1.8), row("fp16", 1, 0.4), row("fp16", 8, 0.8)]
    half, full = gpu_check.vit_tiny_targets(rows, "fp16"), gpu_check.vit_tiny_targets(rows, "graph")
    assert half["vit_tiny_b1_infer_p50_ms<=0.45"] == {"measured": 0.4, "met": True}
    assert half["vit_tiny_b8_infer_fps>=8000"] == {"measured": pytest.approx(10_000.0), "met": True}
    assert full["vit_tiny_b1_infer_p50_ms<=0.45"] == {"measured": 0.946, "met": False}
    uncaptured = [r if r["variant"] != "fp16" else {**r, "cuda_graph": "fallback to IOBinding: x"} for r in rows]
    assert gpu_check.vit_tiny_targets(uncaptured, "fp16")["vit_tiny_b1_infer_p50_ms<=0.45"]["measured"] is None
    assert gpu_check.vit_tiny_targets([], "fp16")["vit_tiny_b8_infer_fps>=8000"] == {"measured": None, "met": None}


def test_gpu_check_plans_the_fp16_exports_and_benches(monkeypatch, capsys):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    assert gpu_check.main(["--dry-run", "--skip-tests", "--no-train-throughput"]) == 0
    plan = capsys.readouterr().out
    for step in ("export vit_tiny fp16", "--precision fp16", "bench vit_tiny fp16 ort-cuda",
                 "bench agent32 fp16 ort-cuda"):
        assert step in plan, step
    assert "bench vit_tiny fp16 ort-cpu" not in plan  # fp16 on the CPU only when the script is checked (--cpu)
