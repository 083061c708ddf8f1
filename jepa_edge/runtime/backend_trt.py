"""Native TensorRT backend: ``model.engine`` + sidecar ``model.engine.json``.

Follows the TensorRT Python samples: deserialise once, allocate pinned host
and device buffers once for the profile's maximum shapes, bind every I/O
tensor by name (``set_tensor_address``), run with ``execute_async_v3`` on one
stream, NumPy in and out. Every CUDA runtime call goes through ``cuda_call``,
which checks its return code. Head weights of a ``head_inputs`` engine live on
the device in two buffers: a swap uploads to the idle one, then flips which
one is bound (no engine rebuild).

``tensorrt`` and ``cuda-python`` are imported inside functions: importing
this module never needs them (``pip install 'jepa-edge[trt]'``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.runtime.errors import RuntimeModelError, missing_extra
from jepa_edge.runtime.meta import METADATA_KEY, ModelMeta, parse_meta
from jepa_edge.runtime.model import HeadState, Model

log = logging.getLogger(__name__)


class CudaError(RuntimeError):
    """A CUDA runtime call returned an error code."""


@dataclass
class TrtConfig:
    device_id: int = 0  # CUDA device the engine runs on
    onnx_path: str = ""  # source ONNX for hash check / metadata; "" = sidecar's "onnx" or model.onnx beside the engine
    verify_onnx_hash: bool = True  # refuse an engine whose sidecar hash does not match the ONNX found
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


# ---- sidecar -----------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    side = engine_path.with_name(engine_path.name + ".json")
    if not side.is_file():
        raise RuntimeModelError(
            f"{engine_path}: sidecar {side.name} is missing; rebuild with `jepa-edge export --trt` "
            "(the runtime needs the ONNX hash and metadata recorded beside the engine)"
        )
    try:
        data = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise RuntimeModelError(f"{side}: not valid JSON ({exc}); rebuild with `jepa-edge export --trt`") from exc
    if not isinstance(data, dict):
        raise RuntimeModelError(f"{side}: expected a JSON object; rebuild with `jepa-edge export --trt`")
    return data


def _sidecar_onnx_hash(side: dict[str, Any]) -> str | None:
    onnx_entry = side.get("onnx")
    if isinstance(onnx_entry, dict) and "sha256" in onnx_entry:
        return str(onnx_entry["sha256"])
    return side.get("onnx_sha256")


def _onnx_candidate(engine_path: Path, side: dict[str, Any], cfg: TrtConfig) -> Path:
    if cfg.onnx_path:
        return Path(cfg.onnx_path)
    onnx_entry = side.get("onnx")
    named = onnx_entry.get("path") if isinstance(onnx_entry, dict) else side.get("onnx_path")
    if named:
        p = Path(named)
        return p if p.is_absolute() else engine_path.parent / p
    return engine_path.with_suffix(".onnx")


def _onnx_metadata(path: Path) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)


def engine_meta(engine_path: Path, side: dict[str, Any], cfg: TrtConfig) -> ModelMeta:
    """Metadata from the sidecar (key "metadata") or the hash-verified source ONNX."""
    want_hash = _sidecar_onnx_hash(side)
    onnx_path = _onnx_candidate(engine_path, side, cfg)
    if cfg.verify_onnx_hash and onnx_path.is_file():
        if want_hash is None:
            raise RuntimeModelError(f"{engine_path}: sidecar has no onnx sha256; rebuild with `jepa-edge export --trt`")
        got = sha256_file(onnx_path)
        if got != want_hash:
            raise RuntimeModelError(
                f"{engine_path}: built from an ONNX with sha256 {want_hash[:12]}…, but {onnx_path} is {got[:12]}…; "
                "the engine is stale, rebuild it with `jepa-edge export --trt`"
            )
    meta = side.get("metadata")
    if meta is not None:
        return parse_meta(meta if isinstance(meta, str) else json.dumps(meta), str(engine_path))
    if not onnx_path.is_file():
        raise RuntimeModelError(
            f"{engine_path}: sidecar carries no 'metadata' and the source ONNX {onnx_path} is not there; "
            "put the ONNX beside the engine or pass TrtConfig(onnx_path=...)"
        )
    return parse_meta(_onnx_metadata(onnx_path), str(onnx_path))


def check_engine_compatible(engine_path: Path, side: dict[str, Any], trt: Any, device_id: int) -> None:
    """Engines are tied to a TensorRT version and GPU architecture: say so instead of crashing."""
    cudart = import_cudart()
    built_with = side.get("tensorrt_version")
    if built_with and str(built_with) != trt.__version__:
        raise RuntimeModelError(
            f"{engine_path}: built with TensorRT {built_with}, this device has {trt.__version__}; "
            "rebuild the engine on this device with `jepa-edge export --trt`"
        )
    prop = cuda_call(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    here = f"{prop.major}.{prop.minor}"
    cc = side.get("compute_capability")
    if isinstance(cc, (list, tuple)):
        cc = ".".join(str(c) for c in cc)
    if cc and str(cc) != here:
        raise RuntimeModelError(
            f"{engine_path}: built for compute capability {cc}, this GPU is {here}; "
            "rebuild the engine on this device with `jepa-edge export --trt`"
        )


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
        self.precision = str(side.get("precision", "unknown"))
        self._buffers: dict[str, _Buffer] = {}
        self._head_buffers: list[dict[str, _Buffer]] = []  # two pairs (head_weight, head_bias)
        self._slots: dict[int, tuple[HeadState, int]] = {}  # id(HeadState) → (state, buffer pair index)
        self._stream = None
        cuda_call(cudart.cudaSetDevice(cfg.device_id), "cudaSetDevice")
        check_engine_compatible(path, side, trt, cfg.device_id)
        levels = {"verbose": trt.Logger.VERBOSE, "info": trt.Logger.INFO,
                  "warning": trt.Logger.WARNING, "error": trt.Logger.ERROR}
        if cfg.log_level not in levels:
            raise ValueError(f"TrtConfig.log_level={cfg.log_level!r}; choose one of {sorted(levels)}")
        self._logger = trt.Logger(levels[cfg.log_level])
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise RuntimeModelError(
                f"{path}: TensorRT could not deserialise the engine (see the TensorRT log above); "
                "rebuild it on this device with `jepa-edge export --trt`"
            )
        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        try:
            self._io = self._describe_io(trt)
            self._check_io()
            self._allocate()
        except BaseException:
            self.close()  # free the stream and whatever buffers exist, then report the original error
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
        """Upload ``state`` to the buffer pair the current head is not using.

        ``_slots`` maps a HeadState (by id, the object kept alive in the
        value) to its buffer pair; ``_run`` looks up the state it read, so a
        frame always binds the weights of the head it started with.
        """
        K = state.weight.shape[0]
        if K > self.max_head:
            raise RuntimeModelError(
                f"{self.path}: head has {K} rows but the engine profile allows at most {self.max_head}; "
                "rebuild with a larger head profile (`jepa-edge export --trt --max-head`)"
            )
        cudart = import_cudart()
        current = self._slots.get(id(self._head_state))
        idle = 1 if current is not None and current[1] == 0 else 0
        for name, arr in (("head_weight", state.weight), ("head_bias", state.bias)):
            buf = self._head_buffers[idle][name]
            buf.host[: arr.size] = arr.ravel()
            self._copy(buf.device, buf.host_ptr, arr.nbytes, "cudaMemcpyHostToDevice")
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        keep = {id(state): (state, idle)}
        if current is not None:
            keep[id(self._head_state)] = current
        self._slots = keep

    # ---- inference ------------------------------------------------------------------
    def _run(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        cudart = import_cudart()
        B = frames.shape[0]
        if B > self.max_batch:
            raise ValueError(
                f"{self.path}: batch {B} exceeds the engine profile's max batch {self.max_batch}; "
                "send smaller batches or rebuild with `jepa-edge export --trt --max-batch`"
            )
        self._set_shape("frames", frames.shape)
        buf = self._buffers["frames"]
        buf.host[: frames.size] = frames.ravel()
        self._copy(buf.device, buf.host_ptr, frames.nbytes, "cudaMemcpyHostToDevice")
        bound = dict(self._buffers)
        if state is not None:
            bound.update(self._head_buffers[self._slots[id(state)][1]])
            self._set_shape("head_weight", state.weight.shape)
            self._set_shape("head_bias", state.bias.shape)
        for name, b in bound.items():
            if not self._context.set_tensor_address(name, int(b.device)):
                raise RuntimeModelError(f"{self.path}: TensorRT refused the address of tensor {name!r}")
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeModelError(f"{self.path}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        outputs: dict[str, np.ndarray] = {}
        for name, e in self._io.items():
            if e["input"]:
                continue
            shape = tuple(self._context.get_tensor_shape(name))
            n = int(np.prod(shape))
            ob = self._buffers[name]
            self._copy(ob.host_ptr, ob.device, n * e["dtype"].itemsize, "cudaMemcpyDeviceToHost")
            outputs[name] = (ob, shape, n)
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: ob.host[:n].reshape(shape).copy() for name, (ob, shape, n) in outputs.items()}

    def close(self) -> None:
        if getattr(self, "_stream", None) is None:
            return
        cudart = import_cudart()
        for buf in list(self._buffers.values()) + [b for d in self._head_buffers for b in d.values()]:
            buf.free()
        self._buffers, self._head_buffers = {}, []
        cuda_call(cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        self._stream = None
        self._context = self._engine = None
