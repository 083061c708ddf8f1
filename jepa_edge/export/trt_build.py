"""Build a TensorRT engine from an exported ONNX: ``model.engine`` + ``model.engine.json``.

Follows the TensorRT Python samples: ``trt.Builder`` → explicit-batch
network → ``OnnxParser`` (every parser error is reported with its node) →
builder config (workspace limit, precision, optimisation profile for the
dynamic batch and, in ``head_inputs`` mode, the dynamic head size K) →
``build_serialized_network``. The engine file holds exactly the bytes
TensorRT serialised; everything else goes in the JSON sidecar the runtime
reads (``jepa_edge.runtime.backend_trt``): precision, TensorRT version, GPU
and compute capability, profile, builder config, sha256 of the source ONNX
and its ``jepa_edge`` metadata. A timing cache is loaded if present and saved
after the build.

FP16 uses ``BuilderFlag.FP16`` where this TensorRT has it (TensorRT 10 and
older); TensorRT 11 builds only strongly typed networks, so there (or on
request, ``fp16_method="onnx"``) the ONNX is rewritten to fp16 first — head,
LayerNorm and I/O kept in float32, see ``fp16.py`` — and built strongly typed.

Precision is never silently changed: fp16 or int8 on a GPU (or a TensorRT)
that cannot do it is an error, and the sidecar records what was built.
INT8 uses TensorRT's entropy calibrator where this TensorRT still has
implicit quantization, else (or on request) an explicitly quantized Q/DQ
ONNX built from the same calibration frames: see ``calibration.py``.

``tensorrt`` and ``cuda-python`` are imported inside functions, and
``build_engine`` imports them first: without them it fails at once, naming
``pip install 'jepa-edge[trt]'``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes
from jepa_edge.calib.head import FusedHead
from jepa_edge.export.calibration import (
    CalibrationConfig,
    calibration_batches,
    load_calibration_frames,
    make_entropy_calibrator,
    quantize_qdq,
)
from jepa_edge.export.fp16 import write_fp16_onnx
from jepa_edge.runtime.backend_trt import cuda_call, import_cudart, import_tensorrt, sha256_file
from jepa_edge.runtime.meta import METADATA_KEY, parse_meta

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "jepa-edge/trt-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
INT8_METHODS = ("auto", "calibrator", "qdq")
FP16_METHODS = ("auto", "flag", "onnx")
_LOG_LEVELS = {"verbose": 4, "info": 3, "warning": 2, "error": 1}  # TensorRT ILogger.Severity values
# GPUs with fast fp16 / int8, by compute capability, for TensorRT versions without builder.platform_has_fast_*
_FAST_FP16 = {(5, 3), (6, 0), (6, 2)}  # plus every CC >= 7.0
_FAST_INT8 = {(6, 1)}  # plus every CC >= 7.0


class TrtBuildError(RuntimeError):
    """TensorRT could not build the engine as asked (parser errors, unsupported precision, build failure)."""


@dataclass
class TrtBuildConfig:
    precision: str = "fp32"  # "fp32" | "fp16" | "int8"; unsupported on this GPU/TensorRT = error, never a downgrade
    int8_method: str = "auto"  # "calibrator" (implicit, TRT < 11) | "qdq" (explicit Q/DQ) | "auto": calibrator if any
    fp16_method: str = "auto"  # "flag" (BuilderFlag.FP16, TRT <= 10) | "onnx" (fp16 ONNX, strongly typed) | "auto"
    int8_fp16_fallback: bool = False  # int8 via calibrator: layers TensorRT keeps in float may use fp16
    min_batch: int = 1  # optimisation profile of the batch axis
    opt_batch: int = 1  # a robot infers one frame at a time: tune kernels for that
    max_batch: int = 8
    min_head: int = 1  # head_inputs mode: profile of K (rows of head_weight)
    opt_head: int = 72  # W (64) + a few probes
    max_head: int = 256
    workspace_mib: int = 1024  # builder scratch memory limit (a Jetson shares it with the CPU)
    timing_cache: str = ""  # file; "" = trt_timing.cache beside the engine; "off" = none
    optimization_level: int = 3  # builder_optimization_level 0..5 (TensorRT's default is 3)
    device_id: int = 0  # CUDA device to build on (engines are tied to its compute capability)
    log_level: str = "warning"  # "verbose" | "info" | "warning" | "error"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # int8 only

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrtBuildConfig.precision={self.precision!r}; choose one of {list(PRECISIONS)}")
        if self.fp16_method not in FP16_METHODS:
            raise ValueError(f"TrtBuildConfig.fp16_method={self.fp16_method!r}; choose one of {list(FP16_METHODS)}")
        if self.int8_method not in INT8_METHODS:
            raise ValueError(f"TrtBuildConfig.int8_method={self.int8_method!r}; choose one of {list(INT8_METHODS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch profile needs 1 <= min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if not 1 <= self.min_head <= self.opt_head <= self.max_head:
            raise ValueError(f"head profile needs 1 <= min_head <= opt_head <= max_head, got "
                             f"{self.min_head}/{self.opt_head}/{self.max_head}")
        if self.workspace_mib < 1:
            raise ValueError("TrtBuildConfig.workspace_mib must be >= 1")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError("TrtBuildConfig.optimization_level must be in 0..5")
        if self.log_level not in _LOG_LEVELS:
            raise ValueError(f"TrtBuildConfig.log_level={self.log_level!r}; choose one of {sorted(_LOG_LEVELS)}")
        if self.precision == "int8":
            self.calibration.validate()


@dataclass
class TrtBuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


def require_tensorrt() -> Any:
    """Import TensorRT and cuda-python or raise at once, naming ``pip install 'jepa-edge[trt]'``.

    Call it before any slow work (e.g. the ONNX export of ``jepa-edge export --trt``).
    """
    trt = import_tensorrt()
    import_cudart()
    return trt


# ---- helpers that need no GPU -----------------------------------------------------------------


def parser_errors(parser: Any) -> list[str]:
    """Every error an ``OnnxParser`` recorded, with code, description, node and source location."""
    lines = []
    n = int(parser.num_errors)
    for i in range(n):
        e = parser.get_error(i)

        def part(attr: str, err: Any = e) -> Any:  # node_name/node_operator exist from TensorRT 8.6 on
            fn = getattr(err, attr, None)
            return fn() if callable(fn) else None

        node, name, op = part("node"), part("node_name"), part("node_operator")
        where = f"node {node}" if node is not None and node >= 0 else "graph"
        if name:
            where += f" {name!r}"
        if op:
            where += f" ({op})"
        src = f" [{part('file')}:{part('line')} {part('func')}]" if part("file") else ""
        lines.append(f"{i + 1}/{n} {where}: {part('desc')} (code {part('code')}){src}")
    return lines


def engine_profile(mode: str, height: int, width: int, latent_dim: int, cfg: TrtBuildConfig) -> dict[str, dict]:
    """Input name → {min, opt, max} shapes of the optimisation profile."""
    def shapes(lo: tuple, mid: tuple, hi: tuple) -> dict[str, list[int]]:
        return {"min": list(lo), "opt": list(mid), "max": list(hi)}

    prof = {"frames": shapes(*((b, height, width, 3) for b in (cfg.min_batch, cfg.opt_batch, cfg.max_batch)))}
    if mode == "head_inputs":
        ks = (cfg.min_head, cfg.opt_head, cfg.max_head)
        prof["head_weight"] = shapes(*((k, latent_dim) for k in ks))
        prof["head_bias"] = shapes(*((k,) for k in ks))
    return prof


def _fast(builder: Any, attr: str, cc: tuple[int, int], table: set[tuple[int, int]]) -> bool:
    if hasattr(builder, attr):  # deprecated in TensorRT 10.5, removed in 11
        return bool(getattr(builder, attr))
    return cc >= (7, 0) or cc in table


def _resolve_int8(trt: Any, cfg: TrtBuildConfig, already_qdq: bool) -> str:
    implicit_ok = hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8")
    if already_qdq:
        if cfg.int8_method == "calibrator":
            raise TrtBuildError("this ONNX already holds Q/DQ nodes (explicit quantization); build it with "
                                "int8_method='qdq' or 'auto', or export an unquantized ONNX for the calibrator")
        return "qdq"
    if cfg.int8_method == "calibrator" and not implicit_ok:
        raise TrtBuildError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in TensorRT 11); "
            "use int8_method='qdq' (explicit quantization from the same calibration frames)"
        )
    if cfg.int8_method == "auto":
        return "calibrator" if implicit_ok else "qdq"
    return cfg.int8_method


def _resolve_fp16(trt: Any, cfg: TrtBuildConfig) -> str:
    """How an fp16 engine is built on this TensorRT: "flag" or "onnx" (never a silent fp32 build)."""
    flag_ok = hasattr(trt.BuilderFlag, "FP16")
    typed_ok = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if cfg.fp16_method == "flag" and not flag_ok:
        raise TrtBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (strongly typed networks only); "
                            "use fp16_method='onnx' or 'auto' (the ONNX is converted to fp16 first)")
    if cfg.fp16_method == "onnx" and not typed_ok:
        raise TrtBuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks; "
                            "use fp16_method='flag' or 'auto'")
    if cfg.fp16_method == "auto":
        return "flag" if flag_ok else "onnx"
    return cfg.fp16_method


def _make_logger(trt: Any, level: str) -> Any:
    threshold = _LOG_LEVELS[level]

    class BuildLogger(trt.ILogger):
        """Forwards TensorRT messages to ``logging`` and keeps the errors for the exception text."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            sev = int(severity)
            if sev <= 1:
                self.errors.append(msg)
            if sev <= threshold:
                log.log({0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}.get(sev, 5),
                        "TensorRT: %s", msg)

    return BuildLogger()


