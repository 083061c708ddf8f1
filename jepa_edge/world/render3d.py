"""Headless software renderer of the 3-D world: projected primitives painted far to near with OpenCV.

Why this way: a 64 px frame holds a few dozen primitives, and OpenCV fills a projected convex polygon in
microseconds, so painting them in depth order (the painter's algorithm) renders well over a thousand frames
per second on one CPU core with no display, EGL or GPU; per-pixel ray casting in numpy ran at ~230 frames/s
for five spheres, and MuJoCo's software renderer at ~15. The scene is convex where it matters: the walls
bound the arena (so everything inside lies in front of them from any camera inside it), each mesh is convex
(back faces culled, so its own faces never overlap), and two primitives are ordered by the distance of their
centres from the camera. That order is exact for separate bodies of similar size; where bodies overlap (objects
do not collide with each other, robots drive through posts) or a large face lies next to a small body, the
painter can draw the wrong one on top for those pixels: the price of speed, shared by every painter's renderer.

Per frame: the textured floor is one perspective warp of the floor texture (a plane's image is a homography
of it); the sky is the half-plane above the horizon line; then walls, posts, objects and robots, far to near.
Flat faces are shaded by Lambert's law with one directional light (ambient + diffuse · max(0, n·l)); spheres
get the same law in three bands (the projected caps n·l ≥ c). Colour cameras see colours; the "thermal" sensor
sees a grey heat value per material with weak shading. Faces that cross the camera's near plane are clipped
there. ``visibility`` paints the same primitives into an id buffer without anti-aliasing: an object is seen by
a camera when at least one of its pixels survives occlusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from jepa_edge.world.sim3d import World3DConfig, World3DStates
from jepa_edge.world.views3d import Camera3D, camera_poses, get_view3d, intrinsics, project

_SHIFT = 4  # sub-pixel bits of cv2 drawing
_ONE = 1 << _SHIFT
_NEAR = 0.05  # metres: the near plane
_LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])  # towards the light
_AMBIENT, _DIFFUSE = 0.45, 0.55
_SKY, _SKY_HEAT = (235, 206, 170), 25  # BGR; grey level of the thermal sky
_OUTSIDE, _OUTSIDE_HEAT = (55, 60, 60), 40
_WALLS = ((70, 70, 170), (80, 150, 80), (170, 100, 60), (60, 170, 190))  # south, east, north, west (BGR)
_WALL_HEAT = (95, 105, 85, 115)
_POSTS = ((30, 30, 30), (240, 240, 240), (100, 100, 100), (20, 120, 250))
_POST_HEAT = (150, 135, 140, 145)
_ROBOTS = ((210, 190, 40), (150, 40, 110), (40, 140, 140), (120, 30, 30))  # saturated: a dark grey robot
# was confounded with the floor's dark ring and the black post (its position not linear in the pixels)
_ROBOT_HEAT = (185, 175, 170, 165)
_MARKER, _MARKER_HEAT = (0, 215, 255), 210  # the arrow on a robot's top: its heading
_OBJECT_HEAT = (245, 225, 205, 235, 215, 200)
_ROBOT_BOX = (0.22, 0.16, 0.22)  # half-length, half-width, height (metres)
_SIDES = 8  # faces around a post or a cylinder


@dataclass
class _Mesh:
    """One convex body: vertices (F, V, 3) in world coordinates, faces as vertex-index lists."""

    verts: np.ndarray  # (F, V, 3)
    faces: list[np.ndarray]  # vertex indices of each face, counter-clockwise seen from outside
    color: tuple[int, int, int]
    heat: int
    kind: str  # "wall" | "post" | "object" | "robot"
    index: int  # object / robot / post / wall number
    extra: list[tuple[np.ndarray, tuple[int, int, int], int]] | None = None  # decals: (F, V, 3) polygon, colour, heat


@dataclass
class _Sphere:
    centre: np.ndarray  # (F, 3)
    radius: float
    color: tuple[int, int, int]
    heat: int
    index: int


def _prism(base: np.ndarray, height: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A vertical prism over a convex footprint (..., K, 2) counter-clockwise: vertices (..., 2K, 3), faces."""
    K = base.shape[-2]
    z0 = np.zeros(base.shape[:-1] + (1,))
    verts = np.concatenate([np.concatenate([base, z0], -1), np.concatenate([base, z0 + height], -1)], -2)
    faces = [np.array([i, (i + 1) % K, K + (i + 1) % K, K + i]) for i in range(K)]  # sides
    faces.append(np.arange(K, 2 * K))  # top, counter-clockwise from above
    return verts, faces


