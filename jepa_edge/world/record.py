"""Write multi-camera recordings: one video file per view plus ground truth.

A recording folder (format ``jepa-edge/recording``, version 1)::

  recording.json   metadata, written last and atomically: its presence marks a complete recording
  <view>.avi       one video per view (``.avi`` for MJPG, ``.mp4`` for mp4v, ``.mkv`` for lossless FFV1)
  states.npz       ground truth (plain arrays, never pickle)

Layout: **one video per view holding all episodes back-to-back**. Frame ``i``
of every video is episode ``i // n_steps``, step ``i % n_steps``; all views
are frame-synchronous. ``states.npz`` uses the same flat time axis:

  positions      (E*T, n, 2) float32
  velocities     (E*T, n, 2) float32
  danger         (E*T,)      int64
  radius         (n,)        float32
  episode_index  (E*T,)      int64   = i // n_steps
  step_index     (E*T,)      int64   = i %  n_steps

A recording of the 3-D world (``recording.json`` ``"world_kind": "3d"``, ``"world"`` its
``World3DConfig``) adds to ``states.npz``:

  robot_pose     (E*T, R, 3) float32 x, y (m), heading (rad) of each robot (robot 0 carries the cameras)
  visible        (E*T, V, n) uint8   1 where object k shows in view v (``recording.json`` ``visible_views``)

A real robot produces the same thing minus ``recording.json`` and
``states.npz``: a folder of one video per camera (see ``dataset.load_recording``).

``simulate_recording(..., fmt="mcap" | "rosbag2")`` writes the same frames and states as a ROS 2
bag instead (``jepa_edge.bags.writer.write_bag``: one image topic per view, the states topic with
an ``episode`` slice), which ``load_recording`` reads back as (E, T, ...).

Frames are rendered with ``worlds.render_view(states, view, size, seed)``, so
``ViewData.from_simulator`` with the same seed yields exactly the frames that
were encoded (before MJPG/mp4v compression; FFV1 is lossless).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from jepa_edge import package_version
from jepa_edge.artifacts import ArtifactError, atomic_write, atomic_write_json, replace_synced, temp_path
from jepa_edge.config import to_dict
from jepa_edge.video import CODECS, Codec, VideoError, open_video_writer
from jepa_edge.world.sim import WorldConfig, WorldStates
from jepa_edge.world.sim3d import World3DConfig
from jepa_edge.world.worlds import (
    DEFAULT_SIZE,
    WORLD_KINDS,
    default_world,
    render_view,
    simulate_world,
    views_of,
    world_kind_of,
    world_kind_of_view,
    world_of_kind,
)

RECORDING_FORMAT = "jepa-edge/recording"
RECORDING_VERSION = 1
RECORDING_JSON = "recording.json"
STATES_NPZ = "states.npz"


class RecordingError(ArtifactError):
    """A recording (or one of its videos) cannot be written or read as asked."""


def _check_codec(codec: str) -> Codec:
    if codec not in CODECS:
        raise RecordingError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    return CODECS[codec]


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30.0, codec: str = "MJPG") -> Path:
    """Write ``frames`` (N, H, W, 3) uint8 BGR to ``path`` with OpenCV; returns ``path``.

    ``codec`` is any FourCC the local OpenCV/FFmpeg build can encode into the
    container named by the suffix of ``path`` (``CODECS`` lists the tested
    pairs; ``jepa_edge.video.open_video_writer`` opens it). The file is written under a temporary name, reopened to check its
    frame count and size, then fsync'ed and ``os.replace``d.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise RecordingError(
            f"write_video wants non-empty (N, H, W, 3) uint8 BGR frames, got {frames.dtype} {frames.shape}"
        )
    n, h, w, _ = frames.shape
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = temp_path(path, keep_suffix=True)  # keep the suffix: it picks the container
    try:
        try:
            writer = open_video_writer(tmp, fps, (w, h), codec, shown=path)
        except VideoError as exc:
            raise RecordingError(str(exc)) from exc
        try:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame))
        finally:
            writer.release()
        _check_written(tmp, path, n, h, w)
        replace_synced(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_written(tmp: Path, path: Path, n: int, h: int, w: int) -> None:
    """Reopen a fresh video and compare its header with what was written (no decoding)."""
    cap = cv2.VideoCapture(str(tmp))
    try:
        if not cap.isOpened():
            raise RecordingError(f"the video just written to {path} cannot be reopened by OpenCV")
        got_w, got_h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        got_n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if (got_w, got_h) != (w, h) or (got_n > 0 and got_n != n):
        raise RecordingError(
            f"writing {path} went wrong: wrote {n} frames of {w}x{h}, the file holds {got_n} of "
            f"{got_w}x{got_h}; try another codec"
        )


def _flat_states(states: WorldStates, visible: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(E, T, ...) ground truth → the flat back-to-back arrays of ``states.npz`` (``visible``: view → (E, T, n))."""
    E, T, n, _ = states.positions.shape
    flat = {
        "positions": np.ascontiguousarray(states.positions, np.float32).reshape(E * T, n, 2),
        "velocities": np.ascontiguousarray(states.velocities, np.float32).reshape(E * T, n, 2),
        "danger": np.ascontiguousarray(states.danger, np.int64).reshape(E * T),
        "radius": np.ascontiguousarray(states.radius, np.float32).reshape(n),
        "episode_index": np.repeat(np.arange(E, dtype=np.int64), T),  # (E*T,)
        "step_index": np.tile(np.arange(T, dtype=np.int64), E),  # (E*T,)
    }
    if states.kind == "3d":
        R = states.robot_pose.shape[2]
        flat["robot_pose"] = np.ascontiguousarray(states.robot_pose, np.float32).reshape(E * T, R, 3)
        seen = np.stack([visible[v] for v in visible], axis=2) if visible else np.zeros((E, T, 0, n), bool)
        flat["visible"] = seen.astype(np.uint8).reshape(E * T, len(visible), n)  # (E, T, V, n) → (E*T, V, n)
    return flat


def _check_states(states: WorldStates) -> None:
    p = states.positions
    if p.ndim != 4 or p.shape[-1] != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise RecordingError(f"states.positions must be (E, T, n, 2) with E, T >= 1, got {p.shape}")
    E, T, n, _ = p.shape
    if states.velocities.shape != p.shape:
        raise RecordingError(f"states.velocities {states.velocities.shape} != positions {p.shape}")
    if states.danger.shape != (E, T):
        raise RecordingError(f"states.danger must be (E, T) = {(E, T)}, got {states.danger.shape}")
    if states.radius.shape != (n,):
        raise RecordingError(f"states.radius must be (n,) = {(n,)}, got {states.radius.shape}")
    if states.kind == "3d" and (states.robot_pose.ndim != 4 or states.robot_pose.shape[:2] != (E, T)
                                or states.robot_pose.shape[3] != 3):
        raise RecordingError(f"states.robot_pose must be (E, T, R, 3) = {(E, T)} + (R, 3), "
                             f"got {states.robot_pose.shape}")


MIN_SIZE, MAX_SIZE = 8, 1024  # frame side: below 8 px the objects are a pixel or two; above 1024 see below
MAX_RENDER_BYTES = 1 << 30  # uint8 frames of every view, rendered in memory before encoding (the sensor noise
# briefly takes ~12 more bytes per frame byte of the view being rendered); 224 px x 64 x 32 x 2 views is 0.6 GiB


def check_views(views: list[str], kind: str) -> None:
    """Every view a known view of the ``kind`` world ("2d" or "3d"), named once (one-line errors in CLI words)."""
    if kind not in WORLD_KINDS:
        raise RecordingError(f"unknown world {kind!r}; pass --world with one of {', '.join(WORLD_KINDS)}")
    if not views or len(set(views)) != len(views):
        raise RecordingError(f"views must be a non-empty list of distinct view names, got {views}")
    kinds = {v: world_kind_of_view(v) for v in views}  # unknown view → ValueError listing the valid ones
    other = [v for v in views if kinds[v] != kind]
    if other:
        hint = (f"pass --world {kinds[other[0]]}" if len(other) == len(views)
                else f"record one world at a time: --view with {', '.join(views_of(kind))}")
        raise RecordingError(f"view(s) {other} belong to the {kinds[other[0]]} world, not the {kind} world; {hint}")


def check_recording_args(views: list[str], size: int, fps: float, n_episodes: int, n_steps: int,
                         even: bool = True, kind: str = "2d") -> None:
    """Refuse a recording that cannot be written (or would exhaust memory) before anything is simulated or created.

    ``even``: video encoders need even frame sides (OpenCV's FFmpeg writer crops odd ones); bags do not.
    ``kind``: the world every view must belong to ("2d" or "3d").
    """
    check_views(views, kind)
    if not isinstance(size, int) or isinstance(size, bool):
        raise RecordingError(f"size must be a whole number of pixels, got {size!r}")
    if size < MIN_SIZE:
        raise RecordingError(f"size {size} is below {MIN_SIZE} px: the objects would be a pixel or two wide; "
                             f"pass --size {MIN_SIZE} or more")
    if size > MAX_SIZE:
        raise RecordingError(f"size {size} is over {MAX_SIZE} px: every frame is rendered in memory; "
                             f"pass --size {MAX_SIZE} or less")
    if even and size % 2:
        raise RecordingError(f"size {size} is odd: video encoders need even frame sides (OpenCV's FFmpeg writer "
                             f"crops odd ones); pass --size {size + 1}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
        raise RecordingError(f"fps {fps!r} must be a positive number of frames per second; pass e.g. --fps 30")
    for what, n in (("episodes", n_episodes), ("steps per episode", n_steps)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RecordingError(f"{what} must be >= 1, got {n!r}")
    frames = n_episodes * n_steps * size * size * 3 * len(views)  # uint8 bytes of every view's (E, T, S, S, 3)
    if frames > MAX_RENDER_BYTES:
        raise RecordingError(
            f"{n_episodes} episodes x {n_steps} steps of {size}x{size} frames from {len(views)} view(s) is "
            f"{frames / 2**30:.1f} GiB rendered in memory, over the {MAX_RENDER_BYTES / 2**30:.0f} GiB limit; "
            "record fewer episodes or steps per episode, or a smaller --size")


def _versions() -> dict[str, str]:
    return {"jepa_edge": package_version(), "opencv": cv2.__version__, "numpy": np.__version__}


def write_recording(
    out_dir: str | Path,
    states: WorldStates,
    views: list[str],
    size: int = 32,
    fps: float = 30.0,
    seed: int = 0,
    codec: str = "MJPG",
    world_config: WorldConfig | World3DConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Render ``states`` from every view in ``views`` and write a recording folder.

    ``seed`` is the sensor-noise seed given to the renderer. ``world_config`` is
    stored in ``recording.json`` when given (``null`` otherwise); 3-D states are
    rendered with it (default ``World3DConfig()``), and their views' visibility is
    stored in ``states.npz``. An existing recording in ``out_dir`` is refused unless
    ``overwrite``. Returns ``out_dir``.
    """
    out = Path(out_dir)
    spec = _check_codec(codec)
    views = list(views)
    _check_states(states)
    check_recording_args(views, size, fps, states.n_episodes, states.n_steps, kind=states.kind)
    if world_config is not None:
        _check_world(world_config, states.kind)
    meta_path = out / RECORDING_JSON
    if meta_path.exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a recording; pass --overwrite or choose another folder")
    made = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        meta_path.unlink(missing_ok=True)  # a crash below must not leave a stale "complete" marker
        _write_folder(out, states, views, spec, size, fps, seed, codec, world_config)
    except BaseException:
        if made is not None:  # the folders this call made go again: a failed recording leaves nothing behind
            shutil.rmtree(made, ignore_errors=True)
        raise
    return out


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` itself included) that does not exist yet, or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def _check_world(world_config: WorldConfig | World3DConfig, kind: str) -> None:
    try:
        world_of_kind(kind, world_config, "recording")
    except ValueError as exc:
        raise RecordingError(str(exc)) from exc
    world_config.validate()


def _write_folder(out: Path, states: WorldStates, views: list[str], spec: Codec, size: int, fps: float, seed: int,
                  codec: str, world_config: WorldConfig | World3DConfig | None) -> None:
    """The videos, states.npz, then recording.json (last: its presence marks a complete recording)."""
    meta_path = out / RECORDING_JSON
    files = {}
    for view in views:
        frames = render_view(states, view, size, seed, world=world_config)  # (E, T, S, S, 3)
        files[view] = f"{view}{spec.extension}"
        write_video(out / files[view], frames.reshape(-1, size, size, 3), fps=fps, codec=spec.fourcc)
    visible = {}
    if states.kind == "3d":
        from jepa_edge.world.render3d import visibility

        visible = {v: visibility(states, v, size, world=world_config) for v in views}  # view → (E, T, n) bool
    flat = _flat_states(states, visible)
    atomic_write(out / STATES_NPZ, lambda f: np.savez(f, **flat))

    meta = {
        "format": RECORDING_FORMAT,
        "version": RECORDING_VERSION,
        "layout": "episodes-back-to-back",
        "views": views,
        "files": files,
        "size": size,
        "fps": float(fps),
        "n_episodes": states.n_episodes,
        "n_steps": states.n_steps,
        "n_objects": int(states.positions.shape[2]),
        "codec": codec,
        "lossless": spec.lossless,
        "seed": int(seed),
        "world_kind": states.kind,
        "world": None if world_config is None else to_dict(world_config),
        "states": STATES_NPZ,
        "versions": _versions(),
    }
    if states.kind == "3d":
        meta["visible_views"] = list(visible)  # the order of states.npz visible's view axis
    atomic_write_json(meta_path, meta)


FORMATS = ("folder", "mcap", "rosbag2")


def default_views(kind: str) -> list[str]:
    """The views ``world record`` records when none are named: top and oblique (2d), every 3-D view (3d)."""
    return ["top", "oblique"] if kind == "2d" else views_of(kind)


def simulate_recording(
    out_dir: str | Path,
    world_config: WorldConfig | World3DConfig | None = None,
    n_episodes: int = 8,
    n_steps: int = 64,
    views: list[str] | tuple[str, ...] | None = None,
    size: int | None = None,
    seed: int = 0,
    fps: float = 30.0,
    codec: str | None = None,
    overwrite: bool = False,
    fmt: str = "folder",
    encoding: str | None = None,
    world: str | None = None,
) -> Path:
    """Simulate ``n_episodes`` × ``n_steps`` with ``seed`` and record them (same seed for render noise).

    ``world``: "2d" or "3d"; None = the kind of ``world_config``, else of ``views``, else "2d".
    ``views`` default to ``default_views(world)``, ``size`` to ``worlds.DEFAULT_SIZE[world]`` (32 px 2d,
    64 px 3d), ``world_config`` to the world's default config.
    ``fmt``: ``"folder"`` a recording folder (``codec``, default MJPG); ``"mcap"`` a bare ``.mcap``
    bag (``out_dir`` must end in .mcap) or ``"rosbag2"`` a rosbag2 folder, with images as
    ``encoding`` (rgb8 default, bgr8, mono8, jpeg). ``codec`` applies to folders only, ``encoding``
    to bags only: giving the other one is an error, not ignored. The 3-D world records folders only.
    """
    if fmt not in FORMATS:
        raise RecordingError(f"recording format {fmt!r} is not known; use one of {list(FORMATS)}")
    if fmt == "folder" and encoding is not None:
        raise RecordingError("--encoding applies to bags (--format mcap or rosbag2); a folder recording "
                             "picks its video codec with --codec")
    if fmt != "folder" and codec is not None:
        raise RecordingError("--codec applies to folder recordings; a bag stores images as --encoding "
                             "rgb8, bgr8, mono8 or jpeg")
    if fmt == "mcap" and Path(out_dir).suffix.lower() != ".mcap":
        raise RecordingError(f"{out_dir}: a bare MCAP recording must end in .mcap; rename it or use --format rosbag2")
    kind = _recording_kind(world, world_config, views)
    if kind == "3d" and fmt != "folder":
        raise RecordingError("--world 3d records a folder (videos + states.npz with the robot poses and what each "
                             "camera sees); the bag states topic has no robot pose: pass --format folder")
    cfg = world_config or default_world(kind)
    _check_world(cfg, kind)
    views = default_views(kind) if views is None else list(views)
    size = DEFAULT_SIZE[kind] if size is None else size
    check_recording_args(views, size, fps, n_episodes, n_steps, even=fmt == "folder", kind=kind)
    if fmt == "folder":
        _check_codec(codec or "MJPG")
    elif (Path(out_dir).exists() or Path(out_dir).is_symlink()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    states = simulate_world(cfg, n_episodes, n_steps, seed)
    if fmt == "folder":
        return write_recording(out_dir, states, views, size=size, fps=fps, seed=seed, codec=codec or "MJPG",
                               world_config=cfg, overwrite=overwrite)
    from jepa_edge.bags.writer import write_bag  # the bag packages are imported only when a bag is written

    frames = {v: render_view(states, v, size, seed) for v in views}  # (E, T, S, S, 3) each
    return write_bag(out_dir, SimpleNamespace(frames=frames, states=states), fmt=fmt, encoding=encoding or "rgb8",
                     fps=fps, overwrite=overwrite)


def _recording_kind(world: str | None, world_config: WorldConfig | World3DConfig | None,
                    views: list[str] | tuple[str, ...] | None) -> str:
    """The world a recording is of: ``world`` when given, else its config's, else its first view's, else 2d."""
    if world is not None:
        if world not in WORLD_KINDS:
            raise RecordingError(f"unknown world {world!r}; pass --world with one of {', '.join(WORLD_KINDS)}")
        return world
    if world_config is not None:
        return world_kind_of(world_config)
    if views:
        return world_kind_of_view(views[0])  # the others are checked against it with the rest of the arguments
    return "2d"
