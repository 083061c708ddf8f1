"""A fake ``tensorrt`` module and a fake ``cuda.bindings.runtime`` for CPU tests of the TensorRT code paths.

Installed into ``sys.modules`` (``install_fakes``), so the real import
functions, the real ``build_engine`` steps and the real ``TrtModel`` run
against them. The emulation is thin and strict:

* device and pinned memory are real host memory (ctypes buffers), so
  pointers, memcpy and the numpy views the backend builds are real;
* the "plan" TensorRT serialises is JSON naming the ONNX the parser read, the
  optimisation profile and the builder flags; ``execute_async_v3`` reads the
  bound input addresses, runs that ONNX with ONNX Runtime, and writes the
  bound output addresses;
* stream capture records ``execute_async_v3`` with the addresses and shapes
  bound *at capture time* (what a real CUDA graph bakes in), and a graph
  launch replays exactly that. Like TensorRT, capture is refused unless one
  plain enqueue ran at the current shapes, and replaying a graph after the
  context was set up for other shapes is an error (TensorRT's shape-dependent
  setup from that first enqueue is not in the graph);
* every allocation, event and graph is tracked, so tests can assert that
  ``close()`` frees everything.

API names follow TensorRT 10 (``BuilderFlag.FP16/INT8/TF32``,
``IInt8EntropyCalibrator2``) or, with ``version="11.4.0"``, TensorRT 11
(no FP16/INT8 flags, no implicit calibrator; strongly typed networks only).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import time
import types
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


OK = cudaError_t.cudaSuccess


class FakeCudart:
    """The subset of ``cuda.bindings.runtime`` jepa-edge calls, returning ``(err, *values)`` tuples."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self, cc: tuple[int, int] = (8, 7), name: bytes = b"Emulated Orin") -> None:
        self.cc, self.name = cc, name
        self.mem: dict[int, ctypes.Array] = {}
        self.copies: list[tuple[cudaMemcpyKind, int]] = []
        self.events: dict[int, float | None] = {}
        self.graphs: set[int] = set()  # live graphs and graph execs (ids)
        self.capturing: dict[int, list] = {}  # stream → captured work
        self.launches = 0
        self.fail_malloc_above: int | None = None
        self.fail_capture: cudaError_t | None = None  # cudaStreamEndCapture returns this error
        self._next = 100

    def _handle(self) -> int:
        self._next += 1
        return self._next

    # memory
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
        assert stream not in self.capturing, "a memcpy was captured into the graph"
        assert dst in self.mem or src in self.mem
        ctypes.memmove(dst, src, n)
        self.copies.append((kind, n))
        return (OK,)

    def cudaMemcpy(self, dst, src, n, kind):
        return self.cudaMemcpyAsync(dst, src, n, kind, None)

    # streams, devices, errors
    def cudaStreamCreate(self):
        return (OK, 77)

    def cudaStreamSynchronize(self, stream):
        assert stream not in self.capturing
        return (OK,)

    def cudaStreamDestroy(self, stream):
        return (OK,)

    def cudaSetDevice(self, i):
        return (OK,)

    def cudaGetDeviceProperties(self, i):
        return (OK, SimpleNamespace(major=self.cc[0], minor=self.cc[1], name=self.name + b"\0\0"))

    def cudaGetErrorString(self, err):
        return (OK, b"out of memory" if err == cudaError_t.cudaErrorMemoryAllocation else b"error")

    def cudaGetLastError(self):
        return (OK,)

    # events (timing: host clock, the fake GPU runs synchronously)
    def cudaEventCreate(self):
        h = self._handle()
        self.events[h] = None
        return (OK, h)

    def cudaEventRecord(self, event, stream):
        assert stream not in self.capturing, "an event was recorded inside the graph"
        self.events[event] = time.perf_counter()
        return (OK,)

    def cudaEventElapsedTime(self, start, end):
        return (OK, 1e3 * (self.events[end] - self.events[start]))

    def cudaEventDestroy(self, event):
        del self.events[event]
        return (OK,)

    # graphs
    def cudaStreamBeginCapture(self, stream, mode):
        assert stream not in self.capturing and mode in cudaStreamCaptureMode
        self.capturing[stream] = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        work = self.capturing.pop(stream)
        if self.fail_capture is not None:
            return (self.fail_capture, None)
        h = self._handle()
        self.graphs.add(h)
        return (OK, SimpleNamespace(handle=h, work=work))

    def cudaGraphInstantiateWithFlags(self, graph, flags):
        h = self._handle()
        self.graphs.add(h)
        return (OK, SimpleNamespace(handle=h, work=list(graph.work)))

    def cudaGraphLaunch(self, exe, stream):
        assert exe.handle in self.graphs, "launch of a destroyed graph"
        for run in exe.work:
            run()
        self.launches += 1
        return (OK,)

    def cudaGraphExecDestroy(self, exe):
        self.graphs.remove(exe.handle)
        return (OK,)

    def cudaGraphDestroy(self, graph):
        self.graphs.remove(graph.handle)
        return (OK,)


# ---- runtime side: engine + execution context ------------------------------------------------


