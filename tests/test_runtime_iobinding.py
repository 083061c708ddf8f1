"""ONNX Runtime IOBinding path on the CPU provider: parity with plain sess.run, resident head uploads, CUDA-graph
decisions and fallback, explicit provider options and precision bookkeeping, stage timings.

The IOBinding code is the same on the CPU provider (device "cpu") as on the CUDA EP (device "cuda"), so
everything except the capture itself runs here. The GPU checks live in test_runtime_backends.py.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx_fixtures import reference_head, tiny_models

from jepa_edge.runtime import OrtConfig, RuntimeModelError, backend_ort, load_model
from jepa_edge.runtime.backend_ort import cuda_graph_plan, cuda_provider_options, ort_precision

PARITY_ATOL = 1e-6  # same session options, same CPU kernels: the two paths agree exactly in practice


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("iobind")
    return tiny_models(d, enc_seed=3, frames_seed=4)


def _pair(path, **kw):
    """The same model loaded twice: IOBinding path and the plain sess.run reference."""
    return (load_model(path, "ort-cpu", OrtConfig(io_binding=True, **kw.get("cfg", {})), **kw.get("load", {})),
            load_model(path, "ort-cpu", OrtConfig(io_binding=False), **kw.get("load", {})))


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for key, value in a.items():
        assert value.shape == b[key].shape, f"{what}:{key}"
        np.testing.assert_allclose(value, b[key], atol=PARITY_ATOL, rtol=0, err_msg=f"{what}:{key}")


@pytest.mark.parametrize("kind", ["fused", "head_inputs", "encoder_only"])
def test_iobinding_matches_plain_run(tiny, kind):
    path = tiny["head_inputs" if kind == "head_inputs" else "fused"]
    io, plain = _pair(path, load={"encoder_only": kind == "encoder_only"})
    if kind == "head_inputs":
        for m in (io, plain):
            m.set_head(tiny["head"])
    frames = tiny["frames"]
    # batch sizes interleaved: each size's first run discovers its outputs, later runs reuse the bound buffers
    for i, batch in enumerate((1, 5, 1, 3, 5, 5)):
        f = np.roll(frames, i, axis=0)[:batch]
        _assert_same(io.infer(f), plain.infer(f), f"{kind} batch {batch} run {i}")
    rows = tiny["head"].width if kind == "head_inputs" else 0
    assert sorted(io._io._bound) == [(1, rows), (3, rows), (5, rows)]  # one binding per static input shape


def test_iobinding_results_are_not_overwritten_by_the_next_frame(tiny):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(tiny["fused"], "ort-cpu")
    first = model.infer(frames[:2])
    for _ in range(3):
        model.infer(frames[2:4])  # same batch size: same bound device buffers
    np.testing.assert_allclose(first["z"], enc.z(frames[:2]), atol=2e-5)


def test_head_inputs_without_head_and_swap_through_iobinding(tiny):
    enc, frames = tiny["enc"], tiny["frames"]
    model = load_model(tiny["head_inputs"], "ort-cpu")
    assert set(model.infer(frames[:2])) == {"z"}  # placeholder head bound, its output dropped
    for seed in (1, 7):  # K stays 14, so the same binding is reused with the new head's OrtValues
        head = reference_head(enc, seed=seed)
        model.set_head(head)
        np.testing.assert_allclose(model.infer(frames[:2])["position"],
                                   head.split(head.apply(enc.z(frames[:2])))["position"], atol=2e-5)


class _UploadSpy:
    """Counts OrtValue creations from numpy (the head upload) and in-place updates (the frame copy)."""

    def __init__(self, monkeypatch) -> None:
        self.from_numpy: list[np.ndarray] = []
        self.update_inplace = 0
        create, update = ort.OrtValue.ortvalue_from_numpy, ort.OrtValue.update_inplace

        def spy_create(arr, *args, **kwargs):
            self.from_numpy.append(arr)
            return create(arr, *args, **kwargs)

        def spy_update(value, data):
            self.update_inplace += 1
            return update(value, data)

        monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(spy_create))
        monkeypatch.setattr(ort.OrtValue, "update_inplace", spy_update)

    def uploads_of(self, arr: np.ndarray) -> int:
        return sum(1 for a in self.from_numpy if a.shape == arr.shape and np.array_equal(a, arr))


def test_head_weights_are_uploaded_once_per_set_head_never_per_frame(tiny, monkeypatch):
    enc, frames = tiny["enc"], tiny["frames"]
    spy = _UploadSpy(monkeypatch)
    model = load_model(tiny["head_inputs"], "ort-cpu")
    assert len(spy.from_numpy) == 2  # the placeholder head: weight + bias
    head_a, head_b = reference_head(enc, seed=1), reference_head(enc, seed=2)
    model.set_head(head_a)
    n = 7
    for i in range(n):
        model.infer(frames[: 1 + i % 3])
    state_a = model._head_state
    assert spy.uploads_of(state_a.weight) == 1 and spy.uploads_of(state_a.bias) == 1
    assert len(spy.from_numpy) == 4, "an infer created an OrtValue from numpy"
    assert spy.update_inplace == n  # one host→device copy per frame: the frames, nothing else
    model.set_head(head_b)
    for _ in range(n):
        model.infer(frames[:2])
    state_b = model._head_state
    assert spy.uploads_of(state_b.weight) == 1 and spy.uploads_of(state_b.bias) == 1
    assert spy.uploads_of(state_a.weight) == 1
    assert len(spy.from_numpy) == 6 and spy.update_inplace == 2 * n


def test_a_frame_uses_the_head_it_started_with(tiny):
    """The frame read head A before set_head(B) swapped it: it still binds A's OrtValues, without a re-upload."""
    enc, frames = tiny["enc"], tiny["frames"][:3]
    model = load_model(tiny["head_inputs"], "ort-cpu")
    head_a, head_b = reference_head(enc, seed=1), reference_head(enc, seed=2)
    model.set_head(head_a)
    state_a = model._head_state
    model.set_head(head_b)
    assert id(state_a) in model._slots  # the current head is kept beside the new one
    got = model._run(frames, state_a)["head"]  # what infer() does with the state it read before the swap
    np.testing.assert_allclose(got, head_a.apply(enc.z(frames)), atol=2e-5)
    np.testing.assert_allclose(model.infer(frames)["position"],
                               head_b.split(head_b.apply(enc.z(frames)))["position"], atol=2e-5)


