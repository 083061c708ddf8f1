"""Anchor moments: world states both robots can observe, named by an integer moment id.

With the built-in simulator, moment ``m`` of anchor world ``(seed, steps)`` is
step ``m % steps`` of episode ``m // steps``, simulated and rendered exactly as
``sim:VIEW?seed=SEED&steps=STEPS`` (``sim3d:VIEW?…`` for a view of the 3-D world)
renders its frame ``m`` (episode ``k`` uses seed ``seed + k``). Two robots with
different views of one world therefore see the *same* world state for the same
id, each through its own camera: the pairing W is fitted on. Only latents of
these moments cross the network, never frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class AnchorWorld:
    seed: int = 1000  # world seed of the anchor moments (shared by the whole fleet)
    steps: int = 64  # episode length: moment m is step m % steps of episode m // steps
    pool: int = 256  # moment ids 0..pool-1 can be requested; their latents are encoded once at start

    def validate(self) -> None:
        if self.seed < 0 or self.steps < 1 or self.pool < 1:
            raise ValueError(f"AnchorWorld: need seed >= 0, steps >= 1, pool >= 1, got {self}")

    def to_dict(self) -> dict[str, int]:
        return {"seed": int(self.seed), "steps": int(self.steps), "pool": int(self.pool)}


def _moment_ids(ids: Sequence[int]) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    if ids.ndim != 1 or (ids < 0).any():
        raise ValueError("moment ids must be a flat list of integers >= 0")
    return ids


def moment_frames(world: AnchorWorld, view: str, size: int, ids: Sequence[int]) -> np.ndarray:
    """uint8 BGR frames (N, size, size, 3) of moments ``ids`` seen from ``view`` (a view of either world)."""
    from jepa_edge.world.worlds import episode_frames

    ids = _moment_ids(ids)
    out = np.empty((len(ids), size, size, 3), np.uint8)  # (N, S, S, 3)
    for episode in np.unique(ids // world.steps):
        seed = world.seed + int(episode)
        frames = episode_frames(view, 1, world.steps, size, seed)[0][0]  # (T, S, S, 3)
        rows = np.flatnonzero(ids // world.steps == episode)
        out[rows] = frames[ids[rows] % world.steps]
    return out


def moment_positions(world: AnchorWorld, ids: Sequence[int], kind: str = "2d") -> np.ndarray:
    """Ground-truth object positions of moments ``ids`` in the ``kind`` world ("2d" or "3d", its default
    config), flattened: (N, 2 * n_objects)."""
    from jepa_edge.world.worlds import default_world, simulate_world

    cfg, episodes, rows = default_world(kind), {}, []
    for m in _moment_ids(ids):
        e = int(m // world.steps)
        if e not in episodes:
            episodes[e] = simulate_world(cfg, 1, world.steps, world.seed + e).positions[0]  # (T, n, 2)
        rows.append(episodes[e][int(m % world.steps)].reshape(-1))  # (2n,)
    return np.stack(rows).astype(np.float32)
