"""Graph passes after export: fewer nodes (kernels) per frame, each pass checked against the exported graph.

Two optional passes, applied by ``optimize_model`` (the fusion, when asked
for, runs first: onnxslim folds the projection biases into neighbouring Adds,
which hides the ``MatMul → Add`` attention pattern the fuser looks for):

1. ONNX Runtime's transformer optimizer (``onnxruntime.transformers``,
   ``model_type="vit"``, python fusions only: ``opt_level=0``, so nothing
   CPU-specific is baked in): SkipLayerNormalization, (Bias)Gelu/FastGelu,
   Attention where the pattern matches (the export traces attention as split
   q/k/v for this, ``EdgeModel(attention="split_qkv")``). The fused ops are
   ``com.microsoft`` contrib ops: fine for ONNX Runtime (CPU and CUDA), **not**
   for TensorRT's ONNX parser, so a TensorRT engine must be built from a graph
   without this pass (``has_contrib_ops`` tells).
2. ``onnxslim`` (the ``export`` extra, a maintained library): constant folding,
   dead-node removal and shape-plumbing elimination (Shape/Gather/Unsqueeze/
   Concat chains collapse to constants once the batch is static). Its
   ``FusionGemm`` pattern is skipped on purpose: it rewrites every 3-D
   ``MatMul + Add`` into ``Reshape → Gemm → Reshape`` (+2 nodes per Linear),
   which hides the ``MatMul + Add`` form that TensorRT's own fusions look
   for. On a graph without the fusion pass the result is plain ONNX.

Every pass is run on ONNX Runtime CPU next to the graph it started from, on
the same seeded frames; a pass is kept only if every output agrees within
``atol * max(1, max |reference|)`` (default 1e-5); otherwise it is dropped and
the reason recorded. Every pass is compared with the *exported* graph (not
the previous pass), so errors never compound unseen. What was applied, the parity errors and the node counts
by op type before/after each pass go into ``metadata["graph"]``; the model's
``metadata_props`` are carried through every pass.

An fp16 export (``--precision fp16``) runs these passes on the fp32 model and
their parity at this fp32 bound, then rewrites the result to fp16
(``jepa_edge.export.fp16``, fused contrib ops included: Attention,
SkipLayerNormalization and BiasGelu have fp16 CUDA kernels), whose parity with
PyTorch is checked at the fp16 bound (``jepa_edge.export.onnx_export``).

onnxslim and onnxruntime.transformers are imported lazily: reading this
module, counting nodes or reading metadata needs neither.
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SLIM_EXTRA = "pip install 'jepa-edge[export]'  (or: pip install 'onnxslim>=0.1.98')"
SLIM_SKIP_PATTERNS = ("FusionGemm",)  # keep MatMul + Add: see the module docstring
CONTRIB_DOMAIN = "com.microsoft"
TRANSFORMER_MODEL_TYPE = "vit"  # BertOnnxModel fusions, no embedding layer (a ViT has patches, not token ids)


class OptimizeError(ValueError):
    """A graph pass was asked for but cannot run (missing extra, bad options)."""


@dataclass
class OptimizeConfig:
    slim: bool = True  # onnxslim constant folding / shape plumbing removal (needs the export extra)
    fuse_transformer: bool = False  # ORT transformer fusions, before onnxslim (contrib ops: ORT only, not TensorRT)
    atol: float = 1e-5  # parity of each pass vs its input graph: max |Δ| <= atol * max(1, max |ref|), per output
    parity_batches: tuple[int, ...] = (1, 3)  # batch sizes compared (a static-batch graph uses its own batch)
    seed: int = 0  # frames / head arrays of the parity check

    def validate(self) -> None:
        if self.atol <= 0:
            raise OptimizeError(f"OptimizeConfig.atol={self.atol} must be > 0")
        if not self.parity_batches or min(self.parity_batches) < 1:
            raise OptimizeError("OptimizeConfig.parity_batches must be non-empty and every batch size >= 1")


# ---- counting -------------------------------------------------------------------------------------


def node_counts(model: Any) -> dict[str, int]:
    """Nodes of the model's top-level graph by op type (contrib ops as ``com.microsoft.Op``), most frequent first."""
    names = [f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph.node]
    return dict(collections.Counter(names).most_common())


