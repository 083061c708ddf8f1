"""Export an agent (encoder + optional fused head) to ONNX, checked against PyTorch.

``export_onnx`` traces ``EdgeModel`` with ``torch.onnx.export`` (the
TorchScript exporter by default: fast and fully offline on CPU; the dynamo
exporter on request), writes the ``metadata_props["jepa_edge"]`` contract
of docs/FORMATS.md, runs ``onnx.checker`` and then an ONNX Runtime vs
PyTorch parity check before the file is published (atomically). A graph that
disagrees with PyTorch is never written.

``export_agent`` is the high-level entry point: run directory + postcard +
probe files in, ``.onnx`` out.

Parity, per output, on seeded random uint8 frames at batch 1 and 3:

* ``z``: ``max |z_ort - z_torch| <= z_atol`` (default 1e-4);
* head outputs, against the numpy head on PyTorch's ``z`` (float64):
  ``|h_ort - h_ref| <= |W| @ |z_ort - z_torch| + head_rtol * max(1, max |h_ref|)``
  elementwise: the first term is exactly how far the (already accepted) ``z``
  error can move a linear head, the second the float32 rounding of the Gemm.

Then, optionally, graph passes (``jepa_edge.export.optimize``): onnxslim
(on by default when installed) and ONNX Runtime's transformer fusions (off by
default: contrib ops), each kept only if the optimised model matches the
exported one on ONNX Runtime CPU within ``optimize_atol * max(1, |ref|)``.
``batch=N`` exports every frames/z/head shape static at N (CUDA graphs and
fixed-shape engines need that); ``batch=0`` keeps the batch axis dynamic.
``metadata["graph"]`` records the batch, the passes applied (and why one was
dropped), their parity errors and the node counts by op type per stage.

``precision="fp16"`` (``jepa-edge export --precision fp16``): after the
passes, the encoder is rewritten to fp16 for ONNX Runtime
(``jepa_edge.export.fp16``, ``ORT_KEEP_FP32_OPS``: the head and the graph's
inputs/outputs stay float32, so the runtime contract does not change) and
the written fp16 model is checked against PyTorch again, with the z bound
derived the way the passes' bound is, relative to the output's scale:

* ``z``: ``max |z_ort - z_torch| <= fp16_z_rtol * max(1, max |z_torch|)``
  (default 1e-2: about 20 fp16 unit roundoffs, 2^-11 each, for the weights and
  activations rounded to fp16 through the blocks; measured on ONNX Runtime CPU:
  6e-4 of the scale at ViT-Tiny width and depth, 1.4e-3 with the fused ops);
* head outputs: the fp32 bound above, unchanged (the head runs in float32 on
  the fp16 ``z``: ``|W| @ |dz|`` is exactly how far that moves it).

The check runs on ONNX Runtime CPU, which loads the fp16 file itself but has
few fp16 kernels: it inserts Casts and computes most ops (MatMul, Add,
LayerNormalization, Conv, the fused ops) in float32 on the fp16 weights and
fp16 tensors between them. So it is an emulation of fp16 *storage* (the
rounding the CUDA EP also does), not of the CUDA EP's fp16 kernels (cuBLAS
fp16 GEMMs accumulate in fp32, so they add little beyond it); the GPU
numbers are ``benchmarks/gpu_check.py``'s. ``metadata["precision"]`` is
"fp32" or "fp16"; an fp16 model also has ``metadata["fp16"]`` (what was
converted, kept and clipped, its parity errors and bound).

Torch is imported inside functions: reading metadata or inspecting a model
from this module works without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import atomic_write_bytes
from jepa_edge.calib.head import FusedHead
from jepa_edge.export.int8 import downstream_nodes
from jepa_edge.export.optimize import OptimizeConfig, node_counts, optimize_model, require_onnxslim
from jepa_edge.runtime.meta import FORMAT, METADATA_KEY, MODES, VERSION, unknown_mode

EXPORTERS = ("torchscript", "dynamo")
PRECISIONS = ("fp32", "fp16")  # of the written ONNX model (int8 is a TensorRT engine precision: trt_build)


class ExportError(ValueError):
    """Inputs that cannot be exported as asked (bad mode, metadata, head, agent files)."""


class ParityError(RuntimeError):
    """The exported model is invalid ONNX or disagrees with PyTorch beyond the stated tolerance; nothing written."""


@dataclass
class OnnxExportConfig:
    opset: int = 17  # 17: native LayerNormalization; TensorRT >= 8.6 and onnxruntime >= 1.14 read it
    exporter: str = "torchscript"  # "torchscript" (legacy tracer, fast, offline) | "dynamo" (torch.export, opset >= 18)
    check: bool = True  # onnx.checker (full_check: shape inference) + ORT parity; False only for debugging
    z_atol: float = 1e-4  # parity: max abs error on z
    head_rtol: float = 1e-4  # parity: head error allowed beyond the propagated z error, × max(1, max |ref|)
    parity_batches: tuple[int, ...] = (1, 3)  # batch sizes checked (1 and >1 prove the batch axis is dynamic)
    trace_batch: int = 2  # batch of the tracing example: neither 1 nor a parity size, so no size is baked in
    seed: int = 0  # random frames / placeholder head for tracing and parity
    batch: int = 0  # 0: dynamic batch axis; N > 0: every frames/z/head shape static at N (CUDA graphs, TensorRT)
    optimize: bool | None = None  # onnxslim pass: None = when onnxslim is installed, True = required, False = off
    fuse_transformer: bool = False  # + ONNX Runtime transformer fusions (com.microsoft ops: ORT only, not TensorRT)
    optimize_atol: float = 1e-5  # each pass vs the exported model: max |Δ| <= optimize_atol * max(1, max |ref|)
    precision: str = "fp32"  # "fp32" | "fp16" (encoder in fp16 for ONNX Runtime; head and I/O stay float32)
    fp16_z_rtol: float = 1e-2  # fp16 parity: max |z_ort - z_torch| <= fp16_z_rtol * max(1, max |z_torch|)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"OnnxExportConfig.precision={self.precision!r}; choose one of {list(PRECISIONS)} "
                              "(int8 is for TensorRT engines: --format engine)")
        if self.fp16_z_rtol <= 0:
            raise ExportError("OnnxExportConfig.fp16_z_rtol must be > 0")
        if self.exporter not in EXPORTERS:
            raise ExportError(f"OnnxExportConfig.exporter={self.exporter!r}; choose one of {list(EXPORTERS)}")
        if self.exporter == "dynamo" and self.opset < 18:
            raise ExportError(f"the dynamo exporter writes opset >= 18, asked for {self.opset}; "
                              "use exporter='torchscript' or opset=18")
        if not 14 <= self.opset <= 23:
            raise ExportError(
                f"OnnxExportConfig.opset={self.opset}: use 14..23 (scaled_dot_product_attention needs 14)"
            )
        if self.z_atol <= 0 or self.head_rtol <= 0:
            raise ExportError("OnnxExportConfig.z_atol and head_rtol must be > 0")
        if not self.parity_batches or min(self.parity_batches) < 1 or self.trace_batch < 1:
            raise ExportError("OnnxExportConfig.parity_batches must be non-empty and every batch size >= 1")
        if self.batch < 0:
            raise ExportError(f"OnnxExportConfig.batch={self.batch}: use 0 (dynamic batch) or a static batch N >= 1")
        if self.optimize_atol <= 0:
            raise ExportError("OnnxExportConfig.optimize_atol must be > 0")

    @property
    def static(self) -> bool:
        return self.batch > 0

    def batches(self) -> tuple[int, tuple[int, ...]]:
        """(trace batch, parity batches): a static model is traced and checked at its one batch size."""
        return (self.batch, (self.batch,)) if self.static else (self.trace_batch, self.parity_batches)

    def slim_enabled(self) -> bool:
        """Whether the onnxslim pass runs: asked for, or (None) onnxslim is importable."""
        from jepa_edge.export.optimize import onnxslim_version

        return self.optimize if self.optimize is not None else onnxslim_version() is not None


@dataclass
class ExportResult:
    path: Path  # the written .onnx
    mode: str  # "fused" | "head_inputs" | "encoder_only"
    metadata: dict[str, Any]  # the metadata_props["jepa_edge"] JSON, parsed
    # output name → max abs error of the written model vs PyTorch (+numpy head); an fp16 model's own errors
    parity: dict[str, float] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)  # z_atol (or fp16_z_rtol), head_rtol
    sha256: str = ""  # of the written file


# ---- agent metadata --------------------------------------------------------------------


def _agent_meta(meta: dict[str, Any]) -> dict[str, str]:
    if not isinstance(meta, dict) or not meta.get("name") or not meta.get("fingerprint"):
        raise ExportError(
            f"agent metadata must be a dict with 'name' and 'fingerprint' (as load_agent returns), got {meta!r}"
        )
    return {"name": str(meta["name"]), "fingerprint": str(meta["fingerprint"]), "view": str(meta.get("view", ""))}


def encoder_fingerprint(encoder: Any) -> str:
    """Fingerprint of an in-memory encoder (same bytes as its encoder.safetensors)."""
    from jepa_edge.calib.fingerprint import fingerprint_arrays

    return fingerprint_arrays({k: v.detach().cpu().contiguous().numpy() for k, v in encoder.state_dict().items()})


def build_metadata(
    encoder: Any, agent: dict[str, str], mode: str, head: FusedHead | None, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``metadata_props["jepa_edge"]`` JSON (docs/FORMATS.md), plus provenance."""
    import onnx
    import torch

    import jepa_edge

    cfg = encoder.cfg
    fused = mode == "fused" and head is not None
    head_meta: dict[str, Any] = {
        "outputs": [asdict(o) for o in head.outputs] if fused else [],  # name, start, stop, kind, labels
        "width": head.width if fused else None,
    }
    if fused and provenance:
        head_meta.update(provenance)  # postcard / probes this head was fused from
    return {
        "format": FORMAT,
        "version": VERSION,
        "mode": mode,
        "input": {"name": "frames", "layout": "NHWC", "dtype": "uint8", "channels": "BGR",
                  "height": int(cfg.img_size), "width": int(cfg.img_size)},
        "latent_dim": int(cfg.latent_dim),
        "agent": agent,
        "head": head_meta,
        "encoder": asdict(cfg),
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "jepa_edge": getattr(jepa_edge, "__version__", "unknown")},
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``jepa_edge`` metadata of an exported ONNX file, parsed (no torch, no weights loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file; export one with `jepa-edge export`")
    model = onnx.load(str(path), load_external_data=False)
    raw = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    if raw is None:
        raise ExportError(f"{path}: no metadata_props['{METADATA_KEY}']: not a `jepa-edge export` model; re-export it")
    return json.loads(raw)


def head_nodes(model: Any) -> list[Any]:
    """Graph nodes computed from ``z`` (the head), for inspection and tests."""
    return downstream_nodes(model, "z")


# ---- export ------------------------------------------------------------------------------


def _example_inputs(edge: Any, batch: int, seed: int, head_arrays: tuple[np.ndarray, np.ndarray]) -> tuple[Any, ...]:
    """Seeded random uint8 frames (+ the head arrays for a head_inputs model), as torch tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    side = int(edge.encoder.cfg.img_size)
    frames = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, generator=g)
    if edge.mode != "head_inputs":
        return (frames,)
    return frames, torch.from_numpy(head_arrays[0]), torch.from_numpy(head_arrays[1])


def _parity_head(latent_dim: int, head: FusedHead | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) fed to a head_inputs model: the given head, or a seeded random one (K=3)."""
    if head is not None and head.width > 0:
        return head.weight.astype(np.float32), head.bias.astype(np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3, latent_dim)).astype(np.float32),
            rng.standard_normal(3).astype(np.float32))


