"""TrtModel's buffer / binding / head-swap logic, on an emulated TensorRT + CUDA runtime (CPU only).

The emulation is deliberately thin: "device memory" is real host memory
(ctypes buffers, so pointers, memcpy and the pinned-host numpy views the
backend builds are all real), and ``execute_async_v3`` reads the bound input
addresses, runs the ONNX with ONNX Runtime and writes the bound output
addresses. Everything TrtModel does — sidecar checks, profile shapes, one
allocation per tensor at the profile maximum, binding by name, the double
head buffers, CUDA return-code checks, freeing — runs for real. The real
TensorRT path is covered by the @trt test in test_runtime_backends.py.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx_fixtures import make_encoder, make_model, reference_head

from jepa_edge.runtime import RuntimeModelError, backend_trt, load_model
from jepa_edge.runtime.backend_trt import CudaError, cuda_call

ATOL = 2e-5


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


OK = cudaError_t.cudaSuccess


class FakeCudart:
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self) -> None:
        self.mem: dict[int, ctypes.Array] = {}
        self.copies: list[tuple[cudaMemcpyKind, int]] = []
        self.fail_malloc_above: int | None = None

    def cudaMalloc(self, n):
        if self.fail_malloc_above is not None and n > self.fail_malloc_above:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        buf = ctypes.create_string_buffer(n)
        self.mem[ctypes.addressof(buf)] = buf
        return (OK, ctypes.addressof(buf))

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        del self.mem[ptr]
        return (OK,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert dst in self.mem or src in self.mem
        ctypes.memmove(dst, src, n)
        self.copies.append((kind, n))
        return (OK,)

    def cudaStreamCreate(self):
        return (OK, 77)

    def cudaStreamSynchronize(self, stream):
        return (OK,)

    def cudaStreamDestroy(self, stream):
        return (OK,)

    def cudaSetDevice(self, i):
        return (OK,)

    def cudaGetDeviceProperties(self, i):
        return (OK, SimpleNamespace(major=8, minor=7, name=b"Emulated Orin"))

    def cudaGetErrorString(self, err):
        return (OK, b"out of memory" if err == cudaError_t.cudaErrorMemoryAllocation else b"error")


class FakeContext:
    def __init__(self, engine) -> None:
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile[name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def _feeds(self, read: bool) -> dict[str, np.ndarray]:
        feeds = {}
        for i in self.engine.sess.get_inputs():
            shape, dtype = self.shapes[i.name], self.engine.dtypes[i.name]
            if read:
                n = int(np.prod(shape)) * dtype.itemsize
                raw = (ctypes.c_char * n).from_address(self.addr[i.name])
                feeds[i.name] = np.frombuffer(raw, dtype).reshape(shape).copy()
            else:
                feeds[i.name] = np.zeros(shape, dtype)
        return feeds

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        outs = self.engine.sess.run([name], self._feeds(read=False))
        return outs[0].shape

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        assert stream == 77
        names = [o.name for o in self.engine.sess.get_outputs()]
        for name, value in zip(names, self.engine.sess.run(names, self._feeds(read=True))):
            value = np.ascontiguousarray(value)
            ctypes.memmove(self.addr[name], value.ctypes.data, value.nbytes)
        self.engine.runs += 1
        return True


class FakeEngine:
    def __init__(self, plan: dict) -> None:
        self.sess = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.profile = {k: tuple(map(tuple, v)) for k, v in plan["profile"].items()}
        types = {"tensor(uint8)": np.dtype(np.uint8), "tensor(float)": np.dtype(np.float32)}
        self.io = [(i.name, True) for i in self.sess.get_inputs()] + [(o.name, False) for o in self.sess.get_outputs()]
        self.dtypes = {t.name: types[t.type] for t in [*self.sess.get_inputs(), *self.sess.get_outputs()]}
        self.num_io_tensors, self.runs = len(self.io), 0

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if dict(self.io)[name] else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return self.profile[name]

    def create_execution_context(self):
        return FakeContext(self)


class FakeTrt:
    __version__ = "10.3.0"

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = range(4)

        def __init__(self, level) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                return FakeEngine(json.loads(data))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None

    @staticmethod
    def nptype(dtype):
        return dtype


@pytest.fixture()
def fake_gpu(monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setattr(backend_trt, "import_tensorrt", lambda: FakeTrt)
    monkeypatch.setattr(backend_trt, "import_cudart", lambda: cudart)
    return cudart


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    enc = make_encoder(height=8, width=8, latent_dim=4, seed=3)
    return {"enc": enc, "onnx": make_model(d / "model.onnx", enc, "head_inputs"),
            "frames": np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)}


def write_engine(tmp_path, onnx_path, max_batch=4, max_head=16, **side):
    """An emulated plan + the sidecar `jepa-edge export --trt` writes (no metadata: read from the ONNX)."""
    onnx_copy = tmp_path / "model.onnx"
    onnx_copy.write_bytes(onnx_path.read_bytes())
    profile = {"frames": [[1, 8, 8, 3], [1, 8, 8, 3], [max_batch, 8, 8, 3]],
               "head_weight": [[1, 4], [8, 4], [max_head, 4]], "head_bias": [[1], [8], [max_head]]}
    engine = tmp_path / "model.engine"
    engine.write_text(json.dumps({"onnx": str(onnx_copy), "profile": profile}))
    sidecar = {"precision": "fp16", "tensorrt_version": "10.3.0", "compute_capability": "8.7",
               "onnx": {"path": "model.onnx", "sha256": hashlib.sha256(onnx_copy.read_bytes()).hexdigest()},
               **side}
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_engine_parity_and_double_buffered_head_swaps(fake_gpu, tiny, tmp_path):
    enc, frames = tiny["enc"], tiny["frames"]
    engine = write_engine(tmp_path, tiny["onnx"])
    model = load_model(engine)  # auto: .engine → tensorrt
    assert model.backend == "tensorrt" and model.precision == "fp16" and model.max_batch == 4
    n_alloc = len(fake_gpu.mem)
    out = model.infer(frames)
    assert set(out) == {"z"}
    np.testing.assert_allclose(out["z"], enc.z(frames), atol=ATOL)
    heads = [reference_head(enc, seed=s) for s in (1, 2, 3)]
    for head in heads:  # three swaps: buffer pair 1, 0, 1
        model.set_head(head)
        got = model.infer(frames[:2])
        want = head.split(head.apply(enc.z(frames[:2])))
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=ATOL, err_msg=name)
    assert len(fake_gpu.mem) == n_alloc  # buffers allocated once, never per call or per swap
    fake_gpu.copies.clear()
    model.infer(frames[:1])
    h2d = [n for kind, n in fake_gpu.copies if kind == cudaMemcpyKind.cudaMemcpyHostToDevice]
    assert h2d == [8 * 8 * 3]  # per frame only the frames go up: head weights stay on the device
    assert sorted({idx for _, idx in model._slots.values()}) == [0, 1]
    with pytest.raises(ValueError, match="max batch 4"):
        model.infer(np.zeros((5, 8, 8, 3), np.uint8))
    model.close()
    assert fake_gpu.mem == {}  # every host and device buffer freed
    model.close()  # idempotent


def test_head_larger_than_profile_refused_and_old_head_kept(fake_gpu, tiny, tmp_path):
    enc = tiny["enc"]
    model = load_model(write_engine(tmp_path, tiny["onnx"], max_head=8), "tensorrt")
    small = reference_head(enc, seed=1)  # 4 (z_mapped) + 6 (position) = 10 rows > 8
    with pytest.raises(RuntimeModelError, match="at most 8"):
        model.set_head(small)
    assert model.head is None and set(model.infer(tiny["frames"])) == {"z"}


@pytest.mark.parametrize(
    "side, match",
    [({"tensorrt_version": "8.6.1"}, "built with TensorRT 8.6.1"),
     ({"compute_capability": "7.2"}, "compute capability 7.2, this GPU is 8.7"),
     ({"onnx": {"path": "model.onnx", "sha256": "0" * 64}}, "stale")],
)
def test_sidecar_mismatch_refused(fake_gpu, tiny, tmp_path, side, match):
    with pytest.raises(RuntimeModelError, match=match):
        load_model(write_engine(tmp_path, tiny["onnx"], **side), "tensorrt")


def test_corrupt_engine_and_cuda_errors(fake_gpu, tiny, tmp_path):
    engine = write_engine(tmp_path, tiny["onnx"])
    engine.write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeModelError, match="could not deserialise"):
        load_model(engine, "tensorrt")
    with pytest.raises(CudaError, match=r"cudaMalloc failed: cudaErrorMemoryAllocation \(out of memory\)"):
        cuda_call((cudaError_t.cudaErrorMemoryAllocation, 0), "cudaMalloc")
    assert cuda_call((OK, 5), "x") == 5 and cuda_call((OK,), "x") is None
    fake_gpu.fail_malloc_above = 200  # the frames buffer (4*8*8*3 = 768 bytes) cannot be allocated
    with pytest.raises(CudaError, match="cudaMalloc"):
        load_model(write_engine(tmp_path, tiny["onnx"]), "tensorrt")
    assert fake_gpu.mem == {}  # what was allocated before the failure was freed
