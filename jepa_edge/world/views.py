"""Viewpoints: the same world state seen by different sensors.

A view is a ground-plane homography (world unit square → pixels) plus a
sensor rendering (palette, shape, background, noise). Views share little raw
pixel overlap: a top-down colour camera, an oblique perspective camera over a
checkered floor, a rotated+mirrored grey "thermal" sensor with square blobs,
and a zoomed partial field of view. Frames are uint8 BGR, as OpenCV delivers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from jepa_edge.world.sim import WorldStates

_SHIFT = 4  # sub-pixel precision bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class ViewSpec:
    name: str
    corners: tuple[tuple[float, float], ...]  # image position (fractions) of world (0,0),(1,0),(1,1),(0,1)
    palette: tuple[tuple[int, int, int], ...]  # BGR per object
    background: str  # "dark" | "checker" | "light" | "warm"
    shape: str  # "disc" | "square"
    noise: float  # std of additive sensor noise, in grey levels


VIEWS: dict[str, ViewSpec] = {
    "top": ViewSpec(
        "top",
        ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)),
        ((40, 40, 230), (60, 200, 60), (230, 120, 30), (0, 200, 230), (200, 60, 200)),
        "dark",
        "disc",
        3.0,
    ),
    "oblique": ViewSpec(
        "oblique",  # a camera low on the south side: far edge shrinks
        ((0.30, 0.12), (0.70, 0.12), (1.02, 0.98), (-0.02, 0.98)),
        ((0, 220, 255), (255, 0, 180), (255, 255, 0), (0, 0, 160), (90, 90, 255)),
        "checker",
        "disc",
        4.0,
    ),
    "rotated": ViewSpec(
        "rotated",  # rotated 90 degrees and mirrored, grey "thermal" sensor
        ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)),
        ((250, 250, 250), (170, 170, 170), (100, 100, 100), (210, 210, 210), (60, 60, 60)),
        "light",
        "square",
        5.0,
    ),
    "partial": ViewSpec(
        "partial",  # zoomed: only the central ~70% of the arena is in view
        ((-0.2, -0.2), (1.2, -0.2), (1.2, 1.2), (-0.2, 1.2)),
        ((255, 255, 255), (0, 90, 255), (255, 200, 0), (120, 255, 120), (0, 0, 0)),
        "warm",
        "disc",
        3.0,
    ),
}


def view_names() -> list[str]:
    return list(VIEWS)


def get_view(name: str) -> ViewSpec:
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; choose one of {view_names()}")
    return VIEWS[name]


def homography(view: ViewSpec, size: int) -> np.ndarray:
    """3x3 map from world coordinates to pixel coordinates of a ``size`` image."""
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    dst = np.array(view.corners, np.float32) * size
    return cv2.getPerspectiveTransform(src, dst)


def _background(view: ViewSpec, size: int) -> np.ndarray:
    if view.background == "dark":
        img = np.full((size, size, 3), 30, np.uint8)
    elif view.background == "light":
        img = np.full((size, size, 3), 200, np.uint8)
    elif view.background == "warm":
        ramp = np.linspace(60, 140, size, dtype=np.float32)[:, None].repeat(size, 1)  # (S, S)
        img = np.stack([ramp * 0.4, ramp * 0.7, ramp], -1).astype(np.uint8)  # (S, S, 3)
    elif view.background == "checker":
        big = 8 * size
        yy, xx = np.mgrid[0:big, 0:big]
        tiles = ((yy // size + xx // size) % 2).astype(np.float32)  # 8x8 floor tiles
        floor = np.stack([70 + 40 * tiles, 90 + 30 * tiles, 60 + 20 * tiles], -1).astype(np.uint8)
        scale = np.diag([1.0 / big, 1.0 / big, 1.0])  # floor pixels → world units
        H = homography(view, size) @ scale
        img = cv2.warpPerspective(floor, H, (size, size), borderValue=(20, 20, 20))
    else:
        raise ValueError(f"unknown background {view.background!r}")
    return img


def _project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography to (..., 2) points."""
    ones = np.ones(pts.shape[:-1] + (1,), pts.dtype)
    p = np.concatenate([pts, ones], -1) @ H.T  # (..., 3)
    return p[..., :2] / p[..., 2:3]


def render(states: WorldStates, view: str | ViewSpec, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render every moment of ``states`` from one view → (E, T, S, S, 3) uint8 BGR."""
    spec = get_view(view) if isinstance(view, str) else view
    E, T, n, _ = states.positions.shape
    H = homography(spec, size)
    bg = _background(spec, size)
    pos = states.positions.astype(np.float64)  # (E, T, n, 2)
    centre = _project(H, pos)  # (E, T, n, 2) pixels
    rad = states.radius.astype(np.float64)[None, None, :, None]  # (1, 1, n, 1)
    edge_x = _project(H, pos + rad * np.array([1.0, 0.0]))
    edge_y = _project(H, pos + rad * np.array([0.0, 1.0]))
    r_pix = 0.5 * (np.linalg.norm(edge_x - centre, axis=-1) + np.linalg.norm(edge_y - centre, axis=-1))  # (E, T, n)
    c_fix = np.round(centre * _ONE).astype(np.int64)
    r_fix = np.maximum(np.round(r_pix * _ONE).astype(np.int64), _ONE // 2)
    out = np.empty((E, T, size, size, 3), np.uint8)
    for e in range(E):
        for t in range(T):
            img = bg.copy()
            for k in range(n):  # later objects are drawn on top
                color = spec.palette[k % len(spec.palette)]
                cx, cy = int(c_fix[e, t, k, 0]), int(c_fix[e, t, k, 1])
                r = int(r_fix[e, t, k])
                if spec.shape == "disc":
                    cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA, _SHIFT)
                else:
                    cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1, cv2.LINE_AA, _SHIFT)
            out[e, t] = img
    if spec.noise > 0:
        rng = np.random.default_rng([seed, sum(map(ord, spec.name))])
        noisy = out.astype(np.int16) + rng.normal(0, spec.noise, out.shape).astype(np.int16)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return out