def test_concurrent_swaps_never_mix_heads(tiny):
    enc, frames = tiny["enc"], tiny["frames"][:2]
    heads = [reference_head(enc, seed=s) for s in (1, 2)]
    want = [h.split(h.apply(enc.z(frames)))["position"] for h in heads]
    model = load_model(tiny["head_inputs"], "ort-cpu", OrtConfig(intra_op_threads=1))
    model.set_head(heads[0])
    stop = threading.Event()

    def swapper():
        i = 0
        while not stop.is_set():
            i += 1
            model.set_head(heads[i % 2])

    t = threading.Thread(target=swapper)
    t.start()
    try:
        for _ in range(200):
            pos = model.infer(frames)["position"]
            assert any(np.allclose(pos, w, atol=2e-5) for w in want), "a frame mixed two heads"
    finally:
        stop.set()
        t.join()


def test_stage_timings_are_what_each_path_measures(tiny):
    io, plain = _pair(tiny["fused"])
    io.infer(tiny["frames"])
    assert set(io.last_stages) == {"h2d", "compute", "d2h"}
    plain.infer(tiny["frames"])
    assert set(plain.last_stages) == {"compute"}  # on the CPU the run call is the compute
    assert all(v >= 0 for v in (*io.last_stages.values(), *plain.last_stages.values()))


# ---- CUDA graphs: the decisions, on any machine ----------------------------------------------------------
def test_cuda_graph_plan():
    on, off, auto = OrtConfig(cuda_graph=True), OrtConfig(cuda_graph=False), OrtConfig()
    assert auto.cuda_graph is None  # the default: auto
    assert cuda_graph_plan("ort-cuda", off, "fused") == (False, "off (OrtConfig.cuda_graph=False)")
    for cfg in (on, auto):
        assert cuda_graph_plan("ort-cuda", cfg, "fused")[0]
        assert cuda_graph_plan("ort-cuda", cfg, "encoder_only")[0]
    assert cuda_graph_plan("ort-cuda", auto, "fused")[1].endswith("(auto)")
    capture, why = cuda_graph_plan("ort-cuda", on, "head_inputs")
    assert not capture and why.startswith("fallback to IOBinding") and "set_head" in why
    capture, why = cuda_graph_plan("ort-cpu", on, "fused")
    assert not capture and "'ort-cuda'" in why and "'ort-cpu'" in why
    # auto: the same reasons, said as "off", never as a fallback from something asked for
    for backend, mode, cfg, word in (("ort-cuda", "head_inputs", auto, "set_head"), ("ort-cpu", "fused", auto, "ort-cpu"),
                                     ("ort-cuda", "fused", OrtConfig(io_binding=False), "io_binding")):
        capture, why = cuda_graph_plan(backend, cfg, mode)
        assert not capture and why.startswith("off (auto: ") and word in why, why
    with pytest.raises(ValueError, match="needs io_binding=True"):
        load_model("unused.onnx", "ort-cpu", OrtConfig(cuda_graph=True, io_binding=False))


