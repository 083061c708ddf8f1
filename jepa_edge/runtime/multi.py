"""Many cameras, one batch: the newest frame of every source in one inference, outputs routed per stream.

What DeepStream's stream muxer (nvstreammux) does on a Jetson, in the form that keeps the batch static
(one shape, so one CUDA graph on ``ort-cuda``): the batch has one row per source, always. A step starts as
soon as one source has a new frame and waits at most ``batch_timeout_s`` for the others (the muxer's
batched-push-timeout; 0 = batch what is there now, while inference runs the others' frames arrive). A source
with no new frame by then is **padded**: its row keeps its last frame (zeros before its first) and its output
is not written, so a stream never gets two outputs for one frame and every output is of a new frame. Sources
read inline (files and the simulator as fast as possible) always have their next frame: every step is full
and every frame of every stream is processed. A stream that ends stays padded until all have ended.

Each source has its own ``Capture`` (latest-frame thread for cameras and paced files), so drops are counted
per stream. ``run_multi`` writes one JSON line per stream per step — the single-source line with ``stream``
(the source's position) and ``source_name`` in front — and returns a ``MultiRunSummary`` whose ``streams``
hold per-stream frames, drops, padded steps and capture-to-output latency (``e2e``: from the frame read to
its outputs ready). ``--frames N`` stops after N outputs per camera on average (N x cameras in all): exactly N
each when every step is full.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import SourceError
from jepa_edge.runtime.headswap import HeadStage, HeadWatcher
from jepa_edge.runtime.model import Model, ModelClosedError
from jepa_edge.runtime.pipeline import (
    PipelineConfig,
    RunSummary,
    _swap_if_new,
    frame_record,
    preprocess,
    run_summary,
)
from jepa_edge.runtime.sources import Frame, Source, open_source
from jepa_edge.runtime.stats import StageTimes, rss_kb

if TYPE_CHECKING:
    from typing_extensions import Self

ONE_SOURCE_ONLY = ("--video-out, --record and --serve take one --source; run one `jepa-edge run` per camera "
                   "to annotate, record or serve it")
STAGES = ("wait", "read", "preprocess", "infer", "head")  # per batch; e2e is per frame


class MultiCapture:
    """One ``Capture`` per source; ``next()`` returns one new frame or None (padded) per source."""

    def __init__(self, sources: Sequence[Source], config: CaptureConfig | None = None,
                 batch_timeout_s: float = 0.0) -> None:
        if not sources:
            raise ValueError("no source: pass at least one --source")
        self.ready = threading.Event()  # set by any capture whose slot fills, or whose stream ends or fails
        self.captures = [Capture(s, config, ready=self.ready) for s in sources]
        self.batch_timeout_s = batch_timeout_s
        self.ended = [False] * len(sources)

    def start(self) -> Self:
        for cap in self.captures:
            cap.start()
        return self

    def close(self) -> None:
        for cap in self.captures:
            cap.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, frames: list[Frame | None]) -> None:
        """Fill ``frames`` with what each source has now (an inline source reads its next frame here)."""
        for i, cap in enumerate(self.captures):
            if frames[i] is None and not self.ended[i]:
                try:
                    frame = cap.get(timeout=0)
                except TimeoutError:  # no new frame yet
                    continue
                if frame is None:
                    self.ended[i] = True
                frames[i] = frame

    def next(self, timeout: float) -> list[Frame | None] | None:
        """New frames by source (None: none new, pad it); None once every source has ended.

        ``TimeoutError`` when no source had a new frame within ``timeout`` s (the caller re-checks its stop flag).
        A source that failed for good raises its error here.
        """
        frames: list[Frame | None] = [None] * len(self.captures)
        deadline = time.perf_counter() + timeout
        first = False
        while True:
            self.ready.clear()  # before looking: a frame that lands after the look sets it again
            self._take(frames)
            if all(self.ended):
                return None
            if all(f is not None or e for f, e in zip(frames, self.ended)):
                return frames
            if not first and any(f is not None for f in frames):
                first, deadline = True, time.perf_counter() + self.batch_timeout_s
            left = deadline - time.perf_counter()
            if left <= 0 or not self.ready.wait(left):
                if first:
                    return frames
                raise TimeoutError(f"no new frame from any of {len(frames)} sources within {timeout} s")


class StreamBatch:
    """The static batch: row i is stream i's newest frame, preprocessed; a padded row keeps its last frame."""

    def __init__(self, n: int, size: tuple[int, int] | None) -> None:
        self.n, self.size = n, size  # size None: the first frame's (an extra bench backend without a model)
        self.x: np.ndarray | None = None  # (N, H, W, 3) uint8

    def fill(self, frames: Sequence[Frame | None]) -> np.ndarray:
        new = [(i, f.image) for i, f in enumerate(frames) if f is not None]
        if self.x is None:
            H, W = self.size or new[0][1].shape[:2]
            self.x = np.zeros((self.n, H, W, 3), np.uint8)
        self.x[[i for i, _ in new]] = preprocess([img for _, img in new], self.x.shape[1:3])  # (k, H, W, 3)
        return self.x


