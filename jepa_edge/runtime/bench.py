"""Benchmark backends × head modes × batch sizes on one source; report per-stage latency, like trtexec.

Every configuration reads the same source through a ``Capture`` (so decode
cost and dropped frames are measured too), then preprocess → infer → head.
Stages are timed per batch (``read`` is the time inside the source's read,
i.e. decode; ``infer`` is the model's whole ``infer()`` call, always); per
frame: ``capture_age`` (from the frame read to the consumer taking it: time
spent waiting in a read-ahead slot) and ``e2e`` (from the frame being in hand
to outputs ready — a frame waiting for the rest of its batch counts, its
decode does not: it is the ``read`` column).

Device stages come from the backend, only where it measured them
(``model.last_stages`` after each ``infer``): ``h2d``, ``compute`` (GPU time
between CUDA events), ``d2h`` and ``enqueue`` (host time to submit the GPU
work, apart from the GPU time, as trtexec reports it). A backend that measures
nothing shows no device stage; ``infer`` is there regardless. Warm-up batches
are never timed. p50/p90/p99/max and FPS per configuration.

Each result records RSS at start/end and the latency drift (p50 of the first
10% vs the last 10% of frames) and an RSS trace (20 points), which is what a
soak run watches; the table's RSS Δ excludes the latency samples the benchmark
itself keeps (8 bytes per stage per frame, ``samples_kb``). The report records
the machine (CPU model, cores, GPU name and driver, ONNX Runtime build) and per
result the backend, batch, precision and provider options.

Head modes: ``fused`` runs the head inside the graph (baked into a fused
model, or set with ``set_head`` on a head_inputs one); ``unfused`` runs an
encoder-only graph (ONNX cut at ``z``) and the head in numpy. PyTorch eager
(or anything else) is measured through ``extra_backends``: name →
callable(uint8 (B, H, W, 3)) → dict; the runtime itself never imports torch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.runtime.backend_ort import ORT_BACKENDS, OrtConfig
from jepa_edge.runtime.backends import available_backends, load_model
from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError
from jepa_edge.runtime.headswap import HeadStage
from jepa_edge.runtime.meta import BENCH_HEAD_MODES, ModelMeta
from jepa_edge.runtime.pipeline import preprocess
from jepa_edge.runtime.sources import open_source
from jepa_edge.runtime.stats import StageTimes, drift, machine_info, rss_kb

log = logging.getLogger(__name__)
HEAD_MODES = tuple(BENCH_HEAD_MODES)  # "fused", "unfused" (runtime.meta)
DEVICE_STAGES = ("enqueue", "h2d", "compute", "d2h")  # keys of Model.last_stages the bench reports
PER_FRAME = ("capture_age", "e2e")  # stages sampled per frame; the others per batch
Infer = Callable[[np.ndarray], dict]
Stages = Callable[[], dict]  # returns the model's last_stages (ms) after an infer; cleared before each


@dataclass
class BenchConfig:
    warmup: int = 10  # untimed batches per configuration (allocations, EP graph capture, caches)
    n_frames: int = 200  # timed frames per configuration
    batch_sizes: tuple[int, ...] = (1, 8)
    head_modes: tuple[str, ...] = HEAD_MODES  # "fused" and/or "unfused"
    backends: tuple[str, ...] = ()  # () = every backend available on this machine
    realtime: bool = False  # pace the source at its fps (then frames are dropped if inference is slow)
    intra_op_threads: int = 0  # ONNX Runtime intra-op threads (0 = its default)
    decode_threads: int = 0  # FFmpeg decoder threads for a video source (0 = FFmpeg's default)
    head_width: int = 8  # rows of the synthetic head when the model has none to copy
    # ort-cuda CUDA graphs per batch size (OrtConfig.cuda_graph): None = auto (fused / encoder-only graphs), True, False
    cuda_graph: bool | None = None

    def validate(self) -> None:
        bad = set(self.head_modes) - set(HEAD_MODES)
        if bad:
            raise ValueError(f"BenchConfig.head_modes has {sorted(bad)}; choose from {HEAD_MODES}")
        if self.decode_threads < 0:
            raise ValueError("BenchConfig.decode_threads must be >= 0 (0 = FFmpeg's default)")
        if self.n_frames < 1 or self.warmup < 0 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("BenchConfig: need n_frames >= 1, warmup >= 0 and batch sizes >= 1")


def synthetic_head(meta: ModelMeta, width: int = 8, seed: int = 0) -> Any:
    """A random head with the model's output layout (timing only: the values mean nothing)."""
    from jepa_edge.calib.head import FusedHead, HeadOutput

    slices = meta.head_outputs or []
    outputs = [HeadOutput(s.name, s.start, s.stop, s.kind or "regression", list(s.labels)) for s in slices]
    if not outputs:
        outputs = [HeadOutput("synthetic", 0, width, "regression")]
    K = outputs[-1].stop
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((K, meta.latent_dim)) / np.sqrt(meta.latent_dim)).astype(np.float32)
    return FusedHead(weight, np.zeros(K, np.float32), outputs, meta.agent_fingerprint, meta.latent_dim)


