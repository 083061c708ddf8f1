"""``load_model``: one entry point over ONNX Runtime (CPU / CUDA EP / TensorRT EP) and native TensorRT."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jepa_edge.config import from_dict
from jepa_edge.runtime import backend_trt
from jepa_edge.runtime.backend_ort import ORT_BACKENDS, OrtConfig, OrtModel, available_providers, model_mode
from jepa_edge.runtime.backend_trt import TrtConfig, TrtModel
from jepa_edge.runtime.errors import BackendUnavailableError
from jepa_edge.runtime.model import Model

log = logging.getLogger(__name__)

BACKENDS = ("auto", *ORT_BACKENDS, "tensorrt")


def _config(cls: type, config: Any, backend: str) -> Any:
    if config is None or isinstance(config, cls):
        return config
    if isinstance(config, dict):
        return from_dict(cls, config)
    raise ValueError(f"backend {backend!r} takes a {cls.__name__} (or a dict of its settings), got a "
                     f"{type(config).__name__}; pass config=None for its defaults")


def resolve_backend(path: Path, backend: str) -> str:
    """``auto``: a ``.engine`` runs on TensorRT; an ONNX on the CUDA EP when present, else the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend != "auto":
        return backend
    if path.suffix == ".engine":
        return "tensorrt"
    chosen = "ort-cuda" if "CUDAExecutionProvider" in available_providers() else "ort-cpu"
    log.info("backend auto → %s for %s", chosen, path)
    return chosen


def load_model(
    path: str | Path,
    backend: str = "auto",
    config: OrtConfig | TrtConfig | dict[str, Any] | None = None,
    encoder_only: bool = False,
) -> Model:
    """Load an exported model.

    ``backend``: ``auto`` | ``ort-cpu`` | ``ort-cuda`` | ``ort-trt`` | ``tensorrt``.
    ``config``: ``OrtConfig`` for the ``ort-*`` backends (IOBinding on by
    default, ``cuda_graph``, ``precision`` "fp32" = TF32 off), ``TrtConfig``
    for ``tensorrt`` (a dict is validated into the right one). ``encoder_only``
    (ONNX Runtime) cuts the model at ``z`` so the head can run in numpy (head mode ``numpy``).
    A ``.onnx`` path with ``tensorrt`` loads the ``.engine`` beside it.
    """
    path = Path(path)
    backend = resolve_backend(path, backend)
    if backend == "tensorrt":
        if encoder_only:
            raise ValueError("encoder_only cuts an ONNX graph; a TensorRT engine is fixed at build time "
                             "(its `z` output is still returned, so run the numpy head on that)")
        engine = path.with_suffix(".engine") if path.suffix == ".onnx" else path
        backend_trt.import_tensorrt()  # a missing extra is the first thing to fix, before any config mismatch
        return TrtModel(engine, _config(TrtConfig, config, backend))
    if path.suffix == ".engine":
        raise ValueError(f"{path}: ONNX Runtime backends load the .onnx file, not a TensorRT engine; "
                         "pass the .onnx, or use --backend tensorrt")
    return OrtModel(path, backend, _config(OrtConfig, config, backend), encoder_only=encoder_only)


def ort_cuda_path(export_mode: str, head_mode: str, cuda_graph: bool | None = None,
                  io_binding: bool = True) -> tuple[bool, str]:
    """How a model runs on ``ort-cuda``: (load its encoder-only cut?, the path and why). Pure: tested on the CPU.

    IOBinding without a CUDA graph is never the automatic choice where a graph can run: at batch 1 it took
    0.70 ms against 0.196 ms for the CUDA graph on an H200, slower than the CPU (README "On a GPU"). Every
    batch here is static (one frame, a bench batch size, or one row per camera), so each size gets its graph:
    a fused or encoder-only model replays it; a head_inputs model runs as its encoder-only cut with the head
    in numpy (head mode auto or numpy; swaps stay free). IOBinding alone runs only where asked for:
    ``--no-cuda-graph`` (or IOBinding off), or ``--head-mode model`` on a head_inputs model.
    """
    if cuda_graph is False or not io_binding:
        return False, "no CUDA graph (asked: --no-cuda-graph, or IOBinding off)"
    if export_mode != "head_inputs":
        return False, "CUDA graph per batch size"
    if head_mode in ("auto", "numpy"):
        return True, "CUDA graph on the encoder-only cut, head in numpy"
    return False, ("IOBinding without a CUDA graph (asked: --head-mode model on a head-inputs model rebinds the head "
                   "at every swap); --head-mode auto replays a CUDA graph, about 3x faster at batch 1")


