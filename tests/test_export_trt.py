"""TensorRT build: clear failure without TensorRT, config/profile/parser-error helpers, INT8
range-calibration data and the explicit-quantization (Q/DQ) ONNX; every ``build_engine`` step against
a fake TensorRT (tests/fake_trt.py) with the real sidecar round-tripped into ``TrtModel``; the real
build runs only where TensorRT and a CUDA GPU exist (marked trt/gpu, skipped or failed by tests/gpu.py)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from jepa_edge.calib.head import build_head
from jepa_edge.config import ConfigError, from_dict
from jepa_edge.export import Int8Config, Int8DataError, export_onnx, load_int8_frames
from jepa_edge.export.int8 import downstream_nodes, int8_batches, quantize_qdq
from jepa_edge.export.onnx_export import encoder_fingerprint
from jepa_edge.export.trt_build import (
    TrtBuildConfig,
    TrtBuildError,
    _resolve_fp16,
    _resolve_int8,
    build_engine,
    engine_profile,
    parser_errors,
    require_tensorrt,
)
from jepa_edge.runtime.errors import BackendUnavailableError
from jepa_edge.train.model import Encoder, EncoderConfig

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "latent_dim": 8}


class _Probe:  # the two attributes build_head reads from a probe, plus names
    def __init__(self, name: str, fingerprint: str, k: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.name, self.task, self.labels = name, "regression", [f"{name}{i}" for i in range(k)]
        self.agent_fingerprint = fingerprint
        self.weight, self.bias = rng.standard_normal((k, 8)), rng.standard_normal(k)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(**TINY))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enc.eval()
    meta = {"name": "agentB", "view": "oblique", "fingerprint": encoder_fingerprint(enc)}
    head = build_head(meta["fingerprint"], 8, probes=[_Probe("position", meta["fingerprint"], 4, 1)])
    root = tmp_path_factory.mktemp("trt")
    out = {"enc": enc, "head": head, "dir": root}
    for mode in ("fused", "head_inputs"):
        (root / mode).mkdir()
        out[mode] = export_onnx(enc, meta, root / mode / "model.onnx", head=head, mode=mode).path
    return out


# ---- without TensorRT: fail at once, naming the extra ---------------------------------------


def test_build_without_tensorrt_fails_at_once_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError, installed or not
    with pytest.raises(BackendUnavailableError, match=r"pip install 'jepa-edge\[trt\]'"):
        require_tensorrt()
    # before anything else: the ONNX is not even looked at, no file is written
    with pytest.raises(BackendUnavailableError, match=r"pip install 'jepa-edge\[trt\]'"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "model.engine", TrtBuildConfig(precision="int8"))
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_older_than_8_5_is_refused_at_once(monkeypatch):
    from fake_trt import install_fakes

    install_fakes(monkeypatch, "8.4.3")
    with pytest.raises(TrtBuildError, match=r"TensorRT 8\.4\.3 is too old: jepa-edge needs >= 8\.5"):
        require_tensorrt()


# ---- config, profile, parser errors (no GPU needed) -------------------------------------------


def test_build_config_is_typed_and_strict():
    cfg = from_dict(TrtBuildConfig, {"precision": "fp16", "max_batch": 4,
                                     "int8": {"source": "cam.mp4", "n_frames": 64}})
    assert isinstance(cfg.int8, Int8Config) and cfg.int8.n_frames == 64
    cfg.validate()
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrtBuildConfig, {"precison": "fp16"})
    for bad, match in (({"precision": "int4"}, "precision"), ({"min_batch": 4, "opt_batch": 2}, "min_batch"),
                       ({"opt_head": 999}, "head profile"), ({"int8_method": "magic"}, "int8_method"),
                       ({"precision": "int8", "int8": {"n_frames": 4, "batch_size": 8}}, "batch_size"),
                       ({"max_head": 32, "opt_head": 64}, "--opt-head at most --max-head")):
        with pytest.raises(ValueError, match=match):
            from_dict(TrtBuildConfig, bad).validate()


def test_profile_covers_batch_and_head_width():
    cfg = TrtBuildConfig(min_batch=1, opt_batch=2, max_batch=8, min_head=1, opt_head=16, max_head=64)
    assert engine_profile("fused", 16, 16, 8, cfg) == {
        "frames": {"min": [1, 16, 16, 3], "opt": [2, 16, 16, 3], "max": [8, 16, 16, 3]}}
    prof = engine_profile("head_inputs", 16, 16, 8, cfg)
    assert prof["head_weight"] == {"min": [1, 8], "opt": [16, 8], "max": [64, 8]}
    assert prof["head_bias"] == {"min": [1], "opt": [16], "max": [64]}
    # opt_head left at 0: min(72, max_head), so any --max-head validates (it used to need >= 72)
    small = TrtBuildConfig(max_head=32)
    small.validate()
    assert engine_profile("head_inputs", 16, 16, 8, small)["head_bias"] == {"min": [1], "opt": [32], "max": [32]}
    assert TrtBuildConfig().head_profile == (1, 72, 256)


class _FakeError:
    def __init__(self, **kw):
        self.kw = kw

    def __getattr__(self, name):
        if name in self.kw:
            return lambda: self.kw[name]
        raise AttributeError(name)


def test_every_parser_error_is_reported_with_its_node():
    errs = [_FakeError(code=8, desc="Unsupported op Dropout (training_mode)", node=41,
                       node_name="/attn/Dropout", node_operator="Dropout", file="ModelImporter.cpp", line=949,
                       func="parseNode"),
            _FakeError(code=4, desc="Invalid graph", node=-1)]  # TensorRT < 8.6: no node_name/node_operator
    parser = SimpleNamespace(num_errors=2, get_error=lambda i: errs[i])
    lines = parser_errors(parser)
    assert lines[0] == ("1/2 node 41 '/attn/Dropout' (Dropout): Unsupported op Dropout (training_mode) (code 8) "
                        "[ModelImporter.cpp:949 parseNode]")
    assert lines[1] == "2/2 graph: Invalid graph (code 4)"


def _fake_trt(version: str, implicit: bool) -> SimpleNamespace:
    """TensorRT 10 (BuilderFlag.FP16/INT8, implicit calibrator) or 11 (strongly typed only; checked against
    the strings of the tensorrt-cu12-bindings 11.4 wheel: no FP16/INT8 flag, no IInt8EntropyCalibrator2)."""
    flags = SimpleNamespace(FP16=1, INT8=2) if implicit else SimpleNamespace()
    mod = SimpleNamespace(__version__=version, BuilderFlag=flags,
                          NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    if implicit:
        mod.IInt8EntropyCalibrator2 = object
    return mod


def test_int8_method_follows_the_tensorrt_api_version():
    trt10, trt11 = _fake_trt("10.3.0", implicit=True), _fake_trt("11.0.0", implicit=False)
    assert _resolve_int8(trt10, TrtBuildConfig(precision="int8"), already_qdq=False) == "calibrator"
    assert _resolve_int8(trt11, TrtBuildConfig(precision="int8"), already_qdq=False) == "qdq"
    assert _resolve_int8(trt10, TrtBuildConfig(precision="int8", int8_method="qdq"), already_qdq=False) == "qdq"
    assert _resolve_int8(trt10, TrtBuildConfig(precision="int8"), already_qdq=True) == "qdq"
    with pytest.raises(TrtBuildError, match="no implicit INT8 calibration .* int8_method='qdq'"):
        _resolve_int8(trt11, TrtBuildConfig(precision="int8", int8_method="calibrator"), already_qdq=False)
    with pytest.raises(TrtBuildError, match="already holds Q/DQ"):
        _resolve_int8(trt10, TrtBuildConfig(precision="int8", int8_method="calibrator"), already_qdq=True)


def test_fp16_method_follows_the_tensorrt_api_version():
    trt10, trt11 = _fake_trt("10.3.0", implicit=True), _fake_trt("11.4.0", implicit=False)
    assert _resolve_fp16(trt10, TrtBuildConfig(precision="fp16")) == "flag"
    assert _resolve_fp16(trt11, TrtBuildConfig(precision="fp16")) == "onnx"  # the default works on TensorRT 11
    assert _resolve_fp16(trt10, TrtBuildConfig(precision="fp16", fp16_method="onnx")) == "onnx"
    with pytest.raises(TrtBuildError, match="no BuilderFlag.FP16 .* fp16_method='onnx'"):
        _resolve_fp16(trt11, TrtBuildConfig(precision="fp16", fp16_method="flag"))
    trt8 = SimpleNamespace(__version__="8.5.0", BuilderFlag=SimpleNamespace(FP16=1),
                           NetworkDefinitionCreationFlag=SimpleNamespace())
    with pytest.raises(TrtBuildError, match="cannot build strongly typed"):
        _resolve_fp16(trt8, TrtBuildConfig(precision="fp16", fp16_method="onnx"))
    with pytest.raises(ValueError, match="fp16_method"):
        TrtBuildConfig(fp16_method="half").validate()


# ---- fp16 ONNX: what a strongly typed TensorRT network (TensorRT 11) is built from ----------------


@pytest.mark.parametrize("mode", ["fused", "head_inputs"])
def test_fp16_onnx_keeps_io_head_and_layernorm_in_fp32_and_stays_close(exported, tmp_path, mode):
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    from jepa_edge.export.fp16 import write_fp16_onnx

    src = onnx.load(str(exported[mode]))
    path, report = write_fp16_onnx(exported[mode], tmp_path / "m.fp16.onnx")
    half = onnx.load(str(path))
    onnx.checker.check_model(half, full_check=True)
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]
    assert io(half) == io(src)  # uint8 frames in, float32 z / head outputs out: the runtime contract holds
    assert list(half.metadata_props) == list(src.metadata_props)
    head = {n.name for n in downstream_nodes(src, "z")}
    assert head and head <= set(report.kept_fp32_nodes)
    assert {n.name for n in src.graph.node if n.op_type == "LayerNormalization"} <= set(report.kept_fp32_nodes)
    types = {t.name: t.data_type for t in half.graph.initializer}
    encoder_weights = [t for t in src.graph.initializer if t.name.startswith("encoder.") and "norm" not in t.name
                       and t.data_type == TensorProto.FLOAT]
    assert encoder_weights and all(types[t.name] == TensorProto.FLOAT16 for t in encoder_weights)
    if mode == "fused":
        assert types["head.weight"] == TensorProto.FLOAT  # the head stays float32
    assert report.weights_clipped == 0 and report.casts_inserted > 0

    # numpy's reference evaluator computes fp16 ops in fp16 (ONNX Runtime CPU would upcast them)
    rng = np.random.default_rng(0)
    feed = {"frames": rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)}
    if mode == "head_inputs":
        feed |= {"head_weight": exported["head"].weight, "head_bias": exported["head"].bias}
    ref = ReferenceEvaluator(src).run(None, feed)
    got = ReferenceEvaluator(half).run(None, feed)
    for out, a, b in zip(src.graph.output, ref, got):
        assert b.dtype == np.float32
        err, scale = float(np.abs(a - b).max()), float(np.abs(a).max())
        assert err <= 5e-3 * scale + 1e-3, f"{out.name}: fp16 error {err:.2e} vs scale {scale:.2e}"
        assert err > 0  # it really ran in fp16


def test_fp16_conversion_clips_out_of_range_weights_and_refuses_control_flow():
    from onnx import TensorProto, helper, numpy_helper

    from jepa_edge.export.fp16 import Fp16Error, convert_to_fp16

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    w = numpy_helper.from_array(np.array([1e6, -2.0], np.float32), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("Mul", ["x", "w"], ["z"], name="mul")], "g",
                                               [x], [z], [w]), opset_imports=[helper.make_opsetid("", 17)])
    half, report = convert_to_fp16(model, keep_head=False)
    assert report.weights_clipped == 1
    assert numpy_helper.to_array(half.graph.initializer[0]).tolist() == [65504.0, -2.0]
    assert [v.type.tensor_type.elem_type for v in half.graph.output] == [TensorProto.FLOAT]

    then = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [], [z])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    looped = helper.make_model(helper.make_graph(
        [helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then)], "g", [cond, x], [z]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Fp16Error, match="control flow"):
        convert_to_fp16(looped)


# ---- INT8 range-calibration frames ---------------------------------------------------------------


def test_simulator_frames_fill_whole_batches_from_the_agents_own_view():
    frames = load_int8_frames(Int8Config(n_frames=40, batch_size=16), 16, 16, agent_view="oblique")
    assert frames.shape == (32, 16, 16, 3) and frames.dtype == np.uint8  # 40 → 2 full batches
    assert frames.std() > 10  # real rendered scenes, not a constant
    explicit = load_int8_frames(Int8Config(source="sim:oblique", n_frames=40, batch_size=16), 16, 16, "top")
    np.testing.assert_array_equal(frames, explicit)  # "sim" = the agent's view; sim:VIEW overrides it
    other = load_int8_frames(Int8Config(n_frames=40, batch_size=16), 16, 16, agent_view="top")
    assert not np.array_equal(frames, other)
    with pytest.raises(Int8DataError, match="sim:VIEW"):
        load_int8_frames(Int8Config(n_frames=16, batch_size=16), 16, 16, agent_view="")


def test_video_frames_are_streamed_evenly_and_downscaled(tmp_path, monkeypatch):
    import cv2

    from jepa_edge import world
    from jepa_edge.world import write_video

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (30, 24, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "cam.avi", clip)
    decoded = world.read_video(video)  # the reference: every frame, decoded once
    monkeypatch.setattr(world, "read_video", lambda *a, **k: pytest.fail("the whole video was loaded"))
    frames = load_int8_frames(Int8Config(source=str(video), n_frames=10, batch_size=5), 16, 16)
    picks = np.linspace(0, 29, 10).round().astype(int)
    want = np.stack([cv2.resize(decoded[i], (16, 16), interpolation=cv2.INTER_AREA) for i in picks])
    np.testing.assert_array_equal(frames, want)
    with pytest.raises(Int8DataError, match="fewer than one batch"):
        load_int8_frames(Int8Config(source=str(video), n_frames=64, batch_size=64), 16, 16)
    with pytest.raises(Int8DataError, match="does not exist"):
        load_int8_frames(Int8Config(source=str(tmp_path / "nope.mp4")), 16, 16)
    with pytest.raises(Int8DataError, match="over the 1 MiB cap .* lower --int8-frames"):
        load_int8_frames(Int8Config(source=str(video), n_frames=4096, batch_size=16, max_bytes=1 << 20), 16, 16)
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    with pytest.raises(Int8DataError, match="cannot open"):
        load_int8_frames(Int8Config(source=str(tmp_path / "broken.avi"), n_frames=8, batch_size=8), 16, 16)


def test_recording_folder_gives_the_agents_camera(tmp_path):
    from jepa_edge.world import write_video

    rng = np.random.default_rng(1)
    (tmp_path / "rec").mkdir()
    write_video(tmp_path / "rec" / "oblique.avi", rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    write_video(tmp_path / "rec" / "top.avi", np.zeros((12, 16, 16, 3), np.uint8))
    frames = load_int8_frames(Int8Config(source=str(tmp_path / "rec"), n_frames=8, batch_size=4), 16, 16, "oblique")
    assert frames.shape == (8, 16, 16, 3) and frames.std() > 10  # oblique, not the black top camera
    with pytest.raises(Int8DataError, match="no camera 'side'"):
        load_int8_frames(Int8Config(source=str(tmp_path / "rec"), n_frames=8, batch_size=4), 16, 16, "side")


def test_batches_carry_the_head_for_head_inputs_graphs():
    frames = np.zeros((10, 16, 16, 3), np.uint8)
    batches = int8_batches(frames, 4, (np.ones((3, 8)), np.ones(3)))
    assert len(batches) == 2 and batches[0]["head_weight"].dtype == np.float32
    assert set(batches[0]) == {"frames", "head_weight", "head_bias"}
    with pytest.raises(Int8DataError, match="uint8"):
        int8_batches(frames.astype(np.float32), 4)


# ---- explicit quantization: the Q/DQ ONNX TensorRT builds from -------------------------------


@pytest.mark.parametrize("mode", ["fused", "head_inputs"])
def test_qdq_onnx_is_symmetric_int8_keeps_the_head_float_and_stays_close(exported, tmp_path, mode):
    frames = load_int8_frames(Int8Config(n_frames=48, batch_size=16), 16, 16, agent_view="oblique")
    head = (np.zeros((1, 8), np.float32), np.zeros(1, np.float32)) if mode == "head_inputs" else None
    out = quantize_qdq(exported[mode], tmp_path / "q.onnx", int8_batches(frames, 16, head))
    q = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    quant = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quant) >= 4  # Conv, qkv/proj/mlp/pool matmuls
    for n in quant:  # TensorRT: signed int8, zero point 0
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    head_ops = downstream_nodes(q, "z")
    assert head_ops and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in head_ops)
    assert {p.key for p in q.metadata_props} == {"jepa_edge"}  # the contract travels with it
    feeds = {"frames": frames[:5]}
    if mode == "head_inputs":
        rng = np.random.default_rng(1)
        feeds.update(head_weight=rng.standard_normal((3, 8)).astype(np.float32), head_bias=np.zeros(3, np.float32))
    ref = ort.InferenceSession(str(exported[mode]), providers=["CPUExecutionProvider"]).run(["z"], feeds)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["z"], feeds)[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()  # int8: close, not equal
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


# ---- every build step against a fake TensorRT; the real sidecar round-trips into TrtModel --------------


@pytest.fixture()
def fake10(monkeypatch):
    from fake_trt import install_fakes

    return install_fakes(monkeypatch, "10.3.0")


@pytest.fixture()
def fake11(monkeypatch):
    from fake_trt import install_fakes

    return install_fakes(monkeypatch, "11.4.0")


def _copy_onnx(exported, mode, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(exported[mode].read_bytes())
    return path


def _ort_outputs(onnx_path, feeds):
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_fp32_build_clears_tf32_and_writes_a_sidecar_trtmodel_reads(fake10, exported, tmp_path):
    import hashlib

    from jepa_edge.runtime import load_model

    onnx_path = _copy_onnx(exported, "fused", tmp_path)
    res = build_engine(onnx_path, None, TrtBuildConfig(precision="fp32", max_batch=4))
    side = json.loads(res.sidecar_path.read_text())
    assert side == res.sidecar and side["format"] == "jepa-edge/trt-engine" and side["version"] == 2
    assert side["precision"] == "fp32" and side["tf32"] is False
    assert side["precision_detail"]["builder_flags"] == []  # TF32 cleared: nothing else set
    assert json.loads(res.engine_path.read_bytes())["flags"] == []  # what the (fake) builder really got
    assert side["engine"] == {"sha256": hashlib.sha256(res.engine_path.read_bytes()).hexdigest(),
                              "bytes": res.engine_path.stat().st_size}
    assert side["onnx"] == {"path": "model.onnx", "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
    assert side["gpu"] == {"name": "Emulated Orin", "compute_capability": "8.7", "device_id": 0}
    assert side["profile"]["frames"] == {"min": [1, 16, 16, 3], "opt": [1, 16, 16, 3], "max": [4, 16, 16, 3]}
    assert side["metadata"]["mode"] == "fused" and side["int8"] is None
    assert (tmp_path / "trt_timing.cache").read_bytes() == b"fake timing cache"  # persisted
    frames = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ref = _ort_outputs(onnx_path, {"frames": frames})
    with load_model(res.engine_path) as model:
        assert model.precision == "fp32" and model.tf32 is False and model.max_batch == 4
        out = model.infer(frames)
        assert set(out) == set(ref)
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], atol=1e-5, err_msg=name)  # same ONNX, same ORT


def test_fp32_is_never_recorded_for_a_tf32_engine(fake10, exported, tmp_path, monkeypatch):
    from fake_trt import FakeBuilderConfig

    monkeypatch.setattr(FakeBuilderConfig, "ignore_clear", True)  # a TensorRT whose clear_flag does nothing
    with pytest.raises(TrtBuildError, match="kept BuilderFlag.TF32 set"):
        build_engine(_copy_onnx(exported, "fused", tmp_path), None, TrtBuildConfig(precision="fp32"))
    assert not (tmp_path / "model.engine").exists() and not (tmp_path / "model.engine.json").exists()


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_fp16_build_records_its_method_and_tf32(monkeypatch, exported, tmp_path, version):
    from fake_trt import install_fakes

    from jepa_edge.runtime import load_model

    install_fakes(monkeypatch, version)
    onnx_path = _copy_onnx(exported, "head_inputs", tmp_path)
    res = build_engine(onnx_path, None, TrtBuildConfig(precision="fp16", max_head=16))
    side, detail = res.sidecar, res.sidecar["precision_detail"]
    assert side["precision"] == "fp16" and side["tf32"] is True  # float layers kept in fp32 may use TF32
    plan = json.loads(res.engine_path.read_bytes())
    if version.startswith("10"):
        assert detail["fp16_method"] == "flag" and detail["builder_flags"] == ["FP16", "TF32"]
        assert plan["flags"] == ["FP16", "TF32"] and side["fp16_onnx"] is None
    else:  # TensorRT 11: no BuilderFlag.FP16, the fp16 ONNX is parsed into a strongly typed network
        assert detail["fp16_method"] == "onnx" and detail["strongly_typed"] and plan["flags"] == ["TF32"]
        assert side["fp16_onnx"]["path"] == "model.fp16.onnx" and plan["onnx"].endswith("model.fp16.onnx")
    assert side["profile"]["head_weight"]["opt"] == [16, 8]  # opt head derived from --max-head
    frames = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    head = exported["head"]
    ref = _ort_outputs(onnx_path, {"frames": frames, "head_weight": head.weight, "head_bias": head.bias})
    with load_model(res.engine_path, "tensorrt") as model:
        assert model.precision == "fp16" and model.tf32 is True
        model.set_head(head)
        out = model.infer(frames)
    scale = float(np.abs(ref["z"]).max())
    np.testing.assert_allclose(out["z"], ref["z"], atol=1e-2 * scale)  # fp16: the fake runs the fp16 ONNX (t11)


def test_int8_calibrator_build_pulls_every_batch_from_the_agents_view(fake10, exported, tmp_path):
    onnx_path = _copy_onnx(exported, "head_inputs", tmp_path)
    cfg = TrtBuildConfig(precision="int8", max_head=16, int8=Int8Config(n_frames=40, batch_size=8,
                                                                        cache=str(tmp_path / "int8.cache")))
    res = build_engine(onnx_path, None, cfg, int8_head=exported["head"])
    side = res.sidecar
    assert side["precision"] == "int8" and side["precision_detail"]["int8_method"] == "calibrator"
    assert side["int8"] == {"source": "sim", "view": "oblique", "n_frames": 40, "batch_size": 8,
                            "cache": str(tmp_path / "int8.cache")}  # the agent's own view, not "top"
    assert (tmp_path / "int8.cache").read_bytes() == b"fake calibration cache"
    assert fake10.cudart.mem == {}  # the calibrator's device buffers were freed after the build
    with pytest.raises(TrtBuildError, match="int8_head="):
        build_engine(onnx_path, None, cfg)


def test_int8_on_tensorrt_11_builds_a_qdq_onnx(fake11, exported, tmp_path):
    from jepa_edge.runtime import load_model

    onnx_path = _copy_onnx(exported, "fused", tmp_path)
    cfg = TrtBuildConfig(precision="int8", int8=Int8Config(source="sim:top", n_frames=32, batch_size=16))
    res = build_engine(onnx_path, None, cfg)
    side = res.sidecar
    assert side["precision_detail"]["int8_method"] == "qdq" and side["precision_detail"]["strongly_typed"]
    assert side["int8"]["view"] == "top" and side["quantized_onnx"]["path"] == "model.qdq.onnx"
    frames = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ref = _ort_outputs(onnx_path, {"frames": frames})["z"]
    with load_model(res.engine_path, "tensorrt") as model:
        got = model.infer(frames)["z"]
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99  # int8: close, not equal


def test_engine_that_tensorrt_cannot_deserialise_is_a_clear_error(fake10, exported, tmp_path):
    import hashlib

    from jepa_edge.runtime import RuntimeModelError, load_model

    res = build_engine(_copy_onnx(exported, "fused", tmp_path), None, TrtBuildConfig())
    junk = b"\x00garbage"
    res.engine_path.write_bytes(junk)
    side = json.loads(res.sidecar_path.read_text())
    side["engine"] = {"sha256": hashlib.sha256(junk).hexdigest(), "bytes": len(junk)}  # consistent, still junk
    res.sidecar_path.write_text(json.dumps(side))
    with pytest.raises(RuntimeModelError, match="could not deserialise.*rebuild on this device"):
        load_model(res.engine_path, "tensorrt")


# ---- on a machine with TensorRT and a CUDA GPU --------------------------------------------------


@pytest.fixture()
def real_trt():
    """Skip where TensorRT or the GPU is missing (fail under JEPA_EDGE_REQUIRE_GPU=1 / JEPA_EDGE_REQUIRE_TRT=1)."""
    from gpu import skip_or_fail, trt_missing

    missing = trt_missing()
    if missing:
        skip_or_fail(*missing)


def _reference(exported, frames):
    sess = ort.InferenceSession(str(exported["fused"]), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"frames": frames})))


# Tolerances (relative to max(1, |reference|)): fp32 with TF32 cleared, 1e-3 (kernel reassociation over a
# depth-1 encoder); fp16, 2e-2 (10-bit mantissa through a few matmuls and the head).
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision, fp16_method, atol", [("fp32", "auto", 1e-3), ("fp16", "auto", 2e-2),
                                                        ("fp16", "flag", 2e-2), ("fp16", "onnx", 2e-2)])
def test_trt_engine_matches_onnx_runtime(real_trt, exported, precision, fp16_method, atol):
    import hashlib

    import tensorrt as trt

    from jepa_edge.runtime.backends import load_model

    if fp16_method == "flag" and not hasattr(trt.BuilderFlag, "FP16"):
        pytest.skip(f"TensorRT {trt.__version__} has no BuilderFlag.FP16")
    onnx_path = exported["fused"]
    res = build_engine(onnx_path, onnx_path.with_suffix(".engine"),
                       TrtBuildConfig(precision=precision, fp16_method=fp16_method, max_batch=4))
    side = json.loads(res.sidecar_path.read_text())
    assert side["precision"] == precision and side["onnx"]["sha256"] and side["gpu"]["compute_capability"]
    assert side["tf32"] is (precision != "fp32")
    if precision == "fp16":
        used = side["precision_detail"]["fp16_method"]
        assert used == fp16_method or fp16_method == "auto"
        assert (side["fp16_onnx"] is not None) == (used == "onnx") == side["precision_detail"]["strongly_typed"]
    assert side["metadata"]["mode"] == "fused" and side["profile"]["frames"]["max"] == [4, 16, 16, 3]
    assert (onnx_path.parent / "trt_timing.cache").is_file()  # persisted for the next build
    assert hashlib.sha256(res.engine_path.read_bytes()).hexdigest() == side["engine"]["sha256"]
    frames = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ref = _reference(exported, frames)
    with load_model(res.engine_path, "tensorrt") as model:
        out = model.infer(frames)
        out = model.infer(frames)  # the second call replays the CUDA graph captured after the first
        assert model.graph_status == "on", model.graph_status
        assert set(model.last_stages) == {"h2d", "compute", "d2h", "enqueue"}
        for name in ("z", "position"):
            np.testing.assert_allclose(out[name], ref[name], atol=atol * max(1.0, np.abs(ref[name]).max()))


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("method", ["calibrator", "qdq"])
def test_trt_int8_builds_with_either_quantization_workflow(real_trt, exported, method, tmp_path):
    import tensorrt as trt

    from jepa_edge.runtime.backends import load_model

    if method == "calibrator" and not hasattr(trt, "IInt8EntropyCalibrator2"):
        pytest.skip(f"TensorRT {trt.__version__} has no implicit INT8")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(exported["head_inputs"].read_bytes())
    cfg = TrtBuildConfig(precision="int8", int8_method=method, max_batch=4, max_head=16, opt_head=8,
                         int8=Int8Config(n_frames=64, batch_size=16))
    res = build_engine(onnx_path, None, cfg, int8_head=exported["head"])
    assert res.sidecar["precision"] == "int8" and res.sidecar["precision_detail"]["int8_method"] == method
    frames = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ref = _reference(exported, frames)
    with load_model(res.engine_path, "tensorrt") as model:
        model.set_head(exported["head"])
        out = model.infer(frames)
    assert np.corrcoef(out["z"].ravel(), ref["z"].ravel())[0, 1] > 0.98
    np.testing.assert_allclose(out["position"], ref["position"], atol=0.1 * np.abs(ref["position"]).max())


def _rewrite_onnx(path, edit):
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))
    return path


def test_static_batch_export_gets_a_fixed_batch_profile(fake10, exported, tmp_path):
    """`export --batch N` admits one batch size: the engine profile is (N, N, N) whatever the config's range."""
    def set_static(model):
        props = {p.key: p.value for p in model.metadata_props}
        meta = json.loads(props["jepa_edge"])
        meta["graph"] = {"batch": 2}
        props["jepa_edge"] = json.dumps(meta)
        onnx.helper.set_model_props(model, props)

    onnx_path = _rewrite_onnx(_copy_onnx(exported, "fused", tmp_path), set_static)
    res = build_engine(onnx_path, None, TrtBuildConfig(precision="fp32", max_batch=8))
    assert res.sidecar["profile"]["frames"] == {"min": [2, 16, 16, 3], "opt": [2, 16, 16, 3], "max": [2, 16, 16, 3]}


def test_contrib_op_graph_is_refused_before_building(fake10, exported, tmp_path):
    def add_contrib(model):
        model.graph.node.append(onnx.helper.make_node("FastGelu", ["z"], ["z_gelu"], domain="com.microsoft"))

    onnx_path = _rewrite_onnx(_copy_onnx(exported, "fused", tmp_path), add_contrib)
    with pytest.raises(TrtBuildError, match="contrib ops.*FastGelu.*--fuse-transformer"):
        build_engine(onnx_path, None, TrtBuildConfig(precision="fp32"))
    assert not (tmp_path / "model.engine").exists()
