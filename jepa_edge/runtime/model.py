"""What every backend exposes: ``meta``, ``infer(frames) -> dict``, ``set_head(FusedHead)``.

Backends differ only in how they run the graph (``_run``) and what they free
(``_release``); frame checks, head bookkeeping, output naming and the closed
state live here so ONNX Runtime and TensorRT behave identically.

``close()`` may come from another thread than ``infer()`` (a pipeline thread
still running): it marks the model closed, waits for the ``infer`` /
``set_head`` calls in flight to return, then releases. A call that starts
after ``close()`` raises ``ModelClosedError``, never a half-released session.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jepa_edge.runtime.errors import HeadModeError, RuntimeModelError
from jepa_edge.runtime.meta import ModelMeta

if TYPE_CHECKING:
    from typing_extensions import Self

    from jepa_edge.calib.head import FusedHead


class ModelClosedError(RuntimeModelError):
    """``infer`` or ``set_head`` on a model after its ``close()``."""


@dataclass(frozen=True)
class HeadState:
    """One immutable head as the graph consumes it; swapped by a single reference assignment."""

    head: FusedHead | None  # None: a head_inputs model with no head yet (only `z` is returned)
    weight: np.ndarray  # (K, D) float32, C-contiguous
    bias: np.ndarray  # (K,) float32


def placeholder_head_state(latent_dim: int) -> HeadState:
    """One zero row: head_inputs graphs need *some* head; its output is discarded."""
    return HeadState(None, np.zeros((1, latent_dim), np.float32), np.zeros((1,), np.float32))


def check_frames(frames: np.ndarray, meta: ModelMeta, source: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise ValueError(
            f"{source}: infer() takes uint8 BGR frames shaped (B, H, W, 3), got {got}; "
            "use frames[None] for one frame and jepa_edge.runtime.preprocess() to convert"
        )
    if frames.shape[1:3] != (meta.height, meta.width):
        raise ValueError(
            f"{source}: frames are {frames.shape[2]}x{frames.shape[1]} but the model takes "
            f"{meta.width}x{meta.height}; resize with jepa_edge.runtime.preprocess(frames, size)"
        )
    return np.ascontiguousarray(frames)


class Model(ABC):
    """A loaded encoder (+ head) ready for ``infer``; use as a context manager to free resources."""

    backend: str
    path: Path
    meta: ModelMeta

    def __init__(self, path: Path, backend: str, meta: ModelMeta) -> None:
        self.path, self.backend, self.meta = path, backend, meta
        # Per-stage times of the last infer() in milliseconds, filled by backends that can measure them:
        # "h2d", "compute" (GPU time between CUDA events, or the host call on CPU), "d2h", "enqueue" (host time
        # to submit the GPU work). Absent keys were not measured. The bench reads it after each infer().
        self.last_stages: dict[str, float] = {}
        self._head_state: HeadState | None = (
            placeholder_head_state(meta.latent_dim) if meta.mode == "head_inputs" else None
        )
        self._calls = threading.Condition()  # guards _closed and _in_flight
        self._in_flight = 0  # infer / set_head calls running now; close() waits for 0
        self._closed = False

    # ---- lifetime -----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def _open_call(self) -> Iterator[None]:
        """One infer / set_head: refused once closed, counted so close() waits for it."""
        with self._calls:
            if self._closed:
                raise ModelClosedError(
                    f"model {self.path} is closed; load it again with "
                    f"load_model({str(self.path)!r}, backend={self.backend!r})"
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._calls:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._calls.notify_all()

    def close(self) -> None:
        """Release sessions / device memory, after the calls in flight return (idempotent, thread-safe)."""
        with self._calls:
            if self._closed:
                return
            self._closed = True  # from here on infer / set_head raise ModelClosedError
            self._calls.wait_for(lambda: self._in_flight == 0)
        self._release()

    def _release(self) -> None:
        """Backends free their sessions / device memory here: called once, with no call in flight."""

    # ---- head -------------------------------------------------------------------
    @property
    def head(self) -> FusedHead | None:
        state = self._head_state
        return None if state is None else state.head

    def set_head(self, head: FusedHead) -> None:
        """Swap the head of a ``head_inputs`` model (takes effect at the next ``infer``)."""
        with self._open_call():
            self._set_head(head)

    def _set_head(self, head: FusedHead) -> None:
        if self.meta.mode != "head_inputs":
            raise HeadModeError(
                f"{self.path}: this model was exported in {self.meta.mode!r} mode, its head cannot be swapped; "
                "re-export with `jepa-edge export --mode head-inputs`, or run the head in numpy: pass --head-mode numpy"
            )
        if head.latent_dim != self.meta.latent_dim or head.weight.shape[1:] != (self.meta.latent_dim,):
            raise RuntimeModelError(
                f"{self.path}: head takes latent dim {head.weight.shape[1]} but the encoder gives "
                f"{self.meta.latent_dim}; build the head for this agent"
            )
        if head.encoder_fingerprint != self.meta.agent_fingerprint:
            raise RuntimeModelError(
                f"{self.path}: head was built for encoder {head.encoder_fingerprint[:12]}…, this model's encoder "
                f"is {self.meta.agent_fingerprint[:12]}…; build it with build_head(model.meta.agent_fingerprint, ...)"
            )
        if head.width == 0:
            state = placeholder_head_state(self.meta.latent_dim)
            state = HeadState(head, state.weight, state.bias)
        else:
            state = HeadState(
                head,
                np.ascontiguousarray(head.weight, np.float32),
                np.ascontiguousarray(head.bias, np.float32),
            )
        self._prepare_head(state)
        self._head_state = state  # the atomic swap: infer() reads this reference once per call

    def _prepare_head(self, state: HeadState) -> None:
        """Backends that keep head weights on the device upload them here (before the swap)."""

    # ---- inference ----------------------------------------------------------------
    def infer(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, H, W, 3) BGR → {"z": (B, D), head output name: (B, width), ...}."""
        frames = check_frames(frames, self.meta, str(self.path))
        state = self._head_state  # one read: a concurrent set_head never mixes two heads in one call
        with self._open_call():
            out = self._run(frames, state)
        if self.meta.mode == "head_inputs":
            values = out.pop("head")
            if state is not None and state.head is not None:
                out.update(state.head.split(values))
        return out

    @abstractmethod
    def _run(self, frames: np.ndarray, state: HeadState | None) -> dict[str, np.ndarray]:
        """Run the graph; a head_inputs model returns its raw "head" output (split by infer)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, backend={self.backend!r}, mode={self.meta.mode!r})"