def _gpu(cudart: Any, device_id: int) -> tuple[str, tuple[int, int]]:
    cuda_call(cudart.cudaSetDevice(device_id), "cudaSetDevice")
    prop = cuda_call(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name, (int(prop.major), int(prop.minor))


def _head_arrays(head: FusedHead | tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    if head is None:
        return None
    if isinstance(head, FusedHead):
        return head.weight, head.bias
    return np.asarray(head[0], np.float32), np.asarray(head[1], np.float32)


# ---- build -----------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    config: TrtBuildConfig | None = None,
    calibration_frames: np.ndarray | None = None,
    calibration_head: FusedHead | tuple[np.ndarray, np.ndarray] | None = None,
) -> TrtBuildResult:
    """Build ``engine_path`` (default: the ONNX path with ``.engine``) and its ``.engine.json`` sidecar.

    ``calibration_frames`` (uint8 (N, H, W, 3)) override ``config.calibration``
    for int8. ``calibration_head``: the head fed to a ``head_inputs`` graph
    while the entropy calibrator measures ranges (required there: its output
    range is calibrated too); the Q/DQ path keeps the head in float and needs none.
    """
    trt = require_tensorrt()  # first: no extra = immediate, clear error
    cudart = import_cudart()
    import onnx

    cfg = config or TrtBuildConfig()
    cfg.validate()
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX model; export one with `jepa-edge export`")
    model = onnx.load(str(onnx_path), load_external_data=False)
    raw_meta = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    meta = parse_meta(raw_meta, str(onnx_path))  # RuntimeModelError if not a jepa-edge export
    already_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if already_qdq and cfg.precision != "int8":
        raise TrtBuildError(f"{onnx_path} holds Q/DQ nodes (it is int8-quantized); build it with precision='int8'")
    gpu_name, cc = _gpu(cudart, cfg.device_id)
    logger = _make_logger(trt, cfg.log_level)
    builder = trt.Builder(logger)
    if builder is None:
        raise TrtBuildError(f"TensorRT could not create a builder on GPU {cfg.device_id}: {logger.errors}")

    # -- precision: check before any slow work, never downgrade ---------------------------------
    method = _resolve_int8(trt, cfg, already_qdq) if cfg.precision == "int8" else None
    fp16_method = _resolve_fp16(trt, cfg) if cfg.precision == "fp16" else None
    strongly_typed = fp16_method == "onnx" or (
        method == "qdq" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    fp16_fallback = cfg.precision == "int8" and cfg.int8_fp16_fallback
    if fp16_fallback and strongly_typed:
        raise TrtBuildError("a strongly typed Q/DQ network runs float layers in the ONNX's own types: "
                            "int8_fp16_fallback is not available with int8_method='qdq'; set it False")
    if fp16_fallback and not hasattr(trt.BuilderFlag, "FP16"):
        raise TrtBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16: int8_fp16_fallback is not "
                            "available; set it False")
    want_fp16 = cfg.precision == "fp16" or fp16_fallback
    if want_fp16 and not _fast(builder, "platform_has_fast_fp16", cc, _FAST_FP16):
        raise TrtBuildError(f"GPU {gpu_name!r} (compute capability {cc[0]}.{cc[1]}) has no fast fp16; "
                            "build with precision='fp32' (the engine would not be faster, and nothing is downgraded "
                            "silently)")
    if cfg.precision == "int8" and not _fast(builder, "platform_has_fast_int8", cc, _FAST_INT8):
        raise TrtBuildError(f"GPU {gpu_name!r} (compute capability {cc[0]}.{cc[1]}) has no fast int8; "
                            "build with precision='fp16' or 'fp32'")

    # -- calibration data (int8) --------------------------------------------------------------
    calib_info: dict[str, Any] | None = None
    batches: list[dict[str, np.ndarray]] = []
    parse_path = onnx_path
    quantized: dict[str, str] | None = None
    fp16_onnx: dict[str, Any] | None = None
    if fp16_method == "onnx":
        parse_path, rep = write_fp16_onnx(onnx_path, engine_path.with_suffix(".fp16.onnx"))
        fp16_onnx = {"path": os.path.relpath(parse_path, engine_path.parent), "sha256": sha256_file(parse_path),
                     "kept_fp32_nodes": rep.kept_fp32_nodes, "casts_inserted": rep.casts_inserted,
                     "weights_clipped": rep.weights_clipped}
    if cfg.precision == "int8" and not already_qdq:
        frames = (calibration_frames if calibration_frames is not None
                  else load_calibration_frames(cfg.calibration, meta.height, meta.width))
        head = _head_arrays(calibration_head)
        if meta.mode == "head_inputs" and head is None:
            if method == "calibrator":
                raise TrtBuildError("int8 calibration of a head_inputs engine measures the head's output range: "
                                    "pass calibration_head= (the head you will run, or one of the same scale), "
                                    "or use int8_method='qdq' (head kept in float)")
            head = (np.zeros((1, meta.latent_dim), np.float32), np.zeros((1,), np.float32))  # runs, not quantized
        batches = calibration_batches(frames, cfg.calibration.batch_size, head if meta.mode == "head_inputs" else None)
        calib_info = {"source": "frames passed in" if calibration_frames is not None else cfg.calibration.source,
                      "view": cfg.calibration.view, "n_frames": len(batches) * cfg.calibration.batch_size,
                      "batch_size": cfg.calibration.batch_size, "cache": cfg.calibration.cache or None}
        if method == "qdq":
            parse_path = quantize_qdq(onnx_path, engine_path.with_suffix(".qdq.onnx"), batches)
            quantized = {"path": os.path.relpath(parse_path, engine_path.parent), "sha256": sha256_file(parse_path)}

    # -- network ----------------------------------------------------------------------------
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(parse_path)) or parser.num_errors:
        errors = parser_errors(parser) or logger.errors or ["(no error recorded; rerun with log_level='verbose')"]
        raise TrtBuildError(f"TensorRT's ONNX parser rejected {parse_path} ({len(errors)} error(s)):\n  "
                            + "\n  ".join(errors))
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    profile_shapes = engine_profile(meta.mode, meta.height, meta.width, meta.latent_dim, cfg)
    if inputs != set(profile_shapes):
        raise TrtBuildError(f"{onnx_path}: network inputs {sorted(inputs)} do not match its {meta.mode!r} metadata "
                            f"(expected {sorted(profile_shapes)}); re-export with `jepa-edge export`")

    # -- builder config -------------------------------------------------------------------
    bconf = builder.create_builder_config()
    bconf.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if hasattr(bconf, "builder_optimization_level"):
        bconf.builder_optimization_level = cfg.optimization_level
    elif cfg.optimization_level != 3:
        raise TrtBuildError(f"TensorRT {trt.__version__} has no builder_optimization_level; leave it at 3")
    profile = builder.create_optimization_profile()
    for name, s in profile_shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    if bconf.add_optimization_profile(profile) < 0:
        raise TrtBuildError(f"TensorRT refused the optimisation profile {profile_shapes}")
    flag_names = []
    if want_fp16 and fp16_method != "onnx":  # the fp16 ONNX carries its types: no flag
        bconf.set_flag(trt.BuilderFlag.FP16)
        flag_names.append("FP16")
    calibrator = None
    if cfg.precision == "int8" and not strongly_typed:  # calibrator, or Q/DQ on a weakly typed (TRT < 10) network
        bconf.set_flag(trt.BuilderFlag.INT8)
        flag_names.append("INT8")
    if method == "calibrator":
        calibrator = make_entropy_calibrator(trt, batches, cfg.calibration.cache)
        bconf.int8_calibrator = calibrator
        calib_profile = builder.create_optimization_profile()  # calibration runs at exactly the batch it is fed
        for name, a in batches[0].items():
            calib_profile.set_shape(name, a.shape, a.shape, a.shape)
        bconf.set_calibration_profile(calib_profile)

    cache_path = None if cfg.timing_cache == "off" else (
        Path(cfg.timing_cache) if cfg.timing_cache else engine_path.parent / "trt_timing.cache")
    if cache_path is not None:
        cache = bconf.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        if not bconf.set_timing_cache(cache, ignore_mismatch=False):
            raise TrtBuildError(f"{cache_path}: timing cache was made by another GPU or TensorRT version; "
                                "delete it (it is rebuilt) or pass timing_cache='off'")

    # -- build --------------------------------------------------------------------------------
    try:
        serialized = builder.build_serialized_network(network, bconf)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise TrtBuildError(f"TensorRT could not build an engine from {parse_path}:\n  "
                            + "\n  ".join(logger.errors[-20:] or ["(see the TensorRT log)"]))
    engine_bytes = bytes(memoryview(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(bconf.get_timing_cache().serialize())))
    atomic_write_bytes(engine_path, engine_bytes)  # exactly what TensorRT serialised

    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "precision": cfg.precision,
        "precision_detail": {"builder_flags": flag_names, "int8_method": method, "fp16_method": fp16_method,
                             "strongly_typed": strongly_typed, "fp16_fallback": fp16_fallback},
        "tensorrt_version": trt.__version__,
        "gpu": {"name": gpu_name, "compute_capability": f"{cc[0]}.{cc[1]}", "device_id": cfg.device_id},
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "profile": profile_shapes,
        "builder": {**asdict(cfg), "workspace_bytes": cfg.workspace_mib << 20,
                    "timing_cache": str(cache_path) if cache_path else None},
        "calibration": calib_info,
        "onnx": {"path": os.path.relpath(onnx_path, engine_path.parent), "sha256": sha256_file(onnx_path)},
        "quantized_onnx": quantized,
        "fp16_onnx": fp16_onnx,
        "metadata": meta.raw,
        "engine": {"sha256": hashlib.sha256(engine_bytes).hexdigest(), "bytes": len(engine_bytes)},
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar_path = engine_path.with_name(engine_path.name + ".json")
    atomic_write_bytes(sidecar_path, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    log.info("built %s (%s, TensorRT %s, %s)", engine_path, cfg.precision, trt.__version__, gpu_name)
    return TrtBuildResult(engine_path, sidecar_path, sidecar)