class FakeContext:
    def __init__(self, engine) -> None:
        self.engine, self.shapes, self.addr = engine, {}, {}
        self.setup_shapes = None  # shapes of the last plain enqueue (TensorRT's shape-dependent setup)
        self.plain_runs = 0

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile[name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        feeds = {i.name: np.zeros(self.shapes[i.name], self.engine.dtypes[i.name]) for i in self.engine.inputs}
        return self.engine.sess.run([name], feeds)[0].shape

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def _run(self, shapes: dict, addr: dict) -> None:
        feeds = {}
        for i in self.engine.inputs:
            shape, dtype = shapes[i.name], self.engine.dtypes[i.name]
            raw = (ctypes.c_char * (int(np.prod(shape)) * dtype.itemsize)).from_address(addr[i.name])
            feeds[i.name] = np.frombuffer(raw, dtype).reshape(shape).copy()
        names = [o.name for o in self.engine.sess.get_outputs()]
        for name, value in zip(names, self.engine.sess.run(names, feeds)):
            value = np.ascontiguousarray(value, self.engine.dtypes[name])
            ctypes.memmove(addr[name], value.ctypes.data, value.nbytes)

    def execute_async_v3(self, stream):
        cudart = self.engine.cudart
        shapes, addr = dict(self.shapes), dict(self.addr)
        if stream in cudart.capturing:
            if self.setup_shapes != shapes:
                return False  # TensorRT: enqueue once at these shapes before capturing
            cudart.capturing[stream].append(lambda: self._replay(shapes, addr))
            return True
        self._run(shapes, addr)
        self.setup_shapes = shapes
        self.plain_runs += 1
        return True

    def _replay(self, shapes: dict, addr: dict) -> None:
        assert self.setup_shapes == shapes, "graph replayed after the context was set up for other shapes"
        self._run(shapes, addr)


class FakeEngine:
    def __init__(self, plan: dict, cudart: FakeCudart) -> None:
        self.plan, self.cudart = plan, cudart
        self.sess = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in plan["profile"].items()}
        types_ = {"tensor(uint8)": np.dtype(np.uint8), "tensor(float)": np.dtype(np.float32)}
        self.inputs = self.sess.get_inputs()
        self.io = [(i.name, True) for i in self.inputs] + [(o.name, False) for o in self.sess.get_outputs()]
        self.dtypes = {t.name: types_[t.type] for t in [*self.inputs, *self.sess.get_outputs()]}
        self.num_io_tensors = len(self.io)
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if dict(self.io)[name] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return self.profile[name]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


# ---- builder side ---------------------------------------------------------------------------


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags, self.inputs, self.onnx = flags, [], None

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return SimpleNamespace(name=self.inputs[i])


class FakeProfile:
    def __init__(self) -> None:
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"fake timing cache"

    def serialize(self):
        return self.data


class FakeBuilderConfig:
    ignore_clear = False  # a misbehaving TensorRT (to test that the build checks the flag)

    def __init__(self, trt) -> None:
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32} if hasattr(trt.BuilderFlag, "TF32") else set()  # TensorRT's default
        self.profiles, self.pool, self.cache = [], {}, None
        self.builder_optimization_level = 3
        self.int8_calibrator, self.calibration_profile = None, None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        if not self.ignore_clear:
            self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        self.pool[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def create_timing_cache(self, data):
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeParser:
    def __init__(self, network: FakeNetwork, logger) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path):
        model = onnx.load(path)
        inits = {i.name for i in model.graph.initializer}
        self.network.inputs = [i.name for i in model.graph.input if i.name not in inits]
        self.network.onnx = path
        return True

    def get_error(self, i):
        raise IndexError(i)


class FakeBuilder:
    def __init__(self, trt, logger) -> None:
        self.trt, self.logger = trt, logger
        self.configs: list[FakeBuilderConfig] = []

    def create_network(self, flags):
        return FakeNetwork(flags)

    def create_builder_config(self):
        self.configs.append(FakeBuilderConfig(self.trt))
        return self.configs[-1]

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if config.int8_calibrator is not None:  # implicit INT8: TensorRT pulls every batch
            cal, n = config.int8_calibrator, 0
            names = list(config.calibration_profile.shapes)
            while cal.get_batch(names) is not None:
                n += 1
            cal.write_calibration_cache(b"fake calibration cache")
            self.calibration_batches = n
        prof = config.profiles[0].shapes
        flags = sorted(f.name for f in config.flags)
        return json.dumps({"onnx": network.onnx, "profile": prof, "flags": flags}).encode()


def make_tensorrt(cudart: FakeCudart, version: str = "10.3.0") -> types.ModuleType:
    """A ``tensorrt`` module: TensorRT 10's names, or TensorRT 11's (no FP16/INT8 flags, no calibrator)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt11 = int(version.split(".")[0]) >= 11
    trt.BuilderFlag = enum.Enum("BuilderFlag", ["TF32"] if trt11 else ["FP16", "INT8", "TF32"])
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    trt.TensorIOMode = TensorIOMode
    trt.nptype = lambda dtype: dtype
    trt.deserialized = 0

    class ILogger:
        def __init__(self) -> None:
            pass

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = range(4)

        def __init__(self, level) -> None:
            self.level = level

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            trt.deserialized += 1
            try:
                return FakeEngine(json.loads(data), cudart)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None

    trt.ILogger, trt.Logger, trt.Runtime = ILogger, Logger, Runtime
    trt.Builder = lambda logger: FakeBuilder(trt, logger)
    trt.OnnxParser = FakeParser
    if not trt11:
        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    return trt


def install_fakes(monkeypatch, version: str = "10.3.0", cc: tuple[int, int] = (8, 7)) -> SimpleNamespace:
    """Put the fakes in ``sys.modules`` (undone by monkeypatch); returns them as ``.trt`` and ``.cudart``."""
    cudart = FakeCudart(cc)
    trt = make_tensorrt(cudart, version)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                      ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, mod)
    return SimpleNamespace(trt=trt, cudart=cudart)