def _dynamic_axes(edge: Any, static: bool) -> dict[str, dict[int, str]]:
    """Symbolic axes: the batch (unless static) and, for head_inputs, the head width K (set per head swap)."""
    axes = {} if static else {name: {0: "batch"} for name in (*edge.output_names, "frames")}
    if edge.mode == "head_inputs":
        axes.update(head_weight={0: "K"}, head_bias={0: "K"}, head={1: "K"} if static else {0: "batch", 1: "K"})
    return axes


def _torch_export(edge: Any, example: tuple[Any, ...], path: Path, config: OnnxExportConfig) -> None:
    import torch

    with warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation; the export itself is checked below
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\._internal\.torchscript")
        if config.exporter == "torchscript":
            torch.onnx.export(
                edge, example, str(path), input_names=edge.input_names, output_names=edge.output_names,
                dynamic_axes=_dynamic_axes(edge, config.static), opset_version=config.opset, do_constant_folding=True,
                dynamo=False,
            )
        else:
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter's backend)
            except ImportError as exc:
                raise ExportError("exporter='dynamo' needs onnxscript: pip install 'jepa-edge[train]' "
                                  "(or use the default exporter='torchscript')") from exc
            batch = torch.export.Dim("batch", min=1, max=4096)
            shapes: tuple[dict[int, Any] | None, ...] = (None if config.static else {0: batch},)  # one per input
            if edge.mode == "head_inputs":
                k = torch.export.Dim("K", min=1, max=65536)
                shapes += ({0: k}, {0: k})
            torch.onnx.export(
                edge, example, str(path), input_names=edge.input_names, output_names=edge.output_names,
                dynamic_shapes=shapes, opset_version=config.opset, dynamo=True, external_data=False,
                verbose=False,
            )


