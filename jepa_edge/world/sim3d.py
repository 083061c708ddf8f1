"""A seeded 3-D world: objects and mobile robots in a walled arena, with ground truth.

The arena is a square floor of side ``arena`` metres (x, y in [0, arena], z up) with four walls and a few
fixed posts (landmarks: they make a moving camera's ego-motion visible). On it, ``n_objects`` objects
(spheres, boxes, cylinders; each shape, size and colour fixed by the config) slide with the 2-D world's
dynamics: a Gaussian velocity kick every step, a speed limit, bounces off the walls, the posts and the
robots. ``n_robots`` mobile robots drive smooth random paths (unicycle: a constant cruise speed, a turn
rate that follows a mean-reverting random walk, steering away from the walls). Robot 0 carries the
mounted cameras (``views3d``). Vectorised over episodes, fully determined by ``(World3DConfig, seed)``.

Ground truth per step (``World3DStates``, a ``WorldStates``: every consumer of the 2-D states reads it):
  positions   (E, T, n, 2)  object centres on the floor, metres
  velocities  (E, T, n, 2)
  danger      (E, T)        the obstacle label: 1 if an object or another robot is within ``obstacle_range``
                            metres and ``obstacle_half_angle_deg`` of robot 0's heading, else 0
  radius      (n,)          object size: sphere radius, box half-size, cylinder radius (metres)
  robot_pose  (E, T, R, 3)  x, y (metres), heading (radians) of every robot
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jepa_edge.world.sim import WorldStates, step_objects

SHAPES = ("sphere", "box", "cylinder")
ROBOT_POSE_LABELS = ["robot0.x", "robot0.y", "robot0.cos", "robot0.sin"]


@dataclass
class World3DConfig:
    arena: float = 3.0  # floor side, metres
    wall_height: float = 0.6
    n_objects: int = 3  # one sphere, one box, one cylinder (why not more: docs/RECIPE.md, "The 3-D world")
    shapes: tuple[str, ...] = ("sphere", "box", "cylinder", "sphere", "box", "cylinder")  # per object
    sizes: tuple[float, ...] = (0.3, 0.25, 0.22, 0.2, 0.26, 0.24)  # per object, metres
    colors: tuple[tuple[int, int, int], ...] = (  # BGR per object (colour cameras; thermal sees heat)
        (40, 40, 220), (60, 190, 60), (220, 120, 30), (0, 200, 230), (200, 60, 200), (200, 200, 200))
    speed: float = 0.05  # initial object speed, metres per step
    max_speed: float = 0.09
    dynamics_noise: float = 0.008  # std of the per-step velocity kick
    posts: tuple[tuple[float, float], ...] = ((0.7, 0.7), (2.3, 0.75), (2.25, 2.3), (0.75, 2.25))  # fixed landmarks
    post_radius: float = 0.07
    post_height: float = 1.0
    n_robots: int = 2
    robot_speed: float = 0.04  # cruise speed, metres per step
    robot_turn_noise: float = 0.04  # std of the per-step kick of the turn rate (rad/step)
    robot_max_turn: float = 0.15  # turn rate limit (rad/step)
    robot_radius: float = 0.35  # footprint: objects bounce off it, walls keep this clearance
    obstacle_range: float = 1.2  # the obstacle label: something within this many metres …
    obstacle_half_angle_deg: float = 30.0  # … and this many degrees of robot 0's heading

    def validate(self) -> None:
        n = self.n_objects
        if not 1 <= n <= min(len(self.shapes), len(self.sizes), len(self.colors)):
            raise ValueError(f"World3DConfig.n_objects={n} needs one shape, size and colour per object "
                             f"(shapes {len(self.shapes)}, sizes {len(self.sizes)}, colors {len(self.colors)})")
        bad = sorted(set(self.shapes[:n]) - set(SHAPES))
        if bad:
            raise ValueError(f"World3DConfig.shapes {bad} unknown; choose from {list(SHAPES)}")
        if not all(0.02 <= s <= 0.15 * self.arena for s in self.sizes[:n]):
            raise ValueError(f"World3DConfig.sizes {self.sizes[:n]} must lie in [0.02, 0.15 * arena] metres")
        if not self.arena >= 1.0 or not 0 < self.wall_height:
            raise ValueError("World3DConfig: arena must be >= 1 metre and wall_height > 0")
        if not 0.0 <= self.speed <= self.max_speed < 0.1 * self.arena:
            raise ValueError(f"World3DConfig: need 0 <= speed <= max_speed < arena/10 (speed {self.speed}, "
                             f"max_speed {self.max_speed})")
        if self.dynamics_noise < 0 or self.robot_turn_noise < 0 or self.robot_max_turn <= 0:
            raise ValueError("World3DConfig: dynamics_noise and robot_turn_noise >= 0, robot_max_turn > 0")
        if not 1 <= self.n_robots <= 4 or not 0 < self.robot_speed < 0.1 * self.arena:
            raise ValueError("World3DConfig: n_robots in 1..4 and 0 < robot_speed < arena/10")
        margin = self.robot_radius + 0.1
        if not all(margin < c < self.arena - margin for p in self.posts for c in p):
            raise ValueError(f"World3DConfig.posts {self.posts} must stand inside the arena, clear of the walls")
        if self.obstacle_range <= 0 or not 0 < self.obstacle_half_angle_deg < 180:
            raise ValueError("World3DConfig: obstacle_range > 0 and obstacle_half_angle_deg in (0, 180)")


@dataclass
class World3DStates(WorldStates):
    robot_pose: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.float32))  # (E, T, R, 3)

    kind = "3d"

    def robot_pose_vector(self) -> np.ndarray:
        """Robot 0's x, y, cos(heading), sin(heading): the pose probe's target (E, T, 4)."""
        pose = self.robot_pose[:, :, 0]  # (E, T, 3)
        return np.concatenate([pose[..., :2], np.cos(pose[..., 2:3]), np.sin(pose[..., 2:3])], -1)  # (E, T, 4)

    def ego_positions(self) -> np.ndarray:
        """Object centres in robot 0's frame (x forward, y left), metres: what its cameras see (E, T, n, 2)."""
        pose = self.robot_pose[:, :, 0]  # (E, T, 3)
        d = self.positions - pose[:, :, None, :2]  # (E, T, n, 2)
        c, s = np.cos(pose[..., 2])[..., None], np.sin(pose[..., 2])[..., None]  # (E, T, 1)
        return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)  # (E, T, n, 2)

    def heading_vector(self) -> np.ndarray:
        """Robot 0's heading as (cos, sin) (E, T, 2)."""
        h = self.robot_pose[:, :, 0, 2]  # (E, T)
        return np.stack([np.cos(h), np.sin(h)], -1)  # (E, T, 2)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**super().to_arrays(), "robot_pose": self.robot_pose}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> World3DStates:
        if "robot_pose" not in arrays:
            raise ValueError("3-D state arrays lack 'robot_pose'")
        base = WorldStates.from_arrays(arrays)
        return cls(base.positions, base.velocities, base.danger, base.radius,
                   np.asarray(arrays["robot_pose"], np.float32))


