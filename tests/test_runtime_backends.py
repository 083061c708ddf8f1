"""Backends on real ONNX Runtime sessions: parity of fused / head_inputs / numpy-unfused, and clear errors."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gpu import skip_or_fail, trt_missing
from onnx_fixtures import make_encoder, reference_head, tiny_models

from jepa_edge.config import ConfigError
from jepa_edge.runtime import (
    BackendUnavailableError,
    HeadModeError,
    OrtConfig,
    RuntimeModelError,
    available_backends,
    load_model,
)
from jepa_edge.runtime.backend_trt import TrtConfig, engine_meta, read_sidecar
from jepa_edge.runtime.headswap import HeadStage

ATOL = 2e-5  # float32 MatMul/Gemm reassociation vs numpy; the values are O(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return tiny_models(d, enc_seed=0, frames_seed=1)


def test_fused_head_inputs_and_numpy_unfused_agree_with_numpy_reference(tiny):
    enc, head, frames = tiny["enc"], tiny["head"], tiny["frames"]
    z_ref = enc.z(frames)
    want = {"z": z_ref, **head.split(head.apply(z_ref))}

    fused = load_model(tiny["fused"], "ort-cpu")
    graph = load_model(tiny["head_inputs"], "ort-cpu")
    graph.set_head(head)
    unfused = load_model(tiny["fused"], "ort-cpu", encoder_only=True)
    numpy_stage = HeadStage(unfused, "numpy", head)
    assert (fused.meta.mode, graph.meta.mode, unfused.meta.mode) == ("fused", "head_inputs", "encoder_only")
    for batch in (frames[:1], frames):
        n = len(batch)
        results = {
            "fused": fused.infer(batch),
            "head_inputs": graph.infer(batch),
            "numpy-unfused": numpy_stage(unfused.infer(batch)),
        }
        for name, out in results.items():
            assert set(out) == {"z", "z_mapped", "position"}, name
            for key, value in want.items():
                np.testing.assert_allclose(out[key], value[:n], atol=ATOL, rtol=0, err_msg=f"{name}:{key}")


def test_head_inputs_model_without_head_returns_only_z_and_swaps(tiny):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(tiny["head_inputs"], "ort-cpu")
    out = model.infer(frames[:2])
    assert set(out) == {"z"}
    np.testing.assert_allclose(out["z"], enc.z(frames[:2]), atol=ATOL)
    head2 = reference_head(enc, seed=7)
    model.set_head(head2)
    np.testing.assert_allclose(model.infer(frames[:2])["position"],
                               head2.split(head2.apply(enc.z(frames[:2])))["position"], atol=ATOL)


def test_set_head_on_fused_model_says_reexport(tiny):
    model = load_model(tiny["fused"], "ort-cpu")
    with pytest.raises(HeadModeError, match="--mode head-inputs.*--head-mode numpy"):
        model.set_head(tiny["head"])


def test_head_stage_modes_are_model_numpy_or_auto(tiny):
    fused, cut = load_model(tiny["fused"], "ort-cpu"), load_model(tiny["fused"], "ort-cpu", encoder_only=True)
    assert (HeadStage(fused, "auto").mode, HeadStage(cut, "auto").mode) == ("model", "numpy")
    with pytest.raises(HeadModeError, match="encoder-only model has no head; pass --head-mode numpy"):
        HeadStage(cut, "model")
    with pytest.raises(ValueError, match="'graph'.*--head-mode"):  # the old name is gone, not aliased
        HeadStage(fused, "graph")


def test_set_head_refuses_other_encoder(tiny):
    model = load_model(tiny["head_inputs"], "ort-cpu")
    other = reference_head(make_encoder(16, 12, 8, seed=5))
    with pytest.raises(RuntimeModelError, match="built for encoder"):
        model.set_head(other)
    wrong_dim = reference_head(make_encoder(16, 12, 6, seed=0))
    with pytest.raises(RuntimeModelError, match="latent dim"):
        model.set_head(wrong_dim)


def test_metadata_parsed(tiny):
    meta = load_model(tiny["fused"], "ort-cpu").meta
    assert meta.input_size == (16, 12) and meta.latent_dim == 8
    assert meta.agent_fingerprint == tiny["enc"].fingerprint
    assert [o.name for o in meta.head_outputs] == ["z_mapped", "position"]


def _rewrite_meta(src, dst, **changes):
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    if changes.pop("drop", False):
        props.pop("jepa_edge")
    else:
        meta = json.loads(props["jepa_edge"])
        meta.update(changes)
        props["jepa_edge"] = json.dumps(meta)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize(
    "change, match",
    [
        ({"drop": True}, "no metadata_props"),
        ({"format": "other"}, "expected 'jepa-edge/onnx'"),
        ({"version": 9}, "version 9 is not supported"),
        ({"mode": "weird"}, "unknown export mode"),
        ({"input": {"name": "frames", "layout": "NCHW", "dtype": "uint8", "channels": "BGR"}}, "input.layout"),
    ],
)
def test_bad_metadata_is_refused(tiny, tmp_path, change, match):
    path = _rewrite_meta(tiny["fused"], tmp_path / "bad.onnx", **change)
    with pytest.raises(RuntimeModelError, match=match):
        load_model(path, "ort-cpu")


def test_graph_hw_that_disagrees_with_metadata_is_refused_at_load(tiny, tmp_path):
    """A graph with static H×W 16x12 whose metadata says 20x12 fails at load, naming both, not at frame 1."""
    meta = json.loads({p.key: p.value for p in onnx.load(str(tiny["fused"])).metadata_props}["jepa_edge"])
    path = _rewrite_meta(tiny["fused"], tmp_path / "bad_hw.onnx", input={**meta["input"], "height": 20})
    for io_binding in (True, False):
        with pytest.raises(RuntimeModelError, match=r"bad_hw\.onnx: .*16x12 .*20x12.*re-export"):
            load_model(path, "ort-cpu", OrtConfig(io_binding=io_binding))


def test_frames_are_validated(tiny):
    model = load_model(tiny["fused"], "ort-cpu")
    with pytest.raises(ValueError, match=r"uint8 BGR frames shaped \(B, H, W, 3\)"):
        model.infer(tiny["frames"].astype(np.float32))
    with pytest.raises(ValueError, match="frames\\[None\\]"):
        model.infer(tiny["frames"][0])
    with pytest.raises(ValueError, match="resize"):
        model.infer(np.zeros((1, 12, 16, 3), np.uint8))


def test_session_options_applied(tiny):
    model = load_model(tiny["fused"], "ort-cpu", OrtConfig(intra_op_threads=1))
    assert model._sess.get_session_options().intra_op_num_threads == 1
    assert model._sess.get_providers() == ["CPUExecutionProvider"]
    model = load_model(tiny["fused"], "ort-cpu", {"intra_op_threads": 2, "graph_optimization": "basic"})
    assert model.config.intra_op_threads == 2
    with pytest.raises(ConfigError, match="unknown key"):
        load_model(tiny["fused"], "ort-cpu", {"threads": 2})
    with pytest.raises(ValueError, match="graph_optimization"):
        load_model(tiny["fused"], "ort-cpu", {"graph_optimization": "max"})


def test_unknown_backend_and_wrong_file_kind(tiny):
    with pytest.raises(ValueError, match="unknown backend"):
        load_model(tiny["fused"], "onnx")
    assert "ort-cpu" in available_backends()
    with pytest.raises(FileNotFoundError, match="jepa-edge export"):
        load_model(tiny["fused"].with_name("missing.onnx"), "ort-cpu")


INSTALL = r"pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'jepa-edge\[gpu\]'"


@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt"])
def test_gpu_provider_missing_is_an_error_not_a_cpu_fallback(tiny, backend, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match=INSTALL):  # one ONNX Runtime build, never both
        load_model(tiny["fused"], backend)


def test_provider_dropped_at_session_build_is_an_error(tiny, monkeypatch):
    """ONNX Runtime drops the CUDA EP (with a warning) when its CUDA/cuDNN libraries do not load: say so."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda model, so, providers: real(model, so, providers=["CPUExecutionProvider"]))
    with pytest.raises(BackendUnavailableError, match="dropped CUDAExecutionProvider.*" + INSTALL):
        load_model(tiny["fused"], "ort-cuda")