def _set_metadata(model: Any, metadata: dict[str, Any]) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)


def check_onnx_out(out_path: str | Path) -> None:
    """Refuse an output name that is not ``*.onnx`` before any work (ONNX Runtime, TensorRT and `run` go by it)."""
    path = Path(out_path)
    if path.suffix.lower() != ".onnx":
        stem = path.stem if path.name not in ("", ".", "..") else "model"
        raise ExportError(f"{out_path}: the exported model must be an .onnx file; pass e.g. --out {stem}.onnx")


def export_onnx(
    encoder: Any,
    meta: dict[str, Any],
    out_path: str | Path,
    head: FusedHead | None = None,
    mode: str = "fused",
    config: OnnxExportConfig | None = None,
    provenance: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``encoder`` (+ ``head``) to ``out_path`` and verify it against PyTorch.

    ``meta``: the agent's ``{name, fingerprint, view}`` (``load_agent``'s meta);
    the fingerprint must be that of ``encoder``'s weights. ``head``: a
    ``FusedHead`` for this encoder; baked in for ``mode="fused"``, used only as
    the parity-check head for ``head_inputs``, refused for ``encoder_only``.
    ``provenance``: JSON recorded under ``head`` (postcard / probe files).
    Raises ``ExportError`` (bad inputs) or ``ParityError`` (nothing written).
    """
    import onnx
    import torch

    from jepa_edge.export.edge_model import EdgeModel

    check_onnx_out(out_path)
    config = config or OnnxExportConfig()
    config.validate()
    if config.optimize:
        require_onnxslim()  # asked for explicitly: fail before the export when the extra is missing
    if mode not in MODES:
        raise ExportError(unknown_mode(mode))
    if mode == "encoder_only" and head is not None:
        raise ExportError("--mode encoder-only exports the encoder alone; drop --postcard/--probe or use --mode fused")
    agent = _agent_meta(meta)
    actual = encoder_fingerprint(encoder)
    if actual != agent["fingerprint"]:
        raise ExportError(
            f"agent metadata says fingerprint {agent['fingerprint'][:12]}…, but the encoder's weights are "
            f"{actual[:12]}…; pass the meta that belongs to these weights (load both with load_agent)"
        )
    if head is not None and head.encoder_fingerprint != actual:
        raise ExportError(
            f"the head was built for encoder {head.encoder_fingerprint[:12]}…, this encoder is {actual[:12]}…; "
            "build it with build_head(meta['fingerprint'], ...)"
        )
    if head is not None and head.latent_dim != encoder.cfg.latent_dim:
        raise ExportError(f"the head reads latent dim {head.latent_dim}, the encoder gives {encoder.cfg.latent_dim}")
    encoder = copy.deepcopy(encoder).cpu().eval()  # export a CPU copy in eval mode; the caller's module is untouched
    attention = "split_qkv" if config.fuse_transformer else "packed"  # the form ORT's Attention fusion matches
    edge = EdgeModel(encoder, head if mode == "fused" else None, mode, attention).eval()
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="jepa-edge-export-") as tmp:
        traced = Path(tmp) / "edge.onnx"
        head_arrays = _parity_head(edge.latent_dim, head, config.seed)
        example = _example_inputs(edge, config.batches()[0], config.seed, head_arrays)
        _torch_export(edge, example, traced, config)
        model = onnx.load(str(traced))
    metadata = build_metadata(encoder, agent, mode, head, provenance)
    metadata["exporter"].update(name=config.exporter, opset=config.opset)
    _set_metadata(model, metadata)
    parity: dict[str, float] = {}
    if config.check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ParityError(f"the exported model is not valid ONNX ({exc}); nothing was written, "
                              "try another opset or exporter") from exc
        parity = check_parity(model.SerializeToString(), edge, head, config, reference=encoder)
        metadata["exporter"]["parity_max_abs_error"] = parity
        _set_metadata(model, metadata)
    model, metadata["graph"] = _model_passes(model, metadata, config)
    metadata["precision"] = config.precision
    tolerance = {"z_atol": config.z_atol, "head_rtol": config.head_rtol}
    if config.precision == "fp16":
        model, metadata["fp16"] = _to_fp16(model)
        tolerance = {"fp16_z_rtol": config.fp16_z_rtol, "head_rtol": config.head_rtol}
        if config.check:
            parity = check_parity(model.SerializeToString(), edge, head, config, reference=encoder,
                                  z_rtol=config.fp16_z_rtol)
            metadata["fp16"]["parity_max_abs_error"] = parity
    _set_metadata(model, metadata)
    data = model.SerializeToString()
    out_path = Path(out_path)
    atomic_write_bytes(out_path, data)
    return ExportResult(out_path, mode, metadata, parity, tolerance, hashlib.sha256(data).hexdigest())


def _to_fp16(model: Any) -> tuple[Any, dict[str, Any]]:
    """The ONNX Runtime fp16 rewrite of ``model`` → (model, ``metadata["fp16"]``: what was converted and kept)."""
    from jepa_edge.export.fp16 import ORT_KEEP_FP32_OPS, Fp16Error, convert_to_fp16

    try:
        half, report = convert_to_fp16(model, keep_ops=ORT_KEEP_FP32_OPS)
    except Fp16Error as exc:
        raise ExportError(f"cannot write an fp16 model: {exc}; export with --precision fp32") from exc
    return half, {"keep_fp32_ops": list(ORT_KEEP_FP32_OPS), "converted_nodes": report.converted_nodes,
                  "kept_fp32_nodes": len(report.kept_fp32_nodes), "casts_inserted": report.casts_inserted,
                  "weights_converted": report.weights_converted, "weights_clipped": report.weights_clipped}


def _model_passes(model: Any, metadata: dict[str, Any], config: OnnxExportConfig) -> tuple[Any, dict[str, Any]]:
    """onnxslim / transformer fusion (each kept only at parity with the exported model) → (model, metadata["graph"])."""
    import onnx

    slim_on = config.slim_enabled()
    base: dict[str, Any] = {"batch": config.batch or None,
                             "attention": "split_qkv" if config.fuse_transformer else "packed"}
    if not slim_on and not config.fuse_transformer:
        return model, {**base, "passes": [], "node_counts": {"original": node_counts(model)}, "contrib_ops": False,
                       "parity_atol": config.optimize_atol}
    model, report = optimize_model(model, metadata, OptimizeConfig(
        slim=slim_on, fuse_transformer=config.fuse_transformer, atol=config.optimize_atol,
        parity_batches=config.batches()[1], seed=config.seed))
    try:  # contrib ops have no ONNX schema: check the structure only
        onnx.checker.check_model(model, full_check=not report["contrib_ops"])
    except onnx.checker.ValidationError as exc:
        raise ParityError(f"the optimised model is not valid ONNX ({exc}); nothing was written, "
                          "export with --no-optimize and report it") from exc
    return model, {**base, **report}


# ---- parity --------------------------------------------------------------------------------


def _head_bound(w: np.ndarray, dz: np.ndarray, ref: np.ndarray, rtol: float) -> np.ndarray:
    """Elementwise allowed error: |W| @ |dz| + rtol * max(1, max |ref|)."""
    return np.abs(dz) @ np.abs(w).T + rtol * max(1.0, float(np.abs(ref).max(initial=0.0)))


def check_parity(model_bytes: bytes, edge: Any, head: FusedHead | None, config: OnnxExportConfig,
                 reference: Any = None, z_rtol: float | None = None) -> dict[str, float]:
    """Run the ONNX model (ONNX Runtime, CPU) and PyTorch on the same frames; raise ParityError on disagreement.

    ``reference``: the encoder PyTorch's ``z`` comes from (default ``edge.encoder``; the export passes the
    model as trained, so an export form such as split q/k/v is checked against the real model).
    ``z_rtol``: an fp16 model's bound on z, ``z_rtol * max(1, max |z_torch|)``, instead of ``config.z_atol``.
    """
    reference = edge.encoder if reference is None else reference
    import torch

    from jepa_edge.export.ort_providers import ort_session

    sess = ort_session(model_bytes, provider="cpu")
    head_arrays = _parity_head(edge.latent_dim, head, config.seed)
    worst: dict[str, float] = {}
    for i, batch in enumerate(config.batches()[1]):
        example = _example_inputs(edge, batch, config.seed + 1 + i, head_arrays)
        feeds = dict(zip(edge.input_names, (t.numpy() for t in example)))
        got = dict(zip(edge.output_names, sess.run(edge.output_names, feeds)))
        with torch.no_grad():
            z_ref = reference(example[0].to(torch.float32).permute(0, 3, 1, 2)).double().numpy()  # (B, D)
        dz = got["z"].astype(np.float64) - z_ref
        errors = {"z": float(np.abs(dz).max())}
        if z_rtol is not None and errors["z"] > z_rtol * max(1.0, float(np.abs(z_ref).max())):
            raise ParityError(
                f"the fp16 model and PyTorch disagree on z at batch {batch}: max abs error {errors['z']:.3g} > "
                f"{z_rtol:g} x max(1, max |z|) = {z_rtol * max(1.0, float(np.abs(z_ref).max())):.3g}; the encoder "
                "does not hold in fp16, export with --precision fp32"
            )
        if z_rtol is None and errors["z"] > config.z_atol:
            raise ParityError(
                f"ONNX Runtime and PyTorch disagree on z at batch {batch}: max abs error {errors['z']:.3g} > "
                f"z_atol {config.z_atol:g}; the exported model is wrong (try exporter='dynamo' or another opset)"
            )
        if edge.mode == "fused":
            w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
            slices = {o.name: (o.start, o.stop) for o in head.outputs}
        elif edge.mode == "head_inputs":
            w, b = (a.astype(np.float64) for a in head_arrays)
            slices = {"head": (0, w.shape[0])}
        else:
            slices = {}
        for name, (start, stop) in slices.items():
            ref = z_ref @ w[start:stop].T + b[start:stop]  # (B, width): PyTorch z, numpy head
            if got[name].shape != ref.shape:
                raise ParityError(f"ONNX Runtime output {name!r} has shape {got[name].shape}, the numpy head gives "
                                  f"{ref.shape} at batch {batch}; the head slices are wrong, re-export")
            err = np.abs(got[name].astype(np.float64) - ref)
            bound = _head_bound(w[start:stop], dz, ref, config.head_rtol)
            if np.any(err > bound):
                raise ParityError(
                    f"ONNX Runtime output {name!r} disagrees with the numpy head on PyTorch's z at batch {batch}: "
                    f"max abs error {err.max():.3g}, allowed {bound.min():.3g}..{bound.max():.3g}; "
                    "the fused head is wrong, re-export"
                )
            errors[name] = float(err.max())
        for name, e in errors.items():
            worst[name] = max(worst.get(name, 0.0), e)
    return worst


# ---- high level: run directory + postcard + probes → ONNX ---------------------------------


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_agent(
    run_dir: str | Path,
    out_path: str | Path,
    postcard_path: str | Path | None = None,
    probe_paths: Sequence[str | Path] = (),
    mode: str = "fused",
    config: OnnxExportConfig | None = None,
    fused_attn: bool = True,
) -> ExportResult:
    """Load an agent run directory, fuse its postcard/probes into a head, export and verify.

    The postcard must map *from* this agent (its source fingerprint is checked);
    each probe must belong to this agent or to the postcard's target agent.
    ``mode="fused"`` needs a postcard and/or probes; ``"encoder_only"`` takes neither;
    ``"head_inputs"`` uses them, if given, only for the parity check.
    ``fused_attn``: trace the encoder with ``scaled_dot_product_attention``
    (True) or the manual reference attention (False); both export the same maths.
    Raises ``CheckpointError`` (run directory), ``PostcardError``/``ProbeError``
    (files, fingerprints), ``HeadError`` (dims), ``ExportError``, ``ParityError``.
    """
    from jepa_edge.calib.head import build_head
    from jepa_edge.calib.postcard import load_postcard
    from jepa_edge.calib.probes import load_probe
    from jepa_edge.train.checkpoint import load_agent

    check_onnx_out(out_path)
    if mode not in MODES:
        raise ExportError(unknown_mode(mode))
    has_head = postcard_path is not None or bool(probe_paths)
    if mode == "fused" and not has_head:
        raise ExportError("--mode fused needs a postcard and/or probes to fuse; pass --postcard/--probe, or use --mode encoder-only "
                          "(frames → z) or --mode head-inputs (head fed at run time)")
    if mode == "encoder_only" and has_head:
        raise ExportError("--mode encoder-only exports the encoder alone; drop --postcard/--probe or use --mode fused")
    encoder, meta = load_agent(run_dir, fused_attn=fused_attn)
    fingerprint, latent_dim = str(meta["fingerprint"]), int(encoder.cfg.latent_dim)
    postcard = None
    provenance: dict[str, Any] = {"postcard": None, "probes": []}
    if postcard_path is not None:
        postcard = load_postcard(postcard_path, expect_source_fingerprint=fingerprint)
        provenance["postcard"] = {
            "name": postcard.name, "file": Path(postcard_path).name, "sha256": _file_sha256(Path(postcard_path)),
            "source": postcard.source.to_dict(), "target": postcard.target.to_dict(), "estimator": postcard.estimator,
            "n_anchors": int(postcard.n_anchors),
        }
    probes = []
    for p in probe_paths:
        probe = load_probe(p)
        probes.append(probe)
        provenance["probes"].append({"name": probe.name, "task": probe.task, "file": Path(p).name,
                                     "sha256": _file_sha256(Path(p)), "agent": probe.agent.to_dict()})
    head = build_head(fingerprint, latent_dim, postcard, probes) if has_head else None
    return export_onnx(encoder, meta, out_path, head=head, mode=mode, config=config, provenance=provenance)
