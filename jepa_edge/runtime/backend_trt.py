"""Native TensorRT backend: ``model.engine`` + sidecar ``model.engine.json``.

Follows the TensorRT Python samples: deserialise once, allocate pinned host
and device buffers once for the profile's maximum shapes, bind every I/O
tensor by name (``set_tensor_address``), run on one stream, NumPy in and out.
Every CUDA runtime call goes through ``cuda_call``, which checks its return
code.

Before the engine is deserialised, the sidecar (size-capped, strict format)
is checked against this device: TensorRT version, GPU compute capability, and
the sha256 of the engine bytes; a mismatch is one line saying to rebuild on
this device. The sidecar's ONNX path may not leave the engine's folder.

Per frame: frames are copied into a pinned host buffer, then H2D, compute,
D2H on the stream, with a CUDA event after each (``last_stages``: "h2d",
"compute", "d2h" from ``cudaEventElapsedTime``, "enqueue" the host time to
submit it all). Compute is a CUDA graph of ``execute_async_v3``
(``TrtConfig.cuda_graph``): TensorRT wants one plain enqueue after the input
shapes change before it can be captured (its first enqueue at new shapes does
setup work that is not part of the graph), so graphs are kept only for the
shapes the context was last set up for — one per bound head buffer, whose
address each graph bakes in. A new batch size or head width drops them, runs
one plain enqueue and re-captures. If capture fails, inference carries on
with plain enqueues and ``graph_status`` says why.

Head weights of a ``head_inputs`` engine live on the device in two buffers:
a swap uploads to the idle one, then flips which one is bound (no engine
rebuild); a graph captured on buffer 0 is never replayed for a head on
buffer 1.

``tensorrt`` and ``cuda-python`` are imported inside functions: importing
this module never needs them (``pip install 'jepa-edge[trt]'``).
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import MAX_JSON_BYTES, ArtifactError, read_json_capped
from jepa_edge.runtime.errors import RuntimeModelError, missing_extra
from jepa_edge.runtime.meta import ModelMeta, parse_meta
from jepa_edge.runtime.model import HeadState, Model

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "jepa-edge/trt-engine"
SIDECAR_VERSION = 2  # 2: tf32 recorded, engine sha256 required, ONNX path inside the engine's folder
PRECISIONS = ("fp32", "fp16", "int8")
REBUILD = "rebuild on this device with `jepa-edge export --trt`"
MAX_ENGINE_BYTES = 4 << 30  # an engine of this toolkit's models is MiBs; refuse to read anything near RAM size


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error code."""


@dataclass
class TrtConfig:
    device_id: int = 0  # CUDA device the engine runs on
    onnx_path: str = ""  # source ONNX for hash check / metadata; "" = the sidecar's "onnx.path" beside the engine
    verify_onnx_hash: bool = True  # refuse an engine whose sidecar hash does not match the ONNX found
    cuda_graph: bool = True  # replay execute_async_v3 as a CUDA graph per input shape (fallback: plain enqueue)
    log_level: str = "warning"  # TensorRT logger: "verbose" | "info" | "warning" | "error"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise missing_extra("TensorRT (the `tensorrt` Python package)", "trt", exc) from exc
    return trt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError as exc:
            raise missing_extra("cuda-python (`cuda.bindings.runtime`)", "trt", exc) from exc
    return cudart


