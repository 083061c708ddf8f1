"""Export agents for the edge: ONNX (always) and TensorRT engines (``jepa-edge[trt]``).

One module per backend:

* ``edge_model``: ``EdgeModel``, the torch module that is exported (uint8 NHWC BGR frames → z [+ head]);
* ``onnx_export``: ``export_onnx`` / ``export_agent`` (metadata, checker, ORT-vs-PyTorch parity);
* ``trt_build``: ``build_engine`` (TensorRT builder, profile, precision, timing cache, sidecar);
* ``int8``: INT8 range-calibration frames (simulator / video / recording), calibrator, Q/DQ ONNX;
* ``fp16``: the fp16 ONNX a strongly typed TensorRT network (TensorRT 11) is built from, and the fp16
  model for ONNX Runtime (``export_onnx`` with ``precision="fp16"``);
* ``ort_providers``: ``ort_session`` on CPU / CUDA EP / TensorRT EP, never a silent fallback.

Importing this package needs neither torch nor TensorRT: ``EdgeModel`` is
loaded on first use, and TensorRT is imported only when an engine is built.
"""

from __future__ import annotations

from typing import Any

from jepa_edge.export.int8 import Int8Config, Int8DataError, load_int8_frames
from jepa_edge.export.onnx_export import (
    ExportError,
    ExportResult,
    OnnxExportConfig,
    ParityError,
    export_agent,
    export_onnx,
    read_metadata,
)
from jepa_edge.export.ort_providers import ort_session
from jepa_edge.export.trt_build import TrtBuildConfig, TrtBuildError, TrtBuildResult, build_engine, require_tensorrt

__all__ = [
    "EdgeModel", "ExportError", "ExportResult", "Int8Config", "Int8DataError", "OnnxExportConfig",
    "ParityError", "TrtBuildConfig", "TrtBuildError", "TrtBuildResult", "build_engine", "export_agent",
    "export_onnx", "load_int8_frames", "ort_session", "read_metadata", "require_tensorrt",
]


def __getattr__(name: str) -> Any:
    if name == "EdgeModel":  # torch: only when asked for
        from jepa_edge.export.edge_model import EdgeModel

        return EdgeModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