def test_cuda_graph_on_the_cpu_provider_records_why_and_still_runs(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="jepa_edge.runtime.backend_ort"):
        model = load_model(tiny["fused"], "ort-cpu", OrtConfig(cuda_graph=True))
        auto = load_model(tiny["fused"], "ort-cpu")  # the default asks nothing: no warning
    assert model.cuda_graph_status.startswith("fallback to IOBinding") and "ort-cpu" in model.cuda_graph_status
    assert auto.cuda_graph_status.startswith("off (auto: ")
    assert sum("CUDA graphs" in r.message for r in caplog.records) == 1
    plain = load_model(tiny["fused"], "ort-cpu", OrtConfig(io_binding=False, cuda_graph=False))
    assert plain.cuda_graph_status == "off (OrtConfig.cuda_graph=False)"
    _assert_same(model.infer(tiny["frames"]), plain.infer(tiny["frames"]), "cuda_graph fallback")


def test_static_batch_sessions_match_the_dynamic_one(tiny):
    """The per-batch-size sessions a CUDA graph is captured on (batch dim fixed), built here on the CPU EP."""
    model, plain = _pair(tiny["fused"])
    model._graph_on = True  # what cuda_graph_plan answers on ort-cuda; the capture itself needs a GPU
    for batch in (1, 4, 1, 4):
        f = tiny["frames"][:batch]
        _assert_same(model.infer(f), plain.infer(f), f"static batch {batch}")
    assert sorted(model._graphs) == [1, 4]
    for batch, runner in model._graphs.items():
        assert runner.sess.get_inputs()[0].shape == [batch, 16, 12, 3]  # the free dimension override took
    model._batch_dim = 4  # as a graph exported with a static batch of 4 reports it
    with pytest.raises(ValueError, match="exported for batch 4"):
        model.infer(tiny["frames"][:2])


def test_capture_failure_falls_back_once_with_the_reason(tiny, monkeypatch, caplog):
    model, plain = _pair(tiny["fused"])
    model._graph_on = True
    calls = []

    def refuse(batch):
        calls.append(batch)
        raise ort.capi.onnxruntime_pybind11_state.Fail(
            "This session cannot use the graph capture feature as requested by the user as all compute graph "
            "nodes have not been partitioned to the CUDAExecutionProvider")

    monkeypatch.setattr(model, "_graph_runner", refuse)
    with caplog.at_level(logging.WARNING, logger="jepa_edge.runtime.backend_ort"):
        for _ in range(3):
            _assert_same(model.infer(tiny["frames"]), plain.infer(tiny["frames"]), "after fallback")
    assert calls == [5], "a failed capture is not retried every frame"
    assert model.cuda_graph_status.startswith("fallback to IOBinding: ONNX Runtime could not capture")
    assert "not been partitioned" in model.cuda_graph_status
    assert sum("CUDA graphs" in r.message for r in caplog.records) == 1


def test_graph_session_build_failure_falls_back(tiny, monkeypatch):
    model, plain = _pair(tiny["fused"])
    model._graph_on = True

    def broken(*args, **kwargs):
        raise RuntimeModelError("model.onnx: ONNX Runtime could not load the model with ort-cuda: boom")

    monkeypatch.setattr(model, "_new_session", broken)
    _assert_same(model.infer(tiny["frames"]), plain.infer(tiny["frames"]), "build failure")
    assert "could not be built" in model.cuda_graph_status and "boom" in model.cuda_graph_status


