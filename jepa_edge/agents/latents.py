"""Paired anchor moments and agent latents (the torch side of calibration).

The calib package is numpy-only; this module turns agents (run directories)
into latents of the *same world moments* seen from each agent's own view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jepa_edge.artifacts import AgentRef
from jepa_edge.config import from_dict
from jepa_edge.train.evaluate import encode_frames
from jepa_edge.train.model import Encoder, EncoderConfig, saved_encoder_dict
from jepa_edge.world.sim import WorldConfig, WorldStates, simulate
from jepa_edge.world.views import render


@dataclass
class Moments:
    frames: dict[str, np.ndarray]  # view → (E, T, S, S, 3) uint8
    states: WorldStates | None  # None: a robot's recording without ground truth (calib still runs; probes cannot)

    @property
    def shape(self) -> tuple[int, int]:
        """(episodes, steps)."""
        E, T = next(iter(self.frames.values())).shape[:2]
        return int(E), int(T)

    @property
    def episode(self) -> np.ndarray:
        E, T = self.shape
        return np.repeat(np.arange(E), T)  # (E*T,)

    @property
    def positions(self) -> np.ndarray:
        return self.states.state_vector().reshape(-1, self.states.positions.shape[2] * 2)  # (E*T, 2n)

    @property
    def danger(self) -> np.ndarray:
        return self.states.danger.reshape(-1)  # (E*T,)


def world_moments(views: list[str], n_episodes: int, n_steps: int, size: int, seed: int,
                  world: WorldConfig | None = None) -> Moments:
    """One simulated world rendered from every view in ``views`` (paired by construction)."""
    states = simulate(world or WorldConfig(), n_episodes, n_steps, seed)
    return Moments({v: render(states, v, size, seed) for v in dict.fromkeys(views)}, states)


def agent_descriptor(meta: dict) -> AgentRef:
    """The agent of a run folder's ``meta.json``, as postcards and probes name it."""
    return AgentRef(meta["name"], meta["fingerprint"], int(meta["encoder"]["latent_dim"]), meta["view"])


def untrained_like(meta: dict, seed: int) -> Encoder:
    """A freshly initialised encoder of the same architecture (the untrained control)."""
    torch.manual_seed(seed)
    return Encoder(from_dict(EncoderConfig, saved_encoder_dict(meta["encoder"]))).eval()


def latents_of(encoder: Encoder, frames: np.ndarray) -> np.ndarray:
    return encode_frames(encoder, frames)  # (M, D)