def _circle(n: int, r: float) -> np.ndarray:
    a = (np.arange(n) + 0.5) * 2 * np.pi / n
    return r * np.stack([np.cos(a), np.sin(a)], -1)  # (n, 2)


def _place(pose: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Points (K, 2) in a robot's frame → world (F, K, 2) at its poses (F, 3)."""
    c, s = np.cos(pose[:, 2:3]), np.sin(pose[:, 2:3])  # (F, 1)
    return np.stack([pose[:, :1] + c * local[:, 0] - s * local[:, 1],
                     pose[:, 1:2] + s * local[:, 0] + c * local[:, 1]], -1)  # (F, K, 2)


def _scene(states: World3DStates, world: World3DConfig, skip_robot0: bool) -> tuple[list[_Mesh], list[_Sphere]]:
    """Every primitive of every frame (F = E * T moments, episode-major)."""
    E, T, n, _ = states.positions.shape
    F, L, H = E * T, world.arena, world.wall_height
    meshes: list[_Mesh] = []
    corners = np.array([[0, 0], [L, 0], [L, L], [0, L]], np.float64)
    for w in range(4):  # walls seen from inside: a quad each, facing the arena
        a, b = corners[(w + 1) % 4], corners[w]
        quad = np.array([[*a, 0], [*b, 0], [*b, H], [*a, H]], np.float64)
        meshes.append(_Mesh(np.broadcast_to(quad, (F, 4, 3)), [np.arange(4)], _WALLS[w], _WALL_HEAT[w], "wall", w))
    for p, xy in enumerate(world.posts):
        verts, faces = _prism(np.asarray(xy) + _circle(_SIDES, world.post_radius), world.post_height)
        meshes.append(_Mesh(np.broadcast_to(verts, (F,) + verts.shape), faces, _POSTS[p % 4], _POST_HEAT[p % 4],
                            "post", p))
    pos = states.positions.reshape(F, n, 2).astype(np.float64)  # (F, n, 2)
    spheres: list[_Sphere] = []
    for k in range(n):
        shape, size = world.shapes[k], float(world.sizes[k])
        color, heat = tuple(int(c) for c in world.colors[k]), _OBJECT_HEAT[k % len(_OBJECT_HEAT)]
        if shape == "sphere":
            centre = np.concatenate([pos[:, k], np.full((F, 1), size)], -1)  # (F, 3)
            spheres.append(_Sphere(centre, size, color, heat, k))
            continue
        foot = (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size if shape == "box"
                else _circle(_SIDES, size))  # (K, 2)
        verts, faces = _prism(pos[:, k, None, :] + foot, 2 * size)  # (F, 2K, 3)
        meshes.append(_Mesh(verts, faces, color, heat, "object", k))
    pose = states.robot_pose.reshape(F, -1, 3).astype(np.float64)  # (F, R, 3)
    hl, hw, hh = _ROBOT_BOX
    box = np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])  # (4, 2) robot frame
    arrow = np.array([[hl * 0.9, 0], [-hl * 0.5, hw * 0.7], [-hl * 0.5, -hw * 0.7]])  # (3, 2) points forward
    for r in range(pose.shape[1]):
        if r == 0 and skip_robot0:
            continue
        verts, faces = _prism(_place(pose[:, r], box), hh)
        decal = np.concatenate([_place(pose[:, r], arrow), np.full((F, 3, 1), hh + 1e-3)], -1)  # (F, 3, 3)
        meshes.append(_Mesh(verts, faces, _ROBOTS[r % 4], _ROBOT_HEAT[r % 4], "robot", r,
                            [(decal, _MARKER, _MARKER_HEAT)]))
    return meshes, spheres