def cuda_call(result: tuple[Any, ...], what: str = "CUDA call") -> Any:
    """Check a cuda-python ``(err, *values)`` tuple; return the value(s) or raise CudaError."""
    cudart = import_cudart()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        msg = cudart.cudaGetErrorString(err)
        text = msg[1].decode() if isinstance(msg, tuple) and len(msg) > 1 else str(msg)
        raise CudaError(f"{what} failed: {name} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_name_and_cc(cudart: Any, device_id: int) -> tuple[str, str]:
    """GPU name and compute capability ("8.7") of ``device_id``."""
    prop = cuda_call(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{int(prop.major)}.{int(prop.minor)}"


# ---- sidecar -----------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _field(side: dict[str, Any], dotted: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value: Any = side
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RuntimeModelError(f"{where}: sidecar field {dotted!r} is missing or malformed; {REBUILD}")
    return value


def validate_sidecar(side: dict[str, Any], where: Path) -> None:
    """The fields the runtime relies on, with their types (docs/FORMATS.md); anything else is informative."""
    if side.get("format") != SIDECAR_FORMAT:
        raise RuntimeModelError(f"{where}: not a jepa-edge engine sidecar (format {side.get('format')!r}); {REBUILD}")
    if side.get("version") != SIDECAR_VERSION:
        raise RuntimeModelError(f"{where}: sidecar version {side.get('version')!r}, this runtime reads "
                                f"{SIDECAR_VERSION}; {REBUILD}")
    if _field(side, "precision", str, where) not in PRECISIONS:
        raise RuntimeModelError(f"{where}: sidecar precision {side['precision']!r} is unknown; {REBUILD}")
    _field(side, "tf32", bool, where)
    _field(side, "tensorrt_version", str, where)
    if not re.fullmatch(r"\d+\.\d+", _field(side, "gpu.compute_capability", str, where)):
        raise RuntimeModelError(f"{where}: sidecar gpu.compute_capability is not 'major.minor'; {REBUILD}")
    for key in ("engine.sha256", "onnx.sha256"):
        if not _HEX64.fullmatch(_field(side, key, str, where)):
            raise RuntimeModelError(f"{where}: sidecar {key} is not a sha256 hex digest; {REBUILD}")
    _field(side, "engine.bytes", int, where)
    _field(side, "onnx.path", str, where)
    _field(side, "metadata", dict, where)


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    """The engine's sidecar, size-capped and validated (current format only)."""
    side = sidecar_path(engine_path)
    if not side.exists():
        raise RuntimeModelError(f"{engine_path}: sidecar {side.name} is missing; {REBUILD} "
                                "(the runtime needs the hashes and metadata recorded beside the engine)")
    try:
        data = read_json_capped(side, "engine sidecar", REBUILD, MAX_JSON_BYTES)
    except ArtifactError as exc:
        raise RuntimeModelError(str(exc)) from exc
    validate_sidecar(data, side)
    return data


def contained_path(folder: Path, name: str, where: Path) -> Path:
    """``folder / name`` for a relative ``name`` that stays inside ``folder`` (no absolute path, no ``..``)."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts or p.drive:
        raise RuntimeModelError(f"{where}: sidecar names ONNX {name!r} outside the engine's folder, refused; "
                                "keep the ONNX beside the engine and rebuild with `jepa-edge export --trt`")
    return folder / p


def _onnx_candidate(engine_path: Path, side: dict[str, Any], cfg: TrtConfig) -> Path:
    if cfg.onnx_path:  # the caller's own choice: may live anywhere
        return Path(cfg.onnx_path)
    return contained_path(engine_path.parent, side["onnx"]["path"], sidecar_path(engine_path))


def engine_meta(engine_path: Path, side: dict[str, Any], cfg: TrtConfig) -> ModelMeta:
    """Metadata from the sidecar; the source ONNX, where present, must be the one the engine was built from."""
    onnx_path = _onnx_candidate(engine_path, side, cfg)
    want = side["onnx"]["sha256"]
    if cfg.verify_onnx_hash and onnx_path.is_file():
        got = sha256_file(onnx_path)
        if got != want:
            raise RuntimeModelError(
                f"{engine_path}: built from an ONNX with sha256 {want[:12]}…, but {onnx_path} is {got[:12]}…; "
                "the engine is stale, rebuild it with `jepa-edge export --trt`"
            )
    return parse_meta(json.dumps(side["metadata"]), str(sidecar_path(engine_path)))


def check_engine_compatible(engine_path: Path, side: dict[str, Any], trt: Any, device_id: int) -> None:
    """Engines are tied to a TensorRT version and GPU architecture: say so instead of crashing."""
    built_with = side["tensorrt_version"]
    if built_with != trt.__version__:
        raise RuntimeModelError(f"{engine_path}: built with TensorRT {built_with}, this device has "
                                f"{trt.__version__}; {REBUILD}")
    _, here = device_name_and_cc(import_cudart(), device_id)
    cc = side["gpu"]["compute_capability"]
    if cc != here:
        raise RuntimeModelError(f"{engine_path}: built for compute capability {cc}, this GPU is {here}; {REBUILD}")


def read_engine_bytes(engine_path: Path, side: dict[str, Any]) -> bytes:
    """The engine file, after its size and sha256 match the sidecar (nothing else is deserialised)."""
    size = engine_path.stat().st_size
    want = int(side["engine"]["bytes"])
    if size != want or size > MAX_ENGINE_BYTES:
        raise RuntimeModelError(f"{engine_path}: {size} bytes, the sidecar recorded {want}; {REBUILD}")
    with open(engine_path, "rb") as f:
        data = f.read(want + 1)
    if hashlib.sha256(data).hexdigest() != side["engine"]["sha256"]:
        raise RuntimeModelError(f"{engine_path}: engine bytes do not match the sidecar's sha256 (corrupt or "
                                f"replaced); {REBUILD}")
    return data


# ---- buffers ------------------------------------------------------------------------
class _Buffer:
    """Pinned host array + device allocation of the same byte size."""

    def __init__(self, nbytes: int, dtype: np.dtype) -> None:
        cudart = import_cudart()
        self.nbytes = max(int(nbytes), dtype.itemsize)
        self.host_ptr = cuda_call(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        try:
            self.device = cuda_call(cudart.cudaMalloc(self.nbytes), "cudaMalloc")
        except CudaError:
            cuda_call(cudart.cudaFreeHost(self.host_ptr), "cudaFreeHost")
            raise
        raw = ctypes.cast(self.host_ptr, ctypes.POINTER(ctypes.c_uint8))
        self.host = np.ctypeslib.as_array(raw, (self.nbytes,)).view(dtype)  # flat, sliced per call

    def free(self) -> None:
        cudart = import_cudart()
        if self.device:
            cuda_call(cudart.cudaFree(self.device), "cudaFree")
            self.device = 0
        if self.host_ptr:
            cuda_call(cudart.cudaFreeHost(self.host_ptr), "cudaFreeHost")
            self.host_ptr = 0


_STAGE_EVENTS = ("start", "h2d", "compute", "d2h")  # recorded on the stream after each stage
_IO_API = {"engine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_profile_shape"),
           "context": ("set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape")}


def _require_name_based_api(trt: Any, engine: Any, context: Any, path: Path) -> None:
    """TensorRT >= 8.5 binds I/O by tensor name and runs ``execute_async_v3`` (the only API in 10 and 11)."""
    for what, obj in (("engine", engine), ("context", context)):
        missing = [n for n in _IO_API[what] if not hasattr(obj, n)]
        if missing:
            raise RuntimeModelError(f"{path}: TensorRT {trt.__version__} lacks {what} API {missing} "
                                    "(jepa-edge needs TensorRT >= 8.5); upgrade TensorRT")


def _instantiate(cudart: Any, graph: Any) -> Any:
    """``cudaGraphInstantiateWithFlags(graph, 0)`` (CUDA >= 11.4; same signature in 12 and 13), else
    ``cudaGraphInstantiate(graph, 0)`` (its CUDA >= 12 signature)."""
    if hasattr(cudart, "cudaGraphInstantiateWithFlags"):
        return cuda_call(cudart.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
    return cuda_call(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")


class TrtModel(Model):
    def __init__(self, path: str | Path, config: TrtConfig | None = None) -> None:
        cfg = config or TrtConfig()
        path = Path(path)
        trt, cudart = import_tensorrt(), import_cudart()  # first: a missing extra is the error to fix first
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such TensorRT engine; build one with `jepa-edge export --trt`")
        side = read_sidecar(path)
        super().__init__(path, "tensorrt", engine_meta(path, side, cfg))
        self.sidecar, self.config = side, cfg
        self.precision = side["precision"]
        self.tf32 = bool(side["tf32"])
        self._buffers: dict[str, _Buffer] = {}
        self._head_buffers: list[dict[str, _Buffer]] = []  # two pairs (head_weight, head_bias)
        self._slots: dict[int, tuple[HeadState, int]] = {}  # id(HeadState) → (state, buffer pair index)
        self._graphs: dict[int, tuple[Any, Any]] = {}  # head slot (-1: none) → (graph, exec), for _graph_shapes
        self._graph_shapes: tuple | None = None  # input shapes the context was last set up (enqueued) for
        self._out_shapes: dict[str, tuple[int, ...]] = {}  # output shapes at _graph_shapes
        self.graph_status = "on" if cfg.cuda_graph else "off (TrtConfig.cuda_graph=False)"
        self.graph_captures = 0  # graphs captured so far (a new batch size or head width re-captures)
        self._events: dict[str, Any] = {}
        self._lock = threading.Lock()  # one stream, one context: a set_head upload never interleaves a frame
        self._stream = None
        levels = {"verbose": trt.Logger.VERBOSE, "info": trt.Logger.INFO,
                  "warning": trt.Logger.WARNING, "error": trt.Logger.ERROR}
        if cfg.log_level not in levels:
            raise ValueError(f"TrtConfig.log_level={cfg.log_level!r}; choose one of {sorted(levels)}")
        cuda_call(cudart.cudaSetDevice(cfg.device_id), "cudaSetDevice")
        check_engine_compatible(path, side, trt, cfg.device_id)
        plan = read_engine_bytes(path, side)
        self._logger = trt.Logger(levels[cfg.log_level])
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeModelError(f"{path}: TensorRT could not deserialise the engine (see the TensorRT log "
                                    f"above); {REBUILD}")
        self._context = self._engine.create_execution_context()
        _require_name_based_api(trt, self._engine, self._context, path)
        self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        try:
            self._events = {k: cuda_call(cudart.cudaEventCreate(), "cudaEventCreate") for k in _STAGE_EVENTS}
            self._io = self._describe_io(trt)
            self._check_io()
            self._allocate()
        except BaseException:
            self.close()  # free the stream, events and whatever buffers exist, then report the original error
            raise

    # ---- setup --------------------------------------------------------------------------
    def _describe_io(self, trt: Any) -> dict[str, dict[str, Any]]:
        io: dict[str, dict[str, Any]] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            entry = {"input": is_input, "dtype": np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))}
            if is_input:
                lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)  # (min, opt, max) of profile 0
                entry["min"], entry["max"] = tuple(lo), tuple(hi)
            io[name] = entry
        return io

    def _check_io(self) -> None:
        where = str(self.path)
        frames = self._io.get("frames")
        if frames is None or not frames["input"] or frames["dtype"] != np.uint8:
            raise RuntimeModelError(f"{where}: engine needs input 'frames' uint8 [B,H,W,3]; rebuild from the ONNX")
        if "z" not in self._io:
            raise RuntimeModelError(f"{where}: engine has no output 'z'; rebuild from the ONNX")
        if self.meta.mode == "head_inputs":
            missing = {"head_weight", "head_bias", "head"} - set(self._io)
            if missing:
                raise RuntimeModelError(f"{where}: head_inputs engine lacks {sorted(missing)}; rebuild from the ONNX")
        self.max_batch = int(frames["max"][0])
        self.max_head = int(self._io["head_weight"]["max"][0]) if "head_weight" in self._io else 0

    def _allocate(self) -> None:
        """One buffer per tensor, sized by the profile maximum (outputs: shapes inferred at max inputs)."""
        for name, e in self._io.items():
            if e["input"]:
                self._set_shape(name, e["max"])
        for name, e in self._io.items():
            shape = e["max"] if e["input"] else tuple(self._context.get_tensor_shape(name))
            buf = _Buffer(int(np.prod(shape)) * e["dtype"].itemsize, e["dtype"])
            if name in ("head_weight", "head_bias"):
                if not self._head_buffers:
                    self._head_buffers = [{}, {}]
                self._head_buffers[0][name] = buf
                self._head_buffers[1][name] = _Buffer(buf.nbytes, e["dtype"])
            else:
                self._buffers[name] = buf
            e["shape_max"] = shape
        if self._head_state is not None:
            self._prepare_head(self._head_state)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, tuple(int(s) for s in shape)):
            e = self._io[name]
            raise RuntimeModelError(
                f"{self.path}: input {name!r} shape {tuple(shape)} is outside the engine profile "
                f"{e['min']}..{e['max']}; rebuild with a larger profile (`jepa-edge export --trt --max-batch`)"
            )

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        cudart = import_cudart()
        k = getattr(cudart.cudaMemcpyKind, kind)
        cuda_call(cudart.cudaMemcpyAsync(dst, src, nbytes, k, self._stream), f"cudaMemcpyAsync {kind}")

    # ---- head swap -------------------------------------------------------------------
    def _prepare_head(self, state: HeadState) -> None:
        """Upload ``state`` to the buffer pair the current head is not using (before set_head's swap)."""
        K = state.weight.shape[0]
        if K > self.max_head:
            raise RuntimeModelError(
                f"{self.path}: head has {K} rows but the engine profile allows at most {self.max_head}; "
                "rebuild with a larger head profile (`jepa-edge export --trt --max-head`)"
            )
        with self._lock:
            self._upload(state)

    def _upload(self, state: HeadState) -> int:
        """Put ``state`` in the pair not holding the current head; return that pair's index. Lock held.

        ``_slots`` maps a HeadState (by id, the object kept alive in the
        value) to its pair; ``_run`` looks up the state it read, so a frame
        always binds the weights of the head it started with (re-uploaded if
        two swaps overtook it). A graph bakes in its pair's addresses, not the
        weights: replaying it after an upload reads the new weights.
        """
        cudart = import_cudart()
        current = self._slots.get(id(self._head_state))
        idle = 1 if current is not None and current[1] == 0 else 0
        for name, arr in (("head_weight", state.weight), ("head_bias", state.bias)):
            buf = self._head_buffers[idle][name]
            buf.host[: arr.size] = arr.ravel()
            self._copy(buf.device, buf.host_ptr, arr.nbytes, "cudaMemcpyHostToDevice")
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        keep = {id(state): (state, idle)}
        if current is not None and current[0] is not state:
            keep[id(self._head_state)] = current
        self._slots = keep
        return idle

    # ---- inference ------------------------------------------------------------------
    def _run(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        B = frames.shape[0]
        if B > self.max_batch:
            raise ValueError(
                f"{self.path}: batch {B} exceeds the engine profile's max batch {self.max_batch}; "
                "send smaller batches or rebuild with `jepa-edge export --trt --max-batch`"
            )
        with self._lock:
            return self._run_locked(frames, state)

    def _run_locked(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        cudart = import_cudart()
        ev = self._events
        slot = -1
        if state is not None:
            entry = self._slots.get(id(state))
            slot = entry[1] if entry is not None else self._upload(state)  # overtaken by two swaps: upload again
        shapes = (tuple(frames.shape),) + (() if state is None else (state.weight.shape, state.bias.shape))
        buf = self._buffers["frames"]
        buf.host[: frames.size] = frames.ravel()  # pinned staging: the H2D below is a true async DMA
        t0 = time.perf_counter()  # "enqueue": host time to submit the copies and the compute
        cuda_call(cudart.cudaEventRecord(ev["start"], self._stream), "cudaEventRecord")
        self._copy(buf.device, buf.host_ptr, frames.nbytes, "cudaMemcpyHostToDevice")
        cuda_call(cudart.cudaEventRecord(ev["h2d"], self._stream), "cudaEventRecord")
        self._compute(shapes, slot)
        cuda_call(cudart.cudaEventRecord(ev["compute"], self._stream), "cudaEventRecord")
        pending = []
        for name, shape in self._out_shapes.items():
            ob, n = self._buffers[name], int(np.prod(shape))
            self._copy(ob.host_ptr, ob.device, n * ob.host.itemsize, "cudaMemcpyDeviceToHost")
            pending.append((name, ob, shape, n))
        cuda_call(cudart.cudaEventRecord(ev["d2h"], self._stream), "cudaEventRecord")
        enqueue_ms = 1e3 * (time.perf_counter() - t0)
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self.last_stages = {**{k: self._elapsed(a, k) for a, k in itertools.pairwise(_STAGE_EVENTS)},
                            "enqueue": enqueue_ms}
        return {name: ob.host[:n].reshape(shape).copy() for name, ob, shape, n in pending}

    def _elapsed(self, start: str, end: str) -> float:
        cudart = import_cudart()
        return float(cuda_call(cudart.cudaEventElapsedTime(self._events[start], self._events[end]),
                               "cudaEventElapsedTime"))

    def _compute(self, shapes: tuple, slot: int) -> None:
        """Replay this (shapes, head buffer)'s graph, or set the context up, enqueue, and capture one."""
        cudart = import_cudart()
        if shapes == self._graph_shapes and slot in self._graphs:
            cuda_call(cudart.cudaGraphLaunch(self._graphs[slot][1], self._stream), "cudaGraphLaunch")
            return
        if shapes != self._graph_shapes:
            self._drop_graphs()  # captured after an enqueue at other shapes: never valid again
            self._set_shapes(shapes)
        self._bind(slot)
        self._enqueue()  # this frame's result, and the enqueue TensorRT needs at these shapes before a capture
        self._graph_shapes = shapes
        if self.graph_status == "on":
            self._capture(slot)

    def _set_shapes(self, shapes: tuple) -> None:
        for name, shape in zip(("frames", "head_weight", "head_bias"), shapes):
            self._set_shape(name, shape)
        self._out_shapes = {name: tuple(int(s) for s in self._context.get_tensor_shape(name))
                            for name, e in self._io.items() if not e["input"]}

    def _bind(self, slot: int) -> None:
        bound = dict(self._buffers)
        if slot >= 0:
            bound.update(self._head_buffers[slot])
        for name, b in bound.items():
            if not self._context.set_tensor_address(name, int(b.device)):
                raise RuntimeModelError(f"{self.path}: TensorRT refused the address of tensor {name!r}")

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeModelError(f"{self.path}: TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, slot: int) -> None:
        """Capture execute_async_v3 as a CUDA graph for ``slot``; on failure fall back and record why."""
        cudart = import_cudart()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # other threads' CUDA calls unaffected
        graph = None
        try:
            cuda_call(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
            try:
                ok = self._context.execute_async_v3(int(self._stream))
            finally:
                graph = cuda_call(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            if not ok:
                raise CudaError("execute_async_v3 refused to run under stream capture")
            exe = _instantiate(cudart, graph)
        except CudaError as exc:
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            if hasattr(cudart, "cudaGetLastError"):
                cudart.cudaGetLastError()  # clear the (non-sticky) capture error
            self._drop_graphs()
            self.graph_status = f"fallback: plain execute_async_v3 ({exc})"
            log.warning("%s: CUDA graph capture failed, running without graphs: %s", self.path, exc)
            return
        self._graphs[slot] = (graph, exe)
        self.graph_captures += 1

    def _drop_graphs(self) -> None:
        cudart = import_cudart()
        for graph, exe in self._graphs.values():
            cuda_call(cudart.cudaGraphExecDestroy(exe), "cudaGraphExecDestroy")
            cuda_call(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        self._graphs = {}

    def _release(self) -> None:
        """Free graphs, buffers, events and the stream (``close()`` calls this with no frame in flight)."""
        if getattr(self, "_stream", None) is None:
            return
        cudart = import_cudart()
        with self._lock:
            self._drop_graphs()
            for buf in list(self._buffers.values()) + [b for d in self._head_buffers for b in d.values()]:
                buf.free()
            self._buffers, self._head_buffers = {}, []
            for event in self._events.values():
                cuda_call(cudart.cudaEventDestroy(event), "cudaEventDestroy")
            self._events = {}
            cuda_call(cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None
            self._context = self._engine = None
