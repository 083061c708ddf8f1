"""GPU / TensorRT test gating: skip where the hardware or package is missing, fail where the machine must have it.

A GPU test that cannot start (no GPU, broken CUDA install) reports *skipped*,
never *failed*, unless ``JEPA_EDGE_REQUIRE_GPU=1`` is set (as ``make gpu-check``
does): then such a skip is a failure, so a GPU machine cannot pass by skipping.
TensorRT is its own line: a TensorRT test on a machine without TensorRT (the
``tensorrt`` package or its ``cuda-python``) skips with that reason even under
``JEPA_EDGE_REQUIRE_GPU=1``, and fails only under ``JEPA_EDGE_REQUIRE_TRT=1``
(for machines that have TensorRT; ``make gpu-check`` sets it where ``import
tensorrt`` works). ``JEPA_EDGE_REQUIRE_TRT=1`` implies a GPU, so it also makes
a missing GPU a failure. Skips caused by a missing optional package name that
package in the reason.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import pytest

Missing = Literal["gpu", "trt"]  # what a test lacks: the GPU (or its CUDA stack), or TensorRT itself


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def gpu_required() -> bool:
    return _flag("JEPA_EDGE_REQUIRE_GPU") or _flag("JEPA_EDGE_REQUIRE_TRT")


def trt_required() -> bool:
    return _flag("JEPA_EDGE_REQUIRE_TRT")


def gate(reason: str, missing: Missing = "gpu") -> tuple[Literal["skip", "fail"], str]:
    """What a test that cannot run does here: ("skip" or "fail", the message), from the environment."""
    if missing == "trt":
        if trt_required():
            return "fail", f"JEPA_EDGE_REQUIRE_TRT=1 but: {reason}"
        return "skip", f"TensorRT absent: {reason}"
    if gpu_required():
        flag = "JEPA_EDGE_REQUIRE_GPU" if _flag("JEPA_EDGE_REQUIRE_GPU") else "JEPA_EDGE_REQUIRE_TRT"
        return "fail", f"{flag}=1 but: {reason}"
    return "skip", reason


def skip_or_fail(reason: str, missing: Missing = "gpu") -> None:
    """``pytest.skip(reason)``, or ``pytest.fail`` where the environment requires what is ``missing``."""
    action, message = gate(reason, missing)
    if action == "fail":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def trt_missing() -> tuple[str, Missing] | None:
    """Why the real TensorRT tests cannot run here, and whether TensorRT or the GPU is what is missing; None
    when TensorRT, cuda-python and a CUDA device are all there (no onnxruntime-gpu needed: a Jetson may lack it)."""
    from jepa_edge.runtime.backend_trt import cuda_call, import_cudart
    from jepa_edge.runtime.errors import BackendUnavailableError

    if importlib.util.find_spec("tensorrt") is None:
        return "needs the `tensorrt` package (pip install 'jepa-edge[trt]')", "trt"
    try:
        cudart = import_cudart()
    except BackendUnavailableError as exc:  # cuda-python comes with the trt extra
        return f"needs cuda-python (pip install 'jepa-edge[trt]'): {exc}", "trt"
    try:
        if cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") < 1:
            return "needs a CUDA GPU (cudaGetDeviceCount() is 0)", "gpu"
    except RuntimeError as exc:
        return f"needs a working CUDA GPU ({exc})", "gpu"
    return None
