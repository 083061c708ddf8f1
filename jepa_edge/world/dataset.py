"""Read recordings back, and hand one view's frames to the trainer.

``load_recording(path)`` accepts two kinds of folder, and ROS bags:

* a simulator recording written by ``record.write_recording``
  (``recording.json`` + one video per view + ``states.npz``): frames come
  back as (E, T, S, S, 3) using the back-to-back episode layout, states as
  ``WorldStates`` (``World3DStates`` for a recording of the 3-D world, whose
  per-view visibility comes back in ``Recording.visible``);
* a real robot recording: a folder of video files, one per camera
  (``.mp4 .avi .mkv .mov``), no ``recording.json``, no states. The view
  name is the file stem; the whole video is one episode, so frames are
  (1, T, H, W, 3); cameras of different lengths are cut to the shortest
  (the *end* is dropped, so frame ``i`` stays frame ``i``) with a warning;
* a ROS 2 bag (``jepa_edge.bags``; needs ``pip install 'jepa-edge[robot]'``): a rosbag2
  folder (``metadata.yaml``, sqlite3 or MCAP storage) or a bare ``.mcap`` / ``.db3`` file
  with ``sensor_msgs/msg/Image`` or ``CompressedImage`` topics. One camera per image topic
  (view names: ``jepa_edge.bags.reader.view_names``, or ``topics={view: topic}``); the
  cameras' frames are paired by timestamp (``jepa_edge.bags.pairing``), so frame ``i`` of
  every view is one moment; one episode (1, T, H, W, 3) and no states, unless the bag holds
  the states topic (``/jepa_edge/states``, ``std_msgs/msg/Float32MultiArray``; the convention
  is in ``jepa_edge.bags.reader``): then the states are paired with the cameras too, and an
  ``episode`` slice splits frames and states into (E, T, ...).

``ViewData`` is what training consumes: one view's frames (E, T, S, S, 3)
uint8 BGR plus ground truth when there is any, from the simulator or from
a recording, through one type.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from jepa_edge.bags.reader import (
    STATES_TOPIC,
    BagReader,
    BagStates,
    bag_kind,
    episode_runs,
    is_bag,
    pair_by_time,
    resolve_views,
)
from jepa_edge.config import from_dict
from jepa_edge.world.record import RECORDING_FORMAT, RECORDING_JSON, RECORDING_VERSION, RecordingError
from jepa_edge.world.sim import WorldConfig, WorldStates
from jepa_edge.world.sim3d import World3DConfig, World3DStates
from jepa_edge.world.worlds import WORLD_KINDS, episode_frames

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
_STATE_KEYS = ("positions", "velocities", "danger", "radius", "episode_index", "step_index")
_STATE_KEYS_3D = ("robot_pose", "visible")  # a recording of the 3-D world (record.py's module doc)
_META_KEYS = ("views", "files", "size", "fps", "n_episodes", "n_steps", "codec", "states")


def _resize(frame: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or frame.shape[:2] == (size, size):
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)  # non-square input is squashed


def _read_video(path: Path, resize: int | None) -> tuple[np.ndarray, tuple[int, int], float | None]:
    """Decode every frame → ((N, H', W', 3) uint8 BGR, native (H, W), fps or None); resized frame by frame."""
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    frames, native = [], None
    try:
        if not cap.isOpened():
            raise RecordingError(
                f"cannot open video {path}: OpenCV found no decoder for it (corrupt, empty or an "
                "unsupported codec); re-encode it, e.g. `ffmpeg -i IN -c:v mjpeg OUT.avi`"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if native is None:
                native = frame.shape[:2]
            elif frame.shape[:2] != native:
                raise RecordingError(f"video {path} changes frame size mid-stream ({native} → {frame.shape[:2]})")
            frames.append(_resize(frame, resize))
    finally:
        cap.release()
    if not frames:
        raise RecordingError(
            f"video {path} holds no decodable frames (corrupt or truncated file); re-record or re-encode it"
        )
    return np.stack(frames), native, (fps if fps > 0 else None)


def read_video(path: str | Path, resize: int | None = None) -> np.ndarray:
    """All frames of one video file → (N, H, W, 3) uint8 BGR (``resize``: square side, INTER_AREA)."""
    return _read_video(Path(path), resize)[0]


@dataclass
class Recording:
    frames: dict[str, np.ndarray]  # view → (E, T, H, W, 3) uint8 BGR
    states: WorldStates | None  # ground truth (E, T, ...), None for real-robot recordings
    meta: dict  # recording.json, or what the loader knows about a plain video folder or a bag
    path: Path  # the folder (or bag file) it was loaded from
    visible: dict[str, np.ndarray] = field(default_factory=dict)  # 3-D world: view → (E, T, n) bool, object seen

    @property
    def views(self) -> list[str]:
        return list(self.frames)

    @property
    def n_episodes(self) -> int:
        return next(iter(self.frames.values())).shape[0]

    @property
    def n_steps(self) -> int:
        return next(iter(self.frames.values())).shape[1]

    @property
    def source(self) -> str:
        return self.meta.get("source", "recording")

    def view(self, name: str) -> np.ndarray:
        if name not in self.frames:
            raise KeyError(f"view {name!r} is not loaded from {self.path}; loaded views: {self.views}")
        return self.frames[name]

    @property
    def world_kind(self) -> str:
        """"2d" or "3d": the simulated world a recording is of ("2d" for recordings older than the 3-D world)."""
        return _world_kind(self.meta)

    def world_config(self) -> WorldConfig | World3DConfig | None:
        world = self.meta.get("world")
        if world is None:
            return None
        return from_dict(World3DConfig if self.world_kind == "3d" else WorldConfig, world)


def _world_kind(meta: dict) -> str:
    return meta.get("world_kind") or "2d"  # recordings older than the 3-D world do not say


def _pick_views(available: list[str], views: list[str] | None, where: Path) -> list[str]:
    if views is None:
        return available
    missing = [v for v in views if v not in available]
    if missing:
        raise RecordingError(f"view(s) {missing} not in recording {where}; available views: {available}")
    return list(dict.fromkeys(views))


def load_recording(path: str | Path, views: list[str] | None = None, resize: int | None = None,
                   topics: dict[str, str] | None = None, tolerance_s: float | None = None,
                   states_topic: str | None = None) -> Recording:
    """Load a recording folder or a ROS bag (see module doc).

    ``views`` limits which videos / topics are decoded (default: all). ``resize``
    resizes every frame to ``resize`` × ``resize`` on load (cv2.INTER_AREA;
    non-square camera frames are squashed, not cropped). Bags only: ``topics``
    names the views ({view: topic}); ``tolerance_s`` is the largest time offset
    of paired frames (default: half the first camera's median frame interval);
    ``states_topic`` names the ground-truth topic, which must then be there
    (None or "": ``/jepa_edge/states`` when the bag has it, else no states).
    """
    path = Path(path)
    if path.is_file() and path.name == RECORDING_JSON:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"recording {path} does not exist (a recording folder or a ROS bag)")
    if resize is not None and (not isinstance(resize, int) or resize < 1):
        raise RecordingError(f"resize must be a positive int (square side in pixels), got {resize!r}")
    if is_bag(path):
        return _load_bag(path, views, resize, topics, tolerance_s, states_topic or None)
    if topics or tolerance_s is not None or states_topic:
        raise RecordingError(f"{path} is not a ROS bag; topics, tolerance and states topic apply to bags only "
                             "(a rosbag2 folder with metadata.yaml, a .mcap or a .db3 file)")
    if not path.is_dir():
        raise RecordingError(f"{path} is a file; pass the recording folder that holds it, or a .mcap / .db3 bag")
    if (path / RECORDING_JSON).is_file():
        return _load_simulated(path, views, resize)
    return _load_video_folder(path, views, resize)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / RECORDING_JSON).read_text())
    except json.JSONDecodeError as e:
        raise RecordingError(f"{path / RECORDING_JSON} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != RECORDING_FORMAT:
        raise RecordingError(f"{path / RECORDING_JSON} is not a {RECORDING_FORMAT!r} file")
    if not isinstance(meta.get("version"), int) or meta["version"] > RECORDING_VERSION:
        raise RecordingError(
            f"{path / RECORDING_JSON} has version {meta.get('version')!r}; this jepa-edge reads up to "
            f"version {RECORDING_VERSION}: upgrade jepa-edge"
        )
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise RecordingError(f"{path / RECORDING_JSON} lacks {missing}")
    return meta


def _member(name: object, path: Path) -> str:
    """A file name from recording.json: a plain name inside the folder, nothing else."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise RecordingError(f"{path / RECORDING_JSON} names file {name!r}; expected a plain file name in {path}")
    return name


def _load_simulated(path: Path, views: list[str] | None, resize: int | None) -> Recording:
    meta = _read_meta(path)
    E, T, S = int(meta["n_episodes"]), int(meta["n_steps"]), int(meta["size"])
    frames = {}
    for view in _pick_views(list(meta["views"]), views, path):
        file = path / _member(meta["files"].get(view), path)
        video, native, _ = _read_video(file, resize)  # (E*T, S', S', 3)
        if native != (S, S):
            raise RecordingError(
                f"{file} has {native[1]}x{native[0]} frames but recording.json says size {S}; "
                "the video was replaced or the metadata edited"
            )
        if len(video) != E * T:
            raise RecordingError(
                f"{file} holds {len(video)} frames; recording.json says {E} episodes x {T} steps = {E * T}"
            )
        frames[view] = video.reshape(E, T, *video.shape[1:])  # (E, T, S', S', 3)
    kind = _world_kind(meta)
    if kind not in WORLD_KINDS:
        raise RecordingError(f"{path / RECORDING_JSON} says world_kind {kind!r}; this jepa-edge knows "
                             f"{', '.join(WORLD_KINDS)}: upgrade jepa-edge")
    if meta["states"] is None:
        return Recording(frames, None, meta, path)
    shown = list(meta.get("visible_views") or []) if kind == "3d" else []
    states, seen = _load_states(path / _member(meta["states"], path), E, T, kind, shown)
    return Recording(frames, states, meta, path, {v: seen[v] for v in frames if v in seen})


def _load_states(file: Path, E: int, T: int, kind: str = "2d", visible_views: tuple[str, ...] | list[str] = ()
                 ) -> tuple[WorldStates, dict[str, np.ndarray]]:
    """states.npz (flat back-to-back layout) → (WorldStates (E, T, ...), {view: (E, T, n) bool visible});
    World3DStates and the visibility of ``visible_views`` for a 3-D recording. Never unpickles."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} is named in recording.json but missing")
    keys = _STATE_KEYS + (_STATE_KEYS_3D if kind == "3d" else ())
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in keys if key in npz.files}
            names = sorted(npz.files)
    except ValueError as e:  # numpy's refusal to unpickle: an object array, or not an .npz at all
        raise RecordingError(
            f"{file} holds pickled data (an object array) or is not a numpy archive; refusing to unpickle ({e})"
        ) from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise RecordingError(f"{file} is not a readable .npz archive ({e})") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise RecordingError(f"{file} lacks arrays {missing}; it has {names}")
    for key, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise RecordingError(f"{file}: array {key!r} has dtype {a.dtype}, expected a numeric array")
    n = arrays["radius"].shape[0] if arrays["radius"].ndim == 1 else -1
    expected = {
        "positions": (E * T, n, 2),
        "velocities": (E * T, n, 2),
        "danger": (E * T,),
        "radius": (n,),
        "episode_index": (E * T,),
        "step_index": (E * T,),
    }
    if kind == "3d":
        R = arrays["robot_pose"].shape[1] if arrays["robot_pose"].ndim == 3 else -1
        expected.update(robot_pose=(E * T, R, 3), visible=(E * T, len(visible_views), n))
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise RecordingError(
                f"{file}: {key} has shape {arrays[key].shape}, expected {shape} for {E} episodes x {T} steps "
                f"of {n} objects; states and videos do not belong together"
            )
    if not (
        np.array_equal(arrays["episode_index"], np.repeat(np.arange(E), T))
        and np.array_equal(arrays["step_index"], np.tile(np.arange(T), E))
    ):
        raise RecordingError(f"{file}: episode_index/step_index are not the back-to-back layout of {E}x{T}")
    grid = {
        "positions": arrays["positions"].reshape(E, T, n, 2),
        "velocities": arrays["velocities"].reshape(E, T, n, 2),
        "danger": arrays["danger"].reshape(E, T),
        "radius": arrays["radius"],
    }
    if kind == "2d":
        return WorldStates.from_arrays(grid), {}
    grid["robot_pose"] = arrays["robot_pose"].reshape(E, T, -1, 3)  # (E, T, R, 3)
    seen = arrays["visible"].reshape(E, T, len(visible_views), n) != 0  # (E, T, V, n) bool
    return World3DStates.from_arrays(grid), {v: seen[:, :, i] for i, v in enumerate(visible_views)}


def _load_video_folder(path: Path, views: list[str] | None, resize: int | None) -> Recording:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        found = sorted(p.name for p in path.iterdir())[:10]
        raise RecordingError(
            f"{path} has no {RECORDING_JSON} and no video files ({', '.join(VIDEO_EXTENSIONS)}); "
            f"found {found}. Put one video per camera in the folder"
        )
    by_view: dict[str, Path] = {}
    for f in files:
        if f.stem in by_view:
            raise RecordingError(f"two videos for camera {f.stem!r}: {by_view[f.stem].name} and {f.name}; keep one")
        by_view[f.stem] = f
    frames, sizes, lengths, fps = {}, {}, {}, {}
    for view in _pick_views(list(by_view), views, path):
        video, native, fps[view] = _read_video(by_view[view], resize)  # (N, H, W, 3)
        frames[view], sizes[view], lengths[view] = video, list(native), len(video)
    T = min(lengths.values())
    if len(set(lengths.values())) > 1:
        warnings.warn(
            f"cameras in {path} have different lengths {lengths}; truncating all to the shortest ({T} frames, "
            "dropping the ends)",
            stacklevel=3,
        )
    frames = {v: f[None, :T] for v, f in frames.items()}  # (1, T, H, W, 3)
    meta = {
        "format": RECORDING_FORMAT,
        "version": RECORDING_VERSION,
        "source": "video-folder",
        "views": list(frames),
        "files": {v: by_view[v].name for v in frames},
        "frame_sizes": sizes,  # native (H, W) per camera, before resize
        "frame_counts": lengths,  # before truncation
        "size": resize,
        "fps": fps,
        "n_episodes": 1,
        "n_steps": T,
        "codec": None,
        "world": None,
        "seed": None,
        "states": None,
    }
    return Recording(frames, None, meta, path)


def _load_bag(path: Path, views: list[str] | None, resize: int | None, topics: dict[str, str] | None,
              tolerance_s: float | None, states_topic: str | None) -> Recording:
    """Every chosen image topic, decoded and resized, and the states topic, paired by time → (E, T, ...)."""
    with BagReader(path) as bag:
        wanted = states_topic or (STATES_TOPIC if bag.has_states() else None)
        gt = None if wanted is None else bag.states(wanted)  # before the frames: a bad layout fails fast
        chosen = resolve_views(bag.image_topics, views, topics, where=str(path))  # {view: topic}
        times, frames, sizes, clocks, fps = {}, {}, {}, {}, {}
        for view, topic in chosen.items():
            index = bag.index(topic)
            stack, native = [], None
            for _, image in bag.frames(topic, index):
                if native is None:
                    native = image.shape[:2]
                elif image.shape[:2] != native:
                    raise RecordingError(f"topic {topic} of {path} changes frame size mid-stream "
                                         f"({native} → {image.shape[:2]})")
                stack.append(_resize(image, resize))
            times[view], frames[view] = index.sorted_t_ns, np.stack(stack)  # (N,), (N, H, W, 3)
            sizes[view], clocks[view], fps[view] = list(native), index.clock, index.fps
    labels = {v: f"{v} ({t})" for v, t in chosen.items()}
    if gt is not None:  # one more stream after the cameras, keyed by its topic (never a view name)
        times[gt.topic], labels[gt.topic] = gt.t_ns, f"states ({gt.topic})"
    rows, report = pair_by_time(times, tolerance_s, names=labels)
    states = None if gt is None else gt.take(rows.pop(gt.topic))
    E, T = _episodes(states, report["kept"], path)
    meta = {
        "format": RECORDING_FORMAT,
        "version": RECORDING_VERSION,
        "source": bag_kind(path),  # "rosbag2" (folder or .db3) or "mcap" (bare file)
        "views": list(chosen),
        "topics": chosen,  # view → topic
        "clock": clocks,  # view → "header" (header.stamp) or "log" (stamps were 0: the bag's log time)
        "pairing": report,
        "t_ns": {v: times[v][rows[v]].tolist() for v in chosen},  # time of each kept frame (flat, episode-major)
        "frame_sizes": sizes,  # native (H, W) per camera, before resize
        "frame_counts": report["frames"],  # before pairing (the states topic too)
        "size": resize,
        "fps": fps,  # 1 / median stamp interval per camera
        "n_episodes": E,
        "n_steps": T,
        "codec": None,
        "world": None,
        "seed": None,
        "states": None if states is None else states.topic,
        "state_slices": None if states is None else states.slices,
    }
    frames = {v: frames[v][rows[v]].reshape(E, T, *frames[v].shape[1:]) for v in chosen}  # (E, T, H, W, 3)
    return Recording(frames, None if states is None else _world_states(states, E, T), meta, path)


def _episodes(states: BagStates | None, K: int, path: Path) -> tuple[int, int]:
    """(E, T) of the K paired moments: from the states' ``episode`` slice when it splits them evenly, else (1, K)."""
    if states is None or states.episode is None:
        return 1, K
    runs = episode_runs(states.episode)
    if isinstance(runs, str):
        warnings.warn(f"{path}: {runs}, so the {K} paired moments are loaded as one episode; "
                      "a moment is dropped when a camera or the state has no partner (see meta['pairing'])",
                      stacklevel=4)
        return 1, K
    return runs


def _world_states(states: BagStates, E: int, T: int) -> WorldStates:
    n = states.positions.shape[1]
    return WorldStates.from_arrays({
        "positions": states.positions.reshape(E, T, n, 2),
        "velocities": states.velocities.reshape(E, T, n, 2),
        "danger": states.danger.reshape(E, T),
        "radius": states.radius,
    })


@dataclass
class ViewData:
    """One view's frames for training, from the simulator or from a recording."""

    frames: np.ndarray  # (E, T, S, S, 3) uint8 BGR
    states: WorldStates | None  # ground truth (E, T, ...) or None (real robot)
    view: str  # view name (simulator view, or camera file stem)
    source: str  # human-readable provenance, e.g. "simulator(seed=0, ...)" or "recording /path/top.avi"
    visible: np.ndarray | None = None  # 3-D world: (E, T, n) bool, the objects the view shows (when known)

    def __post_init__(self) -> None:
        f = self.frames
        if f.ndim != 5 or f.shape[-1] != 3 or f.dtype != np.uint8 or f.shape[2] != f.shape[3]:
            raise ValueError(
                f"ViewData.frames must be (E, T, S, S, 3) uint8, got {f.dtype} {f.shape}; "
                "pass size=S to resize non-square camera frames"
            )
        if self.states is not None and self.states.positions.shape[:2] != f.shape[:2]:
            raise ValueError(
                f"ViewData: states cover {self.states.positions.shape[:2]} (E, T) but frames {f.shape[:2]}"
            )
        if self.visible is not None and self.visible.shape[:2] != f.shape[:2]:
            raise ValueError(f"ViewData: visibility covers {self.visible.shape[:2]} (E, T) but frames {f.shape[:2]}")

    @property
    def n_episodes(self) -> int:
        return self.frames.shape[0]

    @property
    def n_steps(self) -> int:
        return self.frames.shape[1]

    @property
    def size(self) -> int:
        return self.frames.shape[2]

    @classmethod
    def from_simulator(
        cls, world_cfg: WorldConfig | World3DConfig | None, view: str, n_episodes: int, n_steps: int, size: int = 32,
        seed: int = 0, visible: bool = False
    ) -> ViewData:
        """Simulate with ``seed`` and render ``view`` with the same seed (as ``simulate_recording`` does).

        ``world_cfg``: the config of the view's world (2-D or 3-D); None = that world's default. ``visible``:
        also compute which objects the view shows (3-D world; one more render pass)."""
        frames, states = episode_frames(view, n_episodes, n_steps, size, seed, world=world_cfg)  # (E, T, S, S, 3)
        seen = None
        if visible and states.kind == "3d":
            from jepa_edge.world.render3d import visibility

            seen = visibility(states, view, size, world=world_cfg)  # (E, T, n) bool
        where = f"simulator(view={view}, episodes={n_episodes}, steps={n_steps}, seed={seed})"
        return cls(frames, states, view, where, seen)

    @classmethod
    def from_recording(cls, path: str | Path, view: str, size: int | None = None,
                       topics: dict[str, str] | None = None) -> ViewData:
        """One view of a recording folder or bag; ``size`` resizes on load (required for non-square cameras);
        ``topics`` ({view: topic}) names a bag's cameras."""
        rec = load_recording(path, views=[view], resize=size, topics=topics)
        if "topics" in rec.meta:
            where = f"{rec.source} {Path(path)} topic {rec.meta['topics'][view]}"
        else:
            where = f"recording {Path(path) / rec.meta['files'][view]}"
        return cls(rec.frames[view], rec.states, view, where, rec.visible.get(view))


def make_view_dataset(
    view: str,
    size: int | None = 32,
    *,
    recording: str | Path | None = None,
    world: WorldConfig | World3DConfig | None = None,
    n_episodes: int | None = None,
    n_steps: int | None = None,
    seed: int | None = None,
    topics: dict[str, str] | None = None,
    visible: bool = False,
) -> ViewData:
    """Frames of one view for training: from ``recording`` when given, else from the simulator.

    Simulator defaults: the default config of the view's world (``WorldConfig()`` for a 2-D view,
    ``World3DConfig()`` for a 3-D one), 8 episodes x 64 steps, seed 0. With a
    recording those simulator arguments must stay unset (they would be
    ignored otherwise); ``size=None`` keeps the recording's native size; ``topics``
    ({view: topic}) names the cameras of a bag recording. ``visible``: the simulator also computes which
    objects a 3-D view shows (a recording of the 3-D world carries it).
    """
    if recording is not None:
        given = [
            k
            for k, v in {"world": world, "n_episodes": n_episodes, "n_steps": n_steps, "seed": seed}.items()
            if v is not None
        ]
        if given:
            raise ValueError(f"make_view_dataset: {given} describe a simulator run; a recording fixes them, drop them")
        return ViewData.from_recording(recording, view, size, topics)
    if topics:
        raise ValueError("make_view_dataset: topics name the cameras of a bag; pass recording=BAG with them")
    if size is None:
        raise ValueError("make_view_dataset: the simulator needs a frame size; pass size=32 (or another even int)")
    return ViewData.from_simulator(
        world,
        view,
        8 if n_episodes is None else n_episodes,
        64 if n_steps is None else n_steps,
        size,
        0 if seed is None else seed,
        visible,
    )


# ---------------------------------------------------------------- the held-out split


def heldout_split(episode: np.ndarray, heldout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(pool, held_out)`` of M moments: the one held-out policy of every score in this package.

    ``episode`` (M,) is each row's episode id, the rows of one episode in time order (episode-major layout).
    The episodes with the highest ids, ``round(E * heldout_fraction)`` of them (at least one, never all),
    are held out whole, so nearly identical consecutive frames never sit on both sides of the split. One
    continuous episode (a robot's recording, a bag) holds out its last ``heldout_fraction`` of the rows (the
    end of the recording) instead. No randomness: training's state probe, `calib`, `probe` and the study
    hold out the same moments of the same data.
    """
    episode = np.asarray(episode)
    ids = np.unique(episode)  # sorted
    if len(ids) == 1:
        M = len(episode)
        if M < 2:
            raise ValueError(f"{M} moment(s) cannot be split into a pool and a held-out stretch; record longer")
        n_held = min(M - 1, max(1, round(M * heldout_fraction)))
        return np.arange(M - n_held), np.arange(M - n_held, M)
    n_held = min(len(ids) - 1, max(1, round(len(ids) * heldout_fraction)))
    held = np.isin(episode, ids[len(ids) - n_held:])
    return np.flatnonzero(~held), np.flatnonzero(held)
