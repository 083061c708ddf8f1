"""Build a TensorRT engine from an exported ONNX: ``model.engine`` + ``model.engine.json``.

``build_engine`` runs the steps of the TensorRT Python samples, each a
function of its own:

1. ``read_source``: the ONNX and its ``jepa_edge`` metadata;
2. ``resolve_precision``: how the asked precision is obtained on this
   TensorRT and GPU (checked before any slow work; never downgraded);
3. ``prepare_onnx``: the ONNX TensorRT parses — the original, an fp16
   rewrite (``fp16.py``) or an INT8 Q/DQ copy (``int8.py``) — and the INT8
   range-calibration batches;
4. ``parse_network``: ``OnnxParser`` into an explicit-batch (or strongly
   typed) network, every parser error reported with its node;
5. ``make_builder_config``: workspace, optimisation level, precision flags
   (TF32 cleared for fp32), the optimisation profile (dynamic batch and, in
   ``head_inputs`` mode, head width K), INT8 calibrator, timing cache;
6. ``build_serialized``: ``build_serialized_network``;
7. ``write_engine``: the engine file (exactly the bytes TensorRT serialised),
   the timing cache, then the JSON sidecar the runtime checks before it
   deserialises anything (``jepa_edge.runtime.backend_trt``; docs/FORMATS.md).

Precision is never silently changed: fp16 or int8 on a GPU (or a TensorRT)
that cannot do it is an error, and the sidecar records what was built,
including ``tf32`` (TensorRT allows TF32 for float layers by default; an fp32
build clears ``BuilderFlag.TF32``, so an engine the sidecar calls fp32 never
runs TF32). FP16 uses ``BuilderFlag.FP16`` where this TensorRT has it
(TensorRT 10 and older); TensorRT 11 builds only strongly typed networks, so
there (or with ``fp16_method="onnx"``) the ONNX is rewritten to fp16 first.
INT8 uses TensorRT's entropy calibrator where this TensorRT still has
implicit quantization, else (or on request) an explicitly quantized Q/DQ ONNX
built from the same frames. Every TensorRT name that differs between 8, 10
and 11 is looked up with ``hasattr``.

``tensorrt`` and ``cuda-python`` are imported inside functions, and
``build_engine`` imports them first: without them it fails at once, naming
``pip install 'jepa-edge[trt]'``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes, atomic_write_json
from jepa_edge.calib.head import FusedHead
from jepa_edge.export.fp16 import write_fp16_onnx
from jepa_edge.export.int8 import Int8Config, int8_batches, load_int8_frames, make_entropy_calibrator, quantize_qdq
from jepa_edge.runtime.backend_trt import (
    PRECISIONS,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    cuda_call,
    device_name_and_cc,
    import_cudart,
    import_tensorrt,
    sha256_file,
    sidecar_path,
)
from jepa_edge.runtime.meta import METADATA_KEY, ModelMeta, parse_meta

log = logging.getLogger(__name__)

INT8_METHODS = ("auto", "calibrator", "qdq")
FP16_METHODS = ("auto", "flag", "onnx")
DEFAULT_OPT_HEAD = 72  # W (64) + a few probes: the head width kernels are tuned for unless --opt-head says
_LOG_LEVELS = {"verbose": 4, "info": 3, "warning": 2, "error": 1}  # TensorRT ILogger.Severity values
# GPUs with fast fp16 / int8, by compute capability, for TensorRT versions without builder.platform_has_fast_*
_FAST_FP16 = {(5, 3), (6, 0), (6, 2)}  # plus every CC >= 7.0
_FAST_INT8 = {(6, 1)}  # plus every CC >= 7.0


class TrtBuildError(RuntimeError):
    """TensorRT could not build the engine as asked (parser errors, unsupported precision, build failure)."""


@dataclass
class TrtBuildConfig:
    precision: str = "fp32"  # "fp32" (TF32 off) | "fp16" | "int8"; unsupported here = error, never a downgrade
    int8_method: str = "auto"  # "calibrator" (implicit, TRT < 11) | "qdq" (explicit Q/DQ) | "auto": calibrator if any
    fp16_method: str = "auto"  # "flag" (BuilderFlag.FP16, TRT <= 10) | "onnx" (fp16 ONNX, strongly typed) | "auto"
    int8_fp16_fallback: bool = False  # int8 via calibrator: layers TensorRT keeps in float may use fp16
    min_batch: int = 1  # optimisation profile of the batch axis
    opt_batch: int = 1  # a robot infers one frame at a time: tune kernels for that
    max_batch: int = 8
    min_head: int = 1  # head_inputs mode: profile of K (rows of head_weight)
    opt_head: int = 0  # 0 = min(72, max_head): W (64) + a few probes
    max_head: int = 256
    workspace_mib: int = 1024  # builder scratch memory limit (a Jetson shares it with the CPU)
    timing_cache: str = ""  # file; "" = trt_timing.cache beside the engine; "off" = none
    optimization_level: int = 3  # builder_optimization_level 0..5 (TensorRT's default is 3)
    device_id: int = 0  # CUDA device to build on (engines are tied to its compute capability)
    log_level: str = "warning"  # "verbose" | "info" | "warning" | "error"
    int8: Int8Config = field(default_factory=Int8Config)  # int8 only: range-calibration frames

    @property
    def head_profile(self) -> tuple[int, int, int]:
        """(min, opt, max) of the head width K; opt 0 means min(72, max_head)."""
        return self.min_head, self.opt_head or min(DEFAULT_OPT_HEAD, self.max_head), self.max_head

    def validate(self) -> None:
        for name, value, allowed in (("precision", self.precision, PRECISIONS),
                                     ("fp16_method", self.fp16_method, FP16_METHODS),
                                     ("int8_method", self.int8_method, INT8_METHODS),
                                     ("log_level", self.log_level, tuple(_LOG_LEVELS))):
            if value not in allowed:
                raise ValueError(f"TrtBuildConfig.{name}={value!r}; choose one of {list(allowed)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch profile needs 1 <= min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch} (--opt-batch/--max-batch)")
        lo, opt, hi = self.head_profile
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"head profile needs 1 <= min_head <= opt_head <= max_head, got {lo}/{opt}/{hi}; "
                             "pass --opt-head at most --max-head (or leave it out: min(72, max head))")
        if self.workspace_mib < 1:
            raise ValueError("TrtBuildConfig.workspace_mib must be >= 1")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError("TrtBuildConfig.optimization_level must be in 0..5")
        if self.precision == "int8":
            self.int8.validate()


@dataclass
class TrtBuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


@dataclass
class Source:
    """The ONNX an engine is built from."""

    path: Path
    meta: ModelMeta
    already_qdq: bool  # holds QuantizeLinear/DequantizeLinear: an explicitly quantized int8 model


@dataclass
class PrecisionPlan:
    """How the asked precision is obtained on this TensorRT (recorded in the sidecar's precision_detail)."""

    precision: str
    int8_method: str | None  # "calibrator" | "qdq" | None
    fp16_method: str | None  # "flag" | "onnx" | None
    strongly_typed: bool
    fp16_fallback: bool

    @property
    def want_fp16(self) -> bool:
        return self.precision == "fp16" or self.fp16_fallback


@dataclass
class Prepared:
    """What ``prepare_onnx`` produced: the ONNX to parse, INT8 batches, and sidecar entries."""

    parse_path: Path
    batches: list[dict[str, np.ndarray]] = field(default_factory=list)
    int8: dict[str, Any] | None = None
    quantized_onnx: dict[str, Any] | None = None
    fp16_onnx: dict[str, Any] | None = None


@dataclass
class BuilderSetup:
    """The builder config and what must be cleaned up or recorded after the build."""

    config: Any
    flags: list[str]  # builder flags set, for the sidecar
    tf32: bool  # TF32 allowed for float layers (False for every fp32 engine)
    calibrator: Any = None
    cache_path: Path | None = None


def require_tensorrt() -> Any:
    """Import TensorRT (>= 8.5) and cuda-python or raise at once, naming ``pip install 'jepa-edge[trt]'``.

    Call it before any slow work (e.g. the ONNX export of ``jepa-edge export --trt``).
    """
    trt = import_tensorrt()
    import_cudart()
    major_minor = tuple(int(x) for x in trt.__version__.split(".")[:2])
    if major_minor < (8, 5):  # name-based I/O, execute_async_v3, set_memory_pool_limit
        raise TrtBuildError(f"TensorRT {trt.__version__} is too old: jepa-edge needs >= 8.5; upgrade TensorRT")
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
        ks = cfg.head_profile
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
            "use int8_method='qdq' (explicit quantization from the same INT8 frames)"
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


def _head_arrays(head: FusedHead | tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    if head is None:
        return None
    if isinstance(head, FusedHead):
        return head.weight, head.bias
    return np.asarray(head[0], np.float32), np.asarray(head[1], np.float32)


def _relpath_entry(path: Path, engine_path: Path, **extra: Any) -> dict[str, Any]:
    return {"path": os.path.relpath(path, engine_path.parent), "sha256": sha256_file(path), **extra}


# ---- step 1-3: source, precision, the ONNX to parse ------------------------------------------


def read_source(onnx_path: Path) -> Source:
    import onnx

    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX model; export one with `jepa-edge export`")
    model = onnx.load(str(onnx_path), load_external_data=False)
    raw_meta = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    meta = parse_meta(raw_meta, str(onnx_path))  # RuntimeModelError if not a jepa-edge export
    contrib = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    if contrib:
        raise TrtBuildError(f"{onnx_path}: the graph has ONNX Runtime contrib ops {contrib} (from --fuse-transformer) "
                            "that TensorRT's parser cannot read; export the engine's ONNX without --fuse-transformer")
    already_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return Source(onnx_path, meta, already_qdq)


def resolve_precision(trt: Any, builder: Any, cfg: TrtBuildConfig, src: Source, gpu: tuple[str, str]) -> PrecisionPlan:
    """Check the precision against this TensorRT and GPU before any slow work; never downgrade."""
    if src.already_qdq and cfg.precision != "int8":
        raise TrtBuildError(f"{src.path} holds Q/DQ nodes (it is int8-quantized); build it with precision='int8'")
    int8_method = _resolve_int8(trt, cfg, src.already_qdq) if cfg.precision == "int8" else None
    fp16_method = _resolve_fp16(trt, cfg) if cfg.precision == "fp16" else None
    typed = fp16_method == "onnx" or (
        int8_method == "qdq" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    plan = PrecisionPlan(cfg.precision, int8_method, fp16_method, typed,
                         cfg.precision == "int8" and cfg.int8_fp16_fallback)
    if plan.fp16_fallback and typed:
        raise TrtBuildError("a strongly typed Q/DQ network runs float layers in the ONNX's own types: "
                            "int8_fp16_fallback is not available with int8_method='qdq'; set it False")
    if plan.fp16_fallback and not hasattr(trt.BuilderFlag, "FP16"):
        raise TrtBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16: int8_fp16_fallback is not "
                            "available; set it False")
    name, cc_text = gpu
    cc = tuple(int(x) for x in cc_text.split("."))
    if plan.want_fp16 and not _fast(builder, "platform_has_fast_fp16", cc, _FAST_FP16):
        raise TrtBuildError(f"GPU {name!r} (compute capability {cc_text}) has no fast fp16; build with "
                            "precision='fp32' (the engine would not be faster, and nothing is downgraded silently)")
    if cfg.precision == "int8" and not _fast(builder, "platform_has_fast_int8", cc, _FAST_INT8):
        raise TrtBuildError(f"GPU {name!r} (compute capability {cc_text}) has no fast int8; "
                            "build with precision='fp16' or 'fp32'")
    return plan


def prepare_onnx(src: Source, engine_path: Path, cfg: TrtBuildConfig, plan: PrecisionPlan,
                 frames: np.ndarray | None, head: FusedHead | tuple | None) -> Prepared:
    """The ONNX TensorRT parses (original, fp16 rewrite or Q/DQ copy) and the INT8 batches."""
    out = Prepared(src.path)
    if plan.fp16_method == "onnx":
        out.parse_path, rep = write_fp16_onnx(src.path, engine_path.with_suffix(".fp16.onnx"))
        out.fp16_onnx = _relpath_entry(out.parse_path, engine_path, kept_fp32_nodes=rep.kept_fp32_nodes,
                                       casts_inserted=rep.casts_inserted, weights_clipped=rep.weights_clipped)
    if plan.precision != "int8" or src.already_qdq:
        return out
    meta, icfg, given = src.meta, cfg.int8, frames is not None
    arrays = _head_arrays(head)
    if meta.mode == "head_inputs" and arrays is None:
        if plan.int8_method == "calibrator":
            raise TrtBuildError("int8 calibration of a head_inputs engine measures the head's output range: "
                                "pass int8_head= (the head you will run, or one of the same scale), "
                                "or use int8_method='qdq' (`--int8-method qdq`: head kept in float)")
        arrays = (np.zeros((1, meta.latent_dim), np.float32), np.zeros((1,), np.float32))  # runs, not quantized
    if frames is None:
        frames = load_int8_frames(icfg, meta.height, meta.width, meta.agent_view)
    out.batches = int8_batches(frames, icfg.batch_size, arrays if meta.mode == "head_inputs" else None)
    single_video = not icfg.is_sim and Path(icfg.source).is_file()
    out.int8 = {"source": "frames passed in" if given else icfg.source,
                "view": None if given or single_video else icfg.resolved_view(meta.agent_view),
                "n_frames": len(out.batches) * icfg.batch_size, "batch_size": icfg.batch_size,
                "cache": icfg.cache or None}
    if plan.int8_method == "qdq":
        out.parse_path = quantize_qdq(src.path, engine_path.with_suffix(".qdq.onnx"), out.batches)
        out.quantized_onnx = _relpath_entry(out.parse_path, engine_path)
    return out


# ---- step 4-6: network, builder config, build -------------------------------------------------


def parse_network(trt: Any, builder: Any, logger: Any, parse_path: Path, strongly_typed: bool) -> tuple[Any, Any]:
    """An explicit-batch (or strongly typed) network from the ONNX; every parser error is reported."""
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
    return network, parser  # the parser owns weights the network refers to: keep it alive until the build


def network_profile(network: Any, src: Source, cfg: TrtBuildConfig) -> dict[str, dict]:
    """The optimisation profile, after checking the network's inputs are the ones the metadata promises."""
    meta = src.meta
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    static = (meta.raw.get("graph") or {}).get("batch")
    if static:  # a static-batch export (`export --batch N`) admits one batch size: the profile is (N, N, N)
        log.info("%s: static batch %d, batch profile %d/%d/%d", src.path, static, static, static, static)
        cfg = replace(cfg, min_batch=static, opt_batch=static, max_batch=static)
    profile = engine_profile(meta.mode, meta.height, meta.width, meta.latent_dim, cfg)
    if inputs != set(profile):
        raise TrtBuildError(f"{src.path}: network inputs {sorted(inputs)} do not match its {meta.mode!r} metadata "
                            f"(expected {sorted(profile)}); re-export with `jepa-edge export`")
    return profile


def _apply_tf32(trt: Any, bconf: Any, precision: str) -> bool:
    """Clear TF32 for fp32 (TensorRT enables it by default); return whether float layers may use TF32."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:  # a TensorRT without TF32 (before 7.1) computes float layers in fp32
        return False
    if precision == "fp32":
        bconf.clear_flag(flag)
        if bconf.get_flag(flag):
            raise TrtBuildError(f"TensorRT {trt.__version__} kept BuilderFlag.TF32 set after clear_flag; "
                                "an fp32 engine cannot be promised")
    return bool(bconf.get_flag(flag))


def _add_profiles(builder: Any, bconf: Any, profile_shapes: dict[str, dict]) -> None:
    profile = builder.create_optimization_profile()
    for name, s in profile_shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    if bconf.add_optimization_profile(profile) < 0:
        raise TrtBuildError(f"TensorRT refused the optimisation profile {profile_shapes}")


def _precision_flags(trt: Any, builder: Any, bconf: Any, cfg: TrtBuildConfig, plan: PrecisionPlan,
                     batches: list[dict[str, np.ndarray]]) -> tuple[list[str], Any]:
    """FP16/INT8 builder flags and, for implicit INT8, the calibrator with its calibration profile."""
    names: list[str] = []
    if plan.want_fp16 and plan.fp16_method != "onnx":  # the fp16 ONNX carries its types: no flag
        bconf.set_flag(trt.BuilderFlag.FP16)
        names.append("FP16")
    if plan.precision == "int8" and not plan.strongly_typed:  # calibrator, or Q/DQ on a weakly typed network
        bconf.set_flag(trt.BuilderFlag.INT8)
        names.append("INT8")
    if plan.int8_method != "calibrator":
        return names, None
    calibrator = make_entropy_calibrator(trt, batches, cfg.int8.cache)
    bconf.int8_calibrator = calibrator
    calib_profile = builder.create_optimization_profile()  # calibration runs at exactly the batch it is fed
    for name, a in batches[0].items():
        calib_profile.set_shape(name, a.shape, a.shape, a.shape)
    bconf.set_calibration_profile(calib_profile)
    return names, calibrator


def _timing_cache(bconf: Any, cfg: TrtBuildConfig, engine_path: Path) -> Path | None:
    if cfg.timing_cache == "off":
        return None
    path = Path(cfg.timing_cache) if cfg.timing_cache else engine_path.parent / "trt_timing.cache"
    cache = bconf.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if not bconf.set_timing_cache(cache, ignore_mismatch=False):
        raise TrtBuildError(f"{path}: timing cache was made by another GPU or TensorRT version; "
                            "delete it (it is rebuilt) or pass timing_cache='off'")
    return path


def make_builder_config(trt: Any, builder: Any, cfg: TrtBuildConfig, plan: PrecisionPlan,
                        profile_shapes: dict[str, dict], prepared: Prepared, engine_path: Path) -> BuilderSetup:
    """Workspace, optimisation level, precision (TF32 cleared for fp32), profile, calibrator, timing cache."""
    bconf = builder.create_builder_config()
    bconf.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if hasattr(bconf, "builder_optimization_level"):  # TensorRT >= 8.6
        bconf.builder_optimization_level = cfg.optimization_level
    elif cfg.optimization_level != 3:
        raise TrtBuildError(f"TensorRT {trt.__version__} has no builder_optimization_level; leave it at 3")
    _add_profiles(builder, bconf, profile_shapes)
    tf32 = _apply_tf32(trt, bconf, plan.precision)
    flags, calibrator = _precision_flags(trt, builder, bconf, cfg, plan, prepared.batches)
    setup = BuilderSetup(bconf, flags + (["TF32"] if tf32 else []), tf32, calibrator)
    try:
        setup.cache_path = _timing_cache(bconf, cfg, engine_path)
    except BaseException:
        if calibrator is not None:
            calibrator.free()
        raise
    return setup


def build_serialized(builder: Any, network: Any, setup: BuilderSetup, logger: Any, parse_path: Path) -> bytes:
    """``build_serialized_network`` → the plan bytes (calibrator device buffers freed either way)."""
    try:
        serialized = builder.build_serialized_network(network, setup.config)
    finally:
        if setup.calibrator is not None:
            setup.calibrator.free()
    if serialized is None:
        raise TrtBuildError(f"TensorRT could not build an engine from {parse_path}:\n  "
                            + "\n  ".join(logger.errors[-20:] or ["(see the TensorRT log)"]))
    return bytes(memoryview(serialized))


# ---- step 7: engine + sidecar ---------------------------------------------------------------


def make_sidecar(trt: Any, cfg: TrtBuildConfig, src: Source, plan: PrecisionPlan, prepared: Prepared,
                 setup: BuilderSetup, gpu: tuple[str, str], profile: dict, engine_bytes: bytes,
                 engine_path: Path) -> dict[str, Any]:
    """The JSON beside the engine (docs/FORMATS.md); the runtime checks it before deserialising."""
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "precision": plan.precision,
        "tf32": setup.tf32,
        "precision_detail": {"builder_flags": setup.flags, "int8_method": plan.int8_method,
                             "fp16_method": plan.fp16_method, "strongly_typed": plan.strongly_typed,
                             "fp16_fallback": plan.fp16_fallback},
        "tensorrt_version": trt.__version__,
        "gpu": {"name": gpu[0], "compute_capability": gpu[1], "device_id": cfg.device_id},
        "profile": profile,
        "builder": {**asdict(cfg), "opt_head": cfg.head_profile[1], "workspace_bytes": cfg.workspace_mib << 20,
                    "timing_cache": str(setup.cache_path) if setup.cache_path else None},
        "int8": prepared.int8,
        "onnx": _relpath_entry(src.path, engine_path),
        "quantized_onnx": prepared.quantized_onnx,
        "fp16_onnx": prepared.fp16_onnx,
        "metadata": src.meta.raw,
        "engine": {"sha256": hashlib.sha256(engine_bytes).hexdigest(), "bytes": len(engine_bytes)},
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_engine(engine_path: Path, engine_bytes: bytes, sidecar: dict[str, Any], setup: BuilderSetup) -> Path:
    """Engine (exactly TensorRT's bytes), timing cache, then the sidecar last: each written atomically."""
    if setup.cache_path is not None:
        atomic_write_bytes(setup.cache_path, bytes(memoryview(setup.config.get_timing_cache().serialize())))
    atomic_write_bytes(engine_path, engine_bytes)
    side = sidecar_path(engine_path)
    atomic_write_json(side, sidecar)
    return side


# ---- build ----------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    config: TrtBuildConfig | None = None,
    int8_frames: np.ndarray | None = None,
    int8_head: FusedHead | tuple[np.ndarray, np.ndarray] | None = None,
) -> TrtBuildResult:
    """Build ``engine_path`` (default: the ONNX path with ``.engine``) and its ``.engine.json`` sidecar.

    ``int8_frames`` (uint8 (N, H, W, 3)) override ``config.int8``'s source.
    ``int8_head``: the head fed to a ``head_inputs`` graph while the entropy
    calibrator measures ranges (required there: its output range is
    calibrated too); the Q/DQ path keeps the head in float and needs none.
    """
    trt = require_tensorrt()  # first: no extra = immediate, clear error
    cfg = config or TrtBuildConfig()
    cfg.validate()
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    src = read_source(onnx_path)
    cudart = import_cudart()
    cuda_call(cudart.cudaSetDevice(cfg.device_id), "cudaSetDevice")
    gpu = device_name_and_cc(cudart, cfg.device_id)
    logger = _make_logger(trt, cfg.log_level)
    builder = trt.Builder(logger)
    if builder is None:
        raise TrtBuildError(f"TensorRT could not create a builder on GPU {cfg.device_id}: {logger.errors}")
    plan = resolve_precision(trt, builder, cfg, src, gpu)
    prepared = prepare_onnx(src, engine_path, cfg, plan, int8_frames, int8_head)
    network, _parser = parse_network(trt, builder, logger, prepared.parse_path, plan.strongly_typed)
    profile = network_profile(network, src, cfg)
    setup = make_builder_config(trt, builder, cfg, plan, profile, prepared, engine_path)
    engine_bytes = build_serialized(builder, network, setup, logger, prepared.parse_path)
    sidecar = make_sidecar(trt, cfg, src, plan, prepared, setup, gpu, profile, engine_bytes, engine_path)
    side = write_engine(engine_path, engine_bytes, sidecar, setup)
    log.info("built %s (%s, tf32 %s, TensorRT %s, %s)", engine_path, plan.precision, setup.tf32, trt.__version__,
             gpu[0])
    return TrtBuildResult(engine_path, side, sidecar)
