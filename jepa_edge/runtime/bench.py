"""Benchmark backends × head modes × batch sizes on one source; report per-stage latency, like trtexec.

Every configuration reads the same source through a ``Capture`` (so decode
cost and dropped frames are measured too), then preprocess → infer → head.
Stages are timed per batch (``read`` is the time inside the source's read,
i.e. decode; ``infer`` is the model's whole ``infer()`` call, always); per
frame: ``capture_age`` (from the frame read to the consumer taking it: time
spent waiting in a read-ahead slot) and ``e2e`` (from the frame being in hand
to outputs ready — a frame waiting for the rest of its batch counts, its
decode does not: it is the ``read`` column). ``fps`` is the e2e FPS: timed
frames over the wall time of the whole loop (wait, read, preprocess, infer, head).

Device stages come from the backend, only where it measured them
(``model.last_stages`` after each ``infer``): ``h2d``, ``compute`` (GPU time
between CUDA events), ``d2h`` and ``enqueue`` (host time to submit the GPU
work, apart from the GPU time, as trtexec reports it). A backend that measures
nothing shows no device stage; ``infer`` is there regardless. Warm-up batches
are never timed. p50/p90/p99/max and FPS per configuration.

Each result records RSS at start/end and the latency drift (p50 of the first
10% vs the last 10% of frames) and an RSS trace (20 points), which is what a
soak run watches; RSS Δ excludes the latency samples the benchmark itself
keeps (8 bytes per stage per frame, ``samples_kb``). The report records the
machine (``jepa_edge.machine``) and per result the backend, batch, threads,
precision and provider options.

Head modes (``--head-mode``): ``model`` runs the head inside the exported model
(baked into a fused model, or set with ``set_head`` on a head_inputs one);
``numpy`` runs an encoder-only model (ONNX cut at ``z``) and the head in numpy.
PyTorch eager (or anything else) is measured through ``extra_backends``: name →
callable(uint8 (B, H, W, 3)) → dict, timed with head mode "callable"; a callable
that is also a context manager is entered around its timing (e.g. to hold its
thread count) and may say its ``threads``. The runtime itself never imports torch.

Several sources (``source`` a list): each configuration runs them as one static batch per step, the
newest frame of each (runtime/multi.py; the batch is the number of sources, ``batch_sizes`` are not used),
until ``n_frames`` outputs in all; each result adds ``streams`` (per stream: frames, drops, padded steps,
capture-to-output ``e2e_ms``), and its ``fps`` is all streams' outputs per second.

``bench_table`` is the summary (fits 100 columns), ``bench_detail`` the stage
and stability tables, ``bench_streams`` the per-stream table (several sources),
``bench_notes`` one line per skipped or failed configuration.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jepa_edge.artifacts import refuse_existing, temp_path
from jepa_edge.machine import machine_info
from jepa_edge.runtime.backend_ort import ORT_BACKENDS, OrtConfig
from jepa_edge.runtime.backends import available_backends, load_model
from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import BackendUnavailableError, RuntimeModelError
from jepa_edge.runtime.headswap import HeadStage
from jepa_edge.runtime.meta import HEAD_MODES, ModelMeta
from jepa_edge.runtime.multi import MultiCapture, StreamBatch, stream_stats
from jepa_edge.runtime.pipeline import preprocess
from jepa_edge.runtime.sources import open_source
from jepa_edge.runtime.stats import StageTimes, drift, rss_kb

log = logging.getLogger(__name__)
TIMED_HEAD_MODES = tuple(m for m in HEAD_MODES if m != "auto")  # "model", "numpy": the bench times both placements
# Frames per batch the bench accepts. Before its first timed frame it decodes warmup × batch frames (20 × 1024 =
# 20,480 at the CLI's defaults: tens of seconds), and one batch of 1024 224×224 frames is already 154 MB of uint8
# input (617 MB as the model's float32), far past what an edge camera batches (TensorRT profiles default to max 8).
MAX_BATCH = 1024
DEVICE_STAGES = ("enqueue", "h2d", "compute", "d2h")  # keys of Model.last_stages the bench reports
PER_FRAME = ("capture_age", "e2e")  # stages sampled per frame; the others per batch
Infer = Callable[[np.ndarray], dict]
Stages = Callable[[], dict]  # returns the model's last_stages (ms) after an infer; cleared before each


@dataclass
class BenchConfig:
    warmup: int = 10  # untimed batches per configuration (allocations, EP graph capture, caches)
    n_frames: int = 200  # timed frames per configuration
    batch_sizes: tuple[int, ...] = (1, 8)  # each at most MAX_BATCH
    head_modes: tuple[str, ...] = TIMED_HEAD_MODES  # "model" and/or "numpy"
    backends: tuple[str, ...] = ()  # () = every backend available on this machine
    realtime: bool = False  # pace the source at its fps (then frames are dropped if inference is slow)
    # intra-op threads of every backend that has them: ONNX Runtime here; an extra backend (torch eager) is built
    # with the same number by its caller. 0 = each one's default. TensorRT has none (its work is on the GPU).
    threads: int = 0
    decode_threads: int = 0  # FFmpeg decoder threads for a video source (0 = FFmpeg's default)
    head_width: int = 8  # rows of the synthetic head when the model has none to copy
    # ort-cuda CUDA graphs per batch size (OrtConfig.cuda_graph): None = auto (fused / encoder-only graphs), True, False
    cuda_graph: bool | None = None
    tf32: bool = False  # ort-cuda: allow TF32 for fp32 MatMul/Conv (OrtConfig.precision "tf32"; Ampere and later)

    def validate(self) -> None:
        bad = sorted(set(self.head_modes) - set(TIMED_HEAD_MODES))
        if bad or not self.head_modes:
            raise ValueError(f"head mode {', '.join(map(repr, bad)) or 'missing'}: the bench times "
                             f"{' and/or '.join(TIMED_HEAD_MODES)} (--head-mode, repeat)")
        if self.decode_threads < 0 or self.threads < 0:
            raise ValueError("threads and decode threads must be >= 0 (0 = the library's default)")
        if self.n_frames < 1 or self.warmup < 0 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("the bench needs --frames >= 1, --warmup >= 0 and each --batch-size >= 1")
        if max(self.batch_sizes) > MAX_BATCH:
            raise ValueError(f"--batch-size {max(self.batch_sizes)} is over the bench's cap of {MAX_BATCH} frames "
                             "per batch (the warm-up alone decodes --warmup × batch frames first, and no edge model "
                             "batches that many); use a smaller --batch-size")


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


def _infer_and_head(times: StageTimes, infer: Callable, stages: Callable, head_fn: Callable, x: np.ndarray) -> None:
    """The timed infer (with the device stages the backend measured) and head of one batch."""
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
    _infer_and_head(times, infer, stages, head_fn, x)
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


def _measure_streams(infer: Infer, head_fn: Callable[[dict], dict], size: tuple[int, int] | None,
                     sources: Sequence[str], cfg: BenchConfig, stages: Stages = _no_stages) -> dict[str, Any]:
    """Several sources in one static batch (runtime/multi.py) until ``cfg.n_frames`` outputs in all: per stream
    frames, drops, padded steps and capture-to-output (e2e) ms; ``fps`` is all streams' outputs per second."""
    srcs = [open_source(s, loop=True, decode_threads=cfg.decode_threads) for s in sources]
    batch = StreamBatch(len(srcs), size)

    def step(times: StageTimes, per: list[StageTimes], padded: list[int]) -> int:
        t0 = time.perf_counter()
        try:
            frames = cams.next(timeout=30.0)
        except TimeoutError:
            frames = None
        if frames is None:
            raise RuntimeModelError(f"no frame from {', '.join(sources)} within 30 s; check the sources")
        taken = time.perf_counter()
        times.add("wait", (taken - t0) * 1e3)
        times.add("read", sum(f.read_ms for f in frames if f is not None))
        with times.stage("preprocess"):
            x = batch.fill(frames)  # (N, H, W, 3)
        _infer_and_head(times, infer, stages, head_fn, x)
        done = time.perf_counter()
        for i, f in enumerate(frames):
            if f is None:
                padded[i] += 1
                continue
            times.add("capture_age", (taken - f.t_mono) * 1e3)
            times.add("e2e", (done - f.t_mono) * 1e3)
            per[i].add("e2e", (done - f.t_mono) * 1e3)
        return sum(f is not None for f in frames)

    with MultiCapture(srcs, CaptureConfig(realtime=cfg.realtime)) as cams:
        warm = [StageTimes() for _ in srcs]
        for _ in range(cfg.warmup):
            step(StageTimes(), warm, [0] * len(srcs))
        times, per, padded = StageTimes(), [StageTimes() for _ in srcs], [0] * len(srcs)
        dropped0, rss_start, t_start = [c.stats.dropped for c in cams.captures], rss_kb(), time.perf_counter()
        n = 0
        while n < cfg.n_frames:
            n += step(times, per, padded)
        elapsed = time.perf_counter() - t_start
        streams = [stream_stats(i, c, per[i], padded[i], dropped0[i]) for i, c in enumerate(cams.captures)]
    summary = times.summary()
    return {
        "stages_ms_per_batch": {k: v.to_dict() for k, v in summary.items() if k not in PER_FRAME},
        "device_stages": [k for k in DEVICE_STAGES if k in summary],
        "capture_age_ms": summary["capture_age"].to_dict(),
        "e2e_ms": summary["e2e"].to_dict(),
        "frames": n,
        "fps": n / elapsed,
        "dropped": sum(s["dropped"] for s in streams),
        "streams": streams,
        "rss_start_kb": rss_start,
        "rss_end_kb": rss_kb(),
        "rss_trace": [[n, rss_kb(), times.nbytes // 1024]],
        "samples_kb": times.nbytes // 1024,
        "drift": drift(times.samples("e2e")).to_dict(),
    }


Sources = str | Sequence[str]  # one source: the batch sizes of BenchConfig; several: one batch of them all


def _batches(source: Sources, cfg: BenchConfig) -> tuple[int, ...]:
    return cfg.batch_sizes if isinstance(source, str) else (len(source),)


def _measure_on(infer: Infer, head_fn: Callable[[dict], dict], size: tuple[int, int] | None, source: Sources,
                batch: int, cfg: BenchConfig, stages: Stages = _no_stages) -> dict[str, Any]:
    if isinstance(source, str):
        return _measure(infer, head_fn, size, source, batch, cfg, stages)
    return _measure_streams(infer, head_fn, size, source, cfg, stages)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _model_settings(model: Any) -> dict[str, Any]:
    """What the backend ran with, where it says so: precision, (ONNX Runtime) provider options, CUDA graphs."""
    return {"precision": getattr(model, "precision", "fp32"),
            "provider_options": _jsonable(getattr(model, "provider_options", None)),
            "cuda_graph": getattr(model, "cuda_graph_status", None)}


def _model_runs(path: Path, backend: str, cfg: BenchConfig, head: Any | None,
                source: Sources) -> list[dict[str, Any]]:
    """Every head mode × batch size of one model on one backend; an unavailable backend is "skipped", a model that
    cannot run as asked is an "error" (both with their reason)."""
    results = []
    for mode in cfg.head_modes:
        encoder_only = mode == "numpy" and backend in ORT_BACKENDS
        cuda_graph = cfg.cuda_graph if backend == "ort-cuda" else None  # asked of ort-cuda; quietly off elsewhere
        ort_cfg = OrtConfig(intra_op_threads=cfg.threads, cuda_graph=cuda_graph,
                            precision="tf32" if cfg.tf32 else "fp32") if backend in ORT_BACKENDS else None
        base = {"model": str(path), "backend": backend, "head_mode": mode}
        try:
            model = load_model(path, backend, ort_cfg, encoder_only=encoder_only)
        except BackendUnavailableError as exc:
            results.append({**base, "status": "skipped", "reason": str(exc)})
            continue
        except (RuntimeModelError, FileNotFoundError) as exc:
            results.append({**base, "status": "error", "reason": str(exc)})
            continue
        with model:
            h = head or synthetic_head(model.meta, cfg.head_width)
            if mode == "numpy":
                stage = HeadStage(model, "numpy", h)
            elif model.meta.mode == "head_inputs":
                stage = HeadStage(model, "model", h)
            else:
                stage = HeadStage(model, "model")  # the head baked into the fused model
            kind = "encoder-only" if encoder_only else f"{model.meta.mode}"
            stages = partial(getattr, model, "last_stages")  # read after every infer (backends may rebind it)
            threads = cfg.threads if backend in ORT_BACKENDS else None  # TensorRT: no CPU threads to set
            for batch in _batches(source, cfg):
                try:
                    r = _measure_on(model.infer, stage, model.meta.input_size, source, batch, cfg, stages)
                except ValueError as exc:  # e.g. batch above a TensorRT profile's maximum
                    results.append({**base, "batch": batch, "status": "skipped", "reason": str(exc)})
                    continue
                results.append({**base, "batch": batch, "graph": kind, "head_width": h.width,
                                "input_size": list(model.meta.input_size), "threads": threads,
                                **_model_settings(model), "status": "ok", **r})
    return results


def _extra_runs(name: str, fn: Infer, size: tuple[int, int] | None, source: Sources,
                cfg: BenchConfig) -> list[dict[str, Any]]:
    """An extra backend (e.g. PyTorch eager) at every batch size; entered as a context manager when it is one."""
    results = []
    with fn if isinstance(fn, AbstractContextManager) else nullcontext():
        threads = getattr(fn, "threads", None)  # what it runs with, where it says (inside its context)
        for batch in _batches(source, cfg):
            r = _measure_on(fn, lambda raw: raw, size, source, batch, cfg)
            results.append({"model": name, "backend": name, "head_mode": "callable", "batch": batch,
                            "graph": "callable", "threads": threads, "status": "ok", **r})
    return results


def check_report_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before anything is measured, a report path that could not be written (``--out``).

    It must end in .json, sit in an existing folder this process can create files in (tried with a
    temporary file), and not exist unless ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"--out {path}: the report is JSON; name it *.json")
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; name a .json file inside it")
    refuse_existing(path, overwrite=overwrite)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"--out {path}: folder {folder} does not exist; create it first")
    probe = temp_path(path)  # the sibling the report is written through (artifacts.atomic_write_text)
    try:
        with open(probe, "x"):
            pass
    except OSError as exc:
        raise PermissionError(f"--out {path}: cannot write in {folder} ({exc.strerror}); "
                              "pick a writable folder") from None
    probe.unlink()
    return path