def _no_stages() -> dict:
    return {}


def _step(cap: Capture, times: StageTimes, infer: Infer, head_fn: Callable[[dict], dict],
          size: tuple[int, int] | None, batch: int, source: str, stages: Stages = _no_stages) -> None:
    """One batch: wait for frames → preprocess → infer (+ device stages) → head; age and e2e per frame."""
    t0 = time.perf_counter()
    frames, taken = [], []
    for _ in range(batch):
        frames.append(cap.get(timeout=30.0))
        taken.append(time.perf_counter())
    if any(f is None for f in frames):
        raise RuntimeModelError(f"source {source!r} ended during the benchmark; use a video file, folder or sim")
    times.add("wait", (time.perf_counter() - t0) * 1e3)
    times.add("read", sum(f.read_ms for f in frames))  # decode, inside "wait" for inline reads
    for f, t in zip(frames, taken):
        times.add("capture_age", (t - f.t_mono) * 1e3)  # ~0 inline; the slot wait with read-ahead
    with times.stage("preprocess"):
        x = preprocess([f.image for f in frames], size or frames[0].image.shape[:2])  # (B, H, W, 3)
    last = stages()
    if isinstance(last, dict):
        last.clear()  # a backend that measures nothing this call must not repeat the last call's numbers
    with times.stage("infer"):
        raw = infer(x)
    measured = stages()
    for key in DEVICE_STAGES:
        if key in measured:
            times.add(key, float(measured[key]))
    with times.stage("head"):
        head_fn(raw)
    done = time.perf_counter()
    for f in frames:
        times.add("e2e", (done - f.t_mono) * 1e3)


