"""Capture: a thread with a one-slot, latest-frame buffer, or inline reads.

Policy ``latest`` (live sources, and files paced with ``realtime=True``):
the thread keeps reading and overwrites the slot, so the consumer always gets
the newest frame and never a queue of stale ones; overwritten frames are
counted as ``dropped``. Policy ``inline`` (files, folders and the simulator
read as fast as possible — the default there): no thread; ``get()`` reads the
next frame in the caller, so a frame is never decoded ahead of time and waits
for nobody (lowest latency, every frame processed). Policy ``all``: a thread
reads one frame ahead and waits until the slot is consumed — every frame,
decode overlapped with inference (highest throughput), but each frame sits in
the slot while the previous one is processed, which adds that time to its
end-to-end latency.

A live source whose read fails is reopened with capped exponential backoff;
after ``max_retries`` failed reopens the consumer gets ``SourceLostError``.
An undecodable frame is skipped and counted in ``corrupt``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from jepa_edge.runtime.errors import CorruptFrame, SourceDisconnected, SourceLostError, SourceOpenError
from jepa_edge.runtime.sources import Frame, Source

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
POLICIES = ("auto", "latest", "inline", "all")


@dataclass
class CaptureConfig:
    policy: str = "auto"  # "latest" | "inline" | "all" | "auto" (latest for live sources or realtime, else inline)
    realtime: bool = False  # pace files / folders / sim at their fps instead of as fast as possible
    reconnect_initial_s: float = 0.5  # first wait before reopening a dropped live source
    reconnect_factor: float = 2.0  # each failed reopen multiplies the wait …
    reconnect_max_s: float = 8.0  # … up to this cap
    max_retries: int = 10  # consecutive failed reopens before SourceLostError; 0 = never reopen
    max_corrupt_in_row: int = 100  # consecutive undecodable frames before giving up on the source
    join_timeout_s: float = 2.0  # close() waits this long for a blocked read, closes the source, waits again

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"CaptureConfig.policy={self.policy!r}; choose one of {POLICIES}")
        if self.reconnect_initial_s < 0 or self.reconnect_factor < 1 or self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("CaptureConfig: need reconnect_initial_s >= 0, reconnect_factor >= 1 and "
                             "reconnect_max_s >= reconnect_initial_s")
        if self.max_retries < 0 or self.max_corrupt_in_row < 1:
            raise ValueError("CaptureConfig: max_retries must be >= 0 and max_corrupt_in_row >= 1")


@dataclass
class CaptureStats:
    read: int = 0  # frames read from the source
    delivered: int = 0  # frames handed to the consumer
    dropped: int = 0  # frames overwritten before the consumer took them
    corrupt: int = 0  # undecodable frames skipped
    reconnects: int = 0  # successful reopens of a dropped source
    backoff_s: list[float] = field(default_factory=list)  # every wait before a reopen attempt
    eof: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backoff_s"] = [round(b, 4) for b in self.backoff_s[-20:]]  # the recent ones; the count is `reconnects`
        return d


class Capture:
    """``with Capture(source) as cap: frame = cap.get()`` — ``None`` at the end of a finite stream."""

    def __init__(self, source: Source, config: CaptureConfig | None = None,
                 ready: threading.Event | None = None) -> None:
        self.source = source
        self.ready = ready  # set whenever the slot fills, the stream ends or fails (one event for many captures)
        self.config = config or CaptureConfig()
        self.config.validate()
        policy = self.config.policy
        if policy == "auto":
            policy = "latest" if source.live or self.config.realtime else "inline"
        if policy == "inline" and (source.live or self.config.realtime):
            what = "a live source" if source.live else "a source played in real time"
            raise ValueError(f"CaptureConfig.policy='inline' reads only when asked, so {what} would hand out "
                             "stale, buffered frames; use policy 'latest' (or 'auto')")
        self.policy = policy
        self.stats = CaptureStats()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- consumer side ----------------------------------------------------------------
    def start(self) -> Capture:
        if self._thread is None and self.policy != "inline":
            self._thread = threading.Thread(target=self._loop, name=f"capture:{self.source.name}", daemon=True)
            self._thread.start()
        return self

    def get(self, timeout: float | None = None) -> Frame | None:
        """Newest frame; ``None`` once a finite source is exhausted or after ``close()``;
        ``TimeoutError`` when no frame came within ``timeout`` s."""
        if self.policy == "inline":
            return self._get_inline()
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._slot is None and self._error is None and not self.stats.eof and not self._stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no frame from {self.source.name!r} within {timeout} s")
                self._cond.wait(left)
            if self._stop.is_set():
                return None  # closed: a frame still in the slot is not handed out
            if self._slot is not None:
                frame, self._slot = self._slot, None
                self.stats.delivered += 1
                self._cond.notify_all()  # policy "all": the reader may continue
                return frame
            if self._error is not None:
                raise self._error
            return None

    def _get_inline(self) -> Frame | None:
        """Read the next frame in the caller's thread (errors surface here directly)."""
        if self._stop.is_set() or self.stats.eof:
            return None
        frame = self._read_one()
        if frame is None:
            self.stats.eof = not self._stop.is_set()
            return None
        self.stats.delivered += 1
        return frame

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.config.join_timeout_s)
            if self._thread.is_alive():  # blocked in source.read(): closing the source is what unblocks it
                self.source.close()
                self._thread.join(self.config.join_timeout_s)
            if self._thread.is_alive():
                log.warning("capture thread for %s still blocked in read(); leaving it as a daemon", self.source.name)
        self.source.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- producer side ----------------------------------------------------------------
    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self.policy == "all":
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait()
            elif self._slot is not None:
                self.stats.dropped += 1
            self._slot = frame
            self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()

    def _reopen(self, reason: BaseException) -> None:
        cfg, delay, attempts = self.config, self.config.reconnect_initial_s, 0
        log.warning("%s: %s; reopening", self.source.name, reason)
        while not self._stop.is_set():
            if attempts >= cfg.max_retries:
                raise SourceLostError(
                    f"{self.source.name!r} lost ({reason}); {attempts} reopen attempts failed; check the "
                    "device / stream, or raise CaptureConfig.max_retries / reconnect_max_s"
                )
            self.stats.backoff_s.append(delay)
            if self._stop.wait(delay):
                return
            attempts += 1
            try:
                self.source.close()
                self.source.open()
            except SourceOpenError as exc:
                reason = exc
                delay = min(delay * cfg.reconnect_factor, cfg.reconnect_max_s)
                continue
            self.stats.reconnects += 1
            log.info("%s: reopened after %d attempt(s)", self.source.name, attempts)
            return

    def _read_one(self) -> Frame | None:
        """Read until a good frame, the end of the stream, or a stop; handles corrupt frames and reopens."""
        corrupt_in_row = 0
        while not self._stop.is_set():
            t_read = time.perf_counter()
            try:
                image = self.source.read()
            except CorruptFrame as exc:
                self.stats.corrupt += 1
                corrupt_in_row += 1
                log.warning("skipping frame: %s", exc)
                if corrupt_in_row >= self.config.max_corrupt_in_row:
                    raise SourceLostError(
                        f"{self.source.name!r}: {corrupt_in_row} undecodable frames in a row (last: {exc}); "
                        "check the source, or raise CaptureConfig.max_corrupt_in_row"
                    ) from exc
                continue
            except SourceDisconnected as exc:
                self._reopen(exc)
                continue
            if image is None:
                return None
            index = self.stats.read
            self.stats.read += 1
            fps = self.source.fps
            pts = None if self.source.live or not fps else index / fps
            t_mono = time.perf_counter()
            return Frame(image, index, time.time(), t_mono, pts, dict(self.source.last_info), (t_mono - t_read) * 1e3)
        return None

    def _loop(self) -> None:
        t0 = time.perf_counter()
        pace = self.config.realtime and not self.source.live and bool(self.source.fps)
        try:
            while not self._stop.is_set():
                frame = self._read_one()
                if frame is None:
                    break
                if pace:  # file played at its nominal rate: wait for the frame's due time
                    delay = t0 + frame.index / float(self.source.fps) - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                    frame.t_wall, frame.t_mono = time.time(), time.perf_counter()
                self._put(frame)
        except Exception as exc:  # noqa: BLE001 - not swallowed: get() re-raises it in the consumer
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        else:
            with self._cond:
                self.stats.eof = not self._stop.is_set()
                self._cond.notify_all()
        if self.ready is not None:
            self.ready.set()
