"""ONNX Runtime backend: CPU, CUDA EP or TensorRT EP, chosen explicitly.

A requested GPU provider that is missing, or that ONNX Runtime silently drops
when the session is built (missing CUDA/cuDNN libraries), is an error: the
runtime never falls back to the CPU behind the user's back.

Two ways to run a frame, same results (tested for parity on the CPU provider):

* **IOBinding** (``OrtConfig.io_binding=True``, the default). Per static input
  shape (batch size, and head rows K of a ``head_inputs`` model) one
  ``IOBinding`` holds a device buffer for ``frames`` and the output buffers;
  they are bound once and reused. A frame is one ``OrtValue.update_inplace``
  copy into the bound device buffer, one ``run_with_iobinding`` and one
  ``copy_outputs_to_cpu``. The output buffers are the ones ONNX Runtime
  allocated on the device at the first run of that shape, kept and bound from
  then on. Head weights of a ``head_inputs`` model are device ``OrtValue``\\ s
  uploaded once per ``set_head`` (``_prepare_head``), never per frame. The
  same code runs on the CPU provider with device "cpu" (that is how it is
  tested here). The host side is the caller's contiguous frames array: ONNX
  Runtime's Python API has no portable way to allocate pinned ("cuda_pinned")
  host memory, so the host→device copy is one pageable ``cudaMemcpy``.
* **Plain** ``sess.run`` (``io_binding=False``): the reference path; ONNX
  Runtime copies feeds and fetches inside the run call.

**CUDA graphs** (``OrtConfig.cuda_graph``: None = auto, the default; ``ort-cuda`` only): one extra
session per static batch size with the CUDA EP option ``enable_cuda_graph=1``
and the symbolic batch dimension fixed (``add_free_dimension_override_by_name``,
so shape arithmetic folds away). ONNX Runtime runs the first one or two frames
of a size normally (its warm-up: arena allocations), captures the graph on the
next with the bound buffers' addresses, and replays it from then on; the graph
lives in the calling thread's CUDA EP context, so frames of one model come from
one thread. Where capture is impossible (a ``head_inputs`` model, whose head
buffers change with every swap; nodes left on the CPU EP; any ONNX Runtime
error) the model falls back to the IOBinding path and
``model.cuda_graph_status`` says why (logged once).

**Precision.** ``OrtConfig.precision`` "fp32" passes ``use_tf32=0`` to the
CUDA EP (ONNX Runtime otherwise allows TF32 tensor-core math for fp32 MatMul
and Conv); "tf32" allows it. ``model.precision`` records what runs: "fp32"
only where TF32 is off (the CPU, the CUDA EP with ``use_tf32=0``, or
``NVIDIA_TF32_OVERRIDE=0``); the TensorRT EP has no TF32 switch and TensorRT
allows TF32 by default, so ``ort-trt`` is "tf32" (or "fp16" with
``trt_fp16``); a model exported with ``--precision fp16`` (metadata
"precision": "fp16") is "fp16" on every backend. TF32 is what the session
allows: it changes nothing on GPUs before Ampere (no TF32 tensor cores) nor on
the CPU. ``model.provider_options`` holds the options ONNX Runtime reports for
the session (the bench records them).

**Stage times** (``model.last_stages``, ms, host clock): IOBinding path:
"h2d" (``update_inplace``, a synchronous copy), "compute" (``run_with_iobinding``:
ONNX Runtime synchronises the device before the call returns, so this is GPU
time plus ONNX Runtime's launch overhead, not a CUDA-event time), "d2h"
(``copy_outputs_to_cpu``). Plain path: "compute" on the CPU provider only (on a
GPU the run call hides its own copies, so nothing is reported).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError, missing_onnxruntime
from jepa_edge.runtime.meta import METADATA_KEY, ModelMeta, parse_meta
from jepa_edge.runtime.model import HeadState, Model

log = logging.getLogger(__name__)

ORT_BACKENDS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
_OPT_LEVELS = ("disable", "basic", "extended", "all")
_PRECISIONS = ("fp32", "tf32")
_ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
_CONV_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
_USE_TF32_SINCE = (1, 18)  # the CUDA EP's `use_tf32` option (onnxruntime PR 19357)

# onnxruntime and onnxruntime-gpu both install the `onnxruntime` package: side by side, whichever wrote last wins.
GPU_INSTALL_HINT = (
    "install exactly one ONNX Runtime build, the GPU one: "
    "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'jepa-edge[gpu]'` "
    "(on a Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack)"
)


# ONNX Runtime's thread pools start every thread at session creation (100 000 of them hang the start) and spin
# them while they wait; past one per logical CPU they only contend. 4x still lets a benchmark oversubscribe.
MAX_THREADS_PER_CPU = 4


@dataclass
class OrtConfig:
    intra_op_threads: int = 0  # 0 = ORT's default (one per core); 1-2 leaves cores for capture on a Jetson
    inter_op_threads: int = 0  # only used by parallel execution mode; 0 = default
    device_id: int = 0  # GPU index for the CUDA / TensorRT providers
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    trt_fp16: bool = False  # TensorRT EP: allow fp16 kernels (recorded in model.precision)
    trt_cache_dir: str = ""  # TensorRT EP: engine + timing cache folder; "" = rebuild every start
    log_severity: int = 3  # ORT logger: 0 verbose … 3 error, 4 fatal
    # CUDA EP fp32 math: "fp32" = use_tf32=0 (exact fp32 GEMM/Conv, the parity reference); "tf32" = allow TF32
    # tensor cores (faster on Ampere and later, ~1e-3 relative error). The CPU always computes in fp32.
    precision: str = "fp32"
    io_binding: bool = True  # device buffers bound once per input shape; False = plain sess.run (reference path)
    # ort-cuda: one captured CUDA graph per static batch size (needs io_binding). None = auto: on where the model
    # allows it (ort-cuda, a fused or encoder_only graph, IOBinding), quietly off elsewhere; True = asked for (a
    # fallback is logged); False = off. On an H100 it ran the demo-size agent 5x faster (docs: README "On a GPU").
    cuda_graph: bool | None = None
    # CUDA EP cuDNN conv algorithm search: EXHAUSTIVE (ORT's default) benchmarks every conv shape at its first
    # run (slow first frame, fastest kernels); HEURISTIC asks cuDNN's heuristics; DEFAULT takes one fixed algorithm.
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    # CUDA EP memory arena growth: kSameAsRequested grows by what is asked (tight on a Jetson's shared memory);
    # kNextPowerOfTwo (ORT's default) over-allocates in powers of two. Steady state reuses the arena either way.
    arena_extend_strategy: str = "kSameAsRequested"
    do_copy_in_default_stream: bool = True  # CUDA EP: copies on the compute stream (ORT's default; False may race)

    def validate(self) -> None:
        if self.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"OrtConfig.graph_optimization={self.graph_optimization!r}; choose one of {_OPT_LEVELS}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("OrtConfig thread counts must be >= 0 (0 = ONNX Runtime default)")
        cpus = os.cpu_count() or 1
        for what, n in (("intra-op threads (--threads)", self.intra_op_threads),
                        ("inter-op threads", self.inter_op_threads)):
            if n > MAX_THREADS_PER_CPU * cpus:
                raise ValueError(
                    f"{n} ONNX Runtime {what} is over {MAX_THREADS_PER_CPU * cpus} ({MAX_THREADS_PER_CPU} x "
                    f"the {cpus} logical CPUs here): the pool starts every thread when the model loads, and more "
                    f"threads than CPUs only wait for each other; pass 0 (one per core) or at most {cpus}")
        for name, value, allowed in (("precision", self.precision, _PRECISIONS),
                                     ("cudnn_conv_algo_search", self.cudnn_conv_algo_search, _CONV_SEARCHES),
                                     ("arena_extend_strategy", self.arena_extend_strategy, _ARENA_STRATEGIES)):
            if value not in allowed:
                raise ValueError(f"OrtConfig.{name}={value!r}; choose one of {allowed}")
        if self.cuda_graph is True and not self.io_binding:
            raise ValueError("OrtConfig.cuda_graph=True needs io_binding=True: ONNX Runtime replays a CUDA graph "
                             "on the buffers bound through IOBinding")


def import_ort() -> Any:
    """onnxruntime, or one clear error naming the extra to install (the project's lazy import of it)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing_onnxruntime(exc) from exc
    return ort


def _ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (they derive from Exception directly)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EPFail", "EngineError")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError, ValueError)


def available_providers() -> list[str]:
    return list(import_ort().get_available_providers())


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


# ---- provider options and precision (pure functions, tested on any machine) --------------------------
def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def tf32_allowed(cfg: OrtConfig, ort_version: str) -> bool:
    """Whether the CUDA EP may use TF32 for fp32 math under ``cfg`` (``use_tf32`` needs onnxruntime >= 1.18)."""
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":  # NVIDIA's process-wide switch: no TF32 at all
        return False
    return cfg.precision == "tf32" or _version(ort_version) < _USE_TF32_SINCE


def cuda_provider_options(cfg: OrtConfig, ort_version: str, cuda_graph: bool = False) -> dict[str, str]:
    """CUDA EP options, every one explicit (strings, as ONNX Runtime stores them)."""
    opts = {
        "device_id": str(cfg.device_id),
        "arena_extend_strategy": cfg.arena_extend_strategy,
        "cudnn_conv_algo_search": cfg.cudnn_conv_algo_search,
        "do_copy_in_default_stream": "1" if cfg.do_copy_in_default_stream else "0",
    }
    if _version(ort_version) >= _USE_TF32_SINCE:
        opts["use_tf32"] = "1" if cfg.precision == "tf32" else "0"
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    return opts


def ort_precision(backend: str, cfg: OrtConfig, ort_version: str, model_precision: str = "fp32") -> str:
    """The precision a session really computes in: "fp16" for an fp16 model, else "fp32" only where TF32 is off."""
    if model_precision == "fp16":  # the encoder's tensors are fp16 wherever it runs (head and I/O stay float32)
        return "fp16"
    if backend == "ort-cpu":
        return "fp32"
    if backend == "ort-trt":
        if cfg.trt_fp16:
            return "fp16"
        return "fp32" if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0" else "tf32"  # TensorRT allows TF32 by default
    return "tf32" if tf32_allowed(cfg, ort_version) else "fp32"


_PRELOADED: list[bool] = []  # preload_cuda_libs ran in this process


def preload_cuda_libs(ort: Any) -> None:
    """Load the CUDA / cuDNN libraries that ``pip install 'jepa-edge[gpu]'`` put in site-packages/nvidia.

    onnxruntime-gpu >= 1.21 has ``preload_dlls()`` for that (without it, or without ``import torch`` first, the
    CUDA EP only finds libraries on LD_LIBRARY_PATH). A no-op on CPU builds and where the libraries come from the
    system (JetPack); a failure is logged, and the session build then reports the provider it could not load.
    """
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    try:
        ort.preload_dlls()
    except (OSError, RuntimeError) as exc:
        log.info("onnxruntime.preload_dlls() failed (%s); relying on the system library path", exc)


def _providers(backend: str, cfg: OrtConfig, cuda_graph: bool = False) -> list[Any]:
    """Provider list for ``backend``; raises when the provider is not in this onnxruntime build."""
    ort = import_ort()
    want = ORT_BACKENDS[backend]
    have = list(ort.get_available_providers())
    if want not in have:
        raise BackendUnavailableError(
            f"backend {backend!r} needs ONNX Runtime's {want}, but this onnxruntime only has {have}; "
            f"{GPU_INSTALL_HINT}, or use --backend ort-cpu"
        )
    if backend != "ort-cpu":
        preload_cuda_libs(ort)
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    if backend == "ort-cuda" and cfg.precision != "tf32" and _version(ort.__version__) < _USE_TF32_SINCE:
        log.warning("onnxruntime %s has no CUDA EP `use_tf32` option (>= 1.18): TF32 stays allowed, "
                    "model.precision says 'tf32'", ort.__version__)
    cuda = ("CUDAExecutionProvider", cuda_provider_options(cfg, ort.__version__, cuda_graph))
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


def cuda_graph_plan(backend: str, cfg: OrtConfig, mode: str) -> tuple[bool, str]:
    """(capture?, status) decided at load; a capture that fails later falls back with its own reason.

    ``cfg.cuda_graph`` None (auto) captures where the model allows it and says "off (auto: …)" elsewhere;
    True says "fallback to IOBinding: …" where it cannot (the model logs that once).
    """
    if cfg.cuda_graph is False:
        return False, "off (OrtConfig.cuda_graph=False)"
    auto = cfg.cuda_graph is None
    why = ""
    if backend != "ort-cuda":
        why = f"CUDA graphs are captured on the CUDA EP (backend 'ort-cuda'), this model runs on {backend!r}"
    elif not cfg.io_binding:
        why = "CUDA graphs replay on IOBinding buffers, and io_binding is off"
    elif mode == "head_inputs":
        why = ("a head_inputs model rebinds its head buffers (new addresses, new row count) at every set_head, and "
               "uploads them from the watcher thread, which would break a capture in progress; export a fused model "
               "for CUDA graphs")
    if why:
        return False, (f"off (auto: {why})" if auto else f"fallback to IOBinding: {why}")
    return True, ("on: one CUDA graph per static batch size, captured after ONNX Runtime's warm-up frames of each size"
                  + (" (auto)" if auto else ""))


def _read_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:  # truncated / not an ONNX file
        raise RuntimeModelError(f"{path}: not a readable ONNX model ({exc}); re-export it with `jepa-edge export`") \
            from exc


def _contract(model: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata_props, the parsed jepa_edge metadata) of a loaded ONNX model."""
    import json

    props = {p.key: p.value for p in model.metadata_props}
    return props, json.loads(props.get(METADATA_KEY, "{}"))


def model_mode(path: Path) -> str:
    """The export mode written in an ONNX file's metadata, read without a session; "" when it cannot be read
    (the model's load then says what is wrong with the file)."""
    try:
        return str(_contract(_read_onnx(path))[1].get("mode", ""))
    except (RuntimeModelError, ValueError, AttributeError):
        return ""


def encoder_only_bytes(path: Path) -> bytes:
    """The graph cut at ``z`` (head nodes and head inputs removed), serialised, metadata mode="encoder_only"."""
    import json

    import onnx
    from onnx.utils import Extractor

    model = _read_onnx(path)
    props, meta = _contract(model)
    sub = Extractor(model).extract_model(["frames"], ["z"])
    meta["mode"] = "encoder_only"
    meta["head"] = {"outputs": []}
    props[METADATA_KEY] = json.dumps(meta)
    onnx.helper.set_model_props(sub, props)
    return sub.SerializeToString()


def check_model_io(sess: Any, meta: ModelMeta, where: str) -> None:
    """The graph's I/O against the export contract and its own metadata (refused at load, not at frame 1)."""
    ins = {i.name: i for i in sess.get_inputs()}
    outs = {o.name for o in sess.get_outputs()}
    frames = ins.get("frames")
    if frames is None or frames.type != "tensor(uint8)" or len(frames.shape) != 4:
        raise RuntimeModelError(f"{where}: the graph needs input 'frames' uint8 [B,H,W,3]; re-export the model")
    _, h, w, c = frames.shape
    if isinstance(h, int) and isinstance(w, int) and (h, w) != (meta.height, meta.width):
        raise RuntimeModelError(
            f"{where}: the graph's input 'frames' is H×W {h}x{w} but its metadata says {meta.height}x{meta.width}; "
            "the file is inconsistent, re-export it with `jepa-edge export`"
        )
    if isinstance(c, int) and c != 3:
        raise RuntimeModelError(f"{where}: the graph's input 'frames' has {c} channels, not 3 (BGR); re-export")
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


# ---- IOBinding --------------------------------------------------------------------------------------
@dataclass
class _Bound:
    """One IOBinding for one static input shape: its buffers are bound once and reused every frame."""

    io: Any  # onnxruntime IOBinding
    frames: Any  # OrtValue (B, H, W, 3) uint8 on the device
    outputs: list[Any] | None = None  # OrtValues ORT allocated on the device at the first run, bound since
    head: HeadState | None = None  # the head whose OrtValues are bound now


class _IoRunner:
    """Runs one session through IOBinding, one ``_Bound`` per (batch, head rows)."""

    def __init__(self, ort: Any, sess: Any, device: str, device_id: int, output_names: list[str]) -> None:
        self.ort, self.sess, self.device, self.device_id = ort, sess, device, device_id
        self.output_names = output_names
        self._bound: dict[tuple[int, int], _Bound] = {}

    def _binding(self, shape: tuple[int, ...], rows: int) -> _Bound:
        key = (shape[0], rows)
        bound = self._bound.get(key)
        if bound is None:
            io = self.sess.io_binding()
            frames = self.ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, self.device, self.device_id)
            io.bind_ortvalue_input("frames", frames)
            for name in self.output_names:  # first run: ORT allocates each output on the device
                io.bind_output(name, self.device, self.device_id)
            bound = self._bound[key] = _Bound(io, frames)
        return bound

    def run(self, frames: np.ndarray, head: tuple[HeadState, Any, Any] | None,
            stages: dict[str, float]) -> list[np.ndarray]:
        state = None if head is None else head[0]
        bound = self._binding(frames.shape, 0 if state is None else state.weight.shape[0])
        if head is not None and bound.head is not state:  # a pointer rebind, no copy: uploaded at set_head
            bound.io.bind_ortvalue_input("head_weight", head[1])
            bound.io.bind_ortvalue_input("head_bias", head[2])
            bound.head = state
        t0 = time.perf_counter()
        bound.frames.update_inplace(frames)
        t1 = time.perf_counter()
        self.sess.run_with_iobinding(bound.io)
        t2 = time.perf_counter()
        values = bound.io.copy_outputs_to_cpu()  # fresh host arrays: the device buffers are reused next frame
        t3 = time.perf_counter()
        if bound.outputs is None:  # keep ORT's buffers and bind them: fixed addresses from now on
            bound.outputs = bound.io.get_outputs()
            for name, value in zip(self.output_names, bound.outputs):
                bound.io.bind_ortvalue_output(name, value)
        stages.update(h2d=(t1 - t0) * 1e3, compute=(t2 - t1) * 1e3, d2h=(t3 - t2) * 1e3)
        return values


class OrtModel(Model):
    """An exported ONNX model on an ONNX Runtime session (see the module docstring for the two run paths).

    ``infer`` runs on one thread at a time; ``set_head`` may come from another
    (the head watcher): it uploads the new head's OrtValues, then swaps one
    reference, and a frame always uses the head it started with.
    """

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
        ort = import_ort()
        self._model_arg: str | bytes = encoder_only_bytes(path) if encoder_only else str(path)
        sess = self._new_session(ort, path, backend, self._model_arg, session_options(ort, cfg), _providers(backend, cfg))
        meta_text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        super().__init__(path, backend, parse_meta(meta_text, str(path)))
        check_model_io(sess, self.meta, str(path))
        self.config = cfg
        self.precision = ort_precision(backend, cfg, ort.__version__, str(self.meta.raw.get("precision", "fp32")))
        self.provider_options: dict[str, dict[str, str]] = {k: dict(v) for k, v in sess.get_provider_options().items()}
        self._ort, self._sess = ort, sess
        self._output_names = [o.name for o in sess.get_outputs()]
        self._batch_dim = next(i for i in sess.get_inputs() if i.name == "frames").shape[0]  # int, name or None
        self._device = "cpu" if backend == "ort-cpu" else "cuda"
        self._io = _IoRunner(ort, sess, self._device, cfg.device_id, self._output_names) if cfg.io_binding else None
        self._slots: dict[int, tuple[HeadState, Any, Any]] = {}  # id(HeadState) → (state, weight, bias) OrtValues
        self._graphs: dict[int, _IoRunner] = {}  # batch size → runner of its CUDA-graph session
        self._graph_on, self.cuda_graph_status = cuda_graph_plan(backend, cfg, self.meta.mode)
        if cfg.cuda_graph is True and not self._graph_on:
            log.warning("%s: CUDA graphs %s", path, self.cuda_graph_status)
        if self._head_state is not None:
            self._prepare_head(self._head_state)  # the placeholder head of a head_inputs model

    @staticmethod
    def _new_session(ort: Any, path: Path, backend: str, model_arg: str | bytes, so: Any, providers: list[Any]) -> Any:
        """A session on exactly ``backend`` (``model_arg``: the file, or the encoder-only cut as bytes)."""
        try:
            sess = ort.InferenceSession(model_arg, so, providers=providers)
        except _ort_errors(ort) as exc:
            raise RuntimeModelError(f"{path}: ONNX Runtime could not load the model with {backend}: {exc}") from exc
        wanted = ORT_BACKENDS[backend]
        if wanted not in sess.get_providers():
            raise BackendUnavailableError(
                f"{path}: ONNX Runtime dropped {wanted} while building the session (active: {sess.get_providers()}); "
                f"check the CUDA / cuDNN / TensorRT libraries match your onnxruntime-gpu build, {GPU_INSTALL_HINT}, "
                "or use --backend ort-cpu"
            )
        return sess

    # ---- head swap ----------------------------------------------------------------------
    def _upload_head(self, state: HeadState) -> tuple[HeadState, Any, Any]:
        ov = self._ort.OrtValue
        dev, idx = self._device, self.config.device_id
        return state, ov.ortvalue_from_numpy(state.weight, dev, idx), ov.ortvalue_from_numpy(state.bias, dev, idx)

    def _prepare_head(self, state: HeadState) -> None:
        """Upload ``state``'s weight and bias as device OrtValues, once, before the swap.

        ``_slots`` maps a HeadState (by id; the state itself is kept in the
        value) to its OrtValues; it keeps the new head and the current one, so
        a frame that read the current head before the swap still finds it.
        """
        if self._io is None:
            return  # the plain path feeds the numpy arrays of the HeadState
        current = self._slots.get(id(self._head_state))
        keep = {id(state): self._upload_head(state)}
        if current is not None:
            keep[id(self._head_state)] = current
        self._slots = keep  # one reference assignment: _run never sees a half-built mapping

    def _head_values(self, state: HeadState) -> tuple[HeadState, Any, Any]:
        entry = self._slots.get(id(state))
        if entry is None or entry[0] is not state:  # two swaps during one frame: upload for this frame only
            entry = self._upload_head(state)
        return entry

    # ---- CUDA graphs -----------------------------------------------------------------------
    def _graph_runner(self, batch: int) -> _IoRunner:
        runner = self._graphs.get(batch)
        if runner is None:
            so = session_options(self._ort, self.config)
            if isinstance(self._batch_dim, str) and self._batch_dim:
                so.add_free_dimension_override_by_name(self._batch_dim, batch)  # static shapes: shape ops fold
            providers = _providers(self.backend, self.config, cuda_graph=True)
            sess = self._new_session(self._ort, self.path, self.backend, self._model_arg, so, providers)
            runner = self._graphs[batch] = _IoRunner(self._ort, sess, self._device, self.config.device_id,
                                                     self._output_names)
            log.info("%s: CUDA-graph session for batch %d", self.path, batch)
        return runner

    def _graph_fallback(self, reason: str) -> None:
        self._graph_on, self._graphs = False, {}
        self.cuda_graph_status = f"fallback to IOBinding: {reason}"
        log.warning("%s: CUDA graphs %s", self.path, self.cuda_graph_status)

    def _run_graph(self, frames: np.ndarray, stages: dict[str, float]) -> list[np.ndarray] | None:
        """Run on the batch size's CUDA-graph session; None (after recording why) when it cannot."""
        try:
            return self._graph_runner(frames.shape[0]).run(frames, None, stages)
        except (RuntimeModelError, BackendUnavailableError) as exc:
            self._graph_fallback(f"the CUDA-graph session could not be built ({exc})")
        except _ort_errors(self._ort) as exc:
            self._graph_fallback(f"ONNX Runtime could not capture or replay the graph ({exc})")
        return None

    # ---- inference ------------------------------------------------------------------
    def _run(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        if isinstance(self._batch_dim, int) and frames.shape[0] != self._batch_dim:
            raise ValueError(f"{self.path}: this graph was exported for batch {self._batch_dim}, got "
                             f"{frames.shape[0]} frames; send batches of {self._batch_dim} or re-export")
        stages: dict[str, float] = {}
        if self._io is None:
            values = self._run_plain(frames, state, stages)
        else:
            values = self._run_graph(frames, stages) if self._graph_on else None
            if values is None:
                head = None if state is None else self._head_values(state)
                values = self._io.run(frames, head, stages)
        self.last_stages = stages
        return dict(zip(self._output_names, values))

    def _run_plain(self, frames: np.ndarray, state: HeadState | None, stages: dict[str, float]) -> list[np.ndarray]:
        feeds = {"frames": frames}
        if state is not None:
            feeds["head_weight"], feeds["head_bias"] = state.weight, state.bias
        t0 = time.perf_counter()
        values = self._sess.run(self._output_names, feeds)
        if self.backend == "ort-cpu":  # on a GPU the call hides its copies: no honest "compute" to report
            stages["compute"] = (time.perf_counter() - t0) * 1e3
        return values

    def _release(self) -> None:
        """Drop the sessions and bound device buffers (``close()`` calls this with no frame in flight)."""
        self._sess = self._io = None
        self._graphs, self._slots = {}, {}
