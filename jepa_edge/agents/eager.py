"""PyTorch eager as a benchmark backend: uint8 NHWC frames → z (+ numpy head)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa_edge.train.checkpoint import load_agent


def eager_backend(run: str | Path, head: Any | None = None, threads: int = 0) -> Callable[[np.ndarray], dict]:
    """The unfused reference path the exported graph replaces: torch encoder, then the head in numpy."""
    encoder, _ = load_agent(run)
    if threads > 0:
        torch.set_num_threads(threads)

    @torch.inference_mode()
    def infer(frames: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        z = encoder(x).numpy()  # (B, D)
        out = {"z": z}
        if head is not None:
            out.update(head.split(head.apply(z)))
        return out

    return infer