def _floor_texture(world: World3DConfig, thermal: bool, px: int = 64) -> np.ndarray:
    """The floor, ``px`` texels per side over the whole arena: half-metre tiles and a darker centre ring."""
    yy, xx = (np.mgrid[0:px, 0:px] + 0.5) * (world.arena / px)  # metres
    tiles = ((np.floor(xx / 0.5) + np.floor(yy / 0.5)) % 2).astype(np.float32)  # (px, px)
    ring = (np.abs(np.hypot(xx - world.arena / 2, yy - world.arena / 2) - 0.8) < 0.06).astype(np.float32)
    if thermal:
        grey = 62 + 8 * tiles - 15 * ring
        return np.repeat(grey[..., None], 3, -1).astype(np.uint8)
    base = np.stack([150 + 30 * tiles, 165 + 25 * tiles, 175 + 20 * tiles], -1)  # (px, px, 3) BGR
    return (base * (1 - 0.5 * ring[..., None])).astype(np.uint8)


def _clip_near(points: np.ndarray) -> np.ndarray:
    """A camera-space polygon (K, 3) cut to z >= near (Sutherland-Hodgman against one plane)."""
    out = []
    for i in range(len(points)):
        p, q = points[i], points[(i + 1) % len(points)]
        if p[2] >= _NEAR:
            out.append(p)
        if (p[2] >= _NEAR) != (q[2] >= _NEAR):
            t = (_NEAR - p[2]) / (q[2] - p[2])
            out.append(p + t * (q - p))
    return np.asarray(out)


def _half_plane(size: int, line: np.ndarray) -> np.ndarray | None:
    """The part of the image square where line · (u, v, 1) > 0, as a polygon (K, 2), or None."""
    square = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    side = square @ line[:2] + line[2]  # (4,)
    out = []
    for i in range(4):
        j = (i + 1) % 4
        if side[i] > 0:
            out.append(square[i])
        if (side[i] > 0) != (side[j] > 0):
            t = side[i] / (side[i] - side[j])
            out.append(square[i] + t * (square[j] - square[i]))
    return np.asarray(out) if len(out) >= 3 else None


