"""A seeded 2-D world of bouncing objects with ground-truth state.

The world lives in the unit square. Each episode holds ``n_objects`` discs
with their own radius; velocities get Gaussian dynamics noise every step and
objects bounce off the walls. The simulation is vectorised over episodes and
fully determined by ``(WorldConfig, seed)``.

Ground truth per step (``WorldStates``):
  positions  (E, T, n, 2)  in [0, 1]
  velocities (E, T, n, 2)
  danger     (E, T)        1 if object 0 is inside the danger zone, else 0
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class WorldConfig:
    n_objects: int = 3  # few, distinct objects: each one's position is a probe target
    radius: tuple[float, ...] = (0.11, 0.09, 0.075)  # per object, world units
    speed: float = 0.045  # initial speed, world units per step
    max_speed: float = 0.08  # velocities are clipped to this norm
    dynamics_noise: float = 0.006  # std of the per-step velocity kick
    danger_center: tuple[float, float] = (0.72, 0.28)  # the task label's zone
    danger_radius: float = 0.22

    def validate(self) -> None:
        if self.n_objects < 1:
            raise ValueError("WorldConfig.n_objects must be >= 1")
        if len(self.radius) < self.n_objects:
            raise ValueError(
                f"WorldConfig.radius has {len(self.radius)} entries for "
                f"{self.n_objects} objects; give one radius per object"
            )
        radius = self.radius[: self.n_objects]
        if not all(0.0 < r < 0.5 for r in radius):
            raise ValueError(
                f"WorldConfig.radius {tuple(radius)} must lie in (0, 0.5) world units: "
                "a disc has to fit inside the unit-square arena"
            )
        if not 0.0 < self.max_speed < 1.0 - 2 * max(radius):
            raise ValueError(
                f"WorldConfig.max_speed {self.max_speed} must be > 0 and smaller than the free span "
                f"1 - 2*max(radius) = {1.0 - 2 * max(radius):.3f}, else a wall bounce overshoots "
                "the opposite wall; lower max_speed or the radii"
            )
        if not 0.0 <= self.speed <= self.max_speed:
            raise ValueError(
                f"WorldConfig.speed {self.speed} must lie in [0, max_speed={self.max_speed}]; "
                "raise max_speed or lower speed"
            )
        if self.dynamics_noise < 0:
            raise ValueError(f"WorldConfig.dynamics_noise {self.dynamics_noise} must be >= 0")
        if len(self.danger_center) != 2 or self.danger_radius <= 0:
            raise ValueError(
                f"WorldConfig.danger_center {self.danger_center} must be an (x, y) pair and "
                f"danger_radius {self.danger_radius} must be > 0"
            )


def with_object_count(cfg: WorldConfig, n_objects: int) -> WorldConfig:
    """The same world with ``n_objects`` objects: the first radii kept, extra objects cycle through the
    existing radii, each cycle 15% smaller (everything else unchanged). A control world for alignment."""
    if n_objects < 1:
        raise ValueError(f"with_object_count: n_objects={n_objects} must be >= 1")
    base = tuple(cfg.radius[: cfg.n_objects])
    radius = tuple(base[i % len(base)] * 0.85 ** (i // len(base)) for i in range(n_objects))
    out = replace(cfg, n_objects=n_objects, radius=radius)
    out.validate()
    return out


def position_labels(n_objects: int) -> list[str]:
    """Names of the flattened position columns, (x, y) per object: ``obj0.x, obj0.y, obj1.x, …``."""
    return [f"obj{i}.{a}" for i in range(n_objects) for a in "xy"]


@dataclass
class WorldStates:
    positions: np.ndarray  # (E, T, n, 2) float32
    velocities: np.ndarray  # (E, T, n, 2) float32
    danger: np.ndarray  # (E, T) int64
    radius: np.ndarray  # (n,) float32

    kind = "2d"  # which world made them (World3DStates: "3d")

    @property
    def n_episodes(self) -> int:
        return self.positions.shape[0]

    @property
    def n_steps(self) -> int:
        return self.positions.shape[1]

    def state_vector(self) -> np.ndarray:
        """Positions flattened per moment, the regression target of state probes."""
        E, T, n, _ = self.positions.shape
        return self.positions.reshape(E, T, n * 2)  # (E, T, 2n)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "positions": self.positions,
            "velocities": self.velocities,
            "danger": self.danger,
            "radius": self.radius,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> WorldStates:
        missing = {"positions", "velocities", "danger", "radius"} - set(arrays)
        if missing:
            raise ValueError(f"state arrays lack {sorted(missing)}")
        return cls(
            positions=np.asarray(arrays["positions"], np.float32),
            velocities=np.asarray(arrays["velocities"], np.float32),
            danger=np.asarray(arrays["danger"], np.int64),
            radius=np.asarray(arrays["radius"], np.float32),
        )


def step_objects(pos: np.ndarray, vel: np.ndarray, lo: np.ndarray, hi: np.ndarray, noise: float, max_speed: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One step of both worlds' objects (E, n, 2): a Gaussian velocity kick, the speed limit, the move, and a
    mirror bounce off the walls at ``lo`` / ``hi`` (n,), the per-object bounds of the centre."""
    vel = vel + noise * rng.standard_normal(vel.shape)
    norm = np.linalg.norm(vel, axis=-1, keepdims=True)
    vel = vel * np.minimum(1.0, max_speed / np.maximum(norm, 1e-9))
    pos = pos + vel
    low, high = pos < lo[:, None], pos > hi[:, None]  # (E, n, 2) wall hits
    pos = np.where(low, 2 * lo[:, None] - pos, pos)
    pos = np.where(high, 2 * hi[:, None] - pos, pos)
    return pos, np.where(low | high, -vel, vel)


def simulate(cfg: WorldConfig, n_episodes: int, n_steps: int, seed: int) -> WorldStates:
    """Roll out ``n_episodes`` independent episodes of ``n_steps`` each."""
    cfg.validate()
    if n_episodes < 1 or n_steps < 1:
        raise ValueError(f"simulate needs n_episodes >= 1 and n_steps >= 1, got {n_episodes} and {n_steps}")
    rng = np.random.default_rng(seed)
    n = cfg.n_objects
    radius = np.asarray(cfg.radius[:n], np.float64)  # (n,)
    lo, hi = radius, 1.0 - radius  # (n,) per-object bounds for the centre
    pos = rng.uniform(lo[:, None], hi[:, None], size=(n_episodes, n, 2))  # (E, n, 2)
    angle = rng.uniform(0, 2 * np.pi, size=(n_episodes, n))
    vel = cfg.speed * np.stack([np.cos(angle), np.sin(angle)], -1)  # (E, n, 2)
    P = np.empty((n_episodes, n_steps, n, 2), np.float32)
    V = np.empty_like(P)
    for t in range(n_steps):
        P[:, t], V[:, t] = pos, vel
        pos, vel = step_objects(pos, vel, lo, hi, cfg.dynamics_noise, cfg.max_speed, rng)
    d = np.linalg.norm(P[:, :, 0] - np.asarray(cfg.danger_center), axis=-1)  # (E, T)
    danger = (d < cfg.danger_radius).astype(np.int64)
    return WorldStates(P, V, danger, radius.astype(np.float32))
