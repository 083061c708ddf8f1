"""Graph passes after export (onnxslim, ORT transformer fusions), static batch, node counts, the vit-tiny preset.

Parity between graphs is checked on ONNX Runtime CPU with an explicit tolerance:
every output of the simplified and of the fused graph within ``ATOL * max(1, max |original|)``
of the unoptimised export, and ``z`` within the export's own 1e-4 of PyTorch.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from jepa_edge.agents.untrained import save_untrained_run
from jepa_edge.artifacts import AgentRef
from jepa_edge.calib.head import build_head
from jepa_edge.config import ConfigError
from jepa_edge.export import OnnxExportConfig, export_agent, export_onnx, read_metadata
from jepa_edge.export import optimize as opt
from jepa_edge.export.onnx_export import encoder_fingerprint
from jepa_edge.train.checkpoint import load_agent
from jepa_edge.train.config import PRESETS, RunConfig, preset_config
from jepa_edge.train.model import Encoder, EncoderConfig
from tests.onnx_fixtures import make_postcard, make_probe, other_agent

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "latent_dim": 8}
ATOL = 1e-5  # graph vs graph (same ONNX Runtime, same frames): OptimizeConfig.atol
Z_ATOL = 1e-4  # graph vs PyTorch: OnnxExportConfig.z_atol


def make_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(**TINY))
    with torch.no_grad():  # spread the weights so a wrong pass would show
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


@pytest.fixture(scope="module")
def agent():
    enc = make_encoder()
    meta = {"name": "agentB", "view": "oblique", "fingerprint": encoder_fingerprint(enc), "encoder": asdict(enc.cfg)}
    me = AgentRef("agentB", meta["fingerprint"], 8, "oblique")
    target = other_agent(8)
    head = build_head(meta["fingerprint"], 8, make_postcard(me, target), [make_probe(target, "position", 6)])
    return enc, meta, head


VARIANTS = {"original": {"optimize": False}, "slim": {"optimize": True},
            "fused": {"optimize": True, "fuse_transformer": True}}
SLIM_MISSING = "needs onnxslim (the export extra): pip install 'jepa-edge[export]'"


def has_onnxslim() -> bool:
    try:
        importlib.import_module("onnxslim")
    except ImportError:
        return False
    return True


needs_onnxslim = pytest.mark.skipif(not has_onnxslim(), reason=SLIM_MISSING)


@pytest.fixture(scope="module")
def exported(agent, tmp_path_factory):
    """(mode, batch, variant) → ExportResult, each exported once per module."""
    cache: dict = {}

    def get(mode: str, batch: int, variant: str):
        key = (mode, batch, variant)
        if VARIANTS[variant].get("optimize") and not has_onnxslim():
            pytest.skip(SLIM_MISSING)
        if key not in cache:
            path = tmp_path_factory.mktemp("exports") / f"{mode}_{batch}_{variant}.onnx"
            cache[key] = export(agent, path, mode, batch=batch, **VARIANTS[variant])
        return cache[key]

    return get


def export(agent, path, mode="fused", **cfg):
    enc, meta, head = agent
    return export_onnx(enc, meta, path, head=head if mode == "fused" else None, mode=mode,
                       config=OnnxExportConfig(**cfg))


def run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def frames(batch, side=16, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)


def torch_z(enc, x):
    with torch.no_grad():
        return enc(torch.from_numpy(x).float().permute(0, 3, 1, 2)).numpy()


def assert_close_scaled(got, want, atol):
    for name, ref in want.items():
        allowed = atol * max(1.0, float(np.abs(ref).max()))
        assert got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=allowed, err_msg=name)


# ---- parity: original vs simplified vs transformer-fused -------------------------------------------


@pytest.mark.parametrize("mode, batch", [("fused", 0), ("fused", 4), ("head_inputs", 2)])
def test_simplified_and_fused_graphs_match_the_original(agent, exported, mode, batch):
    original, slimmed, fused = (exported(mode, batch, v) for v in VARIANTS)
    feeds = {"frames": frames(batch or 3)}
    if mode == "head_inputs":
        rng = np.random.default_rng(1)
        feeds.update(head_weight=rng.standard_normal((5, 8)).astype(np.float32),
                     head_bias=rng.standard_normal(5).astype(np.float32))
    want = run(original.path, feeds)
    assert set(want) >= {"z"} and (mode == "encoder_only" or len(want) > 1)
    assert_close_scaled(run(slimmed.path, feeds), want, ATOL)
    assert_close_scaled(run(fused.path, feeds), want, ATOL)
    np.testing.assert_allclose(run(fused.path, feeds)["z"], torch_z(agent[0], feeds["frames"]), atol=Z_ATOL)
    # what was applied is recorded, with the parity error it was kept at
    assert original.metadata["graph"]["passes"] == []
    [s] = slimmed.metadata["graph"]["passes"]
    assert s["name"] == "onnxslim" and s["applied"] and s["version"] == opt.onnxslim_version()
    assert max(s["parity_max_abs_error"].values()) <= ATOL
    names = [(p["name"], p["applied"]) for p in fused.metadata["graph"]["passes"]]
    assert names == [("transformer_fusion", True), ("onnxslim", True)]  # fusion first: see optimize.py
    fused_ops = fused.metadata["graph"]["passes"][0]["fused_ops"]
    depth = agent[0].cfg.depth
    assert fused_ops["Attention"] == depth and fused_ops["SkipLayerNormalization"] >= depth, fused_ops
    assert fused.metadata["graph"]["contrib_ops"] and not slimmed.metadata["graph"]["contrib_ops"]
    assert fused.metadata["graph"]["attention"] == "split_qkv" and slimmed.metadata["graph"]["attention"] == "packed"


@needs_onnxslim
def test_metadata_props_survive_every_pass(exported):
    res = exported("fused", 0, "original")
    model = onnx.load(str(res.path))
    onnx.helper.set_model_props(model, {"jepa_edge": json.dumps(res.metadata), "extra": "kept"})
    want = {p.key: p.value for p in model.metadata_props}
    slimmed = opt.slim(model)
    assert {p.key: p.value for p in slimmed.metadata_props} == want
    fused, stats = opt.fuse_transformer(slimmed, num_heads=2, hidden_size=32)
    assert {p.key: p.value for p in fused.metadata_props} == want
    assert stats.get("SkipLayerNormalization", 0) >= 1 and opt.has_contrib_ops(fused)
    assert any(o.domain == "com.microsoft" for o in fused.opset_import)
    # and the written file's contract metadata is the export's, plus the graph report
    out = exported("fused", 0, "fused")
    meta = read_metadata(out.path)
    assert meta["mode"] == "fused" and [o["name"] for o in meta["head"]["outputs"]] == ["z_mapped", "position"]
    assert meta["graph"] == out.metadata["graph"]


@needs_onnxslim
def test_a_pass_that_breaks_parity_is_dropped_and_recorded(agent, tmp_path, monkeypatch):
    real = opt.fuse_transformer

    def wrong_fusion(model, num_heads, hidden_size):
        fused, stats = real(model, num_heads, hidden_size)
        init = max(fused.graph.initializer, key=lambda t: np.prod(t.dims))  # the biggest weight, perturbed
        arr = onnx.numpy_helper.to_array(init) + np.float32(1e-2)
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return fused, stats

    monkeypatch.setattr(opt, "fuse_transformer", wrong_fusion)
    with pytest.warns(RuntimeWarning, match="transformer_fusion dropped"):
        res = export(agent, tmp_path / "f.onnx", "fused", optimize=True, fuse_transformer=True)
    fusion = res.metadata["graph"]["passes"][0]
    assert not fusion["applied"] and fusion["reason"].startswith("dropped: output")
    assert list(res.metadata["graph"]["node_counts"]) == ["original", "onnxslim"]
    assert not res.metadata["graph"]["contrib_ops"]
    assert not opt.has_contrib_ops(onnx.load(str(res.path)))  # the shipped graph is the slimmed one


# ---- static batch ----------------------------------------------------------------------------------


def _dims(values):
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def test_static_batch_export_has_only_static_shapes(exported):
    res = exported("fused", 4, "slim")
    model = onnx.load(str(res.path))
    assert _dims(model.graph.input) == {"frames": [4, 16, 16, 3]}
    assert _dims(model.graph.output) == {"z": [4, 8], "z_mapped": [4, 8], "position": [4, 6]}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info
    assert all(all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim) for v in inferred)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape", "Expand", "Sqrt"}, ops
    assert res.metadata["graph"]["batch"] == 4 and res.parity["z"] <= Z_ATOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(res.path, {"frames": frames(3)})  # a static graph refuses another batch size


def test_head_inputs_static_batch_keeps_k_symbolic(exported):
    res = exported("head_inputs", 2, "slim")
    model = onnx.load(str(res.path))
    assert _dims(model.graph.input) == {"frames": [2, 16, 16, 3], "head_weight": ["K", 8], "head_bias": ["K"]}
    assert _dims(model.graph.output) == {"z": [2, 8], "head": [2, "K"]}


def test_dynamic_batch_stays_dynamic(exported):
    res = exported("fused", 0, "slim")
    assert _dims(onnx.load(str(res.path)).graph.input)["frames"] == ["batch", 16, 16, 3]
    for b in (1, 5):
        assert run(res.path, {"frames": frames(b)})["z"].shape == (b, 8)
    assert res.metadata["graph"]["batch"] is None


def test_attention_scale_is_a_constant_even_unoptimised(agent, tmp_path):
    for fused_attn in (True, False):
        enc, meta, _ = agent
        enc.set_fused_attn(fused_attn)
        try:
            export_onnx(enc, meta, tmp_path / "a.onnx", mode="encoder_only", config=OnnxExportConfig(optimize=False))
        finally:
            enc.set_fused_attn(True)
        assert "Sqrt" not in {n.op_type for n in onnx.load(str(tmp_path / "a.onnx")).graph.node}


def test_split_qkv_export_form_is_the_same_maths_and_leaves_the_encoder_alone(agent):
    from jepa_edge.export.edge_model import EdgeModel, EdgeModelError, SplitQKVAttention

    enc = agent[0]
    before = enc.blocks[0].attn
    graph = EdgeModel(enc, None, "encoder_only", attention="split_qkv")
    assert isinstance(graph.encoder.blocks[0].attn, SplitQKVAttention) and enc.blocks[0].attn is before
    x = frames(3)
    with torch.no_grad():
        got = graph(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, torch_z(enc, x), rtol=0, atol=1e-6)
    with pytest.raises(EdgeModelError, match="unknown attention form"):
        EdgeModel(enc, None, "encoder_only", attention="flash")


@pytest.mark.parametrize("head_dim", [8, 16, 24, 32, 48, 64])
def test_explicit_sdpa_scale_is_bit_identical_to_the_default(head_dim):
    """The model passes scale=1/sqrt(hd) (a constant for the export): training numerics must not move."""
    g = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(2, 3, 17, head_dim, generator=g) for _ in range(3))
    assert torch.equal(F.scaled_dot_product_attention(q, k, v),
                       F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim)))


# ---- node counts ---------------------------------------------------------------------------------


def test_node_counts_before_and_after_each_pass(exported):
    res = exported("fused", 4, "fused")
    counts = res.metadata["graph"]["node_counts"]
    assert list(counts) == ["original", "transformer_fusion", "onnxslim"]
    totals = [sum(c.values()) for c in counts.values()]
    assert totals[0] > totals[1] > totals[2]
    final = onnx.load(str(res.path))
    assert opt.node_counts(final) == counts["onnxslim"] and totals[2] == len(final.graph.node)
    assert counts["onnxslim"]["com.microsoft.Attention"] == 2  # both blocks fused; the flatten pool has no softmax
    assert "Softmax" not in counts["onnxslim"] and "Softmax" in counts["original"]
    assert opt.node_count_summary(counts) == f"original {totals[0]} → transformer_fusion {totals[1]} → onnxslim " \
                                        f"{totals[2]} nodes"
    ort_all = opt.ort_optimized_counts(onnx.load(str(exported("fused", 4, "original").path)))
    assert 0 < sum(ort_all.values()) < totals[0]


def test_no_passes_still_records_node_counts(exported):
    res = exported("fused", 4, "original")
    graph = res.metadata["graph"]
    assert graph["passes"] == [] and list(graph["node_counts"]) == ["original"]
    assert sum(graph["node_counts"]["original"].values()) == len(onnx.load(str(res.path)).graph.node)


def test_missing_onnxslim_is_a_clear_error_or_skipped_by_default(agent, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import onnxslim → ImportError
    with pytest.raises(opt.OptimizeError, match=r"jepa-edge\[export\].*--no-optimize"):
        export(agent, tmp_path / "x.onnx", "encoder_only", optimize=True)
    assert not (tmp_path / "x.onnx").exists()
    res = export(agent, tmp_path / "auto.onnx", "encoder_only")  # optimize=None: on only where onnxslim is installed
    assert res.metadata["graph"]["passes"] == []
    with pytest.raises(opt.OptimizeError, match="atol"):
        opt.OptimizeConfig(atol=0).validate()


# ---- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(agent, tmp_path_factory):
    from jepa_edge.train.checkpoint import save_agent

    enc = agent[0]
    path = tmp_path_factory.mktemp("runs") / "agentB"
    save_agent(path, enc, {"name": "agentB", "view": "oblique", "encoder": asdict(enc.cfg)})
    return path


@needs_onnxslim
def test_cli_export_static_batch_fused_prints_node_counts(run_dir, tmp_path):
    from jepa_edge.cli import app

    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--mode", "encoder-only", "--batch-size", "2",
                                 "--optimize", "--fuse-transformer"])
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("model nodes (batch size 2):")]
    assert len(line) == 1 and "original" in line[0] and "transformer_fusion" in line[0], r.output
    meta = read_metadata(out)
    assert meta["graph"]["batch"] == 2 and meta["graph"]["contrib_ops"]
    r = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "t.onnx"), "--mode", "encoder-only",
                                 "--trt", "--fuse-transformer"])
    assert r.exit_code == 2 and "TensorRT cannot parse" in " ".join(r.output.split())


# ---- presets and untrained runs --------------------------------------------------------------------


def test_vit_tiny_preset_is_vit_tiny_and_demo_is_the_default():
    assert preset_config("demo") == RunConfig()
    enc = preset_config("vit-tiny").jepa.encoder
    assert (enc.img_size, enc.patch_size, enc.embed_dim, enc.depth, enc.num_heads, enc.mlp_ratio) == \
        (224, 16, 192, 12, 3, 4.0)
    assert preset_config("vit-tiny").data.img_size == 224 and set(PRESETS) == {"demo", "vit-tiny", "gpu", "3d"}
    with pytest.raises(ConfigError, match="unknown preset 'vit-huge'"):
        preset_config("vit-huge")


@pytest.mark.slow
def test_untrained_vit_tiny_run_exports_and_runs_one_frame(tmp_path):
    run_path = tmp_path / "vit-tiny"
    fp = save_untrained_run(run_path, "vit-tiny", seed=0)
    enc, meta = load_agent(run_path)
    assert meta["fingerprint"] == fp and meta["untrained"] and meta["step"] == 0
    assert sum(p.numel() for p in enc.parameters()) > 5_000_000  # ViT-Tiny: ~5.5 M parameters
    # the same export path as the CLI; onnxslim off only to keep this test fast (the passes are tested above)
    res = export_agent(run_path, tmp_path / "vt.onnx", mode="encoder_only", config=OnnxExportConfig(batch=1, optimize=False))
    assert res.metadata["input"]["height"] == 224 and res.metadata["latent_dim"] == 192
    x = frames(1, side=224)
    z = run(res.path, {"frames": x})["z"]
    assert z.shape == (1, 192)
    np.testing.assert_allclose(z, torch_z(enc, x), atol=Z_ATOL)


@needs_onnxslim
@pytest.mark.slow
def test_graph_nodes_bench_script_writes_a_table(tmp_path, monkeypatch, capsys):
    from scripts import run_script

    out = tmp_path / "gn.json"
    run_script("graph_nodes", ["--presets", "demo", "--batches", "1", "--out", str(out)], monkeypatch)
    stdout = capsys.readouterr().out
    [row] = json.loads(out.read_text())["results"]
    assert row["preset"] == "demo" and row["batch"] == 1 and row["dropped"] == []
    nodes = row["nodes"]
    assert nodes["original"] > nodes["ort_all"] and nodes["original"] > nodes["onnxslim"] > nodes["fused"] > 0
    assert "demo" in stdout and str(nodes["fused"]) in stdout