def benchmark(
    models: str | Path | Sequence[str | Path],
    source: str | Sequence[str],
    config: BenchConfig | None = None,
    *,
    head: Any | None = None,
    extra_backends: dict[str, Infer] | None = None,
    extra_input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Benchmark every (model, backend, head mode, batch size); returns a JSON-able report.

    ``head``: the FusedHead to time (default: a synthetic one with the model's
    layout). ``extra_backends`` are timed at ``extra_input_size`` (default: the
    first model's input size) with head mode "callable". Several sources are one batch per step
    (runtime/multi.py) instead of ``cfg.batch_sizes``; each result then lists its ``streams``.
    """
    cfg = config or BenchConfig()
    cfg.validate()
    if not isinstance(source, str):
        if not source:
            raise ValueError("no source: pass at least one --source")
        source = str(source[0]) if len(source) == 1 else [str(s) for s in source]
    paths = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    machine = machine_info()  # before the runs: the load average says how busy the machine was going in
    results: list[dict[str, Any]] = []
    sizes: list[tuple[int, int]] = []
    for path in paths:
        backends = cfg.backends or tuple(available_backends(path))
        for backend in backends:
            runs = _model_runs(path, backend, cfg, head, source)
            results += runs
            sizes += [tuple(r["input_size"]) for r in runs if "input_size" in r]
    for name, fn in (extra_backends or {}).items():
        results += _extra_runs(name, fn, extra_input_size or (sizes[0] if sizes else None), source, cfg)
    return {
        "machine": machine,
        "source": source,
        "config": asdict(cfg),
        "results": results,
    }


# ---- rendering ------------------------------------------------------------------------------
_DEVICE_LABELS = {"enqueue": "enqueue", "h2d": "H2D", "compute": "compute", "d2h": "D2H"}
CUDA_GRAPH_MARK = "*"  # after the backend: the timed runs replayed a captured CUDA graph


def _ms(value: float | None) -> str:
    """A latency in ms in at most 7 characters (3 decimals below 10 ms, 1 below 1 s, whole above)."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _ok(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["status"] == "ok"]


def _name(r: dict[str, Any]) -> str:
    return Path(r["model"]).name


def _backend(r: dict[str, Any]) -> str:
    return r["backend"] + (CUDA_GRAPH_MARK if str(r.get("cuda_graph") or "").startswith("on") else "")


def _table(title: str | None, cols: Sequence[str], caption: str | None = None) -> Any:
    """A compact table: no outer edge, numbers right-aligned, long names folded onto a second line (never cut)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True, title_justify="left", caption_justify="left")
    for col in cols:
        left = col in ("model", "backend", "head")
        table.add_column(col, justify="left" if left else "right", overflow="fold", no_wrap=not left)
    return table


def bench_table(report: dict[str, Any]) -> Any:
    """The summary of a ``benchmark`` report, one row per measured configuration (fits 100 columns).

    ``#`` numbers the rows for ``bench_detail``; times are ms, latency per frame (e2e) and per batch (infer);
    skipped and failed configurations are not rows: see ``bench_notes``.
    """
    caption = ("times in ms; e2e: frame in hand → outputs ready; infer: the model's call per batch; e2e FPS: timed "
               "frames / wall time of the whole loop" + (f"; {CUDA_GRAPH_MARK} replays a CUDA graph"
                                                         if any(_backend(r) != r["backend"] for r in _ok(report))
                                                         else ""))
    source = report["source"]
    what = source if isinstance(source, str) else f"{len(source)} sources, one batch per step (per stream: below)"
    table = _table(f"jepa-edge bench — {what}",
                   ("#", "model", "backend", "head", "batch", "e2e p50", "e2e p99", "infer p50", "e2e FPS", "drops"),
                   caption)
    for i, r in enumerate(_ok(report), 1):
        e = r["e2e_ms"]
        infer = r["stages_ms_per_batch"].get("infer", {}).get("p50_ms")
        table.add_row(str(i), _name(r), _backend(r), r["head_mode"], str(r["batch"]), _ms(e["p50_ms"]),
                      _ms(e["p99_ms"]), _ms(infer), f"{r['fps']:.1f}", str(r["dropped"]))
    return table


def bench_detail(report: dict[str, Any]) -> list[Any]:
    """Two tables keyed by the summary's ``#``: stage p50s per batch, then e2e spread, drift and memory.

    Device columns (enqueue, H2D, compute — GPU events or the host-timed run call —, D2H) appear only when
    some backend measured them.
    """
    ok = _ok(report)
    device = [k for k in DEVICE_STAGES if any(k in r.get("device_stages", ()) for r in ok)]
    stage_cols = [("wait", "wait"), ("read", "read"), ("preprocess", "prep"), ("infer", "infer"),
                  *((k, _DEVICE_LABELS[k]) for k in device), ("head", "head")]
    stages = _table("stages, p50 ms per batch (age: per frame)", ("#", "age", *(label for _, label in stage_cols)))
    spread = _table("e2e ms per frame, drift and memory",
                    ("#", "mean", "p50", "p90", "p99", "max", "threads", "drift", "RSS Δ MB"),
                    "drift: p50 of the last 10% of frames / the first 10%; RSS Δ: without the bench's own samples")
    for i, r in enumerate(ok, 1):
        st, e = r["stages_ms_per_batch"], r["e2e_ms"]
        stages.add_row(str(i), _ms(r.get("capture_age_ms", {}).get("p50_ms")),
                       *(_ms(st[k]["p50_ms"]) if k in st else "–" for k, _ in stage_cols))
        rss = None
        if r.get("rss_start_kb") is not None and r.get("rss_end_kb") is not None:
            rss = (r["rss_end_kb"] - r["rss_start_kb"] - r.get("samples_kb", 0)) / 1024
        threads = r.get("threads")
        spread.add_row(str(i), *(_ms(e[k]) for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")),
                       "–" if threads is None else str(threads or "default"),
                       f"{r['drift'].get('ratio', float('nan')):.2f}", "–" if rss is None else f"{rss:+.1f}")
    return [stages, spread]


def bench_streams(report: dict[str, Any]) -> list[Any]:
    """With several sources: one table of per-stream rows (keyed by the summary's ``#``); none otherwise."""
    rows = [(i, r) for i, r in enumerate(_ok(report), 1) if r.get("streams")]
    if not rows:
        return []
    table = _table("per stream: capture → outputs ready (ms), frames, drops", ("#", "stream", "source", "frames",
                   "drops", "padded", "e2e p50", "e2e p99"),
                   "padded: steps with no new frame from that source (its row ran on its last frame, no output)")
    for i, r in rows:
        for s in r["streams"]:
            e = s["e2e_ms"]
            table.add_row(str(i), str(s["stream"]), Path(s["source"]).name or s["source"], str(s["frames"]),
                          str(s["dropped"]), str(s["padded"]), _ms(e.get("p50_ms")), _ms(e.get("p99_ms")))
    return [table]


def bench_notes(report: dict[str, Any]) -> list[str]:
    """One line per skipped backend or failed model (identical reasons merged), for stderr, not the table."""
    merged: dict[tuple[str, str, str], list[str]] = {}
    for r in report["results"]:
        if r["status"] != "ok":
            names = merged.setdefault((r["status"], r["backend"], " ".join(r.get("reason", "?").split())), [])
            if _name(r) not in names:
                names.append(_name(r))
    return [f"{status} {backend} ({', '.join(names)}): {reason}"
            for (status, backend, reason), names in merged.items()]
