"""The deploy loop: capture → preprocess → inference → head → output, one JSON line per frame.

``run(model, source)`` reads frames through a ``Capture`` thread, swaps in
heads from a ``HeadWatcher`` between frames, writes one JSON object per frame
(frame index, timestamps, probe outputs by name, per-stage latency, dropped
count) and optionally an annotated video. It stops at the end of a finite
source, after ``max_frames``, when ``stop`` is set, or on Ctrl-C, and always
releases the capture thread and the video writer.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from jepa_edge.runtime.capture import Capture, CaptureConfig
from jepa_edge.runtime.errors import SourceError
from jepa_edge.runtime.headswap import HEAD_MODES, HeadStage, HeadWatcher
from jepa_edge.runtime.model import Model, ModelClosedError
from jepa_edge.runtime.outputs import LATENTS, named_values, softmax
from jepa_edge.runtime.sources import Source, open_source
from jepa_edge.runtime.stats import StageTimes, drift, rss_kb
from jepa_edge.video import SUFFIX_CODECS, open_video_writer

log = logging.getLogger(__name__)
FOURCC = SUFFIX_CODECS  # annotated video: the codec its file suffix names


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames of any size → uint8 (B, H, W, 3) at ``size = (H, W)`` (cv2.INTER_AREA when resizing)."""
    H, W = size
    out = np.empty((len(images), H, W, 3), np.uint8)  # (B, H, W, 3)
    for i, img in enumerate(images):
        out[i] = img if img.shape[:2] == (H, W) else cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    return out


@dataclass
class PipelineConfig:
    max_frames: int = 0  # stop after this many processed frames; 0 = until the source ends or stop
    head_mode: str = "auto"  # "model" (head in the exported model) | "numpy" (z → FusedHead.apply) | "auto"
    emit_latent: bool = False  # include `z` in the JSON lines (large: D floats per frame)
    video_out: str = ""  # annotated video path (.mp4 / .avi); "" = none
    video_fps: float = 0.0  # annotated video rate; 0 = the source's fps (30 for live sources)
    annotate_size: int = 384  # annotated frames are upscaled to this side so text stays legible
    get_timeout_s: float = 0.25  # a blocked wait for a frame re-checks the stop flag this often
    # several sources (runtime/multi.py): after a step's first new frame, wait this long for the others; 0 = batch
    # what is there now (the muxer's batched-push-timeout)
    batch_timeout_s: float = 0.0
    capture: CaptureConfig = field(default_factory=CaptureConfig)

    def validate(self) -> None:
        """Checked before the source opens, so a bad option never starts a half run."""
        if self.max_frames < 0:
            raise ValueError(f"max_frames={self.max_frames}; use 0 (until the source ends) or a positive count")
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"head mode {self.head_mode!r}; choose one of {HEAD_MODES} (--head-mode)")
        if self.video_out and Path(self.video_out).suffix.lower() not in FOURCC:
            raise ValueError(f"{self.video_out}: annotated video must be one of {sorted(FOURCC)} (by file suffix)")
        if self.video_fps < 0 or self.annotate_size < 16 or self.get_timeout_s <= 0 or self.batch_timeout_s < 0:
            raise ValueError("PipelineConfig: need video_fps >= 0, annotate_size >= 16, get_timeout_s > 0 and "
                             "batch_timeout_s >= 0")
        self.capture.validate()


@dataclass
class RunSummary:
    frames: int
    reason: str  # "end_of_stream" | "max_frames" | "stopped" | "interrupted" | "source_lost"
    fps: float
    latency_ms: dict[str, dict[str, float]]
    capture: dict[str, Any]
    heads: dict[str, Any]
    rss_start_kb: int | None
    rss_end_kb: int | None
    e2e_drift: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- output -----------------------------------------------------------------------------
class FrameSink(Protocol):
    """Something that sees every processed frame (an MCAP recorder, a live page): ``frame()`` then ``close()``.

    ``frame`` runs in the loop's thread, after the JSON line: keep it short (hand heavy work to a thread).
    ``labels``: output name → (kind, column labels) of the head that produced ``outputs``.
    """

    def frame(self, image: np.ndarray, record: dict[str, Any], outputs: dict[str, np.ndarray],
              labels: dict[str, tuple[str, list[str]]]) -> None: ...

    def close(self) -> None: ...


