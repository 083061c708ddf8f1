"""ONNX Runtime backend: CPU, CUDA EP or TensorRT EP, chosen explicitly.

A requested GPU provider that is missing, or that ONNX Runtime silently drops
when the session is built (missing CUDA/cuDNN libraries), is an error: the
runtime never falls back to the CPU behind the user's back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError, missing_extra
from jepa_edge.runtime.meta import parse_meta
from jepa_edge.runtime.model import HeadState, Model

log = logging.getLogger(__name__)

ORT_BACKENDS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OrtConfig:
    intra_op_threads: int = 0  # 0 = ORT's default (one per core); 1-2 leaves cores for capture on a Jetson
    inter_op_threads: int = 0  # only used by parallel execution mode; 0 = default
    device_id: int = 0  # GPU index for the CUDA / TensorRT providers
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    trt_fp16: bool = False  # TensorRT EP: allow fp16 kernels (recorded in model.precision)
    trt_cache_dir: str = ""  # TensorRT EP: engine + timing cache folder; "" = rebuild every start
    log_severity: int = 3  # ORT logger: 0 verbose … 3 error, 4 fatal

    def validate(self) -> None:
        if self.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"OrtConfig.graph_optimization={self.graph_optimization!r}; choose one of {_OPT_LEVELS}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("OrtConfig thread counts must be >= 0 (0 = ONNX Runtime default)")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing_extra("onnxruntime", "gpu", exc) from exc
    return ort


def _ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (they derive from Exception directly)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EPFail", "EngineError")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError, ValueError)


def available_providers() -> list[str]:
    return list(_import_ort().get_available_providers())


def session_options(ort, cfg: OrtConfig):
    """ONNX Runtime SessionOptions from an OrtConfig (threads, logging, graph optimisation level)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = cfg.inter_op_threads
    so.log_severity_level = cfg.log_severity
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    return so


def _providers(backend: str, cfg: OrtConfig) -> list[Any]:
    """Provider list for ``backend``; raises when the provider is not in this onnxruntime build."""
    want = ORT_BACKENDS[backend]
    have = available_providers()
    if want not in have:
        raise BackendUnavailableError(
            f"backend {backend!r} needs ONNX Runtime's {want}, but this onnxruntime only has {have}; "
            "install the GPU build with `pip uninstall onnxruntime && pip install 'jepa-edge[gpu]'` "
            "(on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack), or use backend='ort-cpu'"
        )
    cuda = ("CUDAExecutionProvider", {"device_id": cfg.device_id})
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    if backend == "ort-cuda":  # CPU stays listed for nodes CUDA lacks (ORT partitions the graph per node)
        return [cuda, "CPUExecutionProvider"]
    trt_opts: dict[str, Any] = {"device_id": cfg.device_id, "trt_fp16_enable": cfg.trt_fp16}
    if cfg.trt_cache_dir:
        Path(cfg.trt_cache_dir).mkdir(parents=True, exist_ok=True)
        trt_opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=cfg.trt_cache_dir,
            trt_timing_cache_enable=True,
            trt_timing_cache_path=cfg.trt_cache_dir,
        )
    return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]


def encoder_only_bytes(path: Path) -> bytes:
    """The graph cut at ``z`` (head nodes and head inputs removed), serialised, metadata mode="encoder_only"."""
    import json

    import onnx
    from google.protobuf.message import DecodeError
    from onnx.utils import Extractor

    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:  # truncated / not an ONNX file
        raise RuntimeModelError(f"{path}: not a readable ONNX model ({exc}); re-export it with `jepa-edge export`") \
            from exc
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props.get("jepa_edge", "{}"))
    sub = Extractor(model).extract_model(["frames"], ["z"])
    meta["mode"] = "encoder_only"
    meta["head"] = {"outputs": []}
    props["jepa_edge"] = json.dumps(meta)
    onnx.helper.set_model_props(sub, props)
    return sub.SerializeToString()


class OrtModel(Model):
    def __init__(
        self, path: str | Path, backend: str = "ort-cpu", config: OrtConfig | None = None, encoder_only: bool = False
    ) -> None:
        if backend not in ORT_BACKENDS:
            raise ValueError(f"unknown ONNX Runtime backend {backend!r}; choose one of {sorted(ORT_BACKENDS)}")
        cfg = config or OrtConfig()
        cfg.validate()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX model; export one with `jepa-edge export`")
        ort = _import_ort()
        providers = _providers(backend, cfg)
        so = session_options(ort, cfg)
        model_arg: str | bytes = encoder_only_bytes(path) if encoder_only else str(path)
        try:
            sess = ort.InferenceSession(model_arg, so, providers=providers)
        except _ort_errors(ort) as exc:
            raise RuntimeModelError(f"{path}: ONNX Runtime could not load the model with {backend}: {exc}") from exc
        wanted = ORT_BACKENDS[backend]
        if wanted not in sess.get_providers():
            raise BackendUnavailableError(
                f"{path}: ONNX Runtime dropped {wanted} while building the session (active: {sess.get_providers()}); "
                "check the CUDA / cuDNN / TensorRT libraries match your onnxruntime-gpu build "
                "(`pip install 'jepa-edge[gpu]'`), or use backend='ort-cpu'"
            )
        meta_text = sess.get_modelmeta().custom_metadata_map.get("jepa_edge")
        super().__init__(path, backend, parse_meta(meta_text, str(path)))
        self.config = cfg
        self.precision = "fp16" if backend == "ort-trt" and cfg.trt_fp16 else "fp32"
        self._sess = sess
        self._check_io()
        self._output_names = [o.name for o in sess.get_outputs()]

    def _check_io(self) -> None:
        ins = {i.name: i for i in self._sess.get_inputs()}
        outs = {o.name for o in self._sess.get_outputs()}
        meta, where = self.meta, str(self.path)
        frames = ins.get("frames")
        if frames is None or frames.type != "tensor(uint8)" or len(frames.shape) != 4:
            raise RuntimeModelError(f"{where}: the graph needs input 'frames' uint8 [B,H,W,3]; re-export the model")
        if "z" not in outs:
            raise RuntimeModelError(f"{where}: the graph has no output 'z'; re-export the model")
        if meta.mode == "head_inputs":
            missing = {"head_weight", "head_bias"} - set(ins) or ({"head"} - outs)
            if missing:
                raise RuntimeModelError(f"{where}: head_inputs model lacks {sorted(missing)}; re-export the model")
        elif meta.mode == "fused":
            missing = {o.name for o in meta.head_outputs} - outs
            if missing:
                raise RuntimeModelError(f"{where}: metadata names head outputs {sorted(missing)} the graph lacks")

    def _run(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        feeds = {"frames": frames}
        if state is not None:
            feeds["head_weight"], feeds["head_bias"] = state.weight, state.bias
        values = self._sess.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self._sess = None