def _measure(infer: Infer, head_fn: Callable[[dict], dict], size: tuple[int, int] | None, source: str,
             batch: int, cfg: BenchConfig, stages: Stages = _no_stages) -> dict[str, Any]:
    """Time one configuration (warm-up excluded); returns stage summaries, FPS, drops, RSS and drift."""
    n_timed = -(-cfg.n_frames // batch)  # ceil: whole batches
    src = open_source(source, loop=True, decode_threads=cfg.decode_threads)
    with Capture(src, CaptureConfig(realtime=cfg.realtime)) as cap:
        for _ in range(cfg.warmup):
            _step(cap, StageTimes(), infer, head_fn, size, batch, source, stages)
        times, dropped0, rss_start, t_start = StageTimes(), cap.stats.dropped, rss_kb(), time.perf_counter()
        every, rss_trace = max(1, n_timed // 20), []  # (frames done, RSS KiB, of which latency samples KiB)
        for i in range(n_timed):
            _step(cap, times, infer, head_fn, size, batch, source, stages)
            if (i + 1) % every == 0 or i + 1 == n_timed:
                rss_trace.append([(i + 1) * batch, rss_kb(), times.nbytes // 1024])
        elapsed = time.perf_counter() - t_start
        dropped = cap.stats.dropped - dropped0
    summary = times.summary()
    e2e = times.samples("e2e")
    return {
        "stages_ms_per_batch": {k: v.to_dict() for k, v in summary.items() if k not in PER_FRAME},
        "device_stages": [k for k in DEVICE_STAGES if k in summary],  # what the backend measured
        "capture_age_ms": summary["capture_age"].to_dict(),
        "e2e_ms": summary["e2e"].to_dict(),
        "frames": n_timed * batch,
        "fps": n_timed * batch / elapsed,
        "dropped": dropped,
        "rss_start_kb": rss_start,
        "rss_end_kb": rss_kb(),
        "rss_trace": rss_trace,
        "samples_kb": times.nbytes // 1024,  # the exact latency samples kept; part of the RSS change
        "drift": drift(e2e).to_dict(),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _model_settings(model: Any) -> dict[str, Any]:
    """What the backend ran with, where it says so: precision, (ONNX Runtime) provider options, CUDA graphs."""
    return {"precision": getattr(model, "precision", "fp32"),
            "provider_options": _jsonable(getattr(model, "provider_options", None)),
            "cuda_graph": getattr(model, "cuda_graph_status", None)}


def _model_runs(path: Path, backend: str, cfg: BenchConfig, head: Any | None,
                source: str) -> list[dict[str, Any]]:
    results = []
    for mode in cfg.head_modes:
        encoder_only = mode == "unfused" and backend in ORT_BACKENDS
        graph = cfg.cuda_graph if backend == "ort-cuda" else None  # asked of ort-cuda; quietly off elsewhere
        ort_cfg = OrtConfig(intra_op_threads=cfg.intra_op_threads, cuda_graph=graph) if backend in ORT_BACKENDS else None
        base = {"model": str(path), "backend": backend, "head_mode": mode}
        try:
            model = load_model(path, backend, ort_cfg, encoder_only=encoder_only)
        except (BackendUnavailableError, RuntimeModelError, FileNotFoundError) as exc:
            results.append({**base, "status": "skipped", "reason": str(exc)})
            continue
        with model:
            h = head or synthetic_head(model.meta, cfg.head_width)
            if mode == "unfused":
                stage = HeadStage(model, "numpy", h)
            elif model.meta.mode == "head_inputs":
                stage = HeadStage(model, "graph", h)
            else:
                stage = HeadStage(model, "graph")  # the head baked into the fused graph
            graph = "encoder-only" if encoder_only else f"{model.meta.mode}"
            stages = partial(getattr, model, "last_stages")  # read after every infer (backends may rebind it)
            for batch in cfg.batch_sizes:
                try:
                    r = _measure(model.infer, stage, model.meta.input_size, source, batch, cfg, stages)
                except ValueError as exc:  # e.g. batch above a TensorRT profile's maximum
                    results.append({**base, "batch": batch, "status": "skipped", "reason": str(exc)})
                    continue
                results.append({**base, "batch": batch, "graph": graph, "head_width": h.width,
                                "input_size": list(model.meta.input_size), **_model_settings(model),
                                "status": "ok", **r})
    return results


def benchmark(
    models: str | Path | Sequence[str | Path],
    source: str,
    config: BenchConfig | None = None,
    *,
    head: Any | None = None,
    extra_backends: dict[str, Infer] | None = None,
    extra_input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Benchmark every (model, backend, head mode, batch size); returns a JSON-able report.

    ``head``: the FusedHead to time (default: a synthetic one with the model's
    layout). ``extra_backends`` are timed at ``extra_input_size`` (default: the
    first model's input size) with head mode "callable".
    """
    cfg = config or BenchConfig()
    cfg.validate()
    paths = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    results: list[dict[str, Any]] = []
    sizes: list[tuple[int, int]] = []
    for path in paths:
        backends = cfg.backends or tuple(available_backends(path))
        for backend in backends:
            runs = _model_runs(path, backend, cfg, head, source)
            results += runs
            sizes += [tuple(r["input_size"]) for r in runs if "input_size" in r]
    for name, fn in (extra_backends or {}).items():
        size = extra_input_size or (sizes[0] if sizes else None)
        for batch in cfg.batch_sizes:
            r = _measure(fn, lambda raw: raw, size, source, batch, cfg)
            results.append({"model": name, "backend": name, "head_mode": "callable", "batch": batch,
                            "graph": "callable", "status": "ok", **r})
    return {
        "machine": machine_info(),
        "source": source,
        "config": asdict(cfg),
        "results": results,
    }


def bench_table(report: dict[str, Any]) -> Any:
    """A rich Table of a ``benchmark`` report (stage times p50 per batch; age and e2e per frame).

    Device columns (enqueue, H2D, compute — GPU events or the host-timed run call —, D2H) appear only when some backend measured them.
    """
    from rich.table import Table

    ok = [r for r in report["results"] if r["status"] == "ok"]
    device = [k for k in DEVICE_STAGES if any(k in r.get("device_stages", ()) for r in ok)]
    stage_cols = [("read", "read ms"), ("preprocess", "prep ms"), ("infer", "infer ms"),
                  *((k, f"{_DEVICE_LABELS[k]} ms") for k in device), ("head", "head ms")]
    cols = ["model", "backend", "head", "batch", "age ms", *(label for _, label in stage_cols),
            "e2e mean", "p50", "p90", "p99", "max", "FPS", "dropped", "drift", "RSS Δ MB"]
    table = Table(title=f"jepa-edge runtime benchmark — {report['source']}")
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "backend", "head") else "right")
    for r in report["results"]:
        name = Path(r["model"]).name
        if r["status"] != "ok":
            table.add_row(name, r["backend"], r["head_mode"], str(r.get("batch", "")),
                          f"[dim]skipped: {r['reason'][:70]}[/dim]", *[""] * (len(cols) - 5))
            continue
        st, e = r["stages_ms_per_batch"], r["e2e_ms"]
        rss = float("nan")
        if r["rss_start_kb"] is not None:
            rss = (r["rss_end_kb"] - r["rss_start_kb"] - r.get("samples_kb", 0)) / 1024
        age = r.get("capture_age_ms", {}).get("p50_ms", float("nan"))
        backend = r["backend"] + (" +graph" if str(r.get("cuda_graph") or "").startswith("on") else "")
        table.add_row(
            name, backend, r["head_mode"], str(r["batch"]), f"{age:.3f}",
            *(f"{st[k]['p50_ms']:.3f}" if k in st else "–" for k, _ in stage_cols),
            *(f"{e[k]:.2f}" for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")),
            f"{r['fps']:.1f}", str(r["dropped"]), f"{r['drift'].get('ratio', float('nan')):.2f}", f"{rss:+.1f}",
        )
    return table


_DEVICE_LABELS = {"enqueue": "enqueue", "h2d": "H2D", "compute": "compute", "d2h": "D2H"}