def numpy_head_on_cuda_graph(backend: str, export_mode: str, head_mode: str, config: Any = None) -> bool:
    """Run a ``head_inputs`` model on ``ort-cuda`` as its encoder-only cut with the head in numpy (``ort_cuda_path``)?

    Yes where the head may run in numpy (``head_mode`` auto or numpy) and CUDA graphs are not turned off: the
    encoder-only cut replays as a CUDA graph, the head_inputs graph cannot (its head buffers rebind at every
    swap). Swaps stay free: the numpy head is swapped between frames like the graph's. (Measured: README "On a GPU".)
    """
    return backend == "ort-cuda" and ort_cuda_path(export_mode, head_mode, *_graph_settings(config))[0]


def _graph_settings(config: Any) -> tuple[bool | None, bool]:
    """(cuda_graph, io_binding) of an OrtConfig, a dict of its settings, or None (the defaults)."""
    get = config.get if isinstance(config, dict) else lambda key, default: getattr(config, key, default)
    return get("cuda_graph", None), get("io_binding", True)


def load_model_for_run(path: str | Path, backend: str = "auto", config: Any = None, head_mode: str = "auto", *,
                       threads: int = 0, cuda_graph: bool | None = None, tf32: bool = False) -> Model:
    """``load_model`` for the run pipeline: a head_inputs model on ``ort-cuda`` is loaded as its encoder-only cut
    where ``numpy_head_on_cuda_graph`` says so (the pipeline then runs the head in numpy). Only on ``ort-cuda`` is
    the file's mode read first (from its metadata, without a session).

    ``threads`` / ``cuda_graph`` / ``tf32`` (the CLI's ``--threads`` / ``--cuda-graph`` / ``--tf32``, the last as
    ``OrtConfig.precision`` "tf32") become the ONNX Runtime config once ``auto`` is resolved, here and nowhere
    else; TensorRT takes none of them (``config`` None = its defaults).
    """
    path = Path(path)
    backend = resolve_backend(path, backend)
    if config is None and backend in ORT_BACKENDS and (threads or cuda_graph is not None or tf32):
        config = OrtConfig(intra_op_threads=threads, cuda_graph=cuda_graph if backend == "ort-cuda" else None,
                           precision="tf32" if tf32 else "fp32")
    cut = False
    if backend == "ort-cuda" and path.suffix != ".engine":
        mode, settings = model_mode(path), _graph_settings(config)
        cut, why = ort_cuda_path(mode, head_mode, *settings)
        if mode == "head_inputs" and head_mode == "model" and settings == (None, True):  # (True: the model warns)
            log.warning("%s: %s", path, why)  # the slow path, asked for by the head mode: say what it costs
        else:
            log.info("%s on ort-cuda: %s", path, why)
    return load_model(path, backend, config, encoder_only=cut)


def available_backends(path: str | Path | None = None) -> list[str]:
    """Backends that can run here (``tensorrt`` only when it imports and, given ``path``, its engine exists).

    A ``.engine`` path runs on TensorRT alone: no ONNX Runtime backend is offered for it.
    """
    have = set(available_providers())
    is_engine = path is not None and Path(path).suffix == ".engine"
    names = [] if is_engine else [name for name, provider in ORT_BACKENDS.items() if provider in have]
    try:
        from jepa_edge.runtime.backend_trt import import_cudart, import_tensorrt

        import_tensorrt()
        import_cudart()
    except BackendUnavailableError:
        return names
    if path is None or Path(path).with_suffix(".engine").is_file():
        names.append("tensorrt")
    return names
