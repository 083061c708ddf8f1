"""TrtModel on an emulated TensorRT + CUDA runtime (tests/fake_trt.py, CPU only).

Engines are built by the real ``build_engine`` (against the fake builder), so
the sidecar the runtime reads is the real one. Everything TrtModel does —
compatibility checks before deserialising, profile shapes, one allocation per
tensor at the profile maximum, binding by name, the double head buffers, CUDA
graph capture / replay / fallback, stage events, CUDA return-code checks,
freeing — runs for real; only the GPU is emulated (ONNX Runtime computes what
``execute_async_v3`` would). The real TensorRT path is the @trt test in
test_runtime_backends.py.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from fake_trt import cudaError_t, cudaMemcpyKind, install_fakes
from onnx_fixtures import make_encoder, make_model, reference_head

from jepa_edge.runtime import RuntimeModelError, load_model
from jepa_edge.runtime.backend_trt import CudaError, TrtConfig, cuda_call

ATOL = 2e-5  # the fake GPU is ONNX Runtime CPU in float32: only reassociation differences


@pytest.fixture()
def fake(monkeypatch):
    return install_fakes(monkeypatch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    enc = make_encoder(height=8, width=8, latent_dim=4, seed=3)
    return {"enc": enc, "onnx": make_model(d / "model.onnx", enc, "head_inputs"),
            "fused": make_model(d / "fused.onnx", enc, "fused", reference_head(enc, seed=5)),
            "frames": np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)}


def build(tmp_path, onnx_path, max_batch=4, max_head=16, precision="fp32"):
    """The real build_engine on the fake builder: engine + the real sidecar beside a copy of the ONNX."""
    from jepa_edge.export.trt_build import TrtBuildConfig, build_engine

    copy = tmp_path / "model.onnx"
    copy.write_bytes(onnx_path.read_bytes())
    cfg = TrtBuildConfig(precision=precision, max_batch=max_batch, max_head=max_head, timing_cache="off")
    return build_engine(copy, None, cfg).engine_path


def want(enc, head, frames):
    return head.split(head.apply(enc.z(frames)))


def test_engine_parity_graph_replay_and_double_buffered_head_swaps(fake, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(build(tmp_path, tiny["onnx"]))  # auto: .engine → tensorrt
    assert model.backend == "tensorrt" and model.precision == "fp32" and model.tf32 is False
    assert model.max_batch == 4 and model.graph_status == "on"
    n_alloc = len(fake.cudart.mem)
    np.testing.assert_allclose(model.infer(frames)["z"], enc.z(frames), atol=ATOL)
    ctx = model._context
    assert ctx.plain_runs == 1 and model.graph_captures == 1  # one enqueue (this frame), then captured
    np.testing.assert_allclose(model.infer(frames)["z"], enc.z(frames), atol=ATOL)
    assert ctx.plain_runs == 1 and fake.cudart.launches == 1  # replayed, not enqueued
    heads = [reference_head(enc, seed=s) for s in (1, 2, 3)]  # same width: only the bound buffer tells them apart
    for i, head in enumerate(heads):  # three swaps: buffer pair 1, 0, 1 — a graph per pair, replayed after
        model.set_head(head)
        for _ in range(2):
            got = model.infer(frames[:2])
            for name, value in want(enc, head, frames[:2]).items():
                np.testing.assert_allclose(got[name], value, atol=ATOL, err_msg=f"head {i} {name}")
    assert sorted({idx for _, idx in model._slots.values()}) == [0, 1]
    assert set(model._graphs) == {0, 1}
    assert len(fake.cudart.mem) == n_alloc  # buffers allocated once, never per call or per swap
    fake.cudart.copies.clear()
    model.infer(frames[:2])
    h2d = [n for kind, n in fake.cudart.copies if kind == cudaMemcpyKind.cudaMemcpyHostToDevice]
    assert h2d == [2 * 8 * 8 * 3]  # per frame only the frames go up: head weights stay on the device
    assert set(model.last_stages) == {"h2d", "compute", "d2h", "enqueue"}
    assert all(v >= 0 for v in model.last_stages.values())
    with pytest.raises(ValueError, match="max batch 4"):
        model.infer(np.zeros((5, 8, 8, 3), np.uint8))
    model.close()
    assert fake.cudart.mem == {} and fake.cudart.events == {} and fake.cudart.graphs == set()
    model.close()  # idempotent


def test_new_batch_size_or_head_width_recaptures_after_one_enqueue(fake, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(build(tmp_path, tiny["onnx"]), "tensorrt")
    for batch in (3, 1, 3, 3, 2):  # every change of shape: set up (plain enqueue), capture, then replay
        np.testing.assert_allclose(model.infer(frames[:batch])["z"], enc.z(frames[:batch]), atol=ATOL)
    assert model.graph_captures == 4 and model._context.plain_runs == 4
    narrow = reference_head(enc, seed=1)
    model.set_head(narrow)
    model.infer(frames)  # head width K changed: a new shape
    assert model.graph_captures == 5
    np.testing.assert_allclose(model.infer(frames)["position"], want(enc, narrow, frames)["position"], atol=ATOL)
    model.close()


def test_capture_failure_falls_back_to_plain_enqueue_and_says_why(fake, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    fake.cudart.fail_capture = cudaError_t.cudaErrorStreamCaptureInvalidated
    model = load_model(build(tmp_path, tiny["onnx"]), "tensorrt")
    head = reference_head(enc, seed=4)
    model.set_head(head)
    for _ in range(3):
        np.testing.assert_allclose(model.infer(frames)["position"], want(enc, head, frames)["position"], atol=ATOL)
    assert model.graph_status.startswith("fallback") and "cudaErrorStreamCaptureInvalidated" in model.graph_status
    assert model._context.plain_runs == 3 and model.graph_captures == 0 and fake.cudart.graphs == set()
    model.close()

    off = load_model(build(tmp_path, tiny["onnx"]), "tensorrt", TrtConfig(cuda_graph=False))
    off.infer(frames)
    off.infer(frames)
    assert off.graph_status.startswith("off") and off.graph_captures == 0 and off._context.plain_runs == 2
    off.close()


def test_a_frame_keeps_its_head_even_when_two_swaps_overtake_it(fake, tiny, tmp_path):
    """infer() reads the head once; if two set_head calls overwrite both buffers before the frame runs, the
    frame's head is uploaded again rather than run with another head's weights."""
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(build(tmp_path, tiny["onnx"]), "tensorrt")
    h1, h2, h3 = (reference_head(enc, seed=s) for s in (1, 2, 3))
    model.set_head(h1)
    model.infer(frames)
    old = model._head_state
    model.set_head(h2)
    model.set_head(h3)  # h1's buffer pair now holds h3
    raw = model._run(frames, old)["head"]
    np.testing.assert_allclose(raw, h1.apply(enc.z(frames)), atol=ATOL)
    np.testing.assert_allclose(model.infer(frames)["position"], want(enc, h3, frames)["position"], atol=ATOL)
    model.close()


def test_swaps_from_another_thread_never_mix_heads(fake, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(build(tmp_path, tiny["onnx"]), "tensorrt")
    heads = [reference_head(enc, seed=s) for s in range(1, 5)]
    expected = {id(h): want(enc, h, frames[:1])["position"] for h in heads}
    stop, errors = threading.Event(), []

    def swapper():
        i = 0
        while not stop.is_set():
            model.set_head(heads[i % len(heads)])
            i += 1

    model.set_head(heads[0])
    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(40):
            state = model._head_state
            got = model._run(frames[:1], state)["head"]
            ref = state.head.split(got)["position"]
            if not np.allclose(ref, expected[id(state.head)], atol=ATOL):
                errors.append("mixed")
    finally:
        stop.set()
        t.join()
    model.close()
    assert not errors


def test_head_larger_than_profile_refused_and_old_head_kept(fake, tiny, tmp_path):
    enc = tiny["enc"]
    model = load_model(build(tmp_path, tiny["onnx"], max_head=8), "tensorrt")
    with pytest.raises(RuntimeModelError, match="at most 8"):
        model.set_head(reference_head(enc, seed=1))  # 4 (z_mapped) + 6 (position) = 10 rows > 8
    assert model.head is None and set(model.infer(tiny["frames"])) == {"z"}
    model.close()


def test_fused_engine_returns_named_head_outputs(fake, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    with load_model(build(tmp_path, tiny["fused"]), "tensorrt") as model:
        out = model.infer(frames)
        head = reference_head(enc, seed=5)
        for name, value in want(enc, head, frames).items():
            np.testing.assert_allclose(out[name], value, atol=ATOL, err_msg=name)


def _edit_sidecar(engine, **changes):
    side_path = engine.with_name(engine.name + ".json")
    side = json.loads(side_path.read_text())
    for dotted, value in changes.items():
        d = side
        *parents, last = dotted.split("__")
        for p in parents:
            d = d[p]
        d[last] = value
    side_path.write_text(json.dumps(side))


@pytest.mark.parametrize("changes, match", [
    ({"tensorrt_version": "8.6.1"}, r"built with TensorRT 8\.6\.1, this device has 10\.3\.0; rebuild on this device"),
    ({"gpu__compute_capability": "7.2"}, r"compute capability 7\.2, this GPU is 8\.7; rebuild on this device"),
    ({"engine__sha256": "0" * 64}, "do not match the sidecar's sha256.*rebuild on this device"),
    ({"engine__bytes": 5}, "the sidecar recorded 5; rebuild on this device"),
    ({"onnx__sha256": "0" * 64}, "stale"),
    ({"onnx__path": "../model.onnx"}, "outside the engine's folder"),
    ({"onnx__path": "/etc/passwd"}, "outside the engine's folder"),
    ({"version": 1}, "sidecar version 1, this runtime reads 2; rebuild on this device"),
    ({"tf32": "no"}, "'tf32' is missing or malformed"),
    ({"precision": "tf32"}, "precision 'tf32' is unknown"),
])
def test_incompatible_engine_refused_before_deserialising(fake, tiny, tmp_path, changes, match):
    engine = build(tmp_path, tiny["onnx"])
    _edit_sidecar(engine, **changes)
    with pytest.raises(RuntimeModelError, match=match) as info:
        load_model(engine, "tensorrt")
    assert "\n" not in str(info.value)
    assert fake.trt.deserialized == 0 and fake.cudart.mem == {}


def test_legacy_or_hostile_sidecars_refused(fake, tiny, tmp_path):
    engine = build(tmp_path, tiny["onnx"])
    side = engine.with_name(engine.name + ".json")
    legacy = {"precision": "fp32", "tensorrt_version": "10.3.0", "compute_capability": "8.7",
              "onnx_sha256": "0" * 64, "onnx_path": "model.onnx"}
    side.write_text(json.dumps(legacy))
    with pytest.raises(RuntimeModelError, match="not a jepa-edge engine sidecar.*rebuild on this device"):
        load_model(engine, "tensorrt")
    side.write_text("[1, 2]")
    with pytest.raises(RuntimeModelError, match="must be a JSON object"):
        load_model(engine, "tensorrt")
    side.write_bytes(b" " * (16 * 1024 * 1024 + 1))
    with pytest.raises(RuntimeModelError, match="over the 16777216-byte limit"):
        load_model(engine, "tensorrt")
    side.unlink()
    with pytest.raises(RuntimeModelError, match="sidecar model.engine.json is missing"):
        load_model(engine, "tensorrt")
    assert fake.trt.deserialized == 0


def test_corrupt_engine_and_cuda_errors(fake, tiny, tmp_path):
    engine = build(tmp_path, tiny["onnx"])
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(out of memory\)"):
        cuda_call((cudaError_t.cudaErrorMemoryAllocation, 0), "cudaMalloc")
    assert cuda_call((cudaError_t.cudaSuccess, 5), "x") == 5 and cuda_call((cudaError_t.cudaSuccess,), "x") is None
    fake.cudart.fail_malloc_above = 100  # the frames buffer (4*8*8*3 = 768 bytes) cannot be allocated
    with pytest.raises(CudaError, match="cudaMalloc"):
        load_model(engine, "tensorrt")
    assert fake.cudart.mem == {} and fake.cudart.events == {}  # what was allocated before the failure was freed