def node_count_summary(counts: dict[str, dict[str, int]]) -> str:
    """One line, e.g. ``original 207 → transformer_fusion 72 → onnxslim 43 nodes``."""
    return " → ".join(f"{stage} {sum(c.values())}" for stage, c in counts.items()) + " nodes"


def ort_optimized_counts(model: Any, level: str = "all") -> dict[str, int]:
    """Node counts of the graph ONNX Runtime CPU actually runs after its own optimisation (``level``: basic|extended|all).

    Uses ``SessionOptions.optimized_model_filepath``; the ALL level bakes in
    CPU-only layout ops, so the file is only counted, never shipped.
    """
    import onnx
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise OptimizeError(f"unknown ONNX Runtime optimisation level {level!r}; choose one of {list(levels)}")
    with tempfile.TemporaryDirectory(prefix="jepa-edge-ortopt-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[level]
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return node_counts(onnx.load(so.optimized_model_filepath))


def has_contrib_ops(model: Any) -> bool:
    """True when the graph holds com.microsoft ops (ONNX Runtime only; TensorRT's parser refuses them)."""
    return any(n.domain == CONTRIB_DOMAIN for n in model.graph.node)


# ---- passes ---------------------------------------------------------------------------------------


def require_onnxslim() -> Any:
    try:
        import onnxslim
    except ImportError as exc:
        raise OptimizeError(f"graph simplification needs onnxslim: {SLIM_EXTRA}; or export with --no-optimize") from exc
    return onnxslim


def onnxslim_version() -> str | None:
    try:
        import onnxslim
    except ImportError:
        return None
    return str(onnxslim.__version__)


def slim(model: Any) -> Any:
    """onnxslim: constant folding + shape plumbing removal; metadata_props kept."""
    onnxslim = require_onnxslim()
    props = {p.key: p.value for p in model.metadata_props}
    out = onnxslim.slim(model, skip_fusion_patterns=list(SLIM_SKIP_PATTERNS))
    _restore_props(out, props)
    return out


def fuse_transformer(model: Any, num_heads: int, hidden_size: int) -> tuple[Any, dict[str, int]]:
    """ONNX Runtime's transformer fusions (python only, opt_level=0) → (model, fused op counts)."""
    from onnxruntime.transformers.optimizer import optimize_model

    props = {p.key: p.value for p in model.metadata_props}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(model, model_type=TRANSFORMER_MODEL_TYPE, num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=0, use_gpu=True)
    out = opt.model
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    if has_contrib_ops(out) and not any(o.domain == CONTRIB_DOMAIN for o in out.opset_import):
        out.opset_import.add(domain=CONTRIB_DOMAIN, version=1)
    _restore_props(out, props)
    return out, stats


def _copy(model: Any) -> Any:
    out = type(model)()
    out.CopyFrom(model)
    return out


def _restore_props(model: Any, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


# ---- parity between graphs ------------------------------------------------------------------------


def _static_batch(model: Any) -> int | None:
    """The frames input's batch size if it is a fixed number, else None."""
    for inp in model.graph.input:
        if inp.name == "frames":
            dim = inp.type.tensor_type.shape.dim[0]
            return int(dim.dim_value) if dim.HasField("dim_value") else None
    raise OptimizeError("the graph has no input 'frames'; not a jepa-edge export")


def parity_feeds(model: Any, config: OptimizeConfig) -> list[dict[str, np.ndarray]]:
    """Seeded uint8 frames (and a K=3 head for a head_inputs graph) per checked batch size."""
    inputs = {i.name: i for i in model.graph.input}
    h, w = (int(d.dim_value) for d in inputs["frames"].type.tensor_type.shape.dim[1:3])
    static = _static_batch(model)
    batches = (static,) if static else config.parity_batches
    rng = np.random.default_rng(config.seed)
    feeds = []
    for batch in batches:
        feed = {"frames": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)}
        if "head_weight" in inputs:
            d = int(inputs["head_weight"].type.tensor_type.shape.dim[1].dim_value)
            feed["head_weight"] = rng.standard_normal((3, d)).astype(np.float32)
            feed["head_bias"] = rng.standard_normal(3).astype(np.float32)
        feeds.append(feed)
    return feeds


def _run_cpu(model: Any, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graphs as written
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed))) for feed in feeds]