def _labels(stage: HeadStage) -> dict[str, tuple[str, list[str]]]:
    """Output name → (kind, column labels), from the swapped-in head or the model's metadata."""
    if stage.head is not None:
        return {o.name: (o.kind, list(o.labels)) for o in stage.head.outputs}
    return {o.name: (o.kind, list(o.labels)) for o in stage.model.meta.head_outputs}


def annotate(image: np.ndarray, outputs: dict[str, np.ndarray], labels: dict[str, tuple[str, list[str]]],
             size: int, caption: str = "") -> np.ndarray:
    """Upscaled copy of ``image`` with probe values as text; ``objK.x/objK.y`` outputs drawn as circles.

    Positions are drawn as normalised image coordinates (exact for the top view).
    """
    canvas = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST)
    lines = [caption] if caption else []
    for name, values in outputs.items():
        if name in LATENTS:
            continue
        row = np.asarray(values).reshape(-1)
        kind, cols = labels.get(name, ("", []))
        if kind == "classification" and row.size:
            k, p = int(row.argmax()), float(softmax(row)[row.argmax()])
            lines.append(f"{name}: {cols[k] if k < len(cols) else k} {p:.2f}")
        else:
            lines.append(f"{name}: " + " ".join(f"{v:.2f}" for v in row[:6]) + (" ..." if row.size > 6 else ""))  # Hershey fonts are ASCII
        named = dict(zip(cols, row.tolist()))
        for j in range(len(cols)):
            x = named.get(f"obj{j}.x", named.get(f"obj{j}_x"))  # objK.x; objK_x in older probe files
            y = named.get(f"obj{j}.y", named.get(f"obj{j}_y"))
            if x is not None and y is not None:
                centre = (round(x * size), round(y * size))
                cv2.circle(canvas, centre, max(3, size // 40), (255, 255, 255), 2, cv2.LINE_AA)
                cv2.putText(canvas, str(j), centre, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    for i, text in enumerate(lines):
        org = (6, 16 + 16 * i)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def open_writer(path: str | Path, fps: float, size: int) -> Any:
    """The annotated video's writer: ``size`` x ``size`` frames, the codec named by the file suffix."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open_video_writer(path, fps, (size, size))


def frame_record(frame: Any, outputs: dict[str, np.ndarray], times: StageTimes, stage: HeadStage,
                 capture: Capture, emit_latent: bool) -> dict[str, Any]:
    """The JSON object written for one frame."""
    values = named_values(outputs, _labels(stage), emit_latent)  # position.obj0.x, danger.<class> probabilities
    return {
        "frame": frame.index,
        "t": round(frame.t_wall, 6),
        "pts": None if frame.pts is None else round(frame.pts, 6),
        "head_version": stage.version,
        "outputs": values,
        "latency_ms": {s: round(times.last(s), 3) for s in ("wait", "read", "preprocess", "infer", "head", "e2e")},
        "dropped": capture.stats.dropped,
        "corrupt": capture.stats.corrupt,
        **({"source": frame.info} if frame.info else {}),
    }


# ---- the loop -----------------------------------------------------------------------------
def _swap_if_new(stage: HeadStage, watcher: HeadWatcher | None) -> None:
    head = watcher.take() if watcher is not None else None
    if head is None:
        return
    try:
        stage.swap(head)
    except Exception as exc:  # noqa: BLE001 - a fused graph asked to swap, a device upload that failed, …
        watcher.refuse([o.name for o in head.outputs], exc, "could not install the new head")


def run(
    model: Model,
    source: str | Source,
    config: PipelineConfig | None = None,
    *,
    head: Any | None = None,
    watcher: HeadWatcher | None = None,
    out: TextIO | None = sys.stdout,
    stop: threading.Event | None = None,
    on_frame: Callable[[dict[str, Any], dict[str, np.ndarray]], None] | None = None,
    sinks: Sequence[FrameSink] = (),
) -> RunSummary:
    """Run the deploy loop; returns a summary. ``on_frame(record, outputs)`` sees every frame.

    A source that fails for good mid-run (``SourceLostError`` after the
    reopen budget, or any other ``SourceError``) is re-raised after the
    capture is released, with the summary of the frames processed so far
    attached as ``exc.summary`` (reason ``"source_lost"``).
    """
    cfg = config or PipelineConfig()
    cfg.validate()
    stop = stop or threading.Event()
    src = open_source(source) if isinstance(source, str) else source
    stage = HeadStage(model, cfg.head_mode, head, swappable=watcher is not None)
    times, capture, writer = StageTimes(), Capture(src, cfg.capture), None
    rss_start, n, reason, t_start = rss_kb(), 0, "stopped", time.perf_counter()
    lost: SourceError | None = None
    try:
        capture.start()
        while not stop.is_set():
            if cfg.max_frames and n >= cfg.max_frames:
                reason = "max_frames"
                break
            t0 = time.perf_counter()
            try:
                frame = capture.get(timeout=cfg.get_timeout_s)
            except TimeoutError:
                continue
            if frame is None:
                reason = "end_of_stream"
                break
            times.add("wait", (time.perf_counter() - t0) * 1e3)
            times.add("read", frame.read_ms)
            _swap_if_new(stage, watcher)  # between frames: this frame runs entirely on one head
            with times.stage("preprocess"):
                batch = preprocess([frame.image], model.meta.input_size)  # (1, H, W, 3)
            with times.stage("infer"):
                raw = model.infer(batch)
            with times.stage("head"):
                outputs = stage(raw)
            times.add("e2e", (time.perf_counter() - frame.t_mono) * 1e3)  # capture → outputs ready
            with times.stage("output"):
                record = frame_record(frame, outputs, times, stage, capture, cfg.emit_latent)
                if out is not None:
                    out.write(json.dumps(record) + "\n")
                if cfg.video_out:
                    if writer is None:
                        fps = cfg.video_fps or src.fps or 30.0
                        writer = open_writer(cfg.video_out, fps, cfg.annotate_size)
                    caption = f"#{frame.index} head v{stage.version} drop {capture.stats.dropped}"
                    writer.write(annotate(frame.image, outputs, _labels(stage), cfg.annotate_size, caption))
                if on_frame is not None:
                    on_frame(record, outputs)
                if sinks:
                    labels = _labels(stage)
                    for sink in sinks:
                        sink.frame(frame.image, record, outputs, labels)
            n += 1
    except KeyboardInterrupt:
        reason = "interrupted"
    except ModelClosedError:  # the model was closed under a running loop: the loop stops, the frame is not half-run
        reason = "model_closed"
    except SourceError as exc:
        lost = exc
        reason = "source_lost"
    finally:
        capture.close()
        if writer is not None:
            writer.release()
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one sink failing to close must not hide the others
                log.warning("closing %s failed: %s", type(sink).__name__, exc)
        if out is not None:
            out.flush()
    summary = run_summary(n, reason, t_start, times, capture.stats.to_dict(), stage, watcher, rss_start)
    if lost is not None:
        lost.summary = summary  # type: ignore[attr-defined] - read by the CLI, which still prints it
        raise lost
    return summary


def run_summary(n: int, reason: str, t_start: float, times: StageTimes, capture: dict[str, Any], stage: HeadStage,
                watcher: HeadWatcher | None, rss_start: int | None, cls: type[RunSummary] = RunSummary,
                **extra: Any) -> RunSummary:
    """The summary of a loop that ran ``n`` frames (``cls``/``extra``: a subclass with its own fields)."""
    elapsed = time.perf_counter() - t_start
    return cls(
        frames=n,
        reason=reason,
        fps=n / elapsed if elapsed > 0 else 0.0,
        latency_ms={k: v.to_dict() for k, v in times.summary().items()},
        capture=capture,
        heads={"mode": stage.mode, "version": stage.version, **(watcher.stats.to_dict() if watcher else {})},
        rss_start_kb=rss_start,
        rss_end_kb=rss_kb(),
        e2e_drift=drift(times.samples("e2e")).to_dict(),
        **extra,
    )
