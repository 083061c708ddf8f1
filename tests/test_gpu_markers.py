"""The GPU / TensorRT gating of tests/gpu.py: who skips and who fails, decided from the environment (on any machine)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import gpu
import pytest

from jepa_edge.runtime import backend_trt
from jepa_edge.runtime.errors import BackendUnavailableError

ENV = ("JEPA_EDGE_REQUIRE_GPU", "JEPA_EDGE_REQUIRE_TRT")


@pytest.fixture()
def env(monkeypatch):
    """Set the two flags: env(gpu="1", trt="0"); unset where not given."""
    def set_flags(gpu: str | None = None, trt: str | None = None) -> None:
        for name, value in zip(ENV, (gpu, trt), strict=True):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    set_flags()
    return set_flags


@pytest.mark.parametrize("flags, missing, want, prefix", [
    ({}, "gpu", "skip", ""),
    ({}, "trt", "skip", "TensorRT absent: "),
    ({"gpu": "0", "trt": "0"}, "gpu", "skip", ""),  # "0" is off
    ({"gpu": "1"}, "gpu", "fail", "JEPA_EDGE_REQUIRE_GPU=1 but: "),  # a GPU machine cannot pass by skipping
    ({"gpu": "1"}, "trt", "skip", "TensorRT absent: "),  # ... but TensorRT's absence is its own line
    ({"trt": "1"}, "trt", "fail", "JEPA_EDGE_REQUIRE_TRT=1 but: "),  # a TensorRT machine: a broken install fails
    ({"trt": "1"}, "gpu", "fail", "JEPA_EDGE_REQUIRE_TRT=1 but: "),  # TensorRT implies a GPU
    ({"gpu": "1", "trt": "1"}, "trt", "fail", "JEPA_EDGE_REQUIRE_TRT=1 but: "),
])
def test_gate_decides_skip_or_fail_from_the_environment(env, flags, missing, want, prefix):
    env(**flags)
    assert gpu.gate("needs the thing", missing) == (want, prefix + "needs the thing")


def test_skip_or_fail_raises_pytests_outcomes(env):
    env(gpu="1")
    with pytest.raises(pytest.skip.Exception, match="TensorRT absent: no tensorrt"):
        gpu.skip_or_fail("no tensorrt", "trt")
    with pytest.raises(pytest.fail.Exception, match="JEPA_EDGE_REQUIRE_GPU=1 but: no CUDA device"):
        gpu.skip_or_fail("no CUDA device")
    env()
    with pytest.raises(pytest.skip.Exception, match="no CUDA device"):
        gpu.skip_or_fail("no CUDA device")


def _fake_cudart(count: int) -> SimpleNamespace:
    ok = object()
    return SimpleNamespace(cudaError_t=SimpleNamespace(cudaSuccess=ok), cudaGetDeviceCount=lambda: (ok, count))


def test_trt_missing_tells_tensorrt_from_the_gpu(monkeypatch):
    real = importlib.util.find_spec
    has_trt = {"yes": False}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if has_trt["yes"] else None) if name == "tensorrt" else real(name, *a))
    assert gpu.trt_missing() == ("needs the `tensorrt` package (pip install 'jepa-edge[trt]')", "trt")
    has_trt["yes"] = True

    def no_cuda_python():
        raise BackendUnavailableError("cuda-python is not installed")

    monkeypatch.setattr(backend_trt, "import_cudart", no_cuda_python)
    reason, missing = gpu.trt_missing()
    assert missing == "trt" and "cuda-python" in reason  # part of TensorRT's extra: TensorRT is incomplete
    no_gpu, one_gpu = _fake_cudart(0), _fake_cudart(1)
    monkeypatch.setattr(backend_trt, "import_cudart", lambda: no_gpu)
    assert gpu.trt_missing() == ("needs a CUDA GPU (cudaGetDeviceCount() is 0)", "gpu")
    monkeypatch.setattr(backend_trt, "import_cudart", lambda: one_gpu)
    assert gpu.trt_missing() is None


def test_gpu_check_requires_tensorrt_only_where_it_imports(monkeypatch):
    from scripts import load_script

    gpu_check = load_script("gpu_check", monkeypatch)
    assert gpu_check.require_env(None) == {"JEPA_EDGE_REQUIRE_GPU": "1"}
    assert gpu_check.require_env("10.13.0") == {"JEPA_EDGE_REQUIRE_GPU": "1", "JEPA_EDGE_REQUIRE_TRT": "1"}
