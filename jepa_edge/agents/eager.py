"""PyTorch eager as a benchmark backend: uint8 NHWC frames → z (+ numpy head)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jepa_edge.train.checkpoint import load_agent

if TYPE_CHECKING:
    from typing_extensions import Self


class EagerBackend:
    """The unfused reference path the exported model replaces: torch encoder, then the head in numpy.

    Called with uint8 frames (B, H, W, 3). Used as a context manager (``benchmark`` enters it around its
    timing), it holds torch's intra-op threads at ``threads`` (0 = torch's default) and restores them after;
    inside, ``threads`` is the count torch runs with.
    """

    def __init__(self, encoder: torch.nn.Module, head: Any | None = None, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {threads}")
        self.encoder, self.head, self.requested = encoder, head, int(threads)
        self.threads = torch.get_num_threads()
        self._before: int | None = None

    def __enter__(self) -> Self:
        self._before = torch.get_num_threads()
        if self.requested > 0:
            torch.set_num_threads(self.requested)
        self.threads = torch.get_num_threads()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        z = self.encoder(x).numpy()  # (B, D)
        out = {"z": z}
        if self.head is not None:
            out.update(self.head.split(self.head.apply(z)))
        return out


def eager_backend(run: str | Path, head: Any | None = None, threads: int = 0) -> EagerBackend:
    """The agent in ``run`` as an eager benchmark backend (``threads``: torch intra-op threads while timed)."""
    encoder, _ = load_agent(run)
    return EagerBackend(encoder, head, threads)
