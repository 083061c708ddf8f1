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
from jepa_edge.train.config import world_key
from jepa_edge.train.evaluate import encode_frames
from jepa_edge.train.model import Encoder, EncoderConfig, saved_encoder_dict
from jepa_edge.world.sim import WorldConfig, WorldStates
from jepa_edge.world.sim3d import World3DConfig
from jepa_edge.world.worlds import render_view, simulate_world, world_kind_of_view, world_of_kind


@dataclass
class Moments:
    frames: dict[str, np.ndarray]  # view → (E, T, S, S, 3) uint8
    states: WorldStates | None  # None: a robot's recording without ground truth (calib still runs; probes cannot)
    # World3DStates in the 3-D world: ``danger`` is then the obstacle label, ``robot_pose`` robot 0's pose

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
        """The danger label (2-D world) or the obstacle label (3-D world): (E*T,)."""
        return self.states.danger.reshape(-1)  # (E*T,)

    @property
    def kind(self) -> str | None:
        """"2d" or "3d": the world of the ground truth (None without states)."""
        return None if self.states is None else self.states.kind

    @property
    def robot_pose(self) -> np.ndarray:
        """Robot 0's x, y, cos(heading), sin(heading) per moment (3-D world only): (E*T, 4)."""
        self._need_3d("robot pose")
        return self.states.robot_pose_vector().reshape(-1, 4)  # (E, T, 4) → (E*T, 4)

    @property
    def obstacle(self) -> np.ndarray:
        """1 where an object or another robot is ahead of robot 0, within range (3-D world only): (E*T,)."""
        self._need_3d("the obstacle label")
        return self.danger

    def _need_3d(self, what: str) -> None:
        if self.kind != "3d":
            raise ValueError(f"{what} is ground truth of the 3-D world; these moments are of the {self.kind} "
                             "world (use moments of a 3-D view: overhead, corner, front, rear, side)")


def world_moments(views: list[str], n_episodes: int, n_steps: int, size: int, seed: int,
                  world: WorldConfig | World3DConfig | None = None) -> Moments:
    """One simulated world rendered from every view in ``views`` (paired by construction).

    Every view must belong to one world (2-D or 3-D); ``world`` is that world's config (None = its default).
    """
    views = list(dict.fromkeys(views))
    kinds = {v: world_kind_of_view(v) for v in views}  # an unknown view is a ValueError naming the valid ones
    if len(set(kinds.values())) > 1:
        raise ValueError(f"views {views} mix worlds ({', '.join(f'{v}: {k}' for v, k in kinds.items())}); "
                         "moments are paired inside one world: use views of one world (2d or 3d)")
    cfg = world_of_kind(kinds[views[0]], world, f"views {views} (data.{world_key(views[0])})")
    states = simulate_world(cfg, n_episodes, n_steps, seed)
    return Moments({v: render_view(states, v, size, seed, world=cfg) for v in views}, states)


def agent_descriptor(meta: dict) -> AgentRef:
    """The agent of a run folder's ``meta.json``, as postcards and probes name it."""
    return AgentRef(meta["name"], meta["fingerprint"], int(meta["encoder"]["latent_dim"]), meta["view"])


def untrained_like(meta: dict, seed: int) -> Encoder:
    """A freshly initialised encoder of the same architecture (the untrained control)."""
    torch.manual_seed(seed)
    return Encoder(from_dict(EncoderConfig, saved_encoder_dict(meta["encoder"]))).eval()


def latents_of(encoder: Encoder, frames: np.ndarray) -> np.ndarray:
    return encode_frames(encoder, frames)  # (M, D)