# ---- provider options and precision ----------------------------------------------------------------
def test_cuda_provider_options_are_explicit():
    opts = cuda_provider_options(OrtConfig(device_id=1), "1.32.0")
    assert opts == {"device_id": "1", "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested",
                    "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}
    assert cuda_provider_options(OrtConfig(precision="tf32"), "1.32.0")["use_tf32"] == "1"
    assert cuda_provider_options(OrtConfig(), "1.32.0", cuda_graph=True)["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in opts
    assert "use_tf32" not in cuda_provider_options(OrtConfig(), "1.17.3")  # the option does not exist there
    cfg = OrtConfig(cudnn_conv_algo_search="HEURISTIC", arena_extend_strategy="kNextPowerOfTwo",
                    do_copy_in_default_stream=False)
    opts = cuda_provider_options(cfg, "1.20.1")
    assert (opts["cudnn_conv_algo_search"], opts["arena_extend_strategy"], opts["do_copy_in_default_stream"]) == (
        "HEURISTIC", "kNextPowerOfTwo", "0")
    for bad in ({"precision": "fp16"}, {"cudnn_conv_algo_search": "FAST"}, {"arena_extend_strategy": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OrtConfig(**bad).validate()


def test_precision_is_fp32_only_where_tf32_is_off(monkeypatch):
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    fp32, tf32 = OrtConfig(), OrtConfig(precision="tf32")
    assert ort_precision("ort-cuda", fp32, "1.32.0") == "fp32"
    assert ort_precision("ort-cuda", tf32, "1.32.0") == "tf32"
    assert ort_precision("ort-cuda", fp32, "1.17.3") == "tf32"  # no use_tf32 option to turn it off
    assert ort_precision("ort-cpu", tf32, "1.32.0") == "fp32"  # the CPU has no TF32
    assert ort_precision("ort-trt", fp32, "1.32.0") == "tf32"  # TensorRT allows TF32 by default, no EP switch
    assert ort_precision("ort-trt", OrtConfig(trt_fp16=True), "1.32.0") == "fp16"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert ort_precision("ort-cuda", tf32, "1.17.3") == "fp32"
    assert ort_precision("ort-trt", fp32, "1.32.0") == "fp32"


def test_provider_lists_carry_the_options(monkeypatch):
    """What a GPU session would be asked for, without one (the provider list only, no session)."""
    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: have)
    cuda = backend_ort._providers("ort-cuda", OrtConfig(), cuda_graph=True)
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[1] == "CPUExecutionProvider"
    assert cuda[0][1]["enable_cuda_graph"] == "1"
    if backend_ort._version(ort.__version__) >= (1, 18):
        assert cuda[0][1]["use_tf32"] == "0"
    trt = backend_ort._providers("ort-trt", OrtConfig(trt_fp16=True))
    assert [p[0] if isinstance(p, tuple) else p for p in trt] == have
    assert trt[0][1]["trt_fp16_enable"] is True and "enable_cuda_graph" not in trt[1][1]


def test_model_records_provider_options_and_precision(tiny):
    model = load_model(tiny["fused"], "ort-cpu", OrtConfig(precision="tf32"))
    assert "CPUExecutionProvider" in model.provider_options  # as ONNX Runtime reports them, for the bench JSON
    assert model.precision == "fp32"



def test_head_inputs_runs_as_encoder_only_plus_numpy_head_on_cuda_only():
    """A head_inputs graph cannot be a CUDA graph; its encoder-only cut can (the head then runs in numpy)."""
    from jepa_edge.runtime.backends import numpy_head_on_cuda_graph

    assert numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto")
    assert numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "numpy", OrtConfig(cuda_graph=True))
    assert numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto", {"cuda_graph": None})
    assert not numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto", OrtConfig(cuda_graph=False))
    assert not numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "model")  # asked for the head in the model
    assert not numpy_head_on_cuda_graph("ort-cpu", "head_inputs", "auto")  # no CUDA graph on the CPU
    assert not numpy_head_on_cuda_graph("tensorrt", "head_inputs", "auto")
    assert not numpy_head_on_cuda_graph("ort-cuda", "fused", "auto")


def test_load_model_for_run_keeps_the_head_inputs_graph_on_the_cpu(tiny, tmp_path):
    from jepa_edge.runtime.backend_ort import model_mode
    from jepa_edge.runtime.backends import load_model_for_run

    with load_model_for_run(tiny["head_inputs"], "ort-cpu") as model:
        assert model.meta.mode == "head_inputs"
    # the mode load_model_for_run reads on ort-cuda before any session: from the file's metadata
    assert model_mode(tiny["head_inputs"]) == "head_inputs" and model_mode(tiny["fused"]) == "fused"
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert model_mode(tmp_path / "bad.onnx") == "" and model_mode(tmp_path / "missing.onnx") == ""