def _bounce_off_circles(pos: np.ndarray, vel: np.ndarray, radius: np.ndarray, centres: np.ndarray,
                        reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Objects (E, n, 2) that overlap a circle of radius ``reach`` around any of ``centres`` (E, K, 2) are pushed
    out to its rim and their velocity is mirrored about the contact normal when they were moving inward."""
    for k in range(centres.shape[1]):
        d = pos - centres[:, k:k + 1]  # (E, n, 2)
        dist = np.linalg.norm(d, axis=-1, keepdims=True)  # (E, n, 1)
        normal = d / np.maximum(dist, 1e-9)
        hit = dist < radius[None, :, None] + reach  # (E, n, 1)
        pos = np.where(hit, centres[:, k:k + 1] + normal * (radius[None, :, None] + reach), pos)
        inward = np.sum(vel * normal, -1, keepdims=True)  # (E, n, 1)
        vel = np.where(hit & (inward < 0), vel - 2 * inward * normal, vel)
    return pos, vel


def _obstacle(pos: np.ndarray, robots: np.ndarray, cfg: World3DConfig) -> np.ndarray:
    """Obstacle label (E,) of robot 0 from object centres (E, n, 2) and robot poses (E, R, 3)."""
    others = np.concatenate([pos, robots[:, 1:, :2]], 1)  # (E, n + R - 1, 2)
    d = others - robots[:, :1, :2]  # (E, K, 2)
    dist = np.linalg.norm(d, axis=-1)
    bearing = np.arctan2(d[..., 1], d[..., 0]) - robots[:, :1, 2]  # (E, K)
    bearing = (bearing + np.pi) % (2 * np.pi) - np.pi
    ahead = (dist < cfg.obstacle_range) & (np.abs(bearing) < np.deg2rad(cfg.obstacle_half_angle_deg))
    return ahead.any(-1).astype(np.int64)


def simulate3d(cfg: World3DConfig, n_episodes: int, n_steps: int, seed: int) -> World3DStates:
    """Roll out ``n_episodes`` independent episodes of ``n_steps`` each."""
    cfg.validate()
    if n_episodes < 1 or n_steps < 1:
        raise ValueError(f"simulate3d needs n_episodes >= 1 and n_steps >= 1, got {n_episodes} and {n_steps}")
    rng = np.random.default_rng([seed, 3])
    n, R, L = cfg.n_objects, cfg.n_robots, cfg.arena
    radius = np.asarray(cfg.sizes[:n], np.float64)  # (n,)
    posts = np.broadcast_to(np.asarray(cfg.posts, np.float64)[None], (n_episodes, len(cfg.posts), 2))  # (E, P, 2)
    margin = cfg.robot_radius + 0.15
    robots = np.concatenate([rng.uniform(margin, L - margin, (n_episodes, R, 2)),
                             rng.uniform(-np.pi, np.pi, (n_episodes, R, 1))], -1)  # (E, R, 3)
    turn = np.zeros((n_episodes, R))
    lo, hi = radius, L - radius  # (n,) bounds of the centres
    pos = rng.uniform(lo[:, None] + 0.3, hi[:, None] - 0.3, (n_episodes, n, 2))  # (E, n, 2)
    angle = rng.uniform(0, 2 * np.pi, (n_episodes, n))
    vel = cfg.speed * np.stack([np.cos(angle), np.sin(angle)], -1)  # (E, n, 2)
    pos, _ = _bounce_off_circles(pos, vel, radius, robots[..., :2], cfg.robot_radius)
    pos = np.clip(pos, lo[:, None], hi[:, None])
    P = np.empty((n_episodes, n_steps, n, 2), np.float32)
    V = np.empty_like(P)
    pose = np.empty((n_episodes, n_steps, R, 3), np.float32)
    danger = np.empty((n_episodes, n_steps), np.int64)
    centre = np.array([L / 2, L / 2])
    for t in range(n_steps):
        P[:, t], V[:, t], pose[:, t] = pos, vel, robots
        danger[:, t] = _obstacle(pos, robots, cfg)
        # ---- objects: velocity kick, speed limit, move, bounce (walls, posts, robots)
        pos, vel = step_objects(pos, vel, lo, hi, cfg.dynamics_noise, cfg.max_speed, rng)
        pos, vel = _bounce_off_circles(pos, vel, radius, posts, cfg.post_radius)
        # ---- robots: mean-reverting turn rate, steer toward the centre near a wall, cruise
        turn = 0.9 * turn + cfg.robot_turn_noise * rng.standard_normal(turn.shape)
        heading = robots[..., 2]  # (E, R)
        ahead = robots[..., :2] + 0.6 * np.stack([np.cos(heading), np.sin(heading)], -1)  # (E, R, 2) look-ahead
        near_wall = ((ahead < margin) | (ahead > L - margin)).any(-1)  # (E, R)
        to_centre = np.arctan2(centre[1] - robots[..., 1], centre[0] - robots[..., 0]) - heading
        to_centre = (to_centre + np.pi) % (2 * np.pi) - np.pi
        turn = np.where(near_wall, np.clip(to_centre, -1, 1) * cfg.robot_max_turn, turn)
        turn = np.clip(turn, -cfg.robot_max_turn, cfg.robot_max_turn)
        heading = (heading + turn + np.pi) % (2 * np.pi) - np.pi
        step = cfg.robot_speed * np.stack([np.cos(heading), np.sin(heading)], -1)  # (E, R, 2)
        xy = np.clip(robots[..., :2] + step, cfg.robot_radius, L - cfg.robot_radius)
        robots = np.concatenate([xy, heading[..., None]], -1)  # (E, R, 3)
        pos, vel = _bounce_off_circles(pos, vel, radius, robots[..., :2], cfg.robot_radius)
        pos = np.clip(pos, lo[:, None], hi[:, None])
    return World3DStates(P, V, danger, radius.astype(np.float32), pose)