class _Painter:
    """Draws one camera's frames; ``ids=True`` paints primitive ids (1 + object index) instead of colours.

    Everything that can be is computed once for all frames (projections, culling, shading, depth order, the
    floor's homography, the horizon); the per-frame loop only issues OpenCV fills."""

    def __init__(self, states: World3DStates, view: str | Camera3D, size: int, world: World3DConfig | None) -> None:
        cam = get_view3d(view) if isinstance(view, str) else view
        world = world or World3DConfig()
        E, T = states.positions.shape[:2]
        self.F, self.size, self.cam = E * T, size, cam
        self.thermal = cam.sensor == "thermal"
        R, C = camera_poses(states, cam, world.arena)
        self.R, self.C = R.reshape(-1, 3, 3), C.reshape(-1, 3)  # (F, 3, 3), (F, 3)
        self.K = intrinsics(cam.fov_deg, size)
        self.meshes, self.spheres = _scene(states, world, skip_robot0=cam.mount == "robot")
        self.texture = _floor_texture(world, self.thermal)
        self.world = world
        self._prepare_meshes()
        self._prepare_spheres()
        self._prepare_floor()
        centres = [m.verts.mean(1) for m in self.meshes] + [s.centre for s in self.spheres]  # each (F, 3)
        depth = np.linalg.norm(np.stack(centres, 1) - self.C[:, None], axis=-1)  # (F, P)
        depth[:, [i for i, m in enumerate(self.meshes) if m.kind == "wall"]] = np.inf  # the arena's boundary
        self.order = np.argsort(-depth, 1, kind="stable")  # (F, P) far to near

    def _colours(self, base: tuple[int, int, int], heat: int, shade: np.ndarray) -> np.ndarray:
        """Shaded colours (..., 3) for shade factors (...)."""
        if self.thermal:
            return np.repeat(np.minimum(255.0, heat * shade)[..., None], 3, -1)
        return np.minimum(255.0, shade[..., None] * np.asarray(base, np.float64))

    def _prepare_meshes(self) -> None:
        """Per mesh and frame: pixel coordinates, which faces to draw (0 no, 1 yes, 2 clipped), their colours."""
        self.uv, self.draw, self.colour, self.decals = [], [], [], []
        for mesh in self.meshes:
            uv, z = project(mesh.verts, self.R, self.C, self.K)  # (F, V, 2), (F, V)
            self.uv.append(np.round(uv * _ONE).clip(-2**28, 2**28).astype(np.int32))
            draw, shade = [], []
            for face in mesh.faces:
                p0, p1, p2 = (mesh.verts[:, face[i]] for i in range(3))  # (F, 3) each
                nrm = np.cross(p1 - p0, p2 - p0)
                nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)  # (F, 3) outward
                lambert = np.clip(nrm @ _LIGHT, 0, None)  # (F,)
                shade.append(0.85 + 0.15 * lambert if self.thermal else _AMBIENT + _DIFFUSE * lambert)
                front = np.sum((self.C - p0) * nrm, -1) > 0  # (F,) faces the camera
                ahead = z[:, face] >= _NEAR  # (F, K)
                draw.append(np.where(front & ahead.all(1), 1, np.where(front & ahead.any(1), 2, 0)))
            self.draw.append(np.stack(draw, 1).astype(np.int8))  # (F, faces)
            shade = np.stack(shade, 1)  # (F, faces)
            self.colour.append(self._colours(mesh.color, mesh.heat, shade))  # (F, faces, 3)
            decals = []
            for verts, dcolor, dheat in mesh.extra or []:  # decals lie on the top face (the last one)
                duv, dz = project(verts, self.R, self.C, self.K)  # (F, 3, 2), (F, 3)
                ok = (self.draw[-1][:, -1] == 1) & (dz > _NEAR).all(1)
                decals.append((np.round(duv * _ONE).clip(-2**28, 2**28).astype(np.int32), ok,
                               self._colours(dcolor, dheat, shade[:, -1])))
            self.decals.append(decals)

    def _prepare_spheres(self) -> None:
        """Per sphere and frame: the discs of its shading bands (centre, radius in fixed point) and colours."""
        self.sph = []
        light = np.einsum("j,fjk->fk", _LIGHT, self.R)[:, :2]  # (F, 2) image-plane direction of the light
        layers = ((0.0, 1.0), (0.3, 0.95), (0.6, 0.8), (0.85, 0.53))  # (c, sin α): the cap n·l >= c
        for s in self.spheres:
            uv, z = project(s.centre[:, None], self.R, self.C, self.K)  # (F, 1, 2), (F, 1)
            uv, z = uv[:, 0], z[:, 0]
            ok = z - s.radius >= _NEAR
            rho = self.K[0, 0] * s.radius / np.sqrt(np.maximum(z * z - s.radius * s.radius, 1e-12))  # (F,) pixels
            discs = []
            for c, sin_a in layers:  # the cap projects to a disc shifted towards the light
                off = rho[:, None] * c * light  # (F, 2)
                r = np.minimum(rho * sin_a, rho - np.linalg.norm(off, axis=-1)) if c else rho  # (F,)
                shade = np.full(self.F, 0.85 + 0.15 * c if self.thermal else _AMBIENT + _DIFFUSE * c)
                discs.append((np.round((uv + off) * _ONE).clip(-2**28, 2**28).astype(np.int64),
                              np.round(r * _ONE).clip(0, 2**28).astype(np.int64),
                              ok & (r > 0.3), self._colours(s.color, s.heat, shade)))
            self.sph.append(discs)

    def _prepare_floor(self) -> None:
        s = self.world.arena / self.texture.shape[0]
        floor_to_world = np.array([[s, 0, s / 2], [0, s, s / 2], [0, 0, 1.0]])  # texel (column, row) → metres
        plane = np.zeros((self.F, 3, 3))
        plane[:, 0, 0] = plane[:, 1, 1] = 1.0
        plane[:, :, 2] = -self.C  # world (x, y, 1) → x, y, 0 minus the camera centre
        self.floor_h = self.K @ np.transpose(self.R, (0, 2, 1)) @ plane @ floor_to_world  # (F, 3, 3)
        up_cam = self.R[:, 2, :]  # (F, 3) world up in camera coordinates (third row of world-from-camera)
        self.sky_line = np.einsum("fj,jk->fk", up_cam, np.linalg.inv(self.K))  # (F, 3): K^-T (R^T up)

    def _clipped(self, f: int, m: int, face: np.ndarray) -> np.ndarray:
        """Fixed-point pixel polygon of a face cut at the near plane."""
        cam = (self.meshes[m].verts[f, face] - self.C[f]) @ self.R[f]  # (K, 3) camera coordinates
        cut = _clip_near(cam)
        uv = cut[:, :2] / cut[:, 2:3] * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
        return np.round(uv * _ONE).astype(np.int32)

    def frame(self, f: int, ids: bool = False) -> np.ndarray:
        S = self.size
        if ids:
            img = np.zeros((S, S), np.uint8)
        else:
            outside = (_OUTSIDE_HEAT,) * 3 if self.thermal else _OUTSIDE
            img = cv2.warpPerspective(self.texture, self.floor_h[f], (S, S), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=outside)
            sky = _half_plane(S, self.sky_line[f])
            if sky is not None:
                cv2.fillConvexPoly(img, np.round(sky * _ONE).astype(np.int32),
                                   (_SKY_HEAT,) * 3 if self.thermal else _SKY, cv2.LINE_AA, _SHIFT)
        aa = cv2.LINE_8 if ids else cv2.LINE_AA
        n_mesh = len(self.meshes)
        for p in self.order[f].tolist():
            if p >= n_mesh:
                index = self.spheres[p - n_mesh].index
                for centre, radius, ok, colour in self.sph[p - n_mesh][:1] if ids else self.sph[p - n_mesh]:
                    if ok[f]:
                        cv2.circle(img, centre[f].tolist(), int(radius[f]), 1 + index if ids else colour[f].tolist(),
                                   -1, aa, _SHIFT)
                continue
            mesh = self.meshes[p]
            label = 1 + mesh.index if mesh.kind == "object" else 255
            uv, colours = self.uv[p][f], self.colour[p][f]
            for j in np.flatnonzero(self.draw[p][f]).tolist():
                face = mesh.faces[j]
                pts = uv[face] if self.draw[p][f, j] == 1 else self._clipped(f, p, face)
                cv2.fillConvexPoly(img, pts, label if ids else colours[j].tolist(), aa, _SHIFT)
            for duv, ok, dcolour in self.decals[p]:
                if ok[f]:
                    cv2.fillConvexPoly(img, duv[f], label if ids else dcolour[f].tolist(), aa, _SHIFT)
        return img


