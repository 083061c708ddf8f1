"""The automatic choice on ort-cuda never leaves a model on IOBinding without a CUDA graph where one can run.

Pure decisions, checked on the CPU (the GPU runs of both paths are in README "On a GPU").
"""

from __future__ import annotations

import logging

import pytest
from onnx_fixtures import make_encoder, make_model

from jepa_edge.runtime import backends
from jepa_edge.runtime.backend_ort import OrtConfig, cuda_graph_plan
from jepa_edge.runtime.backends import load_model_for_run, numpy_head_on_cuda_graph, ort_cuda_path


@pytest.mark.parametrize("export_mode", ["fused", "encoder_only", "head_inputs"])
@pytest.mark.parametrize("head_mode", ["auto", "numpy"])
def test_auto_always_replays_a_cuda_graph(export_mode, head_mode):
    cut, why = ort_cuda_path(export_mode, head_mode)
    assert cut == (export_mode == "head_inputs")  # head_inputs: the encoder-only cut, head in numpy
    assert "CUDA graph" in why and "IOBinding" not in why and not why.startswith("no")
    # …and the session that then loads (the cut is encoder_only) plans its graph under the default OrtConfig
    assert cuda_graph_plan("ort-cuda", OrtConfig(), "encoder_only" if cut else export_mode)[0] == (
        export_mode != "head_inputs" or cut)


def test_iobinding_alone_only_where_asked():
    assert ort_cuda_path("fused", "model") == (False, "CUDA graph per batch size")
    cut, why = ort_cuda_path("head_inputs", "model")  # the head asked inside a model whose head rebinds
    assert not cut and why.startswith("IOBinding without a CUDA graph") and "--head-mode auto" in why
    for args in (("fused", "auto", False), ("head_inputs", "auto", False), ("head_inputs", "numpy", None, False)):
        cut, why = ort_cuda_path(*args)
        assert not cut and why.startswith("no CUDA graph")
    assert ort_cuda_path("head_inputs", "auto", True) == (True, "CUDA graph on the encoder-only cut, head in numpy")


def test_numpy_head_on_cuda_graph_reads_io_binding_too():
    assert numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto", {"io_binding": True})
    assert not numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto", OrtConfig(io_binding=False))
    assert not numpy_head_on_cuda_graph("ort-cuda", "head_inputs", "auto", {"io_binding": False})


def test_load_model_for_run_cuts_or_warns_on_ort_cuda(tmp_path, monkeypatch, caplog):
    """The decision as load_model_for_run applies it (the CUDA session itself faked: it needs a GPU)."""
    path = make_model(tmp_path / "hi.onnx", make_encoder(seed=1), "head_inputs")
    loaded = []
    monkeypatch.setattr(backends, "load_model", lambda p, b, c, encoder_only: loaded.append(encoder_only))
    load_model_for_run(path, "ort-cuda", head_mode="auto")
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        load_model_for_run(path, "ort-cuda", head_mode="model")
    assert loaded == [True, False]
    assert "IOBinding without a CUDA graph" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        load_model_for_run(path, "ort-cuda", head_mode="model", cuda_graph=False)  # asked: no warning
    assert loaded == [True, False, False] and not caplog.text