def pass_parity(reference: list[dict[str, np.ndarray]], model: Any, feeds: list[dict[str, np.ndarray]],
                 atol: float) -> tuple[dict[str, float], str]:
    """Max abs error per output of ``model`` vs ``reference`` outputs; "" or the first violation, in words."""
    got = _run_cpu(model, feeds)
    worst: dict[str, float] = {}
    problem = ""
    for ref, out in zip(reference, got):
        if set(out) != set(ref):
            return worst, f"outputs {sorted(out)} differ from the reference's {sorted(ref)}"
        for name, want in ref.items():
            if out[name].shape != want.shape:
                return worst, f"output {name!r} has shape {out[name].shape}, the reference {want.shape}"
            err = float(np.abs(out[name].astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
            allowed = atol * max(1.0, float(np.abs(want).max(initial=0.0)))
            worst[name] = max(worst.get(name, 0.0), err)
            if err > allowed and not problem:
                problem = f"output {name!r} max abs error {err:.3g} > {allowed:.3g} (atol {atol:g} x max(1, |ref|))"
    return worst, problem


# ---- the pipeline ---------------------------------------------------------------------------------


def _encoder_dims(metadata: dict[str, Any]) -> tuple[int, int]:
    enc = metadata.get("encoder") or {}
    if "num_heads" not in enc or "embed_dim" not in enc:
        raise OptimizeError("transformer fusion needs metadata['encoder'] num_heads and embed_dim (re-export)")
    return int(enc["num_heads"]), int(enc["embed_dim"])


def optimize_model(model: Any, metadata: dict[str, Any], config: OptimizeConfig) -> tuple[Any, dict[str, Any]]:
    """Apply the configured passes (fusion, then onnxslim) → (final model, the ``metadata["graph"]`` report).

    The report: ``passes`` (name, version, applied, parity_max_abs_error,
    reason when dropped, fused_ops), ``node_counts`` (op type → count, per
    stage: ``original`` then each kept pass), ``contrib_ops`` (bool) and
    ``parity_atol``. A pass that fails parity is dropped with a warning, never
    shipped. ``metadata`` is only read (encoder dims for the fusion).
    """
    config.validate()
    if config.slim:
        require_onnxslim()  # fail before any work when the extra is missing
    feeds = parity_feeds(model, config)
    reference = _run_cpu(model, feeds)
    counts = {"original": node_counts(model)}
    passes: list[dict[str, Any]] = []
    if config.fuse_transformer:
        import onnxruntime as ort

        heads, width = _encoder_dims(metadata)
        model = _try_pass(model, "transformer_fusion", lambda m: fuse_transformer(m, heads, width), reference,
                          feeds, config, counts, passes)
        passes[-1].update(version=ort.__version__, model_type=TRANSFORMER_MODEL_TYPE, num_heads=heads,
                          hidden_size=width)
    if config.slim:
        model = _try_pass(model, "onnxslim", lambda m: (slim(m), {}), reference, feeds, config, counts, passes)
        passes[-1].update(version=onnxslim_version(), skip_fusion_patterns=list(SLIM_SKIP_PATTERNS))
    report = {"passes": passes, "node_counts": counts, "contrib_ops": has_contrib_ops(model),
              "parity_atol": config.atol}
    return model, report


def _try_pass(model: Any, name: str, fn: Any, reference: list[dict[str, np.ndarray]],
              feeds: list[dict[str, np.ndarray]], config: OptimizeConfig, counts: dict[str, dict[str, int]],
              passes: list[dict[str, Any]]) -> Any:
    """Run one pass; keep its output only if it matches the exported graph's outputs within ``config.atol``."""
    candidate, fused_ops = fn(_copy(model))  # passes may edit their input in place (optimize_model does)
    errors, problem = pass_parity(reference, candidate, feeds, config.atol)
    record: dict[str, Any] = {"name": name, "applied": not problem, "parity_max_abs_error": errors}
    if fused_ops:
        record["fused_ops"] = fused_ops
    if problem:
        record["reason"] = f"dropped: {problem}"
        warnings.warn(f"graph pass {name} dropped, it changes the outputs: {problem}", RuntimeWarning, stacklevel=3)
        passes.append(record)
        return model
    counts[name] = node_counts(candidate)
    passes.append(record)
    return candidate