def _noise_table(std: float) -> np.ndarray:
    """256 grey-level offsets whose uniform mixture is a rounded N(0, std²): noise costs a byte draw per value."""
    from statistics import NormalDist

    return np.round([NormalDist(0.0, std).inv_cdf((i + 0.5) / 256) for i in range(256)]).astype(np.int16)


def render3d(states: World3DStates, view: str | Camera3D, size: int = 64, seed: int = 0,
             world: World3DConfig | None = None) -> np.ndarray:
    """Render every moment of ``states`` from one camera → (E, T, S, S, 3) uint8 BGR."""
    E, T = states.positions.shape[:2]
    painter = _Painter(states, view, size, world)
    cam = painter.cam
    out = np.empty((E * T, size, size, 3), np.uint8)
    for f in range(E * T):
        out[f] = painter.frame(f)
    if cam.noise > 0:  # additive Gaussian sensor noise, saturated to 0..255
        rng = np.random.default_rng([seed, sum(map(ord, cam.name)), 3])
        noise = _noise_table(cam.noise)[rng.integers(0, 256, out.shape, dtype=np.uint8)]  # (F, S, S, 3) int16
        flat = out.reshape(len(out), -1)  # (F, S*S*3)
        out = cv2.add(flat, noise.reshape(flat.shape), dtype=cv2.CV_8U).reshape(out.shape)
    return out.reshape(E, T, size, size, 3)  # (E, T, S, S, 3)


def id_buffers(states: World3DStates, view: str | Camera3D, size: int = 64,
               world: World3DConfig | None = None) -> np.ndarray:
    """Which primitive shows at each pixel → (E, T, S, S) uint8: 1 + object index, 255 other things, 0 floor/sky."""
    painter = _Painter(states, view, size, world)
    E, T = states.positions.shape[:2]
    return np.stack([painter.frame(f, ids=True) for f in range(E * T)]).reshape(E, T, size, size)


def visibility(states: World3DStates, view: str | Camera3D, size: int = 64,
               world: World3DConfig | None = None) -> np.ndarray:
    """(E, T, n) bool: object k shows at least one pixel in that camera at that moment (after occlusion)."""
    ids = id_buffers(states, view, size, world)  # (E, T, S, S)
    n = states.positions.shape[2]
    return np.stack([(ids == k + 1).any((-1, -2)) for k in range(n)], -1)  # (E, T, n)