def stream_stats(i: int, cap: Capture, times: StageTimes, padded: int, dropped0: int = 0) -> dict[str, Any]:
    """One stream's line of a summary or bench report: frames, drops, padded steps, capture-to-output ms."""
    e2e = times.summary().get("e2e")
    return {"stream": i, "source": cap.source.name, "frames": e2e.n if e2e else 0,
            "dropped": cap.stats.dropped - dropped0, "corrupt": cap.stats.corrupt, "padded": padded,
            "e2e_ms": e2e.to_dict() if e2e else {}}


def route(outputs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Stream ``i``'s row of every (N, K) output, as a (1, K) batch of its own."""
    return {name: value[i : i + 1] for name, value in outputs.items()}


@dataclass
class MultiRunSummary(RunSummary):
    steps: int = 0  # batches run (one row per source each)
    streams: list[dict[str, Any]] = field(default_factory=list)  # per stream: stream_stats


def run_multi(
    model: Model,
    sources: Sequence[str | Source],
    config: PipelineConfig | None = None,
    *,
    head: Any | None = None,
    watcher: HeadWatcher | None = None,
    out: TextIO | None = sys.stdout,
    stop: threading.Event | None = None,
    on_frame: Callable[[dict[str, Any], dict[str, np.ndarray]], None] | None = None,
) -> MultiRunSummary:
    """``pipeline.run`` for several sources in one batch (module docstring); same stop reasons and errors."""
    cfg = config or PipelineConfig()
    cfg.validate()
    if cfg.video_out:
        raise ValueError(ONE_SOURCE_ONLY)
    stop = stop or threading.Event()
    srcs = [open_source(s) if isinstance(s, str) else s for s in sources]
    stage = HeadStage(model, cfg.head_mode, head, swappable=watcher is not None)
    cams, batch = MultiCapture(srcs, cfg.capture, cfg.batch_timeout_s), StreamBatch(len(srcs), model.meta.input_size)
    times, per, padded = StageTimes(), [StageTimes() for _ in srcs], [0] * len(srcs)
    rss_start, steps, n_out, reason, t_start = rss_kb(), 0, 0, "stopped", time.perf_counter()
    lost: SourceError | None = None
    try:
        cams.start()
        while not stop.is_set():
            if cfg.max_frames and n_out >= cfg.max_frames * len(srcs):
                reason = "max_frames"
                break
            t0 = time.perf_counter()
            try:
                frames = cams.next(cfg.get_timeout_s)
            except TimeoutError:
                continue
            if frames is None:
                reason = "end_of_stream"
                break
            times.add("wait", (time.perf_counter() - t0) * 1e3)
            times.add("read", sum(f.read_ms for f in frames if f is not None))
            _swap_if_new(stage, watcher)  # between steps: every stream of a step runs on one head
            with times.stage("preprocess"):
                x = batch.fill(frames)  # (N, H, W, 3)
            with times.stage("infer"):
                raw = model.infer(x)
            with times.stage("head"):
                outputs = stage(raw)
            done = time.perf_counter()
            with times.stage("output"):
                for i, frame in enumerate(frames):
                    if frame is None:
                        padded[i] += not cams.ended[i]
                        continue
                    t = per[i]
                    for name in STAGES:
                        t.add(name, frame.read_ms if name == "read" else times.last(name))
                    t.add("e2e", (done - frame.t_mono) * 1e3)  # capture → outputs ready
                    times.add("e2e", t.last("e2e"))
                    row = route(outputs, i)
                    cap = cams.captures[i]
                    record = {"stream": i, "source_name": cap.source.name,
                              **frame_record(frame, row, t, stage, cap, cfg.emit_latent)}
                    if out is not None:
                        out.write(json.dumps(record) + "\n")
                    if on_frame is not None:
                        on_frame(record, row)
                    n_out += 1
            steps += 1
    except KeyboardInterrupt:
        reason = "interrupted"
    except ModelClosedError:
        reason = "model_closed"
    except SourceError as exc:
        lost, reason = exc, "source_lost"
    finally:
        cams.close()
        if out is not None:
            out.flush()
    streams = [stream_stats(i, cap, per[i], padded[i]) for i, cap in enumerate(cams.captures)]
    totals = {k: sum(getattr(c.stats, k) for c in cams.captures)
              for k in ("read", "delivered", "dropped", "corrupt", "reconnects")}
    summary = run_summary(sum(s["frames"] for s in streams), reason, t_start, times, totals, stage, watcher,
                          rss_start, MultiRunSummary, steps=steps, streams=streams)
    if lost is not None:
        lost.summary = summary  # type: ignore[attr-defined] - read by the CLI, which still prints it
        raise lost
    return summary