def test_tensorrt_missing_names_the_extra(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails here, installed or not
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailableError, match=r"jepa-edge\[trt\]"):
        load_model(engine, "tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"jepa-edge\[trt\]"):
        load_model(engine)  # auto picks TensorRT for an .engine


def test_engine_sidecar_checks_without_tensorrt(tiny, tmp_path):
    """Sidecar parsing and the ONNX hash check are plain Python: tested here, used by TrtModel."""
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(tiny["fused"].read_bytes())
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(RuntimeModelError, match="sidecar model.engine.json is missing"):
        read_sidecar(engine)
    meta_json = json.loads({p.key: p.value for p in onnx.load(str(tiny["fused"])).metadata_props}["jepa_edge"])
    side = {"format": "jepa-edge/trt-engine", "version": 2, "precision": "fp16", "tf32": True,
            "tensorrt_version": "10.0", "gpu": {"compute_capability": "8.7"},
            "engine": {"sha256": hashlib.sha256(b"plan").hexdigest(), "bytes": 4},
            "onnx": {"path": "model.onnx", "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
            "metadata": meta_json}
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    assert read_sidecar(engine) == side
    meta = engine_meta(engine, side, TrtConfig())  # the ONNX beside it is hash-checked
    assert meta.mode == "fused" and meta.agent_fingerprint == tiny["enc"].fingerprint and meta.latent_dim == 8
    with pytest.raises(RuntimeModelError, match="stale, rebuild"):
        engine_meta(engine, {**side, "onnx": {"path": "model.onnx", "sha256": "0" * 64}}, TrtConfig())
    onnx_path.unlink()
    assert engine_meta(engine, side, TrtConfig()).latent_dim == 8  # metadata comes from the sidecar
    (tmp_path / "model.engine.json").write_text(json.dumps({"onnx_sha256": "0" * 64, "precision": "fp16"}))
    with pytest.raises(RuntimeModelError, match="not a jepa-edge engine sidecar"):  # the legacy dialect
        read_sidecar(engine)
    (tmp_path / "model.engine.json").write_text("{oops")
    with pytest.raises(RuntimeModelError, match="not valid JSON"):
        read_sidecar(engine)


# ---- accelerators: real code paths, skipped (or failed under JEPA_EDGE_REQUIRE_GPU=1) without them ----------
def _require_cuda_ep() -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skip_or_fail(f"needs onnxruntime-gpu's CUDAExecutionProvider (this onnxruntime {ort.__version__} has "
                     f"{ort.get_available_providers()})")


# Tolerance per precision, times the reference's scale max(1, max|ref|): fp32 (TF32 off) differs from numpy only by
# summation order, ~1e-6 relative, so 1e-4 is generous; TF32 rounds MatMul inputs to a 10-bit mantissa (~5e-4
# relative per product, the K=576 sum grows it), so 1e-2.
GPU_TOL = {"fp32": 1e-4, "tf32": 1e-2}


def _close(got: np.ndarray, want: np.ndarray, precision: str, what: str) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=GPU_TOL[precision] * scale, rtol=0,
                               err_msg=f"{what} ({precision}, atol {GPU_TOL[precision]}×{scale:.3g})")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("io_binding", [True, False])
def test_ort_cuda_parity(tiny, precision, io_binding):
    _require_cuda_ep()
    enc, head, frames = tiny["enc"], tiny["head"], tiny["frames"]
    model = load_model(tiny["head_inputs"], "ort-cuda", OrtConfig(precision=precision, io_binding=io_binding))
    use_tf32 = model.provider_options["CUDAExecutionProvider"].get("use_tf32")  # None: onnxruntime < 1.18
    assert use_tf32 in (None, "1" if precision == "tf32" else "0")
    model.set_head(head)
    for batch in (frames[:1], frames, frames[:1]):  # the IOBinding path reuses its bound buffers on the third
        out = model.infer(batch)
        want_z = enc.z(batch)
        _close(out["z"], want_z, model.precision, "z")
        _close(out["position"], head.split(head.apply(want_z))["position"], model.precision, "position")
    if io_binding:
        assert set(model.last_stages) == {"h2d", "compute", "d2h"}


@pytest.mark.gpu
def test_ort_cuda_graph_replays_new_frames(tiny):
    """Fused model, CUDA graph per batch size: warm-up runs (1-2), the capture, then replays all match numpy."""
    _require_cuda_ep()
    enc, head, frames = tiny["enc"], tiny["head"], tiny["frames"]
    model = load_model(tiny["fused"], "ort-cuda", OrtConfig(cuda_graph=True))
    rng = np.random.default_rng(11)
    for batch in (1, 4) * 5:  # five frames per size: at least two replays with new frames after the capture
        f = rng.integers(0, 256, (batch, *frames.shape[1:]), dtype=np.uint8)
        out = model.infer(f)
        _close(out["z"], enc.z(f), model.precision, f"z batch {batch}")
        _close(out["position"], head.split(head.apply(enc.z(f)))["position"], model.precision, "position")
    assert model.cuda_graph_status.startswith("on"), model.cuda_graph_status
    assert sorted(model._graphs) == [1, 4]
    assert model.provider_options["CUDAExecutionProvider"].get("enable_cuda_graph", "0") == "0"  # the main session


@pytest.mark.gpu
def test_head_inputs_on_ort_cuda_runs_as_an_encoder_only_cuda_graph_with_a_numpy_head(tiny):
    from jepa_edge.runtime.backends import load_model_for_run
    from jepa_edge.runtime.headswap import HeadStage

    _require_cuda_ep()
    enc, head, frames = tiny["enc"], tiny["head"], tiny["frames"]
    with load_model_for_run(tiny["head_inputs"], "ort-cuda") as model:
        assert model.meta.mode == "encoder_only" and model.cuda_graph_status.startswith("on"), model.cuda_graph_status
        stage = HeadStage(model, "auto", head)
        assert stage.mode == "numpy"
        for batch in (frames[:1], frames[:1], frames[:1], frames[:1]):  # warm-up, capture, replays
            out = stage(model.infer(batch))
            _close(out["z"], enc.z(batch), model.precision, "z")
            _close(out["position"], head.split(head.apply(enc.z(batch)))["position"], model.precision, "position")
        assert sorted(model._graphs) == [1]


@pytest.mark.trt
@pytest.mark.gpu
def test_tensorrt_engine_parity_and_head_swap(tiny, tmp_path):
    from onnx_fixtures import build_engine

    missing = trt_missing()
    if missing:
        skip_or_fail(*missing)

    enc, head, frames = tiny["enc"], tiny["head"], tiny["frames"]
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(tiny["head_inputs"].read_bytes())
    engine = build_engine(onnx_path, tmp_path / "model.engine", max_batch=8, max_head=32)
    with load_model(engine, "tensorrt") as model:
        assert model.max_batch == 8
        assert set(model.infer(frames)) == {"z"}
        model.set_head(head)
        out = model.infer(frames)
        np.testing.assert_allclose(out["z"], enc.z(frames), atol=1e-3)
        np.testing.assert_allclose(out["position"], head.split(head.apply(enc.z(frames)))["position"], atol=1e-3)
        head2 = reference_head(enc, seed=9)
        model.set_head(head2)  # uploaded to the idle buffers, no rebuild
        np.testing.assert_allclose(model.infer(frames[:1])["position"],
                                   head2.split(head2.apply(enc.z(frames[:1])))["position"], atol=1e-3)
        with pytest.raises(ValueError, match="max batch 8"):
            model.infer(np.zeros((9, 16, 12, 3), np.uint8))
