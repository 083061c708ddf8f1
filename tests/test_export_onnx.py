"""ONNX export: parity with PyTorch + numpy head, graph shape, metadata, and clear errors.

Tiny encoders (16 px, patch 4, width 32, depth 1) keep every export well under a second.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from jepa_edge.artifacts import AgentRef
from jepa_edge.calib.head import HeadError, build_head
from jepa_edge.calib.postcard import Postcard, PostcardError, save_postcard
from jepa_edge.calib.probes import Probe, save_probe
from jepa_edge.export import (
    ExportError,
    OnnxExportConfig,
    ParityError,
    export_agent,
    export_onnx,
    ort_session,
    read_metadata,
)
from jepa_edge.export.edge_model import EdgeModel, EdgeModelError
from jepa_edge.export.onnx_export import encoder_fingerprint, head_nodes
from jepa_edge.runtime import backends
from jepa_edge.runtime.errors import BackendUnavailableError
from jepa_edge.train.checkpoint import CheckpointError, save_agent
from jepa_edge.train.model import Encoder, EncoderConfig

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "latent_dim": 8}
Z_ATOL = 1e-4  # the parity tolerance stated by OnnxExportConfig


# ---- fixtures: agents, postcards, probes ----------------------------------------------------


def make_encoder(seed: int = 0, **over) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(**{**TINY, **over}))
    with torch.no_grad():  # untrained init is nearly constant; spread the weights so errors would show
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


def meta_of(enc: Encoder, name: str, view: str) -> dict:
    return {"name": name, "view": view, "fingerprint": encoder_fingerprint(enc), "encoder": asdict(enc.cfg)}


def agent(meta: dict) -> AgentRef:
    return AgentRef(meta["name"], meta["fingerprint"], meta["encoder"]["latent_dim"], meta["view"])


def make_postcard(source: AgentRef, target: AgentRef, seed: int = 1) -> Postcard:
    rng = np.random.default_rng(seed)
    s, t = source.latent_dim, target.latent_dim
    return Postcard(rng.standard_normal((t, s)), rng.standard_normal(t), np.zeros(s), np.ones(s), np.zeros(t),
                    np.ones(t), name="B_to_A", source=source, target=target, estimator="procrustes", n_anchors=100)


def make_probe(owner: AgentRef, name: str, k: int, task: str = "regression", seed: int = 2) -> Probe:
    rng = np.random.default_rng(seed)
    d = owner.latent_dim
    return Probe(rng.standard_normal((k, d)), rng.standard_normal(k), name, task, [f"{name}{i}" for i in range(k)],
                 owner)


@pytest.fixture(scope="module")
def agents():
    enc_b, enc_a = make_encoder(0), make_encoder(1)
    meta_b, meta_a = meta_of(enc_b, "agentB", "oblique"), meta_of(enc_a, "agentA", "top")
    postcard = make_postcard(agent(meta_b), agent(meta_a))
    position = make_probe(agent(meta_a), "position", 6)  # trained on A: applied through W
    danger = make_probe(agent(meta_b), "danger", 2, "classification", seed=3)  # trained on B itself
    head = build_head(meta_b["fingerprint"], 8, postcard, [position, danger])
    return {"enc": enc_b, "meta": meta_b, "meta_a": meta_a, "postcard": postcard, "probes": [position, danger],
            "head": head}


@pytest.fixture(scope="module")
def fused(agents, tmp_path_factory):
    path = tmp_path_factory.mktemp("fused") / "model.onnx"
    return export_onnx(agents["enc"], agents["meta"], path, head=agents["head"], mode="fused")


def frames(batch: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 16, 16, 3), dtype=np.uint8)


def torch_z(enc: Encoder, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return enc(torch.from_numpy(x).float().permute(0, 3, 1, 2)).double().numpy()


# ---- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_fused_matches_pytorch_plus_numpy_head(agents, fused, batch):
    enc, head = agents["enc"], agents["head"]
    x = frames(batch)
    sess = ort.InferenceSession(str(fused.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["z", "z_mapped", "position", "danger"]
    got = dict(zip(names, sess.run(None, {"frames": x})))
    z_ref = torch_z(enc, x)
    np.testing.assert_allclose(got["z"], z_ref, rtol=0, atol=Z_ATOL)
    ref = head.split(head.apply(z_ref))  # the unfused reference: numpy head on PyTorch's z
    for name, want in ref.items():
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-4 * scale * 10)
    # the head really is probe ∘ W: position = P_A (W z + b) + c
    pos = agents["probes"][0]
    via_w = (z_ref @ agents["postcard"].weight.T.astype(np.float64) + agents["postcard"].bias) @ pos.weight.T + pos.bias
    np.testing.assert_allclose(got["position"], via_w, rtol=0, atol=1e-3 * max(1.0, np.abs(via_w).max()))


def test_export_result_reports_parity_within_tolerance(fused):
    assert set(fused.parity) == {"z", "z_mapped", "position", "danger"}
    assert fused.parity["z"] <= fused.tolerance["z_atol"] == Z_ATOL
    assert fused.metadata["exporter"]["parity_max_abs_error"] == fused.parity
    assert len(fused.sha256) == 64 and fused.path.is_file()


def test_head_inputs_swaps_heads_of_any_width_without_reexport(agents, tmp_path):
    enc = agents["enc"]
    res = export_onnx(enc, agents["meta"], tmp_path / "hi.onnx", head=agents["head"], mode="head_inputs")
    model = onnx.load(str(res.path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"frames": ["batch", 16, 16, 3], "head_weight": ["K", 8], "head_bias": ["K"]}
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = frames(3)
    z_ref = torch_z(enc, x)
    rng = np.random.default_rng(5)
    for k in (agents["head"].width, 2, 1):  # one session, three heads, three widths
        w = rng.standard_normal((k, 8)).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        z, h = sess.run(["z", "head"], {"frames": x, "head_weight": w, "head_bias": b})
        assert h.shape == (3, k)
        np.testing.assert_allclose(z, z_ref, atol=Z_ATOL)
        np.testing.assert_allclose(h, z_ref @ w.T + b, atol=1e-3)
    assert res.metadata["mode"] == "head_inputs" and res.metadata["head"]["outputs"] == []


@pytest.mark.parametrize("batch", [1, 4])
def test_flatten_pool_encoder_exports_with_parity(tmp_path, batch):
    enc = make_encoder(3, pool="flatten")  # z = one linear map of all tokens in place (EncoderConfig.pool)
    res = export_onnx(enc, meta_of(enc, "flat", "top"), tmp_path / "flat.onnx", mode="encoder_only")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = frames(batch)
    np.testing.assert_allclose(sess.run(None, {"frames": x})[0], torch_z(enc, x), rtol=0, atol=Z_ATOL)
    assert res.metadata["encoder"]["pool"] == "flatten"


def test_encoder_only_mode_exports_frames_to_z(agents, tmp_path):
    res = export_onnx(agents["enc"], agents["meta"], tmp_path / "enc.onnx", mode="encoder_only")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["z"] and [i.name for i in sess.get_inputs()] == ["frames"]
    x = frames(2)
    np.testing.assert_allclose(sess.run(None, {"frames": x})[0], torch_z(agents["enc"], x), atol=Z_ATOL)
    assert res.metadata["mode"] == "encoder_only"  # one name, exporter and runtime (runtime.meta.MODES)
    with backends.load_model(res.path, "ort-cpu") as m:  # and the runtime accepts it
        assert set(m.infer(x)) == {"z"}


@pytest.mark.parametrize("fused_attn", [True, False])
def test_fused_and_manual_attention_exports_agree(agents, tmp_path, fused_attn):
    enc = make_encoder(0)  # same weights as agents["enc"]
    enc.set_fused_attn(fused_attn)
    res = export_onnx(enc, agents["meta"], tmp_path / "m.onnx", head=agents["head"])
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = frames(3, seed=11)
    enc.set_fused_attn(not fused_attn)  # reference: the *other* attention path in PyTorch
    np.testing.assert_allclose(sess.run(["z"], {"frames": x})[0], torch_z(enc, x), atol=Z_ATOL)
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert "Softmax" in ops  # attention is decomposed into plain ONNX ops either way


@pytest.mark.parametrize("fused_attn", [True, False])
def test_no_training_mode_dropout_in_the_graph(agents, tmp_path, fused_attn):
    enc = make_encoder(0)
    enc.set_fused_attn(fused_attn)
    export_onnx(enc, agents["meta"], tmp_path / "m.onnx", mode="encoder_only")
    assert "Dropout" not in {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}


@pytest.mark.slow
def test_dynamo_exporter_also_passes_parity(agents, tmp_path):
    cfg = OnnxExportConfig(exporter="dynamo", opset=18)
    res = export_onnx(agents["enc"], agents["meta"], tmp_path / "dyn.onnx", head=agents["head"], config=cfg)
    assert res.parity["z"] <= Z_ATOL
    assert [o.name for o in onnx.load(str(res.path)).graph.output] == ["z", "z_mapped", "position", "danger"]


# ---- graph structure and metadata ------------------------------------------------------------


def test_fused_head_is_exactly_one_gemm(agents, fused):
    model = onnx.load(str(fused.path))
    after_z = head_nodes(model)
    matmuls = [n for n in after_z if n.op_type in ("Gemm", "MatMul")]
    assert len(matmuls) == 1, [n.op_type for n in after_z]
    assert {n.op_type for n in after_z} <= {"Gemm", "MatMul", "Add", "Split", "Slice", "Constant", "Identity"}
    gemm = matmuls[0]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight = inits[gemm.input[1]]
    trans_b = gemm.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in gemm.attribute)
    weight = weight if trans_b else weight.T  # Gemm(transB=1) stores B as (K, D); MatMul as (D, K)
    np.testing.assert_allclose(weight, agents["head"].weight, atol=1e-6)  # (K, D) = [W; P_pos W; P_danger]


def test_metadata_props_follow_the_contract(agents, fused):
    meta = read_metadata(fused.path)
    assert meta["format"] == "jepa-edge/onnx" and meta["version"] == 1 and meta["mode"] == "fused"
    assert meta["input"] == {"name": "frames", "layout": "NHWC", "dtype": "uint8", "channels": "BGR",
                             "height": 16, "width": 16}
    assert meta["latent_dim"] == 8
    assert meta["agent"] == {"name": "agentB", "fingerprint": agents["meta"]["fingerprint"], "view": "oblique"}
    outs = [(o["name"], o["start"], o["stop"], o["kind"]) for o in meta["head"]["outputs"]]
    assert outs == [("z_mapped", 0, 8, "latent"), ("position", 8, 14, "regression"),
                    ("danger", 14, 16, "classification")]
    assert meta["head"]["outputs"][1]["labels"] == [f"position{i}" for i in range(6)]
    assert meta["encoder"]["img_size"] == 16 and meta["exporter"]["opset"] == 17
    with backends.load_model(fused.path, "ort-cpu") as m:  # the runtime reads the same contract
        out = m.infer(frames(2))
        assert set(out) == {"z", "z_mapped", "position", "danger"}


# ---- export_agent: run directory + files → ONNX ------------------------------------------------


@pytest.fixture()
def run(agents, tmp_path):
    run_dir = tmp_path / "runs" / "agentB"
    meta = {"name": "agentB", "view": "oblique", "encoder": asdict(agents["enc"].cfg)}
    fp = save_agent(run_dir, agents["enc"], meta)
    assert fp == agents["meta"]["fingerprint"]
    save_postcard(tmp_path / "b2a.postcard.safetensors", agents["postcard"])
    save_probe(tmp_path / "position.probe.safetensors", agents["probes"][0])
    save_probe(tmp_path / "danger.probe.safetensors", agents["probes"][1])
    return run_dir


def test_export_agent_fuses_files_and_records_provenance(agents, run, tmp_path):
    out = tmp_path / "out" / "agentB.onnx"
    res = export_agent(run, out, tmp_path / "b2a.postcard.safetensors",
                       [tmp_path / "position.probe.safetensors", tmp_path / "danger.probe.safetensors"])
    head = res.metadata["head"]
    assert head["postcard"]["file"] == "b2a.postcard.safetensors" and len(head["postcard"]["sha256"]) == 64
    assert head["postcard"]["target"]["name"] == "agentA"
    assert [p["name"] for p in head["probes"]] == ["position", "danger"]
    sess = ort_session(out)
    x = frames(2)
    got = sess.run(["position"], {"frames": x})[0]
    want = agents["head"].split(agents["head"].apply(torch_z(agents["enc"], x)))["position"]
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))


def test_export_agent_manual_attention(run, tmp_path):
    res = export_agent(run, tmp_path / "enc.onnx", mode="encoder_only", fused_attn=False)
    assert res.parity["z"] <= Z_ATOL


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        export_agent(tmp_path / "nope", tmp_path / "x.onnx", mode="encoder_only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="meta.json"):
        export_agent(tmp_path / "empty", tmp_path / "x.onnx", mode="encoder_only")
    assert not (tmp_path / "x.onnx").exists()


def test_postcard_of_another_agent_is_refused(agents, run, tmp_path):
    other = make_encoder(5)
    wrong = make_postcard(agent(meta_of(other, "agentC", "top")), agent(agents["meta_a"]))
    save_postcard(tmp_path / "wrong.postcard.safetensors", wrong)
    with pytest.raises(PostcardError, match="source fingerprint .* belongs to another encoder"):
        export_agent(run, tmp_path / "x.onnx", tmp_path / "wrong.postcard.safetensors")
    stray = make_probe(agent(meta_of(other, "agentC", "top")), "stray", 2)
    save_probe(tmp_path / "stray.probe.safetensors", stray)
    with pytest.raises(HeadError, match="probe 'stray' belongs to encoder"):
        export_agent(run, tmp_path / "x.onnx", tmp_path / "b2a.postcard.safetensors",
                     [tmp_path / "stray.probe.safetensors"])
    assert not (tmp_path / "x.onnx").exists()


def test_head_dim_mismatch_is_a_clear_error(agents, run, tmp_path):
    src = replace(agent(agents["meta"]), latent_dim=6)  # right fingerprint, wrong latent size
    save_postcard(tmp_path / "bad.postcard.safetensors", make_postcard(src, agent(agents["meta_a"])))
    with pytest.raises(HeadError, match="input dim 6 but the encoder's latent dim is 8"):
        export_agent(run, tmp_path / "x.onnx", tmp_path / "bad.postcard.safetensors")
    wide = make_probe(replace(agent(agents["meta_a"]), latent_dim=5), "wide", 2)
    save_probe(tmp_path / "wide.probe.safetensors", wide)
    with pytest.raises(HeadError, match="expects latent dim 5, W maps to 8"):
        export_agent(run, tmp_path / "x.onnx", tmp_path / "b2a.postcard.safetensors",
                     [tmp_path / "wide.probe.safetensors"])


def test_mode_and_head_combinations_are_checked(agents, run, tmp_path):
    with pytest.raises(ExportError, match="needs a postcard and/or probes"):
        export_agent(run, tmp_path / "x.onnx", mode="fused")
    with pytest.raises(ExportError, match="encoder alone"):
        export_agent(run, tmp_path / "x.onnx", tmp_path / "b2a.postcard.safetensors", mode="encoder_only")
    with pytest.raises(ExportError, match="unknown export mode"):
        export_onnx(agents["enc"], agents["meta"], tmp_path / "x.onnx", mode="both")
    with pytest.raises(ExportError, match="unknown export mode 'bare'.*encoder-only"):
        export_agent(run, tmp_path / "x.onnx", mode="bare")
    with pytest.raises(EdgeModelError, match="needs a head"):
        EdgeModel(agents["enc"], None, "fused")
    with pytest.raises(ExportError, match="exporter"):
        OnnxExportConfig(exporter="tf").validate()


def test_meta_must_match_the_weights(agents, tmp_path):
    bad = {**agents["meta"], "fingerprint": "0" * 64}
    with pytest.raises(ExportError, match="fingerprint 000000000000…, but the encoder's weights are"):
        export_onnx(agents["enc"], bad, tmp_path / "x.onnx", mode="encoder_only")


# ---- parity is enforced -----------------------------------------------------------------------


@pytest.mark.parametrize("param, message", [
    ("encoder.pool.out.bias", "disagree on z at batch 1"),  # the encoder
    ("head.bias", "output 'z_mapped' disagrees with the numpy head"),  # the fused head only
])
def test_failing_parity_raises_and_writes_nothing(agents, tmp_path, monkeypatch, param, message):
    from jepa_edge.export import onnx_export

    real = onnx_export._torch_export

    def export_wrong_weights(graph, example, path, config):
        p = graph.get_parameter(param)
        original = p.detach().clone()
        with torch.no_grad():
            p.add_(1e-2)  # the traced graph no longer matches the module...
            try:
                real(graph, example, path, config)
            finally:
                p.copy_(original)  # ...that parity compares it against (restored bit for bit)

    monkeypatch.setattr(onnx_export, "_torch_export", export_wrong_weights)
    out = tmp_path / "x.onnx"
    with pytest.raises(ParityError, match=message):
        export_onnx(agents["enc"], agents["meta"], out, head=agents["head"])
    assert not out.exists() and list(Path(tmp_path).iterdir()) == []


# ---- ORT provider helper ---------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_missing_gpu_provider_is_an_error_not_a_cpu_fallback(fused, provider, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])  # any machine
    with pytest.raises(BackendUnavailableError, match=r"pip uninstall -y onnxruntime onnxruntime-gpu && .*\[gpu\]"):
        ort_session(fused.path, provider=provider)


def test_ort_session_options_are_checked(fused):
    with pytest.raises(ValueError, match="TensorRT EP options"):
        ort_session(fused.path, provider="cpu", fp16=True)
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider"):
        ort_session(fused.path, provider="gpu")
    assert ort_session(fused.path.read_bytes(), threads=1).get_providers() == ["CPUExecutionProvider"]


def test_export_leaves_the_callers_encoder_untouched(agents, tmp_path):
    enc = make_encoder(0).train()
    enc.set_fused_attn(False)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    export_onnx(enc, agents["meta"], tmp_path / "m.onnx", mode="encoder_only")
    assert enc.training and not enc.blocks[0].attn.fused_attn
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_cli_export_without_a_head_is_encoder_only_and_says_so(run, tmp_path):
    from typer.testing import CliRunner

    from jepa_edge.cli import app

    out = tmp_path / "enc.onnx"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "(encoder only: frames → z" in res.output and "Traceback" not in res.output
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["jepa_edge"])
    assert meta["mode"] == "encoder_only"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "b.onnx"), "--mode", "bare"])
    assert res.exit_code == 2 and "--mode 'bare'" in res.output and "encoder-only" in res.output
