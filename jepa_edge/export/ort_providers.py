"""ONNX Runtime sessions for export checks and benchmarks: CPU, CUDA EP or TensorRT EP.

The provider lists and their options (TensorRT EP: fp16, engine cache,
timing cache; CUDA EP: device, ``use_tf32`` from ``precision``, arena and
cuDNN conv-search settings) come from the torch-free runtime
(``jepa_edge.runtime.backend_ort``), so export, bench and the robot build
sessions the same way. A requested GPU provider that this onnxruntime lacks,
or that ONNX Runtime drops while building the session, is an error: never a
silent CPU fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jepa_edge.runtime.backend_ort import GPU_INSTALL_HINT, OrtConfig, _ort_errors, _providers, session_options
from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError, missing_onnxruntime

PROVIDERS = {"cpu": "ort-cpu", "cuda": "ort-cuda", "tensorrt": "ort-trt"}  # name → runtime backend


def ort_session(
    model: str | Path | bytes,
    provider: str = "cpu",
    fp16: bool = False,
    cache_dir: str | Path | None = None,
    threads: int = 0,
    device_id: int = 0,
    optimization: str = "all",
    precision: str = "fp32",
) -> Any:
    """An ``onnxruntime.InferenceSession`` on exactly ``provider``.

    ``model``: an ``.onnx`` path or its serialised bytes. ``fp16`` and
    ``cache_dir`` (engine + timing cache) apply to the TensorRT EP only and are
    refused for the others. ``threads``: intra-op threads, 0 = ORT default.
    ``optimization``: "disable" | "basic" | "extended" | "all".
    ``precision``: CUDA EP fp32 math, "fp32" (``use_tf32=0``, the parity
    reference) or "tf32".
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown ONNX Runtime provider {provider!r}; choose one of {sorted(PROVIDERS)}")
    if provider != "tensorrt" and (fp16 or cache_dir):
        raise ValueError(f"fp16 and cache_dir are TensorRT EP options; provider {provider!r} does not take them")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing_onnxruntime(exc) from exc
    backend = PROVIDERS[provider]
    cfg = OrtConfig(intra_op_threads=threads, device_id=device_id, graph_optimization=optimization,
                    trt_fp16=fp16, trt_cache_dir=str(cache_dir or ""), precision=precision)
    cfg.validate()
    providers = _providers(backend, cfg)  # raises BackendUnavailableError naming jepa-edge[gpu]
    so = session_options(ort, cfg)
    where = "<in-memory model>" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):
        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such ONNX model; export one with `jepa-edge export`")
        model = str(model)
    try:
        sess = ort.InferenceSession(model, so, providers=providers)
    except _ort_errors(ort) as exc:
        raise RuntimeModelError(f"{where}: ONNX Runtime could not load the model on {provider}: {exc}") from exc
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if wanted not in sess.get_providers():
        raise BackendUnavailableError(
            f"{where}: ONNX Runtime dropped {wanted} while building the session (active: {sess.get_providers()}); "
            f"check the CUDA / cuDNN / TensorRT libraries match your onnxruntime-gpu build, {GPU_INSTALL_HINT}, "
            "or use provider='cpu'"
        )
    return sess
