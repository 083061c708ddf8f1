"""Pinhole cameras of the 3-D world: fixed ones and ones mounted on robot 0.

A camera has a pose and a horizontal field of view; frames are square, so the vertical field of view is the
same. Camera axes follow OpenCV: x right, y down, z forward. ``yaw_deg`` turns the camera about the vertical
(0 = along +x of its mount), ``pitch_deg`` tilts it (negative = down, -90 = straight down; the image's up is
then the yaw direction). A ``robot`` camera's position and yaw are in robot 0's frame (x forward, y left), so it
moves and turns with the robot.

Views: ``overhead`` (2.4 m above the arena centre, looking down: "the mountain"), ``corner`` (a grey thermal
camera at ground level in a corner, looking across the arena: "the forest"), and on robot 0 ``front``,
``rear`` (back to back: their fields of view share nothing) and ``side`` (looking left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jepa_edge.world.sim3d import World3DStates


@dataclass(frozen=True)
class Camera3D:
    name: str
    mount: str  # "world" (fixed) | "robot" (on robot 0, moving with it)
    position: tuple[float, float, float]  # fixed: x, y as fractions of the arena side, z metres; robot: metres in
    # robot 0's frame (x forward, y left, z up)
    yaw_deg: float  # about the vertical, relative to the mount
    pitch_deg: float  # negative looks down
    fov_deg: float  # horizontal = vertical field of view (square frames)
    sensor: str  # "color" | "thermal" (grey: heat, not colour)
    noise: float  # std of additive sensor noise, grey levels


VIEWS3D: dict[str, Camera3D] = {
    "overhead": Camera3D("overhead", "world", (0.5, 0.5, 2.4), 90.0, -90.0, 75.0, "color", 3.0),
    "corner": Camera3D("corner", "world", (0.03, 0.03, 0.45), 45.0, -12.0, 90.0, "thermal", 5.0),
    "front": Camera3D("front", "robot", (0.23, 0.0, 0.28), 0.0, -12.0, 90.0, "color", 4.0),
    "rear": Camera3D("rear", "robot", (-0.23, 0.0, 0.28), 180.0, -12.0, 90.0, "color", 4.0),
    "side": Camera3D("side", "robot", (0.0, 0.17, 0.28), 90.0, -12.0, 90.0, "color", 4.0),
}


def view3d_names() -> list[str]:
    return list(VIEWS3D)


def get_view3d(name: str) -> Camera3D:
    if name not in VIEWS3D:
        raise ValueError(f"unknown 3-D view {name!r}; choose one of {view3d_names()}")
    return VIEWS3D[name]


def intrinsics(fov_deg: float, size: int) -> np.ndarray:
    """3x3 pinhole matrix K of a ``size`` x ``size`` image (principal point at the centre)."""
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])


def rotation(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """World-from-camera rotations (..., 3, 3) for yaw / pitch in radians; columns: right, down, forward."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    forward = np.stack([cp * cy, cp * sy, sp], -1)  # (..., 3)
    right = np.stack([sy, -cy, np.zeros_like(cy)], -1)  # (..., 3) horizontal
    down = np.cross(forward, right)  # (..., 3)
    return np.stack([right, down, forward], -1)  # (..., 3, 3)


def camera_poses(states: World3DStates, cam: Camera3D, arena: float) -> tuple[np.ndarray, np.ndarray]:
    """(R, C): world-from-camera rotation (E, T, 3, 3) and camera centre (E, T, 3) at every moment, in an arena
    of side ``arena`` metres (World3DConfig.arena)."""
    E, T = states.positions.shape[:2]
    yaw, pitch = np.deg2rad(cam.yaw_deg), np.deg2rad(cam.pitch_deg)
    offset = np.asarray(cam.position, np.float64)
    if cam.mount == "world":
        R = np.broadcast_to(rotation(np.array(yaw), np.array(pitch)), (E, T, 3, 3))
        return R, np.broadcast_to(offset * [arena, arena, 1.0], (E, T, 3))
    pose = states.robot_pose[:, :, 0].astype(np.float64)  # (E, T, 3)
    h = pose[..., 2]  # (E, T)
    c, s = np.cos(h), np.sin(h)
    C = np.stack([pose[..., 0] + c * offset[0] - s * offset[1],
                  pose[..., 1] + s * offset[0] + c * offset[1],
                  np.full_like(h, offset[2])], -1)  # (E, T, 3)
    return rotation(h + yaw, np.full_like(h, pitch)), C


def project(points: np.ndarray, R: np.ndarray, C: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (..., P, 3) → pixel coordinates (..., P, 2) and depth z along the optical axis (..., P).

    ``R`` (..., 3, 3) and ``C`` (..., 3) as from ``camera_poses``; points behind the camera get z <= 0 (their
    pixel coordinates are meaningless)."""
    cam = np.einsum("...pj,...jk->...pk", points - C[..., None, :], R)  # (..., P, 3) camera coordinates
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = cam[..., :2] / safe[..., None] * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]  # (..., P, 2)
    return uv, z
