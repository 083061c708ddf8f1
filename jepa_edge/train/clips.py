"""Training clips gathered on the training device.

The pre-rendered episodes are copied once to the device as one uint8 tensor
(E, T, 3, S, S); every step draws clip indices there from a seeded
``torch.Generator`` on that device and gathers the frames there, so a step
moves no frames over PCIe. The indices are a pure function of
``(seed, step, rank)``, like the learning-rate schedule: ``--resume`` sets the
step and draws exactly the clips the interrupted run would have drawn.

On the CPU the draws are exactly those of the former host-side sampler (same
generator, same seed formula), so CPU training sees the same clips as before.
"""

from __future__ import annotations

import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """The generator seed of one step of one process."""
    return seed * 1_000_003 + step * 7919 + rank


class DeviceClips:
    """``sample(step)`` → (B, clip_len, 3, S, S) float32 in [0, 255] on ``device``."""

    def __init__(self, frames: np.ndarray, batch: int, clip_len: int, seed: int, rank: int,
                 device: torch.device | str):
        """``frames``: (E, T, S, S, 3) uint8 BGR (``ViewData.frames``), moved to ``device`` once."""
        T = frames.shape[1]
        if T < clip_len:
            raise ValueError(f"episodes hold {T} frames, fewer than one clip ({clip_len}); use longer episodes")
        self.device = torch.device(device)
        # copy the uint8 frames once, then lay them out channel-first on the device
        self.frames = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        self.frames = self.frames.permute(0, 1, 4, 2, 3).contiguous()  # (E, T, 3, S, S) uint8
        self.batch, self.clip_len, self.seed, self.rank = batch, clip_len, seed, rank
        self.offsets = torch.arange(clip_len, device=self.device)  # (L,)
        self.generator = torch.Generator(device=self.device)

    def indices(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(episode (B,), first frame (B,)) of every clip of ``step``, drawn on the device."""
        g = self.generator.manual_seed(step_seed(self.seed, step, self.rank))  # host-side seed: no sync
        E, T = self.frames.shape[:2]
        e = torch.randint(0, E, (self.batch,), generator=g, device=self.device)  # (B,)
        t = torch.randint(0, T - self.clip_len + 1, (self.batch,), generator=g, device=self.device)  # (B,)
        return e, t

    def sample(self, step: int) -> torch.Tensor:
        e, t = self.indices(step)
        idx = t[:, None] + self.offsets[None]  # (B, L)
        return self.frames[e[:, None], idx].float()  # (B, L, 3, S, S)
